"""One run of the test guest: QEMU boots the cached kernel and initramfs, mounts each
virtio-fs share, runs a workload script in it and powers off.

QEMU connects to each share's vhost-user socket as the frontend (a daemon, or a recording
proxy in front of one, must already listen there). The guest's memory is a shared memfd
(``memory-backend-memfd,share=on`` bound to a NUMA node), as vhost-user needs: the daemon
maps the same pages. Acceleration is TCG (``FUSEPROTO_GUEST_ACCEL`` overrides it: KVM is
not usable on every host, e.g. nested setups where QEMU aborts setting an MSR).

The serial console is the only channel back: ``/init`` prints ``@@fp`` marker lines around
each share's workload and the workload prints ``@@r KEY VALUE...`` result lines
(:func:`parse_console`). QEMU is started in its own session and stopped by its PID only;
its run directory (the per-run initrd, the console log) is removed on every path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import scratch
from ..errors import GuestError
from .assets import GuestAssets, find_qemu
from .initramfs import Entry, cpio_newc

MEMORY = "512M"


@dataclass(frozen=True)
class Share:
    """A virtio-fs device: the guest mounts ``tag`` at ``/mnt/<tag>``; QEMU connects to
    the vhost-user ``socket``."""

    tag: str
    socket: str


@dataclass
class TagRun:
    """What the workload printed for one share: ``results[key]`` is the list of words
    after ``@@r key`` (the last line with that key wins), ``status`` the workload's exit
    status (None: it never finished)."""

    tag: str
    results: dict[str, list[str]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    status: int | None = None


@dataclass
class GuestRun:
    """The outcome of one boot."""

    console: str
    returncode: int | None  # QEMU's exit code
    seconds: float
    release: str = ""  # the guest kernel's uname -r as it reported it
    tags: dict[str, TagRun] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # "@@fp error ..." lines from /init
    finished: bool = False  # /init reached "@@fp done"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def parse_console(text: str) -> tuple[str, dict[str, TagRun], list[str], bool]:
    """(kernel release, per-tag runs, /init's error lines, whether /init finished) from a
    serial console log. Lines not starting with a marker (kernel messages) are ignored;
    carriage returns of the serial line are dropped."""
    release = ""
    tags: dict[str, TagRun] = {}
    errors: list[str] = []
    finished = False
    current: TagRun | None = None
    for raw in text.splitlines():
        line = raw.replace("\r", "").strip()
        words = line.split()
        if not words:
            continue
        if words[0] == "@@fp" and len(words) >= 2:
            what = words[1]
            if what == "boot" and len(words) >= 3:
                release = words[2]
            elif what == "begin" and len(words) >= 3:
                current = tags.setdefault(words[2], TagRun(words[2]))
            elif what == "end" and len(words) >= 4 and current is not None:
                with contextlib.suppress(ValueError):
                    current.status = int(words[3])
                current = None
            elif what == "error":
                errors.append(" ".join(words[2:]))
            elif what == "done":
                finished = True
        elif words[0] == "@@r" and current is not None and len(words) >= 2:
            current.results[words[1]] = words[2:]
            current.lines.append(line)
    return release, tags, errors, finished


class Guest:
    """A QEMU process booting ``assets`` with one virtio-fs device per share and running
    ``workload`` (a busybox sh script) in each mount. Use as a context manager, or
    :meth:`start` then :meth:`wait`; :meth:`stop` kills it by PID and removes its files."""

    def __init__(self, assets: GuestAssets, shares: Sequence[Share], workload: bytes, *,
                 memory: str = MEMORY, accel: str | None = None) -> None:
        if not shares:
            raise ValueError("a guest needs at least one share")
        for s in shares:
            if not s.tag.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"tag {s.tag!r}: letters, digits, - and _ only")
        self.assets = assets
        self.shares = list(shares)
        self.workload = workload
        self.memory = memory
        self.accel = accel or os.environ.get("FUSEPROTO_GUEST_ACCEL") or "tcg"
        self.rundir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def argv(self, initrd: str, console: str) -> list[str]:
        cmdline = (
            "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init "
            f"fuseproto.tags={','.join(s.tag for s in self.shares)}"
        )
        argv = [
            find_qemu(), "-accel", self.accel, "-m", self.memory, "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-monitor", "none",
            "-object", f"memory-backend-memfd,id=mem,size={self.memory},share=on",
            "-numa", "node,memdev=mem",
            "-kernel", self.assets.kernel, "-initrd", initrd, "-append", cmdline,
        ]
        for i, s in enumerate(self.shares):
            argv += ["-chardev", f"socket,id=fs{i},path={s.socket}",
                     "-device", f"vhost-user-fs-pci,chardev=fs{i},tag={s.tag}"]
        return argv

    @property
    def console_path(self) -> str:
        assert self.rundir is not None
        return os.path.join(self.rundir, "console.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Guest:
        if self.proc is not None:
            raise GuestError("guest already started")
        for s in self.shares:
            if not os.path.exists(s.socket):
                raise GuestError(f"share {s.tag}: nothing listens on {s.socket}")
        self.rundir = scratch.directory("guest")
        initrd = os.path.join(self.rundir, "initrd.cpio")
        # The cached base archive, then this run's workload (the kernel unpacks both).
        with open(initrd, "wb") as out, open(self.assets.initramfs, "rb") as base:
            shutil.copyfileobj(base, out)
            out.write(cpio_newc([Entry.file("workload.sh", self.workload, 0o755)],
                                first_ino=1 << 20))
        argv = self.argv(initrd, self.console_path)
        with open(os.path.join(self.rundir, "qemu.log"), "wb") as log:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, close_fds=True, start_new_session=True)
            except OSError as e:
                self.stop()
                raise GuestError(f"cannot start {argv[0]}: {e}") from e
        self.started_at = time.monotonic()
        return self

    def qemu_log(self) -> str:
        if not self.rundir:
            return ""
        with contextlib.suppress(OSError):
            return Path(self.rundir, "qemu.log").read_text(errors="replace")
        return ""

    def console(self) -> str:
        if not self.rundir:
            return ""
        with contextlib.suppress(OSError):
            return Path(self.console_path).read_text(errors="replace")
        return ""

    def wait(self, timeout: float, *, stall: float | None = None) -> GuestRun:
        """Wait for QEMU to exit (the guest powers off after its workload), at most
        ``timeout`` seconds, or ``stall`` seconds without a new byte on the console (a
        hung guest: a FUSE request never answered); then kill it. Returns what the
        console showed; raises :class:`GuestError` if QEMU had to be killed or failed to
        start."""
        if self.proc is None:
            raise GuestError("guest not started")
        deadline = time.monotonic() + timeout
        seen, last = -1, time.monotonic()
        rc: int | None = None
        why = f"did not finish within {timeout} s"
        while True:
            try:
                rc = self.proc.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            with contextlib.suppress(OSError):
                size = os.path.getsize(self.console_path)
                if size != seen:
                    seen, last = size, now
            if now > deadline:
                break
            if stall is not None and now - last > stall:
                why = f"hung: no console output for {stall} s"
                break
        run = self._result(rc)
        if rc is None:
            self.stop()
            raise GuestError(f"guest {why}; console tail:\n"
                             f"{run.tail()}\nQEMU: {self.qemu_log()[-1000:]}")
        if rc != 0 and not run.console:
            raise GuestError(f"QEMU exited with {rc}: {self.qemu_log()[-2000:]}")
        return run

    def _result(self, rc: int | None) -> GuestRun:
        text = self.console()
        release, tags, errors, finished = parse_console(text)
        return GuestRun(console=text, returncode=rc,
                        seconds=time.monotonic() - self.started_at, release=release,
                        tags=tags, errors=errors, finished=finished)

    def stop(self, timeout: float = 5.0) -> None:
        """Kill QEMU by its PID if it still runs (SIGTERM, then SIGKILL), reap it and
        remove the run directory. Safe to call again."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None

    def __enter__(self) -> Guest:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
