"""A warm spare daemon for the live loops: the next daemon is made while this one is fuzzed.

A live target restarts its daemon after every crash, exit or hang, and a start costs
tens of milliseconds (scratch share, fork/exec, the vhost-user handshake, INIT and the
setup LOOKUPs) against well under one for a request. :class:`Spare` runs the harness's
own start (the one door: :meth:`~fuseproto.fuzz.harness.DaemonHarness.prepare_daemon`)
in background threads, up to ``depth`` daemons ahead (the harness: 3, or
``FUSEPROTO_FUZZ_SPARES``; the Rust daemon dies every ~20 requests and a start takes
75-180 ms, so one spare is often not ready yet), so a restart takes a daemon that is
already serving, and stops retired daemons (by PID, reaped, their directories removed)
in the background too.
:meth:`Spare.close` joins every thread, so nothing outlives the harness.

The harness only uses a spare where two daemons at once cannot disturb each other.
An instrumented daemon may have spares: each daemon gets its own edge map
(:meth:`~fuseproto.fuzz.coverage.CoverageMap.spawn`, in :attr:`Started.coverage`), so a
spare's start-up edges never land in the live daemon's counters, and the map is unmapped
and its file deleted when the daemon is stopped (:func:`stop_started`, also after a failed
start). A DAX daemon may have spares too: each gets its own window (an address range of
this process reserved for it alone) and its own backend channel and mapping record, made
with it and closed with it (:attr:`Started.window`, :attr:`Started.dax`). Not when the
caller's environment names one map for every daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from construct import Container

from ..errors import FuseError
from ..wire.constants import fuse_opcode

__all__ = ["Spare", "Started", "stop_started"]

T = TypeVar("T")


@dataclass
class Started:
    """One daemon started, connected and set up, with what the harness learned doing so."""

    daemon: Any
    base: str  # its scratch directory (share, socket, log)
    exchange: deque[tuple[int, int, bytes, int]]  # what its transport's tap saw
    canaries: Any = None
    transport: Any = None
    client: Any = None
    window: Any = None
    dax: Any = None
    config: Any = None  # its fuseproto.daemons.options.DaemonConfig (None: the default)
    minor: int = 0
    flags: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    fhs: dict[str, int] = field(default_factory=dict)
    coverage: Any = None  # its own edge map (a CoverageMap sibling), closed with it

    def set_up(self, init_flags: int) -> None:
        """The harness's fixed setup: INIT, LOOKUP of the files ``populate`` made (in
        flight together, one kick), then OPEN ``file`` O_RDWR (O_RDONLY on a read-only
        share) and OPENDIR ``dir`` (one kick); what the daemon answered is kept."""
        c = self.client
        c.init(flags=init_flags)
        self.minor, self.flags = c.session.minor, int(c.session.flags)
        names = ("file", "small", "dir", "link", "empty")
        looked = [c.submit(fuse_opcode.FUSE_LOOKUP, Container(name=n.encode()), nodeid=1,
                           kick=False) for n in names]
        c.kick()
        for name, p in zip(names, looked, strict=True):
            self.nodes[name] = c.result(p).nodeid
        opened = [c.submit(fuse_opcode.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0),
                           nodeid=self.nodes["file"], kick=False),
                  c.submit(fuse_opcode.FUSE_OPENDIR,
                           Container(flags=os.O_RDONLY | os.O_DIRECTORY, open_flags=0),
                           nodeid=self.nodes["dir"], kick=False)]
        c.kick()
        self.fhs = {"dir": c.result(opened[1]).fh}
        try:
            self.fhs["file"] = c.result(opened[0]).fh
        except FuseError as e:  # a read-only share (a config with --readonly)
            if e.errno != errno.EROFS:
                raise
            self.fhs["file"] = c.call(fuse_opcode.FUSE_OPEN, Container(
                flags=os.O_RDONLY, open_flags=0), nodeid=self.nodes["file"]).fh


def stop_started(s: Started) -> None:
    """Close its connection, stop the daemon by PID (reaped), remove its directory, window
    and edge map (unmapped, its file deleted). Never raises: it also runs in the
    background."""
    if s.transport is not None:
        with contextlib.suppress(Exception):
            s.transport.close()  # stops the daemon it owns
    with contextlib.suppress(Exception):
        s.daemon.stop()
    shutil.rmtree(s.base, ignore_errors=True)
    if s.window is not None:
        with contextlib.suppress(Exception):
            s.window.close()
    if s.coverage is not None:
        with contextlib.suppress(Exception):
            s.coverage.close()


class _Job(Generic[T]):
    """One spare being made in its own thread."""

    def __init__(self, make: Callable[[], T]):
        self.result: T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(make,), name="fuseproto-spare",
                                       daemon=True)
        self.thread.start()

    def _run(self, make: Callable[[], T]) -> None:
        try:
            self.result = make()
        except BaseException as e:  # noqa: BLE001 -- kept, the caller makes one itself
            self.error = e


class Spare(Generic[T]):
    """Up to ``depth`` objects made ahead, each in a background thread
    (:meth:`launch_with`); ``discard`` undoes one nobody took. Background ``retire``
    calls are joined by :meth:`close`."""

    def __init__(self, discard: Callable[[T], None], depth: int = 1):
        self._discard = discard
        self.depth = max(1, depth)
        self._jobs: deque[_Job[T]] = deque()
        self.error: BaseException | None = None  # why the last spare could not be made
        self._retiring: list[threading.Thread] = []
        self.made = 0  # spares taken
        self.taken = 0  # of those, ready when asked for (not made while the caller waited)

    def wanted(self) -> bool:
        """Fewer than ``depth`` spares are on their way or ready."""
        return len(self._jobs) < self.depth

    def launch_with(self, make: Callable[[], T]) -> None:
        """Start making one more with ``make()`` (call while :meth:`wanted`)."""
        self._jobs.append(_Job(make))

    def take(self) -> T | None:
        """A spare: the oldest one ready, else the oldest one once made (waiting for it);
        None if none was launched or making it failed (:attr:`error`)."""
        if not self._jobs:
            return None
        job = next((j for j in self._jobs if not j.thread.is_alive()), self._jobs[0])
        ready = not job.thread.is_alive()
        self._jobs.remove(job)
        job.thread.join()
        self.error = job.error
        if job.result is not None:
            self.made += 1
            self.taken += ready
        return job.result

    def settle(self) -> int:
        """Wait until every spare on its way is made (or failed); how many are ready."""
        for job in list(self._jobs):
            job.thread.join()
        return sum(j.result is not None for j in self._jobs)

    def retire(self, stop: Callable[..., Any], *args: Any) -> None:
        """Run ``stop(*args)`` in the background (joined by :meth:`close`)."""
        self._retiring = [t for t in self._retiring if t.is_alive()]
        t = threading.Thread(target=stop, args=args, name="fuseproto-retire", daemon=True)
        t.start()
        self._retiring.append(t)

    def close(self) -> None:
        """Discard the untaken spares and wait for every retirement."""
        while self._jobs:
            out = self.take()
            if out is not None:
                self._discard(out)
        for t in self._retiring:
            t.join()
        self._retiring = []
