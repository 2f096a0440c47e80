"""The real daemons: installing, starting, exit/hang detection, stopping by PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fuseproto import daemons
from fuseproto.daemons.process import RECORD_DIR
from fuseproto.errors import DaemonError

pytestmark = pytest.mark.daemon


def test_install_is_cached_and_runs(installation):
    again = daemons.resolve(installation.variant)  # install() / build(): cached
    assert again.binary == installation.binary
    text = daemons.version_text(installation)
    assert ("7.2" in text) if installation.kind == "c" else text.startswith("virtiofsd 1.13")
    assert os.path.isabs(installation.binary) and os.access(installation.binary, os.X_OK)
    if installation.kind == "rust" and daemons.glibc_version() < (2, 39):
        assert installation.loader and os.path.exists(installation.loader)


def test_cli_list_shows_both(daemon_installations):
    out = subprocess.run([sys.executable, "-m", "fuseproto", "daemons", "list"],
                         capture_output=True, text=True, check=True).stdout
    for inst in daemon_installations.values():
        assert inst.binary in out


def test_from_path_guesses_kind(daemon_installations):
    for kind, inst in daemon_installations.items():
        if inst.loader:  # the binary needs its private loader; guessing would fail to exec
            continue
        assert daemons.Installation.from_path(inst.binary).kind == kind


def test_start_creates_socket_and_stop_removes_it(no_leaks, installation, shared_dir, socket_path):
    d = daemons.Daemon(installation, shared_dir, socket_path)
    d.start()
    try:
        assert d.running() and os.path.exists(socket_path)
        # Alive and not stopped: R/S normally, D briefly (page-in under load) is fine too.
        assert d.state() in ("S", "R", "D")
        assert "RUST_BACKTRACE" not in _environ(d.pid)
    finally:
        d.stop()
    assert not d.running()
    assert not os.path.exists(socket_path)
    assert d.returncode is not None
    assert d.log_path is None  # our temporary log has no name: nothing to leave behind
    assert isinstance(d.log_text(), str)


def test_rust_backtrace_removed(no_leaks, installation, shared_dir, socket_path, monkeypatch):
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    with daemons.Daemon(installation, shared_dir, socket_path) as d:
        assert "RUST_BACKTRACE" not in _environ(d.pid)
    d.cleanup()


def test_env_is_merged_over_ours(no_leaks, installation, shared_dir, socket_path, monkeypatch):
    monkeypatch.setenv("FUSEPROTO_TEST_INHERITED", "1")
    env = {"FUSEPROTO_TEST_GIVEN": "yes"}
    with daemons.Daemon(installation, shared_dir, socket_path, env=env) as d:
        names = _environ(d.pid)
    assert {"FUSEPROTO_TEST_INHERITED", "FUSEPROTO_TEST_GIVEN"} <= names
    assert "FUSEPROTO_TEST_GIVEN" not in os.environ


def test_variant_and_instrumentation_default_to_the_kind(daemon_installations):
    for kind, inst in daemon_installations.items():
        assert (inst.variant, inst.instrumentation) == (kind, "")
        assert daemons.find(kind) == inst
        assert inst in daemons.installed(variant=kind)
    assert daemons.Installation("c", "1", "/", "/x").variant == "c"


def test_exit_by_signal_is_described(no_leaks, installation, shared_dir, socket_path):
    d = daemons.Daemon(installation, shared_dir, socket_path).start()
    try:
        d.signal(signal.SIGKILL)
        assert d.wait_exit(5) is not None
        assert d.returncode == -signal.SIGKILL
        assert "SIGKILL (9)" in d.describe()
        with pytest.raises(DaemonError, match="SIGKILL"):
            d.check_alive()
    finally:
        d.cleanup()
    assert not os.path.exists(socket_path)


def test_stopped_daemon_is_reported_and_still_stoppable(no_leaks, installation, shared_dir,
                                                         socket_path):
    d = daemons.Daemon(installation, shared_dir, socket_path).start()
    try:
        d.freeze()
        assert "stopped" in d.describe()
    finally:
        d.cleanup()  # SIGTERM + SIGCONT, SIGKILL if needed
    assert d.returncode is not None


def test_exits_when_its_one_connection_closes(no_leaks, installation, shared_dir, socket_path):
    """One daemon per session: closing the frontend connection ends the process."""
    d = daemons.Daemon(installation, shared_dir, socket_path).start()
    try:
        for _ in range(1000):  # the socket file appears (bind) just before listen()
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(socket_path)
                break
            except ConnectionRefusedError:
                time.sleep(0.001)
            finally:
                s.close()
        assert d.wait_exit(5) is not None, d.describe()
        assert d.returncode == 0, d.log_tail()
    finally:
        d.cleanup()


OWNER = """
import os, sys
from fuseproto import daemons
d = daemons.Daemon(daemons.install(sys.argv[1]), sys.argv[2], sys.argv[3]).start()
print(d.pid, flush=True)
os.read(0, 1)  # until the test has looked (and killed us)
"""


def test_owner_killed_leaves_no_log(installation, shared_dir, socket_path):
    """The default log has no name from the moment the daemon holds it: an owner killed
    with SIGKILL (no stop(), no finally) leaves no file behind; the daemon still logs."""
    with _owner(installation.kind, shared_dir, socket_path) as (owner, pid):
        mine = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(
            f"virtiofsd-{installation.kind}-{owner.pid}-")}
        assert not mine, mine
        logs = [os.readlink(f"/proc/{pid}/fd/2")]
        assert logs[0].endswith("(deleted)"), logs
        owner.kill()  # by PID
        owner.wait()
        assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(
            f"virtiofsd-{installation.kind}-{owner.pid}-")]


def test_owner_killed_leaves_no_pid_file(installation, shared_dir):
    """An owner killed with SIGKILL never stops its daemon, wherever its socket is (here
    in a directory of the caller's, not one of fuseproto's): once that daemon is gone the
    next sweep (every start runs one) removes the pid file it wrote, by the record the
    owner's start made; the record goes too."""
    home = tempfile.mkdtemp(prefix="owner-")  # not a fuseproto-* name
    socket_path = os.path.join(home, "vhost.sock")
    try:
        with _owner(installation.kind, shared_dir, socket_path) as (owner, pid):
            files = daemons.pid_file_paths(installation.kind, socket_path)
            record = os.path.join(RECORD_DIR, f"{pid}.pids")
            assert os.path.exists(record)
            assert set(files) <= set(Path(record).read_text().split())
            owner.kill()  # by PID: no stop(), no finally
            owner.wait()
            os.kill(pid, signal.SIGKILL)  # the orphaned daemon, by its PID
            _wait_gone(pid)
            assert all(os.path.exists(f) for f in files)  # left behind
            assert set(files) <= set(daemons.sweep_stale_pid_files())
            assert not any(os.path.exists(f) for f in files) and not os.path.exists(record)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def _owner(kind: str, shared_dir: str, socket_path: str):
    """A process that starts a daemon (OWNER) and its daemon's PID; afterwards, whatever
    the test left: the owner and its orphaned daemon (each by its PID), the daemon's
    socket and pid files."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, kind, shared_dir, socket_path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pid = None
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        yield owner, pid
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
        for path in [socket_path, *daemons.pid_file_paths(kind, socket_path)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return  # a zombie of init's now: gone as far as we are concerned
        time.sleep(0.01)


def test_bad_shared_dir_fails_with_log(no_leaks, installation, scratch_dir, socket_path):
    d = daemons.Daemon(installation, os.path.join(scratch_dir, "missing"), socket_path)
    with pytest.raises(DaemonError) as ei:
        d.start(timeout=5)
    assert "exited" in str(ei.value) or "did not create" in str(ei.value)
    d.cleanup()
    assert not os.path.exists(socket_path)


def test_socket_path_in_use_is_refused(no_leaks, installation, shared_dir, socket_path):
    open(socket_path, "w").close()
    with pytest.raises(DaemonError, match="already exists"):
        daemons.Daemon(installation, shared_dir, socket_path).start()
    os.unlink(socket_path)


def _assert_pid_file_while_running(d: daemons.Daemon) -> str:
    """The daemon's own pid file exists, names its PID, and is where we expect it."""
    expected = daemons.pid_file_paths(d.kind, d.socket_path)[0]
    if d.kind == "c":
        # /run/virtiofsd/.<socket path with / as .>.pid, as QEMU 7.2 names it
        name = d.socket_path.replace("/", ".") + ".pid"
        assert expected == os.path.join(daemons.C_PID_DIR, name)
        assert os.path.realpath(expected) == os.path.join("/run/virtiofsd", name)
    else:
        assert expected == d.socket_path + ".pid"
    assert Path(expected).read_text().strip() == str(d.pid)
    assert expected in d.pid_files
    return expected


@pytest.mark.parametrize("how", ["stop", "SIGKILL", "SIGABRT", "frozen"])
def test_stop_removes_own_pid_file(no_leaks, installation, shared_dir, socket_path, how):
    """Every way a daemon ends (stopped, killed, crashed, frozen then stopped) leaves no
    pid file: the C daemon's is in /run/virtiofsd, not next to the socket."""
    d = daemons.Daemon(installation, shared_dir, socket_path).start()
    try:
        pid_file = _assert_pid_file_while_running(d)
        if how == "frozen":
            d.freeze()
        elif how != "stop":
            d.signal(getattr(signal, how))
            assert d.wait_exit(5) is not None, d.describe()
            assert os.path.exists(pid_file)  # the daemon itself leaves it behind
    finally:
        d.stop()
    assert not os.path.exists(pid_file)
    d.stop()  # a second stop is harmless


def test_start_timeout_kills_and_cleans_up(no_leaks, installation, shared_dir, scratch_dir,
                                           socket_path):
    """A start given up after its timeout kills the daemon wherever it was, and removes
    its pid file even when it is not where the daemon was told to serve: here a second
    --socket-path makes it serve elsewhere (the C daemon: the last one counts; the Rust
    one may refuse the repetition and exit, which fails the start too)."""
    elsewhere = os.path.join(scratch_dir, "elsewhere.sock")
    opt = [f"--socket-path={elsewhere}"]
    d = daemons.Daemon(installation, shared_dir, socket_path, extra_args=opt)
    with pytest.raises(DaemonError, match="did not create|before creating"):
        d.start(timeout=2)
    assert not d.running()
    for path in (*daemons.pid_file_paths(d.kind, socket_path),
                 *daemons.pid_file_paths(d.kind, elsewhere)):
        assert not os.path.exists(path), path
    assert not os.path.exists(socket_path)


def test_start_timeout_before_exec_of_the_daemon(no_leaks, installation, shared_dir,
                                                 scratch_dir, socket_path):
    """A wrapper that has not yet executed the daemon when the start is given up: killed
    by PID, no socket, no log, no pid file left."""
    wrapper = Path(scratch_dir, "slow-virtiofsd")
    wrapper.write_text(f"#!{sys.executable}\nimport os, sys, time\ntime.sleep(5)\n"
                       f"argv = {installation.argv()!r} + sys.argv[1:]\n"
                       "os.execv(argv[0], argv)\n")
    wrapper.chmod(0o755)
    slow = daemons.Installation(kind=installation.kind, version="local", root=scratch_dir,
                                binary=str(wrapper))
    d = daemons.Daemon(slow, shared_dir, socket_path)
    with pytest.raises(DaemonError, match="did not create"):
        d.start(timeout=0.3)
    assert d.returncode is not None
    for path in daemons.pid_file_paths(d.kind, socket_path):
        assert not os.path.exists(path)


def test_remove_pid_file_leaves_other_daemons_files(scratch_dir):
    path = os.path.join(scratch_dir, "x.sock.pid")
    Path(path).write_text("4242\n")
    assert not daemons.remove_pid_file(path, 4243)  # another daemon's
    assert os.path.exists(path)
    assert daemons.remove_pid_file(path, 4242)
    assert not os.path.exists(path)
    assert not daemons.remove_pid_file(path, 4242)  # already gone
    # Empty: the daemon died before writing its PID, unless someone holds the lock
    # (a daemon between locking and writing).
    Path(path).write_text("")
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert not daemons.remove_pid_file(path, 4242)
        assert os.path.exists(path)
    assert daemons.remove_pid_file(path, 4242)
    assert not os.path.exists(path)


def test_stale_pid_files_of_killed_owners_are_swept(scratch_dir):
    """A daemon whose owner was SIGKILLed is never stopped, so its pid file stays: the
    next start sweeps ours (``.tmp.fuseproto-*``) whose process is gone, and nothing
    else."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID no process holds now
    stale = os.path.join(scratch_dir, ".tmp.fuseproto-vu-abc.vhost.sock.pid")
    live = os.path.join(scratch_dir, ".tmp.fuseproto-vu-def.vhost.sock.pid")
    foreign = os.path.join(scratch_dir, ".srv.other.sock.pid")
    Path(stale).write_text(f"{dead.pid}\n")
    Path(live).write_text(f"{os.getpid()}\n")
    Path(foreign).write_text(f"{dead.pid}\n")
    assert daemons.sweep_stale_pid_files(scratch_dir) == [stale]
    assert not os.path.exists(stale) and os.path.exists(live) and os.path.exists(foreign)


def test_sandbox_mode(installation, shared_dir, socket_path):
    default = daemons.Daemon(installation, shared_dir, socket_path)
    assert default.sandbox == ("chroot" if installation.kind == "c" else "none")
    chroot = daemons.Daemon(installation, shared_dir, socket_path, sandbox="chroot")
    argv = " ".join(chroot.argv())
    assert ("sandbox=chroot" if installation.kind == "c" else "--sandbox chroot") in argv
    with pytest.raises(ValueError, match="sandbox"):
        daemons.Daemon(installation, shared_dir, socket_path, sandbox="namespace")


def test_detect_kind(daemon_installations):
    for kind, inst in daemon_installations.items():
        assert daemons.kind_from_version(daemons.version_text(inst)) == kind
        if not inst.loader:  # a binary needing its private loader cannot run alone
            assert daemons.detect_kind(inst.binary) == kind
    assert daemons.kind_from_version("virtiofsd version 7.2.19 (Debian 1:7.2+dfsg)") == "c"
    assert daemons.kind_from_version("virtiofsd 1.13.2") == "rust"
    assert daemons.kind_from_version("something else") is None


def _environ(pid: int) -> set[str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item}
