"""One boot of the test guest against real daemons: each daemon serves its own prepared
share, the guest mounts them all (one virtio-fs device each, tagged by the daemon's name),
runs the workload in each, and the results are checked in the guest's output and on the
host.

``interpose`` puts something between QEMU and a daemon (a recording proxy): called with
(tag, the daemon's socket, a scratch directory) it is a context manager giving the socket
QEMU should connect to, and is left after QEMU has exited (so whatever it records is
complete).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from .. import daemons, scratch
from ..errors import GuestError
from .assets import GuestAssets, prepare
from .vm import Guest, GuestRun, Share, TagRun
from .workload import check_guest, check_host
from .workload import prepare_share as workload_share
from .workload import script as workload_script

Interpose = Callable[[str, str, str], AbstractContextManager[str]]
DAEMON_EXIT_TIMEOUT = 10.0
# A guest silent this long is hung (the longest quiet step, the 8 MiB dd through TCG on a
# loaded machine, takes ~10 s; boot ~6-20 s).
STALL_TIMEOUT = 90.0
PROXY_START_TIMEOUT = 30.0


class RecordingProxies:
    """An ``interpose`` for :func:`run_workload`: QEMU -> ``fuseproto capture proxy`` (a
    process of its own per share, started and stopped by PID) -> daemon, each share's
    FUSE traffic recorded to ``<capture_dir or the share's folder>/guest-<tag>.pcap`` (each
    message whole, or its first ``snaplen`` bytes).

    After the run, :attr:`captures` maps each tag to its capture and :attr:`exits` to
    what became of its proxy ("exited with code 0": it ended by itself when QEMU
    disconnected, as ``--once`` says)."""

    def __init__(self, capture_dir: str | None = None, *, snaplen: int | None = None) -> None:
        self.capture_dir = capture_dir
        self.snaplen = snaplen  # record at most this many bytes of each message
        self.captures: dict[str, str] = {}
        self.exits: dict[str, str] = {}
        self.logs: dict[str, str] = {}

    @contextlib.contextmanager
    def __call__(self, tag: str, daemon_socket: str, folder: str) -> Iterator[str]:
        listen = os.path.join(folder, "vmm.sock")
        capture = os.path.join(self.capture_dir or folder, f"guest-{tag}.pcap")
        log_path = os.path.join(folder, "proxy.log")
        self.captures[tag] = capture
        ready_r, ready_w = os.pipe()
        argv = [sys.executable, "-m", "fuseproto", "capture", "proxy", "--listen", listen,
                "--daemon-socket", daemon_socket, "-w", capture, "--ready-fd", str(ready_w)]
        if self.snaplen is not None:
            argv += ["--snaplen", str(self.snaplen)]
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=log, pass_fds=(ready_w,),
                                        start_new_session=True)
        except OSError as e:
            os.close(ready_r)
            raise GuestError(f"cannot start the capture proxy: {e}") from e
        finally:
            os.close(ready_w)
        try:
            with os.fdopen(ready_r, "rb") as ready:
                ok, _, _ = select.select([ready], [], [], PROXY_START_TIMEOUT)
                if not ok or ready.readline() != b"ready\n":
                    raise GuestError(f"capture proxy for {tag} did not get ready: "
                                     f"{_read(log_path)[-2000:]}")
            yield listen
            # QEMU has exited: the proxy ends by itself once it has seen the disconnect.
            try:
                proc.wait(DAEMON_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(DAEMON_EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                self.exits[tag] = f"stopped by fuseproto (exit {proc.returncode})"
            else:
                self.exits[tag] = daemons.describe_status(
                    proc.returncode << 8 if proc.returncode >= 0 else -proc.returncode)
            self.logs[tag] = _read(log_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listen)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@dataclass
class ShareRun:
    """One daemon's part of a boot."""

    tag: str
    daemon: str  # variant name (c, rust, c-src ...)
    version: str
    share: str  # the host directory it served (removed afterwards unless workdir was given)
    guest: TagRun | None
    daemon_exit: str  # "exited with code 0" when QEMU's disconnect ended it cleanly
    problems: list[str] = field(default_factory=list)


@dataclass
class WorkloadRun:
    guest: GuestRun
    shares: dict[str, ShareRun]

    def problems(self) -> list[str]:
        """Everything that went wrong, each prefixed with its share's tag."""
        out = [f"guest: /init: {e}" for e in self.guest.errors]
        if self.guest.returncode != 0:
            out.append(f"guest: QEMU exited with {self.guest.returncode}")
        if not self.guest.finished:
            out.append("guest: /init did not finish")
        for s in self.shares.values():
            out += [f"{s.tag}: {p}" for p in s.problems]
        return out


def run_workload(names: Sequence[str], *, timeout: float = 240.0,
                 interpose: Interpose | None = None, assets: GuestAssets | None = None,
                 workdir: str | None = None, script: bytes | None = None,
                 prepare_share: Callable[[str], object] | None = None) -> WorkloadRun:
    """Boot once with one share per daemon in ``names`` (``c``, ``rust``, a built variant
    or a path), run the workload in each and check it. Daemons, QEMU and anything
    ``interpose`` started are stopped by PID; the shares live in ``workdir`` (a temporary
    directory removed afterwards when not given).

    ``script`` and ``prepare_share`` run another workload (a busybox sh script, and what
    fills each share for it); its results are then left to the caller (no checks)."""
    custom = script is not None
    fill = prepare_share or workload_share
    script = workload_script() if script is None else script
    assets = assets or prepare()
    own = workdir is None
    base = workdir or scratch.directory("guest-run")
    try:
        with contextlib.ExitStack() as stack:
            shares: list[Share] = []
            running: dict[str, tuple[daemons.Daemon, str]] = {}
            for i, name in enumerate(names):
                tag = _tag(name, i)
                if tag in running:  # the same daemon twice: one share each
                    tag = f"{tag}-{i}"
                inst = daemons.resolve(name)
                folder = os.path.join(base, tag)
                share = os.path.join(folder, "share")
                os.makedirs(share)
                fill(share)
                daemon = daemons.Daemon(inst, share, os.path.join(folder, "daemon.sock"))
                stack.callback(daemon.stop)
                daemon.start()
                running[tag] = (daemon, share)
                sock = daemon.socket_path
                if interpose is not None:
                    sock = stack.enter_context(interpose(tag, sock, folder))
                shares.append(Share(tag, sock))
            with Guest(assets, shares, script) as guest:
                result = guest.wait(timeout, stall=STALL_TIMEOUT)
            # Leaving the stack (after the results are taken below) stops the interposers
            # first, then the daemons.
            out: dict[str, ShareRun] = {}
            for tag, (daemon, share) in running.items():
                daemon.wait_exit(DAEMON_EXIT_TIMEOUT)
                run = result.tags.get(tag)
                problems = [] if custom else check_guest(run) + check_host(share)
                out[tag] = ShareRun(tag, daemon.installation.variant,
                                    daemon.installation.version, share, run,
                                    daemon.exit_description(), problems)
        return WorkloadRun(result, out)
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


def _tag(name: str, index: int) -> str:
    """A virtio-fs tag for daemon ``name``: the name itself when it is one (``c``,
    ``rust``, ``c-src``), else ``share<index>`` (a path)."""
    if name.replace("-", "").replace("_", "").isalnum() and len(name) <= 32:
        return name
    return f"share{index}"
