"""Running one virtiofsd: start, watch, freeze and stop it by its PID, and clean up after it.

A :class:`Daemon` serves exactly one vhost-user frontend connection and exits when that
connection closes, so the unit of use is one daemon per session. It is stopped by its PID
only, never by name, and :meth:`Daemon.stop` removes what the process leaves on the host
on every path (normal stop, crash, kill after a timeout, failed start): its socket, its
lock/pid file and its temporary log.

Where the pid files are (checked against the daemons themselves):

* the C virtiofsd (QEMU 7.2) writes ``<localstatedir>/run/virtiofsd/<socket>.pid``, the
  socket path as given on its command line with every ``/`` turned into ``.`` (so
  ``/tmp/x/vhost.sock`` gives ``/var/run/virtiofsd/.tmp.x.vhost.sock.pid``; Debian's
  ``/var/run`` is ``/run``), holds it locked while it runs and never removes it;
* the Rust virtiofsd writes ``<socket>.pid`` next to the socket.

Both hold the file open and write their PID into it, so the one this process started is
told apart from any other daemon's by its content: only a file naming our daemon's PID
(or left empty by it, see :func:`remove_pid_file`) is removed. An owner killed before it
could stop its daemon leaves that file; each start records the files its daemon writes
(:data:`RECORD_DIR`) and sweeps those of daemons that are gone
(:func:`sweep_stale_pid_files`).

Sandboxing: ``sandbox`` chooses the daemon's own sandbox; the default is ``chroot`` for the
C daemon and ``none`` for the Rust one (whose ``chroot`` mode the fuzzer uses, as it sends
hostile requests as root).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DaemonError
from ..scratch import alive
from .install import Installation

# QEMU's qemu_get_local_state_dir() is its configured localstatedir, /var on Debian.
C_PID_DIR = "/var/run/virtiofsd"
# One record per daemon a Daemon started and has not stopped yet: ``<daemon pid>.pids``,
# the pid files it writes, a path a line. An owner killed before stop() leaves its
# daemon's pid file wherever the socket was (a caller's directory, not only ours); the
# next start removes what the record of a dead daemon lists (sweep_stale_pid_files).
RECORD_DIR = os.path.join(tempfile.gettempdir(), "fuseproto-daemon-pid-files")
SANDBOXES = ("none", "chroot")


def pid_file_paths(kind: str, socket_path: str) -> list[str]:
    """Where a daemon of ``kind`` serving ``socket_path`` (exactly as passed on its command
    line) writes its lock/pid file."""
    if kind == "c":
        return [os.path.join(C_PID_DIR, socket_path.replace("/", ".") + ".pid")]
    return [socket_path + ".pid"]


def remove_pid_file(path: str, pid: int) -> bool:
    """Remove ``path`` if it is the pid file of process ``pid`` (which has exited): it
    names ``pid``, or it is empty (the daemon died between creating and writing it) and no
    live process holds a lock on it. Returns whether it was removed; another daemon's file
    is left alone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return False
    try:
        content = os.read(fd, 64).strip()
        if content:
            if content != str(pid).encode():
                return False
        else:
            # Both daemons lock the file before writing their PID into it; a lock we can
            # take means nobody is between those two steps right now. (lockf: the C
            # daemon's fcntl lock; flock: the Rust daemon's.)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def _record(pid: int, paths: Iterable[str], records: str = RECORD_DIR) -> None:
    """Note (atomically) that daemon ``pid`` writes ``paths``."""
    tmp = os.path.join(records, f".{pid}.tmp")
    for _ in range(3):  # (another process may remove the folder it found empty meanwhile)
        try:
            os.makedirs(records, mode=0o700, exist_ok=True)
            Path(tmp).write_text("".join(f"{p}\n" for p in paths))
            os.replace(tmp, os.path.join(records, f"{pid}.pids"))
            return
        except FileNotFoundError:
            continue
        except OSError:
            return


def _unrecord(pid: int, records: str = RECORD_DIR) -> None:
    """Drop daemon ``pid``'s record, and the folder once no record is left."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(records, f"{pid}.pids"))
    with contextlib.suppress(OSError):
        os.rmdir(records)


def sweep_stale_pid_files(directory: str = C_PID_DIR, records: str = RECORD_DIR) -> list[str]:
    """Remove the pid files our own daemons left when their owner was killed before it
    could stop them: those a record in ``records`` lists for a daemon that is gone, and
    in ``directory`` those named after fuseproto's temporary socket directories
    (``.tmp.fuseproto-*``) whose process is gone; each only if it names that process (see
    :func:`remove_pid_file`). Other programs' files are left alone. Returns the paths
    removed; :meth:`Daemon.start` calls it."""
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for name in os.listdir(records):
            pid_text = name.removesuffix(".pids")
            if not (name.endswith(".pids") and pid_text.isdigit()):
                continue
            pid = int(pid_text)
            if alive(pid):
                continue  # its daemon (or a process now holding that PID) lives
            with contextlib.suppress(OSError):
                paths = Path(records, name).read_text().splitlines()
                removed += [p for p in paths if p and remove_pid_file(p, pid)]
            _unrecord(pid, records)
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(".tmp.fuseproto-") and name.endswith(".pid")):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                text = f.read(64).strip()
        except OSError:
            continue
        pid = int(text) if text.isdigit() else 0
        if pid and alive(pid):
            continue  # its daemon (or a process now holding that PID) lives
        if remove_pid_file(path, pid):
            removed.append(path)
    return removed


def describe_status(status: int) -> str:
    """``os.waitpid`` status -> "exited with code N" / "killed by signal SIGKILL (9)"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name} ({sig})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"status {status:#x}"


class Daemon:
    """One running virtiofsd serving ``shared_dir`` on the vhost-user socket ``socket_path``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Its stderr goes to
    ``log_path``, or by default to a temporary file whose name is removed as soon as the
    daemon has it open (nothing is left behind even when this process is killed;
    :meth:`log_text` reads it, and keeps its text after the daemon exits). ``cpus`` pins
    it (all its threads) to those CPUs from its first instruction. ``sandbox`` is the
    daemon's own sandbox mode, ``none`` or ``chroot`` (default: ``chroot`` for the C
    daemon, ``none`` for the Rust one). ``env`` is merged over this process's environment
    for the daemon.
    """

    def __init__(
        self,
        installation: Installation,
        shared_dir: str | os.PathLike[str],
        socket_path: str | os.PathLike[str],
        *,
        extra_args: list[str] | None = None,
        xattr: bool = True,
        log_path: str | os.PathLike[str] | None = None,
        cpus: Iterable[int] | None = None,
        sandbox: str | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.installation = installation
        # Variables set for the daemon over this process's environment (e.g. the coverage
        # map's FUSEPROTO_COV_MAP and ASAN_OPTIONS for an instrumented build).
        self.env = dict(env or {})
        # CPUs the daemon may run on, set before it executes (so every thread it ever
        # starts inherits it); None: the system's choice.
        self.cpus = None if cpus is None else frozenset(cpus)
        if self.cpus is not None and not self.cpus:
            raise ValueError("cpus: at least one CPU")
        self.kind = installation.kind
        self.shared_dir = str(shared_dir)
        self.socket_path = str(socket_path)
        self.extra_args = list(extra_args or [])
        self.xattr = xattr
        if sandbox is None:
            sandbox = "chroot" if self.kind == "c" else "none"
        if sandbox not in SANDBOXES:
            raise ValueError(f"sandbox: one of {', '.join(SANDBOXES)}, not {sandbox!r}")
        self.sandbox = sandbox
        # The lock/pid files this daemon writes (see pid_file_paths); start() adds any
        # other *.pid file it finds the running process holding (a build configured with
        # another localstatedir), and stop() removes those that name this daemon.
        self.pid_files = pid_file_paths(self.kind, self.socket_path)
        # Without a log_path the log is an unnamed temporary file (our descriptor of it,
        # read by log_text()); stop() keeps its text in memory and closes it.
        self._own_log = log_path is None
        self.log_path: str | None = None if log_path is None else str(log_path)
        self._log_fd: int | None = None
        self._log_kept: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._status: int | None = None

    def _pin(self) -> None:  # in the child, between fork and exec
        os.sched_setaffinity(0, self.cpus or ())

    # -- command line -------------------------------------------------------------------
    def argv(self) -> list[str]:
        if self.kind == "c":
            args = [f"--socket-path={self.socket_path}", "-o", f"source={self.shared_dir}",
                    "-o", f"sandbox={self.sandbox}", "-f"]
            if self.xattr:
                args += ["-o", "xattr"]
        else:
            args = ["--socket-path", self.socket_path, "--shared-dir", self.shared_dir,
                    "--sandbox", self.sandbox]
            if self.xattr:
                args.append("--xattr")
        return [*self.installation.argv(), *args, *self.extra_args]

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> Daemon:
        """Start the daemon and wait until its socket file exists (never connecting to it:
        the first connection is the one session the daemon will serve)."""
        if self.proc is not None:
            raise DaemonError("daemon already started")
        if os.path.exists(self.socket_path):
            raise DaemonError(f"socket path {self.socket_path} already exists")
        sweep_stale_pid_files()
        env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
        env.update(self.env)
        if self._own_log and self._log_fd is None:
            fd, name = tempfile.mkstemp(prefix=f"virtiofsd-{self.kind}-{os.getpid()}-",
                                        suffix=".log")
            os.unlink(name)  # the daemon's stderr and our fd keep it; no name to leave
            self._log_fd = fd
        with (open(os.dup(self._log_fd), "ab") if self._log_fd is not None
              else open(str(self.log_path), "ab")) as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    close_fds=True, start_new_session=True,
                    preexec_fn=None if self.cpus is None else self._pin,
                )
            except OSError as e:
                self.stop()  # removes the temporary log
                raise DaemonError(f"cannot start {self.installation.binary}: {e}")
        _record(self.proc.pid, self.pid_files)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if self.poll() is not None:
                self.stop()
                raise DaemonError(
                    f"{self.kind} virtiofsd {self.exit_description()} before creating "
                    f"{self.socket_path}; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(
                    f"{self.kind} virtiofsd did not create {self.socket_path} within "
                    f"{timeout} s; log:\n{self.log_tail()}"
                )
            time.sleep(0.002)
        self._note_pid_files()
        return self

    def _note_pid_files(self) -> None:
        """Add the *.pid files the running daemon holds open to :attr:`pid_files` (both
        daemons keep theirs open, locked, from before the socket exists until they exit).
        Called when the socket appears and again before the daemon is stopped."""
        pid = self.pid
        if pid is None:
            return
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for name in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(os.path.join(fd_dir, name))
                    if target.endswith(".pid") and os.path.isabs(target):
                        known = {os.path.realpath(p) for p in self.pid_files}
                        if os.path.realpath(target) not in known:
                            self.pid_files.append(target)
                            _record(pid, self.pid_files)

    def poll(self) -> int | None:
        """The raw wait status if the daemon has exited (reaping it), else None."""
        if self._status is not None or self.proc is None:
            return self._status
        try:
            pid, status = os.waitpid(self.proc.pid, os.WNOHANG)
        except ChildProcessError:
            # Already reaped elsewhere; Popen knows the code.
            rc = self.proc.returncode
            self._status = (-rc & 0x7F) if rc is not None and rc < 0 else ((rc or 0) << 8)
            return self._status
        if pid == 0:
            return None
        self._status = status
        self.proc.returncode = (
            -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        )
        return status

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        return self._status

    @property
    def returncode(self) -> int | None:
        """Like Popen: exit code, or ``-signal`` when killed; None while running."""
        self.poll()
        return self.proc.returncode if self.proc and self._status is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def state(self) -> str:
        """Kernel scheduling state of the live process ('R', 'S', 'T' stopped, ...)."""
        if not self.running():
            return "exited"
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return "unknown"
        return text.rsplit(")", 1)[1].split()[0]

    def exit_description(self) -> str:
        status = self.poll()
        if self.proc is None:
            return "was never started"
        if status is None:
            st = self.state()
            return "is stopped (SIGSTOP)" if st in ("T", "t") else f"is running (state {st})"
        return describe_status(status)

    def describe(self) -> str:
        """One line for error messages: kind, pid and what became of it."""
        return f"{self.kind} virtiofsd pid {self.pid} {self.exit_description()}"

    def check_alive(self) -> None:
        if self.poll() is not None:
            raise DaemonError(f"{self.describe()}; log tail:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon by its PID (used by tests: SIGKILL, SIGSTOP)."""
        if self.running() and self.pid:
            os.kill(self.pid, sig)

    def freeze(self, timeout: float = 5.0) -> None:
        """SIGSTOP the daemon and wait until the kernel reports it stopped (the signal
        is asynchronous: a request sent right after kill() may still be served)."""
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while self.state() not in ("T", "t"):
            if not self.running():
                raise DaemonError(f"{self.describe()} while being stopped")
            if time.monotonic() > deadline:
                raise DaemonError(f"{self.describe()}: not stopped {timeout} s after SIGSTOP")
            time.sleep(0.001)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 3.0) -> int | None:
        """Stop the daemon by its PID: SIGTERM (after SIGCONT, in case it was stopped),
        then SIGKILL; reap it; remove its socket, its pid file and its temporary log.
        Safe to call again and after the daemon has exited on its own (crash, end of its
        connection, failed start). Returns the wait status."""
        if self.proc is not None and self.poll() is None:
            pid = self.proc.pid
            self._note_pid_files()  # e.g. a start given up before it noted them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
            if self.wait_exit(timeout) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if self.wait_exit(timeout) is None:
                    raise DaemonError(f"{self.kind} virtiofsd pid {pid} survived SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self.proc is not None:  # reaped above: its pid files are stale now
            for path in self.pid_files:
                remove_pid_file(path, self.proc.pid)
            _unrecord(self.proc.pid)
        if self._log_fd is not None and self._log_kept is None:
            self._log_kept = self.log_text()
            os.close(self._log_fd)
            self._log_fd = None
        return self._status

    def cleanup(self) -> None:
        """Stop the daemon and remove everything it left (socket, pid file, temporary
        log)."""
        self.stop()

    def log_text(self) -> str:
        if self._log_kept is not None:
            return self._log_kept
        if self._log_fd is not None:
            chunks, at = [], 0
            while chunk := os.pread(self._log_fd, 1 << 16, at):
                chunks.append(chunk)
                at += len(chunk)
            return b"".join(chunks).decode(errors="replace")
        if self.log_path is None:
            return ""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Daemon:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Daemon {self.describe()} socket={self.socket_path}>"
