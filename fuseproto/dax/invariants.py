"""Black-box invariants of a DAX window manager.

Every check here looks only at what a manager *sends* (its SETUPMAPPING / REMOVEMAPPING
messages and the replies), at what its reads *return*, at the device's state and at what
any manager exposes through the :class:`~fuseproto.dax.manager.DaxManager` interface
(``view()``, ``accounting()``, ``pinned()``). So they apply to any manager plugged in as
``module:factory``, and the message checks apply to a captured trace of real traffic
(:func:`check_trace`).

A violation is a :class:`Violation` naming the invariant, the message that broke it and
the state around it; :class:`DaxChecker` raises it as :class:`InvariantViolation` or
collects it. The invariants (``INVARIANTS`` maps each name to its one-line statement):
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fuseproto.errors import FuseprotoError

from .device import ModelDevice, WindowDevice
from .manager import DaxManager, ReadResult, ViewEntry
from .messages import FUSE_REMOVEMAPPING, FUSE_SETUPMAPPING, REMOVEMAPPING_MAX_ENTRY, DaxMessage

__all__ = [
    "INVARIANTS",
    "DaxChecker",
    "InvariantViolation",
    "TraceRecord",
    "Violation",
    "check_trace",
]

INVARIANTS: dict[str, str] = {
    "alignment": "foffset, moffset and len (and every REMOVEMAPPING entry) are multiples "
    "of 2**map_alignment, and len is not 0",
    "inside_window": "every mapping and every removed range lies inside the window",
    "removemapping_count": "REMOVEMAPPING count equals its number of entries and is at most "
    f"{REMOVEMAPPING_MAX_ENTRY}",
    "view_overlap": "no two live mappings of one manager's own view overlap in the window",
    "view_matches_device": "every live mapping of a manager's view is what the device maps "
    "there (same node, same file offset)",
    "cross_manager_overlap": "two managers sharing one window never both hold a live mapping "
    "of the same window bytes",
    "accounting": "mapped + free == total, and the view fits in what is counted as mapped",
    "read_bytes": "the bytes a read returns are the file's bytes at that offset",
    "read_stale_range": "a read is never served from a window range that now maps another "
    "file or another offset (use after eviction)",
    "osv_stack": "(OSv) only the top of the stack is evicted, and a new mapping starts at the "
    "first empty chunk",
    "linux_in_use": "(Linux) a range in use is never removed or remapped to other data",
    "linux_free_fifo": "(Linux) the free list is a FIFO: ranges leave from the head, freed "
    "ranges join at the tail",
    "decode": "(traces) every captured DAX request decodes",
    "no_duplicate_chunks": "(opt-in) no file range is mapped at two places of one view",
}
DEFAULT_INVARIANTS = frozenset(INVARIANTS) - {"no_duplicate_chunks"}


@dataclass
class Violation:
    invariant: str
    detail: str
    message: str | None = None  # DaxMessage.describe() of the message that broke it
    raw: bytes | None = None
    sender: str = ""
    state: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        s = f"[{self.invariant}] {self.detail}"
        if self.message:
            s += f"\n  message: {self.message}"
        if self.sender:
            s += f"\n  sender: {self.sender}"
        for k, v in self.state.items():
            s += f"\n  {k}: {v}"
        return s


class InvariantViolation(FuseprotoError, AssertionError):
    def __init__(self, violation: Violation) -> None:
        self.violation = violation
        super().__init__(str(violation))


def _fmt_view(view: list[ViewEntry], limit: int = 12) -> str:
    parts = [f"[{e.moffset:#x}+{e.length:#x} n{e.nodeid}@{e.foffset:#x}]" for e in view[:limit]]
    if len(view) > limit:
        parts.append(f"... {len(view) - limit} more")
    return " ".join(parts) or "(empty)"


class DaxChecker:
    """Checks managers against :data:`INVARIANTS`.

    Attach it to one or more managers sharing one device (``checker.attach(m1, m2)``);
    it then sees every message and read. Call :meth:`check_state` after each operation
    (a Hypothesis ``@invariant`` does). ``oracle(nodeid, offset, size)`` returns the
    file's true bytes (default: from a :class:`~fuseproto.dax.host.FileStore` given as
    ``files``). ``raise_on_violation=False`` collects into :attr:`violations`.
    """

    def __init__(
        self,
        window_size: int,
        map_alignment: int | None = 12,
        *,
        files: Any = None,
        oracle: Callable[[int, int, int], bytes] | None = None,
        device: WindowDevice | None = None,
        policy: str | None = "auto",
        enabled: Iterable[str] | None = None,
        raise_on_violation: bool = True,
    ) -> None:
        self.window_size = window_size
        self.map_alignment = map_alignment
        self.device = device
        if oracle is None and files is not None and hasattr(files, "data"):
            oracle = lambda n, o, s: bytes(files.data(n)[o : o + s])  # noqa: E731
        self.oracle = oracle
        self.policy = policy
        self.enabled = frozenset(DEFAULT_INVARIANTS if enabled is None else enabled)
        unknown = self.enabled - set(INVARIANTS)
        if unknown:
            raise ValueError(f"unknown invariants {sorted(unknown)}")
        self.raise_on_violation = raise_on_violation
        self.violations: list[Violation] = []
        self.managers: list[DaxManager] = []
        self._prev: dict[int, dict[str, Any]] = {}
        self._forgotten: dict[int, set[int]] = {}
        # (Linux) window offsets each manager sent a SETUPMAPPING for since its last
        # snapshot: a range leaves the free list's head only to be set up there.
        self._set_up: dict[int, set[int]] = {}
        self.messages_checked = 0
        self.reads_checked = 0

    # ---- plumbing -------------------------------------------------------------------------
    @classmethod
    def for_manager(cls, manager: DaxManager, **kw: Any) -> DaxChecker:
        dev = manager.device
        kw.setdefault("files", getattr(dev, "files", None))
        checker = cls(dev.window_size, dev.map_alignment, device=dev, **kw)
        return checker.attach(manager)

    def attach(self, *managers: DaxManager) -> DaxChecker:
        for m in managers:
            if self.device is None:
                self.device = m.device
            m.observers.append(self)
            self.managers.append(m)
            self._prev[id(m)] = self._snapshot(m)
        return self

    def note_forget(self, manager: DaxManager, nodeid: int) -> None:
        """Tell the checker a node was forgotten (its mappings may leave the view from
        anywhere in the stack)."""
        self._forgotten.setdefault(id(manager), set()).add(nodeid)

    def _policy(self, manager: DaxManager | None) -> str | None:
        if self.policy != "auto":
            return self.policy
        return getattr(manager, "name", None) if manager is not None else None

    def _fail(
        self,
        invariant: str,
        detail: str,
        msg: DaxMessage | None = None,
        manager: DaxManager | None = None,
        **state: Any,
    ) -> None:
        if invariant not in self.enabled:
            return
        if manager is not None:
            state.setdefault("view", _fmt_view(manager.view()))
            state.setdefault("accounting", manager.accounting())
        v = Violation(
            invariant,
            detail,
            message=msg.describe() if msg is not None else None,
            raw=msg.encoded if msg is not None else None,
            sender=(msg.sender if msg is not None else getattr(manager, "sender", "")),
            state=state,
        )
        self.violations.append(v)
        if self.raise_on_violation:
            raise InvariantViolation(v)

    # ---- message checks (also used on traces) ------------------------------------------------
    def check_message(self, msg: DaxMessage, manager: DaxManager | None = None) -> None:
        self.messages_checked += 1
        align = 1 << (self.map_alignment or 0)
        body = msg.body
        if msg.opcode == FUSE_SETUPMAPPING:
            bad = [
                f"{name}={getattr(body, name):#x}"
                for name in ("foffset", "moffset", "len")
                if getattr(body, name) % align
            ]
            if bad or body.len == 0:
                self._fail(
                    "alignment",
                    f"SETUPMAPPING not aligned to {align:#x}: {', '.join(bad) or 'len=0'}",
                    msg,
                    manager,
                )
            if body.moffset + body.len > self.window_size:
                self._fail(
                    "inside_window",
                    f"SETUPMAPPING [{body.moffset:#x}, "
                    f"{body.moffset + body.len:#x}) beyond the {self.window_size:#x}-byte "
                    "window",
                    msg,
                    manager,
                )
        elif msg.opcode == FUSE_REMOVEMAPPING:
            entries = list(body.entries)
            if body.count != len(entries) or body.count > REMOVEMAPPING_MAX_ENTRY:
                self._fail(
                    "removemapping_count",
                    f"count={body.count} with {len(entries)} "
                    f"entries (max {REMOVEMAPPING_MAX_ENTRY})",
                    msg,
                    manager,
                )
            for i, e in enumerate(entries):
                if e.moffset % align or e.len % align or e.len == 0:
                    self._fail(
                        "alignment",
                        f"REMOVEMAPPING entry {i} ({e.moffset:#x}, "
                        f"{e.len:#x}) not aligned to {align:#x}",
                        msg,
                        manager,
                    )
                if e.moffset + e.len > self.window_size:
                    self._fail(
                        "inside_window",
                        f"REMOVEMAPPING entry {i} ends at "
                        f"{e.moffset + e.len:#x}, beyond the window",
                        msg,
                        manager,
                    )

    # ---- DaxObserver ----------------------------------------------------------------------------
    def on_send(self, manager: DaxManager, msg: DaxMessage) -> None:
        self.check_message(msg, manager)
        policy = self._policy(manager)
        if policy == "osv" and msg.opcode == FUSE_SETUPMAPPING:
            first_empty = manager.accounting().mapped
            if msg.body.moffset != first_empty:
                self._fail(
                    "osv_stack",
                    f"new mapping at {msg.body.moffset:#x}, first empty "
                    f"chunk is at {first_empty:#x}",
                    msg,
                    manager,
                )
        if policy == "linux":
            if msg.opcode == FUSE_SETUPMAPPING:
                self._set_up.setdefault(id(manager), set()).add(msg.body.moffset)
            dev = manager.device
            for moff, length in msg.ranges():
                for p, plen in manager.pinned():
                    lo, hi = max(p, moff), min(p + plen, moff + length)
                    if lo >= hi:
                        continue
                    if msg.opcode == FUSE_SETUPMAPPING and all(
                        m is not None
                        and m.nodeid == msg.nodeid
                        and m.file_offset(a) == msg.body.foffset + (a - moff)
                        for a, _b, m in dev.segments(lo, hi - lo)
                    ):
                        continue  # the writable upgrade: same data at the same place
                    self._fail(
                        "linux_in_use",
                        f"range [{p:#x}, {p + plen:#x}) is in use and would be removed or remapped",
                        msg,
                        manager,
                    )

    def on_reply(self, manager: DaxManager, msg: DaxMessage, error: int) -> None:
        if error or msg.opcode != FUSE_SETUPMAPPING:
            return
        lo, hi = msg.body.moffset, msg.body.moffset + msg.body.len
        for other in self.managers:
            if other is manager or getattr(other, "unmounted", False):
                continue
            clash = [e for e in other.view() if e.moffset < hi and lo < e.end]
            if clash:
                self._fail(
                    "cross_manager_overlap",
                    f"{manager.sender} mapped [{lo:#x}, {hi:#x}) over live mappings of "
                    f"{other.sender}: {_fmt_view(clash)}",
                    msg,
                    manager,
                    other_view=_fmt_view(other.view()),
                )

    def on_window_access(
        self, manager: DaxManager, nodeid: int, foffset: int, moffset: int, length: int
    ) -> None:
        for start, end, m in manager.device.segments(moffset, length):
            want = foffset + (start - moffset)
            if m is None or m.nodeid != nodeid or m.file_offset(start) != want:
                now = (
                    "nothing"
                    if m is None
                    else (f"nodeid {m.nodeid} at file offset {m.file_offset(start):#x}")
                )
                self._fail(
                    "read_stale_range",
                    f"read of nodeid {nodeid} at {want:#x} served from window "
                    f"[{start:#x}, {end:#x}) which now maps {now}",
                    manager=manager,
                )
                return

    def on_read(
        self, manager: DaxManager, nodeid: int, offset: int, size: int, result: ReadResult
    ) -> None:
        self.reads_checked += 1
        data = result.data
        if len(data) > max(size, 0) or sum(s.length for s in result.segments) != len(data):
            self._fail(
                "read_bytes",
                f"read of {size} at {offset:#x} returned {len(data)} bytes "
                f"in segments {result.segments}",
                manager=manager,
            )
        if self.oracle is not None and data:
            expect = self.oracle(nodeid, offset, len(data))
            if expect != data:
                first = next(
                    (i for i, (a, b) in enumerate(zip(expect, data, strict=False)) if a != b),
                    min(len(expect), len(data)),
                )
                self._fail(
                    "read_bytes",
                    f"read of nodeid {nodeid} at {offset:#x} ({len(data)} bytes, via "
                    f"{result.source}) differs from the file at byte {offset + first:#x}",
                    manager=manager,
                )

    # ---- state checks -------------------------------------------------------------------------
    def _snapshot(self, m: DaxManager) -> dict[str, Any]:
        snap: dict[str, Any] = {"view": m.view()}
        free_list = getattr(m, "free_list", None)
        if callable(free_list):
            snap["free"] = free_list()
        return snap

    def check_state(self, manager: DaxManager | None = None) -> None:
        """Check every attached manager (or one) now; remembers the state for the policy
        checks that compare with the previous call."""
        for m in [manager] if manager is not None else list(self.managers):
            self._check_one(m)
        if manager is None and len(self.managers) > 1:
            live = [m for m in self.managers if not getattr(m, "unmounted", False)]
            for i, a in enumerate(live):
                for b in live[i + 1 :]:
                    for ea in a.view():
                        for eb in b.view():
                            if ea.moffset < eb.end and eb.moffset < ea.end:
                                self._fail(
                                    "cross_manager_overlap",
                                    f"{a.sender} {_fmt_view([ea])} overlaps "
                                    f"{b.sender} {_fmt_view([eb])}",
                                    manager=a,
                                )

    def _check_one(self, m: DaxManager) -> None:
        view = m.view()
        acc = m.accounting()
        if acc.mapped + acc.free != acc.total or acc.total > self.window_size:
            self._fail(
                "accounting",
                f"mapped {acc.mapped:#x} + free {acc.free:#x} != total "
                f"{acc.total:#x} (window {self.window_size:#x})",
                manager=m,
            )
        if sum(e.length for e in view) > acc.mapped:
            self._fail(
                "accounting",
                f"view holds {sum(e.length for e in view):#x} bytes, "
                f"more than the {acc.mapped:#x} counted as mapped",
                manager=m,
            )
        ordered = sorted(view, key=lambda e: e.moffset)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.moffset < a.end:
                self._fail("view_overlap", f"{_fmt_view([a])} overlaps {_fmt_view([b])}", manager=m)
        for e in ordered:
            if e.moffset < 0 or e.end > self.window_size:
                self._fail(
                    "inside_window", f"view entry {_fmt_view([e])} outside the window", manager=m
                )
        dev = m.device
        for e in ordered:
            for start, end, dm in dev.segments(e.moffset, e.length):
                want = e.foffset + (start - e.moffset)
                if dm is None or dm.nodeid != e.nodeid or dm.file_offset(start) != want:
                    found = (
                        "nothing"
                        if dm is None
                        else (f"nodeid {dm.nodeid} at {dm.file_offset(start):#x}")
                    )
                    self._fail(
                        "view_matches_device",
                        f"view says [{start:#x}, {end:#x}) maps "
                        f"nodeid {e.nodeid} at {want:#x}; the device maps {found}",
                        manager=m,
                    )
                    break
        if "no_duplicate_chunks" in self.enabled:
            seen: dict[tuple[int, int], int] = {}
            gran = 1 << (self.map_alignment or 12)
            for e in ordered:
                for off in range(
                    e.foffset, e.foffset + e.length, max(gran, e.length // 64 or gran)
                ):
                    key = (e.nodeid, off)
                    if key in seen:
                        self._fail(
                            "no_duplicate_chunks",
                            f"nodeid {e.nodeid} offset {off:#x} "
                            f"mapped at {seen[key]:#x} and in {_fmt_view([e])}",
                            manager=m,
                        )
                        break
                    seen[key] = e.moffset + (off - e.foffset)
        prev = self._prev.get(id(m))
        now = self._snapshot(m)
        policy = self._policy(m)
        if prev is not None and policy == "osv":
            self._check_stack(m, prev["view"], view)
        if prev is not None and policy == "linux" and "free" in prev:
            old, new = prev["free"], now["free"]
            # new == old[k:] + (ranges freed since), for some k ranges taken from the head;
            # each range taken was then set up at its offset, so old[:k] were all set up
            set_up = self._set_up.get(id(m), set())
            k_max = next((i for i, off in enumerate(old) if off not in set_up), len(old))
            if not any(old[k:] == new[: len(old) - k] for k in range(k_max + 1)):
                self._fail(
                    "linux_free_fifo",
                    f"free list went from {[hex(x) for x in old]} to {[hex(x) for x in new]}",
                    manager=m,
                )
        self._prev[id(m)] = now
        self._forgotten.pop(id(m), None)
        self._set_up.pop(id(m), None)

    def _check_stack(self, m: DaxManager, old: list[ViewEntry], new: list[ViewEntry]) -> None:
        forgotten = self._forgotten.get(id(m), set())
        new_set = set(new)
        kept = [e for e in old if e in new_set]
        kept_top = max((e.end for e in kept), default=0)
        new_by_start = {e.moffset: e for e in new}
        for e in old:
            if e in new_set or e.nodeid in forgotten:
                continue
            # gone or shrunk (or extended, when it was the top): what vanished must lie
            # above every mapping that stayed
            cur = new_by_start.get(e.moffset)
            if cur is not None and cur.nodeid == e.nodeid and cur.foffset == e.foffset:
                lost_from = cur.end if cur.length < e.length else None
            else:
                lost_from = e.moffset
            if lost_from is not None and lost_from < kept_top:
                self._fail(
                    "osv_stack",
                    f"{_fmt_view([e])} was evicted below the top of the "
                    f"stack (a kept mapping ends at {kept_top:#x})",
                    manager=m,
                )


# ---- captured traces --------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRecord:
    """One captured DAX request: who sent it (a connection / mount), its bytes, and the
    reply's error (0, a positive errno, or None if unknown). ``raw=None`` marks the
    sender's end (its session closed)."""

    sender: str
    raw: bytes | None
    error: int | None = 0


def check_trace(
    records: Iterable[TraceRecord], window_size: int, map_alignment: int | None = 12
) -> list[Violation]:
    """Check a captured trace: the message invariants, and two senders (mounts) holding
    live mappings of the same window bytes (each sender's view is what its own
    successful messages left mapped)."""
    checker = DaxChecker(window_size, map_alignment, raise_on_violation=False, policy=None)
    views: dict[str, ModelDevice] = {}
    for rec in records:
        if rec.raw is None:
            views.pop(rec.sender, None)
            continue
        try:
            msg = DaxMessage.from_bytes(rec.raw, sender=rec.sender)
        except FuseprotoError as e:
            checker.violations.append(
                Violation(
                    "removemapping_count" if "count" in str(getattr(e, "path", "")) else "decode",
                    f"undecodable: {e}",
                    raw=rec.raw,
                    sender=rec.sender,
                )
            )
            continue
        if msg.opcode not in (FUSE_SETUPMAPPING, FUSE_REMOVEMAPPING):
            continue
        checker.check_message(msg)
        if rec.error not in (0, None):
            continue
        mine = views.setdefault(
            rec.sender, ModelDevice(window_size, None, map_alignment, through_codec=False)
        )
        if msg.opcode == FUSE_SETUPMAPPING:
            lo, hi = msg.body.moffset, msg.body.moffset + msg.body.len
            for other, dev in views.items():
                if other == rec.sender:
                    continue
                clash = [x for x in dev.mappings() if x.moffset < hi and lo < x.end]
                if clash:
                    checker.violations.append(
                        Violation(
                            "cross_manager_overlap",
                            f"{rec.sender} mapped [{lo:#x}, {hi:#x}) over live mappings of {other}",
                            message=msg.describe(),
                            raw=rec.raw,
                            sender=rec.sender,
                            state={
                                "other": [(hex(c.moffset), hex(c.length), c.nodeid) for c in clash]
                            },
                        )
                    )
                    dev.release_range(lo, hi)  # report once: the bytes now belong to rec.sender
        mine.submit(msg)
    return checker.violations
