"""The DaxManager interface every policy implements (the names live in :mod:`.registry`).

A manager is the guest side of one mount's DAX window: it decides which file ranges are
mapped where, sends SETUPMAPPING / REMOVEMAPPING to a :class:`WindowDevice` and serves
reads (and writes, where the policy supports them) from the window.

Writing your own manager
------------------------
Subclass :class:`DaxManager` and implement :meth:`~DaxManager.read`,
:meth:`~DaxManager.forget`, :meth:`~DaxManager.unmount`, :meth:`~DaxManager.view` and
:meth:`~DaxManager.accounting` (optionally :meth:`~DaxManager.write`). Send every message
through :meth:`DaxManager.send` (it notifies the observers, i.e. the invariant checker,
and keeps the statistics), and read the window through :meth:`DaxManager.window_read`.
Then expose a factory::

    # mypkg/mydax.py
    def make(device, backend, **options):
        return MyManager(device, backend, **options)

and run it through every check here with ``--manager mypkg.mydax:make`` (CLI) or
``registry.load_manager("mypkg.mydax:make")`` (:mod:`fuseproto.dax.registry`). The
factory is called as ``factory(device, backend, **options)``; ``device`` is a
:class:`~fuseproto.dax.device.WindowDevice`, ``backend`` a
:class:`~fuseproto.dax.host.FuseBackend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, cast

from .device import WindowDevice
from .host import FuseBackend
from .messages import FUSE_SETUPMAPPING, DaxMessage, removemapping, setupmapping

__all__ = [
    "Accounting",
    "DaxManager",
    "DaxObserver",
    "ManagerFactory",
    "ManagerStats",
    "ReadResult",
    "RecordDevice",
    "Segment",
    "ViewEntry",
    "WriteResult",
]


class ViewEntry(NamedTuple):
    """One live mapping in a manager's own view of the window. A NamedTuple (immutable,
    compared and hashed by value): every full check builds the whole view, and a frozen
    dataclass costs several times as much to build."""

    moffset: int
    length: int
    nodeid: int
    foffset: int
    writable: bool = False

    @property
    def end(self) -> int:
        return self.moffset + self.length


@dataclass(frozen=True, slots=True)
class Accounting:
    """Window bytes the manager considers mapped and free, out of ``total`` usable."""

    mapped: int
    free: int
    total: int


class Segment(NamedTuple):
    """A piece of a read's answer: ``length`` file bytes at ``foffset``, from the window
    at ``moffset`` (None: from FUSE_READ). A NamedTuple: one is made per read, and a
    frozen dataclass costs twice as much to build."""

    foffset: int
    length: int
    moffset: int | None


@dataclass(slots=True)
class ReadResult:
    """What a read returned. ``data`` may be short (end of file, or a policy that serves
    only what one mapping covers, as OSv does). ``error`` is the errno of a failed DAX
    attempt: with ``fell_back`` the bytes came from FUSE_READ instead; without it the
    read failed (``data`` is what was read before the error)."""

    data: bytes
    segments: list[Segment] = field(default_factory=list)
    error: int = 0
    fell_back: bool = False
    setups: int = 0  # SETUPMAPPINGs this read caused

    @property
    def source(self) -> str:
        kinds = {"dax" if s.moffset is not None else "fuse_read" for s in self.segments}
        return "+".join(sorted(kinds)) or "none"


@dataclass(slots=True)
class WriteResult:
    written: int
    error: int = 0
    via: str = "dax"  # "dax" or "fuse_write"


@dataclass(slots=True)
class ManagerStats:
    setupmapping: int = 0
    removemapping: int = 0  # messages
    removemapping_entries: int = 0
    bytes_mapped: int = 0  # sum of SETUPMAPPING len
    failed: int = 0  # messages the device refused
    dax_bytes: int = 0  # bytes served from the window
    fallback_bytes: int = 0  # bytes served by FUSE_READ after a DAX failure
    reads: int = 0
    errors: dict[int, int] = field(default_factory=dict)


class DaxObserver(Protocol):
    """Sees every message a manager sends (before and after the device answers) and
    every read it serves. :class:`~fuseproto.dax.invariants.DaxChecker` is one."""

    def on_send(self, manager: DaxManager, msg: DaxMessage) -> None: ...

    def on_reply(self, manager: DaxManager, msg: DaxMessage, error: int) -> None: ...

    def on_read(
        self, manager: DaxManager, nodeid: int, offset: int, size: int, result: ReadResult
    ) -> None: ...


class RecordDevice(Protocol):
    """A window device that takes mapping records (``accepts_records = True``, the
    simulator's :class:`~fuseproto.dax.simulator.SimWindow`): the same validation as
    ``submit``, without a message; each returns 0 or a positive errno."""

    def setup_record(
        self, nodeid: int, fh: int, foffset: int, length: int, flags: int, moffset: int
    ) -> int: ...

    def remove_record(
        self, nodeid: int, entries: Sequence[tuple[int, int]], count: int | None = None
    ) -> int: ...


class DaxManager(ABC):
    """One mount's DAX window policy. Single-threaded: callers serialise operations."""

    name = "manager"
    #: True when :meth:`write` goes through the window (False: always FUSE_WRITE)
    supports_dax_write = False

    def __init__(self, device: WindowDevice, backend: FuseBackend, *, sender: str = "") -> None:
        self.device = device
        self.backend = backend
        self.sender = sender or f"{self.name}@{id(self):x}"
        self.stats = ManagerStats()
        self.observers: list[DaxObserver] = []
        self.unmounted = False  # implementations set it in unmount()
        self._unique = 0
        # A device that takes mapping records (the simulator's) gets SETUPMAPPING /
        # REMOVEMAPPING as plain fields while nobody observes the messages: same
        # decisions, no message objects (tests/test_dax_sim.py compares both paths).
        self._records: RecordDevice | None = (
            cast(RecordDevice, device) if getattr(device, "accepts_records", False) else None
        )

    # ---- what policies implement ---------------------------------------------------------
    @abstractmethod
    def read(self, nodeid: int, offset: int, size: int, *, fh: int = 0) -> ReadResult:
        """Read up to ``size`` bytes at ``offset`` (the guest's read(2) on one file)."""

    def write(self, nodeid: int, offset: int, data: bytes, *, fh: int = 0) -> WriteResult:
        """Write ``data`` at ``offset``. Default: FUSE_WRITE (no DAX writes)."""
        n = self.backend.fuse_write(nodeid, fh, offset, bytes(data))
        return WriteResult(n, 0, "fuse_write")

    @abstractmethod
    def forget(self, nodeid: int) -> None:
        """The guest drops the inode (FORGET): its mappings must not serve it again."""

    @abstractmethod
    def unmount(self) -> None:
        """The mount goes away."""

    @abstractmethod
    def view(self) -> list[ViewEntry]:
        """The manager's live mappings, in window order."""

    @abstractmethod
    def accounting(self) -> Accounting:
        """Mapped and free window bytes as the manager counts them."""

    def check_valid(self) -> None:
        """Internal consistency of the policy's own structures (raise AssertionError)."""
        return None

    def pinned(self) -> list[tuple[int, int]]:
        """``(moffset, length)`` of window ranges in use (never to be reclaimed), if the
        policy has the notion."""
        return []

    def pinned_in(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ranges of :meth:`pinned` that overlap one of ``ranges`` (``(moffset,
        length)``), in window order. Default: :meth:`pinned` filtered; a policy that can
        answer without listing every range in use overrides it (the checker asks for
        every message)."""
        return [(p, n) for p, n in self.pinned()
                if any(max(p, m) < min(p + n, m + ln) for m, ln in ranges)]

    # ---- helpers for implementations ------------------------------------------------------
    def next_unique(self) -> int:
        self._unique += 2  # even, as the kernel's fuse_get_unique
        return self._unique

    def send(self, msg: DaxMessage) -> int:
        """Send one message to the device; returns 0 or a positive errno."""
        if not msg.sender:
            msg.sender = self.sender
        observers = self.observers
        for o in observers:
            o.on_send(self, msg)
        err = self.device.submit(msg)
        st = self.stats
        if msg.opcode == FUSE_SETUPMAPPING:
            st.setupmapping += 1
            if not err:
                st.bytes_mapped += msg.body["len"]
        else:
            st.removemapping += 1
            st.removemapping_entries += len(msg.body["entries"])
        if err:
            st.failed += 1
            st.errors[err] = st.errors.get(err, 0) + 1
        for o in observers:
            o.on_reply(self, msg, err)
        return err

    def send_setupmapping(
        self, nodeid: int, *, fh: int, foffset: int, length: int, flags: int, moffset: int
    ) -> int:
        """One SETUPMAPPING (see :meth:`send`); returns 0 or a positive errno."""
        self._unique += 2  # next_unique()
        unique = self._unique
        dev = self._records
        if dev is None or self.observers:
            return self.send(
                setupmapping(
                    nodeid,
                    fh=fh,
                    foffset=foffset,
                    length=length,
                    flags=flags,
                    moffset=moffset,
                    unique=unique,
                    sender=self.sender,
                )
            )
        err = dev.setup_record(nodeid, fh, foffset, length, flags, moffset)
        st = self.stats
        st.setupmapping += 1
        if err:
            st.failed += 1
            st.errors[err] = st.errors.get(err, 0) + 1
        else:
            st.bytes_mapped += length
        return err

    def send_removemapping(self, nodeid: int, entries: list[tuple[int, int]]) -> int:
        """One REMOVEMAPPING of ``(moffset, len)`` entries (see :meth:`send`)."""
        self._unique += 2  # next_unique()
        unique = self._unique
        dev = self._records
        if dev is None or self.observers:
            return self.send(removemapping(nodeid, entries, unique=unique, sender=self.sender))
        err = dev.remove_record(nodeid, entries)
        st = self.stats
        st.removemapping += 1
        st.removemapping_entries += len(entries)
        if err:
            st.failed += 1
            st.errors[err] = st.errors.get(err, 0) + 1
        return err

    def window_read(
        self, moffset: int, length: int, nodeid: int | None = None, foffset: int | None = None
    ) -> bytes:
        """Copy window bytes. Pass the node and file offset the bytes are meant to be:
        observers check, at the moment of the copy, that the window still maps them."""
        if self.observers and nodeid is not None and foffset is not None:
            for o in self.observers:
                hook = getattr(o, "on_window_access", None)
                if hook is not None:
                    hook(self, nodeid, foffset, moffset, length)
        return self.device.read(moffset, length)

    def finish_read(self, nodeid: int, offset: int, size: int, result: ReadResult) -> ReadResult:
        """Account a served read and show it to the observers; returns ``result``."""
        st = self.stats
        st.reads += 1
        for s in result.segments:
            if s.moffset is None:
                st.fallback_bytes += s.length
            else:
                st.dax_bytes += s.length
        if result.error:
            st.errors[result.error] = st.errors.get(result.error, 0) + 1
        for o in self.observers:
            o.on_read(self, nodeid, offset, size, result)
        return result

    def fuse_read_segment(
        self, nodeid: int, fh: int, offset: int, size: int
    ) -> tuple[bytes, Segment]:
        data = self.backend.fuse_read(nodeid, fh, offset, size)
        return data, Segment(offset, len(data), None)


#: What :func:`fuseproto.dax.registry.load_manager` returns: ``factory(device, backend,
#: **options)`` -> a manager.
ManagerFactory = Callable[..., DaxManager]
