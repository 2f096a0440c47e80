"""Finding, installing and running real virtiofsd builds.

Two implementations are supported, both taken from Debian's archive through a private apt
configuration (:mod:`fuseproto.debarchive`; the system's sources are never edited) and
unpacked under ``<cache_root>/daemons/<kind>-<version>/``:

* ``c``: the C virtiofsd of QEMU 7.2 (bookworm ``qemu-system-common``,
  ``usr/lib/qemu/virtiofsd``, FUSE protocol 7.36). Later QEMU releases no longer ship it,
  so it comes from bookworm on every host. It links against the system's glib, libseccomp,
  libcap-ng and libnuma, which :func:`install` installs with apt-get when missing.
* ``rust``: virtiofsd 1.13.x (trixie ``virtiofsd``, ``usr/libexec/virtiofsd``). It needs
  glibc >= 2.39; on an older host trixie's libc6, libgcc-s1, libcap-ng0 and libseccomp2
  are unpacked beside it and it runs through that tree's own dynamic loader.

A :class:`Daemon` serves exactly one vhost-user frontend connection and exits when that
connection closes, so the unit of use is one daemon per session. It is stopped by its PID
only, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..debarchive import PrivateApt, cache_root, extract
from ..errors import DaemonError

KINDS = ("c", "rust")


@dataclass(frozen=True)
class DaemonSpec:
    """Where one kind of daemon comes from in Debian's archive."""

    kind: str
    suite: str
    package: str
    binary: str  # path inside the unpacked package
    # Extra packages unpacked into the same tree when the host's glibc is too old.
    private_libs: tuple[str, ...] = ()
    min_glibc: tuple[int, int] = (0, 0)
    # soname -> system packages providing it (first that apt knows is installed).
    system_libs: dict[str, tuple[str, ...]] = field(default_factory=dict)


SPECS: dict[str, DaemonSpec] = {
    "c": DaemonSpec(
        kind="c",
        suite="bookworm",
        package="qemu-system-common",
        binary="usr/lib/qemu/virtiofsd",
        system_libs={
            # trixie renamed glib's package for the 64-bit time_t transition.
            "libglib-2.0.so.0": ("libglib2.0-0t64", "libglib2.0-0"),
            "libseccomp.so.2": ("libseccomp2",),
            "libcap-ng.so.0": ("libcap-ng0",),
            "libnuma.so.1": ("libnuma1",),
        },
    ),
    "rust": DaemonSpec(
        kind="rust",
        suite="trixie",
        package="virtiofsd",
        binary="usr/libexec/virtiofsd",
        private_libs=("libc6", "libgcc-s1", "libcap-ng0", "libseccomp2"),
        min_glibc=(2, 39),
        system_libs={
            "libseccomp.so.2": ("libseccomp2",),
            "libcap-ng.so.0": ("libcap-ng0",),
        },
    ),
}


@dataclass
class Installation:
    """One unpacked daemon: how to execute it."""

    kind: str
    version: str  # Debian package version
    root: str  # unpacked tree
    binary: str  # absolute path of the executable
    loader: str | None = None  # private dynamic loader (old-glibc hosts)
    library_path: str | None = None

    def argv(self) -> list[str]:
        """The command prefix that runs this daemon (loader first when there is one)."""
        if self.loader:
            return [self.loader, "--library-path", self.library_path or "", self.binary]
        return [self.binary]

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], kind: str | None = None) -> Installation:
        """A user's own build (``--virtiofsd PATH``); ``kind`` is guessed from ``--help``."""
        p = Path(path).resolve()
        if not os.access(p, os.X_OK):
            raise DaemonError(f"{p} is not an executable file")
        if kind is None:
            kind = _guess_kind(p)
        if kind not in KINDS:
            raise DaemonError(f"unknown daemon kind {kind!r} (one of {', '.join(KINDS)})")
        return cls(kind=kind, version="local", root=str(p.parent), binary=str(p))


def _guess_kind(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DaemonError(f"cannot run {binary} --help: {e}")
    text = out.stdout + out.stderr
    # The Rust daemon's options are long GNU-style ones like --shared-dir; the C one uses
    # FUSE-style "-o source=".
    return "rust" if "--shared-dir" in text else "c"


def daemons_dir() -> Path:
    return cache_root() / "daemons"


def _glibc_version() -> tuple[int, int]:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def installed(kind: str | None = None) -> list[Installation]:
    """Installations found in the cache, newest version last, optionally of one kind."""
    out: list[Installation] = []
    base = daemons_dir()
    if not base.is_dir():
        return out
    for manifest in sorted(base.glob("*/daemon.json")):
        try:
            inst = Installation(**json.loads(manifest.read_text()))
        except (ValueError, TypeError):
            continue
        if (kind is None or inst.kind == kind) and os.path.exists(inst.binary):
            out.append(inst)
    return out


def find(kind: str) -> Installation | None:
    """The cached installation of ``kind`` (or ``FUSEPROTO_VIRTIOFSD_<KIND>``), else None."""
    env = os.environ.get(f"FUSEPROTO_VIRTIOFSD_{kind.upper()}")
    if env:
        return Installation.from_path(env, kind)
    found = installed(kind)
    return found[-1] if found else None


def install(kind: str, *, apt_system_libs: bool = True) -> Installation:
    """Download and unpack ``kind`` (cached: returns the existing installation if any)."""
    if kind not in SPECS:
        raise DaemonError(f"unknown daemon kind {kind!r} (one of {', '.join(KINDS)})")
    existing = find(kind)
    if existing is not None:
        return existing
    spec = SPECS[kind]
    apt = PrivateApt.for_suites(spec.suite)
    deb = apt.download(spec.package)
    version = deb.name.split("_")[1].replace("%3a", ":")
    base = daemons_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{kind}-{version.replace(':', '_')}"
    # Unpack into a temporary directory and rename, so a half-done install never counts.
    work = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=base))
    try:
        root = work / "root"
        extract(deb, root)
        binary = root / spec.binary
        if not binary.exists():
            raise DaemonError(f"{spec.package} {version} has no {spec.binary}")
        need_private = _glibc_version() < spec.min_glibc
        if need_private:
            for lib in spec.private_libs:
                extract(apt.download(lib), root)
        final_root = final / "root"
        inst = Installation(kind=kind, version=version, root=str(final_root),
                            binary=str(final_root / spec.binary))
        if need_private:
            inst.loader = str(final_root / "usr/lib64/ld-linux-x86-64.so.2")
            inst.library_path = str(final_root / "usr/lib/x86_64-linux-gnu")
            if not (root / "usr/lib64/ld-linux-x86-64.so.2").exists():
                raise DaemonError("unpacked libc6 has no usr/lib64/ld-linux-x86-64.so.2")
        else:
            _ensure_system_libs(binary, spec, allow_apt=apt_system_libs)
        (work / "daemon.json").write_text(json.dumps(asdict(inst), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return inst


def _missing_sonames(binary: Path) -> list[str]:
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    return re.findall(r"^\s*(\S+) => not found", proc.stdout, re.M)


def _ensure_system_libs(binary: Path, spec: DaemonSpec, *, allow_apt: bool) -> None:
    missing = _missing_sonames(binary)
    if not missing:
        return
    pkgs: list[str] = []
    for soname in missing:
        candidates = spec.system_libs.get(soname)
        if not candidates:
            raise DaemonError(f"{binary} needs {soname}, which no known package provides")
        for pkg in candidates:
            probe = subprocess.run(["apt-cache", "show", pkg], capture_output=True)
            if probe.returncode == 0:
                pkgs.append(pkg)
                break
        else:
            raise DaemonError(f"{binary} needs {soname}: none of {candidates} is known to apt")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    if not allow_apt or os.geteuid() != 0:
        raise DaemonError(f"{binary} needs {', '.join(missing)}; run: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or _missing_sonames(binary):
        raise DaemonError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-1000:]}")


def version_text(inst: Installation) -> str:
    """What the daemon itself says its version is (first line of ``--version``)."""
    try:
        proc = subprocess.run([*inst.argv(), "--version"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DaemonError(f"{inst.binary} --version: {e}")
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else ""


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
    ``log_path`` (a temporary file by default) and is kept after it exits. ``cpus`` pins
    it (all its threads) to those CPUs from its first instruction.
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
    ):
        self.installation = installation
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
        # Without a log_path the log is a temporary file while the daemon runs; stop()
        # keeps its text in memory (log_text()) and removes the file.
        self._own_log = log_path is None
        self.log_path: str | None = None if log_path is None else str(log_path)
        self._log_kept: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._status: int | None = None

    def _pin(self) -> None:  # in the child, between fork and exec
        os.sched_setaffinity(0, self.cpus)

    # -- command line -------------------------------------------------------------------
    def argv(self) -> list[str]:
        if self.kind == "c":
            args = [f"--socket-path={self.socket_path}", "-o", f"source={self.shared_dir}",
                    "-o", "sandbox=chroot", "-f"]
            if self.xattr:
                args += ["-o", "xattr"]
        else:
            args = ["--socket-path", self.socket_path, "--shared-dir", self.shared_dir,
                    "--sandbox", "none"]
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
        env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix=f"virtiofsd-{self.kind}-{os.getpid()}-",
                                              suffix=".log")
            os.close(fd)
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    close_fds=True, start_new_session=True,
                    preexec_fn=None if self.cpus is None else self._pin,
                )
            except OSError as e:
                raise DaemonError(f"cannot start {self.installation.binary}: {e}")
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
        return self

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
        then SIGKILL; reap it; remove the socket file. Returns the wait status."""
        if self.proc is not None and self.poll() is None:
            pid = self.proc.pid
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
        # The C daemon also leaves a "<socket>.pid" lock file next to the socket.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path + ".pid")
        if self._own_log and self.log_path and self._log_kept is None:
            self._log_kept = self.log_text()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)
        return self._status

    def cleanup(self) -> None:
        """Stop the daemon and remove everything it left (socket, temporary log)."""
        self.stop()

    def log_text(self) -> str:
        if self._log_kept is not None:
            return self._log_kept
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
