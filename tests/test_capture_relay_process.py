"""The capture relay as a process (fuseproto/capture/relay.py, relay.c), through the proxy
against real daemons and as a binary:

* the file stays valid when the proxy is killed with SIGKILL under load (the relay
  finishes its record and exits), and when the relay itself is killed the proxy forwards
  on, unrecorded, and says so;
* the relay binary is cached by the hash of all its files.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from fuseproto.capture import decode_capture, read_records
from fuseproto.capture import relay as relay_mod
from fuseproto.wire.constants import FUSE_ROOT_ID

# -- through the proxy, against real daemons ----------------------------------------------------------

def _loaded_client(proxy, stop: threading.Event, errors: list) -> threading.Thread:
    """READs of 128 KiB, 16 in flight, until the connection breaks or ``stop``."""
    from fuseproto.client import Client
    from fuseproto.transport.vhost_user import VhostUserTransport

    def run() -> None:
        try:
            with VhostUserTransport(proxy.listen, mode="interrupt", timeout=10.0) as t:
                c = Client(t)
                c.init()
                e = c.lookup(FUSE_ROOT_ID, "big")
                fh = c.open(e.nodeid).fh
                n = 0
                while not stop.is_set():
                    pend = [c.submit_read(e.nodeid, fh, (n + i) % 16 * (128 << 10), 128 << 10)
                            for i in range(16)]
                    for p in pend:
                        c.result(p)
                    n += 16
                    errors.append(n)
        except Exception as ex:  # noqa: BLE001 -- the connection ends with the proxy
            errors.append(ex)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _relay_pid(proxy) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children") as f:
            kids = f.read().split()
        for k in kids:
            with open(f"/proc/{k}/comm") as f:
                if f.read().startswith("relay-"):
                    return int(k)
        time.sleep(0.01)
    raise AssertionError("no relay process")


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.daemon
@pytest.mark.parametrize("run", range(3))
def test_sigkill_of_the_proxy_under_load_leaves_a_valid_capture(run, shared_dir, scratch_dir,
                                                                 daemon_installations):
    """SIGKILL of the proxy while 128 KiB READ replies stream into the capture: the relay
    (not the process killed) finishes the record it is writing and exits; every record in
    the file parses and decodes."""
    from test_capture_proxy import Proxy

    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(os.urandom(2 << 20))
    proxy = Proxy(scratch_dir, "--daemon", "rust", "--shared-dir", shared_dir)
    stop, progress = threading.Event(), []
    th = _loaded_client(proxy, stop, progress)
    relay_pid = _relay_pid(proxy)
    deadline = time.monotonic() + 20
    while sum(1 for p in progress if isinstance(p, int)) < 3 + run and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(run).random() * 0.05)
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.wait()
    stop.set()
    th.join(20)
    _wait_gone(relay_pid)
    started = next(ln for ln in proxy.stderr.splitlines() if " started " in ln)
    _wait_gone(int(started.split(" pid ")[1].split()[0]))  # the daemon, by its connection
    records = list(read_records(proxy.pcap))  # raises on a record cut short
    assert len(records) > 2 * 16 * 3
    msgs = list(decode_capture(proxy.pcap))
    assert [m for m in msgs if m.error is not None] == []
    import shutil
    shutil.rmtree(os.path.dirname(started.rsplit(" on ", 1)[1]), ignore_errors=True)


@pytest.mark.daemon
def test_ctrl_c_to_the_process_group_under_load(shared_dir, scratch_dir, daemon_installations):
    """A Ctrl-C reaches every process of the terminal's group, the relay too: it leaves the
    ending to the proxy (which closes the capture and exits 0) and never stops mid-record."""
    from test_capture_proxy import Proxy

    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(os.urandom(2 << 20))

    class GroupProxy(Proxy):  # in a process group of its own, as in a terminal
        def __init__(self, *args: str) -> None:
            real = subprocess.Popen
            subprocess.Popen = lambda *a, **kw: real(*a, start_new_session=True, **kw)
            try:
                super().__init__(*args)
            finally:
                subprocess.Popen = real

    proxy = GroupProxy(scratch_dir, "--daemon", "c", "--shared-dir", shared_dir)
    try:
        stop, progress = threading.Event(), []
        th = _loaded_client(proxy, stop, progress)
        relay_pid = _relay_pid(proxy)
        deadline = time.monotonic() + 20
        while sum(1 for p in progress if isinstance(p, int)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proxy.proc.pid, signal.SIGINT)
        assert proxy.wait() == 0, proxy.stderr
        stop.set()
        th.join(20)
        _wait_gone(relay_pid)
    finally:
        proxy.stop()
    assert "SIGINT: capture closed" in proxy.stderr, proxy.stderr
    assert "data plane" not in proxy.stderr  # the relay was not lost on the way
    msgs = list(decode_capture(proxy.pcap))
    assert len(msgs) > 4 * 16 and [m for m in msgs if m.error is not None] == []


@pytest.mark.daemon
def test_the_proxy_forwards_on_when_the_relay_dies(shared_dir, scratch_dir,
                                                   daemon_installations, no_leaks):
    """SIGKILL of the relay itself: the VM must not hang. The proxy forwards kicks and
    calls from then on (unrecorded), says so on stderr and in an annotation, and the file
    stays valid (cut back to the last whole record)."""
    from test_capture_proxy import Proxy, connect

    from fuseproto.client import Client

    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(os.urandom(2 << 20))
    from fuseproto.errors import TransportError

    proxy = Proxy(scratch_dir, "--daemon", "c", "--shared-dir", shared_dir)
    try:
        with connect(proxy.listen) as t:
            c = Client(t)
            c.init()
            e = c.lookup(FUSE_ROOT_ID, "big")
            fh = c.open(e.nodeid).fh
            os.kill(_relay_pid(proxy), signal.SIGKILL)
            for i in range(40):  # READs on, through the proxy alone
                pend = [c.submit_read(e.nodeid, fh, (i + k) % 16 * (128 << 10), 128 << 10)
                        for k in range(4)]
                try:
                    assert all(len(c.result(p).data) == 128 << 10 for p in pend)
                except TransportError as err:  # what the proxy said goes with it
                    proxy.stop()
                    raise AssertionError(f"round {i}: {err}\nproxy stderr:\n"
                                         f"{proxy.stderr}") from err
            assert c.getattr(FUSE_ROOT_ID).attr.ino
        assert proxy.wait() == 0, proxy.stderr
    finally:
        proxy.stop()
    assert "the proxy's data plane (relay pid" in proxy.stderr
    msgs = list(decode_capture(proxy.pcap))
    assert [m for m in msgs if m.error is not None] == []
    notes = [m.raw.decode() for m in msgs if m.kind == "annotation"]
    assert any("forwarded unrecorded from here on" in n for n in notes), notes


# -- the binary ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["-O2", "-O1", "-O0"])
def test_the_relay_builds_without_a_warning(tmp_path, opt):
    """The relay's files compile with no warning (-Wall -Wextra) at each optimization level
    (the runtime build does not use -Werror: a newer compiler's new warning must not stop
    the proxy; this test is where warnings fail)."""
    flags = [f for f in relay_mod.CFLAGS if not f.startswith("-O")]
    out = subprocess.run(["gcc", opt, *flags, "-Werror", "-o", str(tmp_path / "relay"),
                          *relay_mod.compile_units()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("edit", relay_mod.SOURCES)
def test_the_relay_is_built_once_per_source(tmp_path, monkeypatch, edit):
    """The cached binary is keyed by the bytes of every one of the relay's files (and the
    flags): the same sources find it again without gcc; an edit to any one of them (the
    header too) is rebuilt beside it."""
    monkeypatch.setenv("FUSEPROTO_CACHE", str(tmp_path / "cache"))
    first = relay_mod.executable()
    assert first.is_file() and first.parent == tmp_path / "cache" / "relay"
    monkeypatch.setenv("PATH", "/nonexistent")  # no compiler now: the cached one is used
    assert relay_mod.executable() == first
    edited = tmp_path / "src"
    edited.mkdir()
    for name in relay_mod.SOURCES:
        data = (relay_mod.SOURCE_DIR / name).read_bytes()
        (edited / name).write_bytes(data + b"\n/* edited */\n" if name == edit else data)
    monkeypatch.setattr(relay_mod, "SOURCE_DIR", edited)
    with pytest.raises(relay_mod.RelayError, match="gcc"):
        relay_mod.executable()  # rebuilt: needs the compiler
    monkeypatch.setenv("PATH", os.defpath)
    second = relay_mod.executable()
    assert second != first and second.is_file()
    out = subprocess.run([str(second)], capture_output=True, text=True)
    assert out.returncode != 0 and "usage" in out.stderr
