"""Black-box invariants of a DAX window manager.

Every check here looks only at what a manager *sends* (its SETUPMAPPING / REMOVEMAPPING
messages and the replies), at what its reads *return*, at the device's state and at what
any manager exposes through the :class:`~fuseproto.dax.manager.DaxManager` interface
(``view()``, ``accounting()``, ``pinned()``). So they apply to any manager plugged in as
``module:factory``, and the message checks apply to a captured trace of real traffic
(:func:`check_trace`).

A violation is a :class:`Violation` naming the invariant, the message that broke it and
the state around it; :class:`DaxChecker` raises it as :class:`InvariantViolation` or
collects it. The invariants (``INVARIANTS`` maps each name to its one-line statement)
and the violation types live in :mod:`.violations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from fuseproto.errors import FuseprotoError

from .device import ModelDevice, WindowDevice
from .manager import DaxManager, ReadResult, ViewEntry
from .messages import (
    FLAG_WRITE,
    FUSE_REMOVEMAPPING,
    FUSE_SETUPMAPPING,
    REMOVEMAPPING_MAX_ENTRY,
    DaxMessage,
)
from .policy_rules import free_list_follows_fifo, stack_evictions
from .violations import (
    DEFAULT_INVARIANTS,
    INVARIANTS,
    InvariantViolation,
    Violation,
    fmt_view,
    policy_unit,
)

__all__ = [
    "DEFAULT_INVARIANTS",
    "INVARIANTS",
    "DaxChecker",
    "InvariantViolation",
    "TraceRecord",
    "Violation",
    "check_trace",
    "policy_unit",
]


_LENGTH = attrgetter("length")
_MOFFSET = attrgetter("moffset")  # a sort key in C: a full check sorts every view


def _file_size(manager: Any, nodeid: int) -> int | None:  # None: the backend cannot say
    try:
        return int(manager.backend.file_size(nodeid))
    except Exception:  # noqa: BLE001 -- a backend without the node: nothing to judge
        return None


class DaxChecker:
    """Checks managers against :data:`INVARIANTS`.

    Attach it to one or more managers sharing one device (``checker.attach(m1, m2)``);
    it then sees every message and read. Call :meth:`check_state` after each operation
    (a Hypothesis ``@invariant`` does). ``oracle(nodeid, offset, size)`` returns the
    file's true bytes (default: from a :class:`~fuseproto.dax.host.FileStore` given as
    ``files``). ``raise_on_violation=False`` collects into :attr:`violations`.

    ``full_every`` (default 1): the state checks (view against device, overlap,
    accounting, the policies' stack / FIFO rules) run at every n-th ``check_state()``
    (``full=True`` forces one); the message, access and refusal checks at every one. The
    policy checks compare with the previous *full* check, sound over several steps (a
    mapping kept throughout lies below all that vanished; ranges leave the Linux free
    list only from its head).
    """

    def __init__(
        self,
        window_size: int,
        map_alignment: int | None = 12,
        *,
        files: Any = None,
        oracle: Callable[[int, int, int], bytes] | None = None,
        matches: Callable[[int, int, bytes], bool] | None = None,
        device: WindowDevice | None = None,
        policy: str | None = "auto",
        enabled: Iterable[str] | None = None,
        raise_on_violation: bool = True,
        full_every: int = 1,
    ) -> None:
        self.window_size = window_size
        self.map_alignment = map_alignment
        self.device = device
        if oracle is None and files is not None and hasattr(files, "data"):
            oracle = lambda n, o, s: bytes(files.data(n)[o : o + s])  # noqa: E731
        self.oracle = oracle
        # matches(nodeid, offset, data): True when data is the file's bytes there (False:
        # ask the oracle); a backend that can compare without copying the file's bytes.
        self.matches = matches
        self.policy = policy
        self.enabled = DEFAULT_INVARIANTS if enabled is None else frozenset(enabled)
        if unknown := self.enabled - INVARIANTS.keys():
            raise ValueError(f"unknown invariants {sorted(unknown)}")
        self.raise_on_violation = raise_on_violation
        self.violations: list[Violation] = []
        self.managers: list[DaxManager] = []
        self._traits: dict[int, tuple[int | None, str | None, int]] = {}  # unit, policy, granule
        self._prev: dict[int, dict[str, Any]] = {}
        self._forgotten: dict[int, set[int]] = {}
        # (Linux) window offsets each manager sent a SETUPMAPPING for since its last
        # snapshot: a range leaves the free list's head only to be set up there.
        self._set_up: dict[int, set[int]] = {}
        # (OSv) window ranges set up since the last full check: a mapping found in both
        # snapshots was kept throughout only if none of them covered it again.
        self._remapped: dict[int, list[tuple[int, int]]] = {}
        self.messages_checked = 0
        self.reads_checked = 0
        self.full_every = max(1, full_every)
        self.full_checks = 0
        self._calls = 0
        # SETUPMAPPINGs sent since the manager's last read / write / check_state: the
        # mappings that access caused (miss_span).
        self._pending: dict[int, list[DaxMessage]] = {}
        # Refused SETUPMAPPINGs since the last check_state, with the view entries that
        # covered their range when the refusal came (refused_request).
        self._refused: dict[int, list[tuple[DaxMessage, list[ViewEntry]]]] = {}

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

    def detach(self) -> None:
        """Stop watching: each manager forgets this checker (which keeps its list). A run
        calls it at its end: a manager and its observer refer to each other, and without
        it every object of the run waits for the cyclic garbage collector."""
        for m in self.managers:
            m.observers[:] = [o for o in m.observers if o is not self]

    def note_forget(self, manager: DaxManager, nodeid: int) -> None:
        """Tell the checker a node was forgotten (its mappings may leave the view from
        anywhere in the stack)."""
        self._forgotten.setdefault(id(manager), set()).add(nodeid)

    def _traits_of(self, manager: DaxManager) -> tuple[int | None, str | None, int]:
        """(:func:`policy_unit`, policy, granule) of a manager, asked once (all are fixed
        when it is built; this runs for every message). The granule is the least common
        multiple of ``2**map_alignment`` and the unit: a SETUPMAPPING whose fields are all
        multiples of it passes both alignment checks at once."""
        got = self._traits.get(id(manager))
        if got is None:
            unit = policy_unit(manager)
            align = 1 << (self.map_alignment or 0)
            got = self._traits[id(manager)] = (unit, self._policy(manager),
                                               math.lcm(align, unit) if unit else align)
        return got

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
            state.setdefault("view", fmt_view(manager.view()))
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
    # Bodies are construct Containers: item access (dict, in C) instead of attributes on
    # these paths, which run for every message.
    def check_message(self, msg: DaxMessage, manager: DaxManager | None = None) -> None:
        self.messages_checked += 1
        align = 1 << (self.map_alignment or 0)
        body = msg.body
        if msg.opcode == FUSE_SETUPMAPPING:
            foffset, moffset, length = body["foffset"], body["moffset"], body["len"]
            if foffset % align or moffset % align or length % align or length == 0:
                bad = [f"{name}={v:#x}" for name, v in (("foffset", foffset),
                       ("moffset", moffset), ("len", length)) if v % align]
                self._fail("alignment", f"SETUPMAPPING not aligned to {align:#x}: "
                           f"{', '.join(bad) or 'len=0'}", msg, manager)
            if moffset + length > self.window_size:
                self._fail("inside_window", f"SETUPMAPPING [{moffset:#x}, "
                           f"{moffset + length:#x}) beyond the {self.window_size:#x}-byte "
                           "window", msg, manager)
        elif msg.opcode == FUSE_REMOVEMAPPING:
            entries = body["entries"]
            count = body["count"]
            if count != len(entries) or count > REMOVEMAPPING_MAX_ENTRY:
                self._fail("removemapping_count", f"count={count} with {len(entries)} "
                           f"entries (max {REMOVEMAPPING_MAX_ENTRY})", msg, manager)
            window = self.window_size
            for i, e in enumerate(entries):
                moffset, length = e["moffset"], e["len"]
                if moffset % align or length % align or length == 0:
                    self._fail("alignment", f"REMOVEMAPPING entry {i} ({moffset:#x}, "
                               f"{length:#x}) not aligned to {align:#x}", msg, manager)
                if moffset + length > window:
                    self._fail("inside_window", f"REMOVEMAPPING entry {i} ends at "
                               f"{moffset + length:#x}, beyond the window", msg, manager)

    # ---- DaxObserver ----------------------------------------------------------------------------
    def on_send(self, manager: DaxManager, msg: DaxMessage) -> None:
        got = self._traits.get(id(manager))
        unit, policy, gran = got if got is not None else self._traits_of(manager)
        body = msg.body
        setup = msg.opcode == FUSE_SETUPMAPPING
        if setup:
            foffset, moffset, length = body["foffset"], body["moffset"], body["len"]
            if (foffset % gran or moffset % gran or length % gran or not length
                    or moffset + length > self.window_size):
                self.check_message(msg, manager)  # which check fails, and its report
                if unit is not None:
                    self._check_unit(msg, manager, unit)
            else:  # every alignment, unit and window check passes
                self.messages_checked += 1
            pending = self._pending.get(id(manager))
            if pending is None:
                self._pending[id(manager)] = [msg]
            else:
                pending.append(msg)
            try:  # _file_size(manager, msg.nodeid), without the call
                size: int | None = int(manager.backend.file_size(msg.nodeid))
            except Exception:  # noqa: BLE001 -- a backend without the node: nothing to judge
                size = None
            if size is not None and foffset >= size:
                self._fail("past_eof", f"SETUPMAPPING of nodeid {msg.nodeid} at file offset "
                           f"{foffset:#x}, at or past its end ({size:#x} bytes)", msg, manager)
            if policy == "osv":
                self._remapped.setdefault(id(manager), []).append((moffset, moffset + length))
                first_empty = manager.accounting().mapped
                if moffset != first_empty:
                    self._fail("osv_stack", f"new mapping at {moffset:#x}, first empty chunk "
                               f"is at {first_empty:#x}", msg, manager)
        else:
            self.check_message(msg, manager)
            if unit is not None:
                self._check_unit(msg, manager, unit)
        if policy == "linux":
            if setup:
                set_up = self._set_up.get(id(manager))
                if set_up is None:
                    set_up = self._set_up[id(manager)] = set()
                set_up.add(moffset)
                ranges = [(moffset, length)]
            else:
                ranges = msg.ranges()
            if pinned := manager.pinned_in(ranges):  # only what the message touches
                self._check_in_use_ranges(manager, msg, setup, ranges, pinned)

    def _check_in_use_ranges(self, manager: DaxManager, msg: DaxMessage, setup: bool,
                             ranges: list[tuple[int, int]], pinned: list[tuple[int, int]]) -> None:
        dev = manager.device
        if setup:
            moff, length = ranges[0]
            # A range in use is mapped: a SETUPMAPPING where the device maps nothing
            # cannot remap one.
            segs = dev.segments(moff, length)
            if segs[0][2] is None if len(segs) == 1 else all(m is None for *_, m in segs):
                return
        for moff, length in ranges:
            for p, plen in pinned:
                lo, hi = max(p, moff), min(p + plen, moff + length)
                if lo >= hi:
                    continue
                if setup and all(
                    m is not None
                    and m.nodeid == msg.nodeid
                    and m.file_offset(a) == msg.body["foffset"] + (a - moff)
                    for a, _b, m in dev.segments(lo, hi - lo)
                ):
                    continue  # the writable upgrade: same data at the same place
                self._fail(
                    "linux_in_use",
                    f"range [{p:#x}, {p + plen:#x}) is in use and would be removed or remapped",
                    msg,
                    manager,
                )

    def _check_unit(self, msg: DaxMessage, manager: DaxManager, unit: int) -> None:
        b = msg.body
        if msg.opcode == FUSE_SETUPMAPPING:
            f, m, n = b["foffset"], b["moffset"], b["len"]
            if not (f % unit or m % unit or n % unit):
                return
            bad = [f"{k}={v:#x}" for k, v in (("foffset", f), ("moffset", m), ("len", n))
                   if v % unit]
        else:
            bad = [f"entry ({e['moffset']:#x}, {e['len']:#x})" for e in b["entries"]
                   if e["moffset"] % unit or e["len"] % unit]
        if bad:
            self._fail("unit_alignment", f"not a multiple of the policy's unit {unit:#x}: "
                       f"{', '.join(bad[:4])}", msg, manager)

    def on_reply(self, manager: DaxManager, msg: DaxMessage, error: int) -> None:
        if msg.opcode != FUSE_SETUPMAPPING or not (error or self._refused
                                                   or len(self.managers) > 1):
            return  # accepted, no refusal to forget, no other manager to clash with
        b = msg.body
        lo, hi = b["moffset"], b["moffset"] + b["len"]
        if error:
            if "refused_request" in self.enabled:
                covering = [e for e in manager.view() if e.moffset < hi and lo < e.end]
                self._refused.setdefault(id(manager), []).append((msg, covering))
            return
        refused = self._refused.get(id(manager))
        if refused:  # asked again and accepted: no longer a refused mapping
            key = (msg.nodeid, b["foffset"], b["len"], lo)
            refused[:] = [r for r in refused
                          if (r[0].nodeid, r[0].body["foffset"], r[0].body["len"],
                              r[0].body["moffset"]) != key]
        if len(self.managers) < 2:
            return
        for other in self.managers:
            if other is manager or getattr(other, "unmounted", False):
                continue
            clash = [e for e in other.view() if e.moffset < hi and lo < e.end]
            if clash:
                self._fail(
                    "cross_manager_overlap",
                    f"{manager.sender} mapped [{lo:#x}, {hi:#x}) over live mappings of "
                    f"{other.sender}: {fmt_view(clash)}",
                    msg,
                    manager,
                    other_view=fmt_view(other.view()),
                )

    def on_window_access(
        self, manager: DaxManager, nodeid: int, foffset: int, moffset: int, length: int
    ) -> None:
        for start, end, m in manager.device.segments(moffset, length):
            want = foffset + (start - moffset)
            if m is None or m.nodeid != nodeid or m.foffset + (start - m.moffset) != want:
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
        if pending := self._pending.pop(id(manager), None):
            end = offset + max(size, 0)
            if getattr(manager, "aggressive", False):
                end = 1 << 64
            self._check_span(manager, nodeid, offset, end, pending)
        data = result.data
        if len(data) > max(size, 0) or sum(map(_LENGTH, result.segments)) != len(data):
            self._fail(
                "read_bytes",
                f"read of {size} at {offset:#x} returned {len(data)} bytes "
                f"in segments {result.segments}",
                manager=manager,
            )
        if self.oracle is not None and data and (self.matches is None
                                                 or not self.matches(nodeid, offset, data)):
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

    def note_write(self, manager: DaxManager, nodeid: int, offset: int, length: int) -> None:
        """A write of ``length`` bytes at ``offset`` just ended: its SETUPMAPPINGs are
        judged like a read's (miss_span)."""
        if pending := self._pending.pop(id(manager), None):
            self._check_span(manager, nodeid, offset, offset + length, pending)

    def _check_span(self, manager: DaxManager, nodeid: int, offset: int, end: int,
                    pending: list[DaxMessage]) -> None:
        if "miss_span" not in self.enabled:
            return
        size = _file_size(manager, nodeid)
        if size is not None:
            end = min(end, size)
        if (unit := self._traits_of(manager)[0]) is None:  # no unit said: its policy is its own
            return
        lo = offset // unit * unit
        hi = max(-(-end // unit) * unit, lo)
        # The writable upgrade re-sends a mapping already there: not a new one.
        new = pending
        for m in pending:
            if m.body["flags"] & FLAG_WRITE:
                there = {(e.moffset, e.nodeid, e.foffset) for e in manager.view()}
                new = [m for m in pending if not (m.body["flags"] & FLAG_WRITE and (
                    m.body["moffset"], m.nodeid, m.body["foffset"]) in there)]
                break
        outside: list[DaxMessage] = []
        total = 0
        for m in new:  # one pass, no generator per access
            b = m.body
            f, n = b["foffset"], b["len"]
            total += n
            if m.nodeid != nodeid or f < lo or f + n > hi:
                outside.append(m)
        if outside or total > hi - lo:
            self._fail(
                "miss_span",
                f"an access of nodeid {nodeid} [{offset:#x}, {end:#x}) needs file units "
                f"[{lo:#x}, {hi:#x}) (unit {unit:#x}) and caused {len(new)} SETUPMAPPING(s) "
                f"of {total:#x} bytes"
                + (f"; outside: {outside[0].describe()}" if outside else ""),
                outside[0] if outside else new[-1],
                manager,
            )

    def check_refused(self, msg: DaxMessage, error: int, why: str, changed: bool) -> None:
        """invalid_accepted: ``msg`` (invalid: ``why``) got ``error``; ``changed``: the
        window changed meanwhile."""
        if not error or changed:
            self._fail("invalid_accepted", f"{why}: answered {error}, window changed: {changed}",
                       msg)

    def check_in_use(self, manager: DaxManager, held: Iterable[int]) -> None:
        """in_use_leak: the window offsets of the ranges the caller holds (pins) are
        exactly the ranges the manager reports in use."""
        want = set(held)
        got = {p for p, _n in manager.pinned()}
        if got != want:
            self._fail(
                "in_use_leak",
                f"ranges in use {sorted(hex(x) for x in got)}, the callers hold "
                f"{sorted(hex(x) for x in want)}",
                manager=manager,
            )

    # ---- state checks -------------------------------------------------------------------------
    def _snapshot(self, m: DaxManager, view: list[ViewEntry] | None = None) -> dict[str, Any]:
        snap: dict[str, Any] = {"view": m.view() if view is None else view}
        free_list = getattr(m, "free_list", None)
        if callable(free_list):
            snap["free"] = free_list()
        return snap

    def check_state(self, manager: DaxManager | None = None, *, full: bool | None = None) -> None:
        """Check every attached manager (or one) now; remembers the state for the policy
        checks that compare with the previous full check (see ``full_every``)."""
        self._calls += 1
        if full is None:
            full = self._calls % self.full_every == 0
        if not full and manager is None:  # the per-step checks: only pending refusals
            self._pending.clear()  # (what the last access caused is judged already)
            if self._refused:
                for m in list(self.managers):
                    refused = self._refused.pop(id(m), None)
                    if refused:
                        self._check_refused(m, refused)
            return
        for m in [manager] if manager is not None else list(self.managers):
            self._pending.pop(id(m), None)
            refused = self._refused.pop(id(m), None)
            if refused:
                self._check_refused(m, refused)
            if full:
                self._check_one(m)
        if not full:
            return
        self.full_checks += 1
        if manager is None and len(self.managers) > 1:
            live = [m for m in self.managers if not getattr(m, "unmounted", False)]
            views = [m.view() for m in live]  # each once, not once per entry of another
            for i, a in enumerate(live):
                for j, b in enumerate(live[i + 1 :], i + 1):
                    for ea in views[i]:
                        for eb in views[j]:
                            if ea.moffset < eb.end and eb.moffset < ea.end:
                                self._fail(
                                    "cross_manager_overlap",
                                    f"{a.sender} {fmt_view([ea])} overlaps "
                                    f"{b.sender} {fmt_view([eb])}",
                                    manager=a,
                                )

    def _check_refused(self, m: DaxManager,
                       refused: list[tuple[DaxMessage, list[ViewEntry]]]) -> None:
        view = m.view()
        for msg, before in refused:
            b = msg.body
            lo, hi = b.moffset, b.moffset + b.len
            for e in view:
                if e.end <= lo or hi <= e.moffset or e in before or e.nodeid != msg.nodeid:
                    continue
                if e.foffset - e.moffset == b.foffset - b.moffset:
                    self._fail(
                        "refused_request",
                        f"the device refused {msg.describe()}, yet the view holds "
                        f"{fmt_view([e])}",
                        msg,
                        m,
                    )

    def _check_one(self, m: DaxManager) -> None:
        view = m.view()
        acc = m.accounting()
        if acc.mapped + acc.free != acc.total or acc.total > self.window_size:
            self._fail("accounting", f"mapped {acc.mapped:#x} + free {acc.free:#x} != total "
                       f"{acc.total:#x} (window {self.window_size:#x})", manager=m)
        if (held := sum(map(_LENGTH, view))) > acc.mapped:
            self._fail("accounting", f"view holds {held:#x} bytes, more than the "
                       f"{acc.mapped:#x} counted as mapped", manager=m)
        ordered = sorted(view, key=_MOFFSET)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.moffset < a.end:
                self._fail("view_overlap", f"{fmt_view([a])} overlaps {fmt_view([b])}", manager=m)
        for e in ordered:
            if e.moffset < 0 or e.end > self.window_size:
                self._fail(
                    "inside_window", f"view entry {fmt_view([e])} outside the window", manager=m
                )
        dev = m.device
        for e in ordered:
            for start, end, dm in dev.segments(e.moffset, e.length):
                want = e.foffset + (start - e.moffset)
                if dm is not None and bool(dm.flags & FLAG_WRITE) != e.writable:
                    self._fail(
                        "writable_flag",
                        f"view says [{start:#x}, {end:#x}) is "
                        f"{'writable' if e.writable else 'read-only'}; the device maps it "
                        f"with flags {dm.flags:#x}",
                        manager=m,
                    )
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
                            f"mapped at {seen[key]:#x} and in {fmt_view([e])}",
                            manager=m,
                        )
                        break
                    seen[key] = e.moffset + (off - e.foffset)
        prev = self._prev.get(id(m))
        now = self._snapshot(m, view)
        policy = self._policy(m)
        if prev is not None and policy == "osv":
            self._check_stack(m, prev["view"], view)
        if prev is not None and policy == "linux" and "free" in prev:
            old, new = prev["free"], now["free"]
            if not free_list_follows_fifo(old, new, self._set_up.get(id(m), ())):
                self._fail(
                    "linux_free_fifo",
                    f"free list went from {[hex(x) for x in old]} to {[hex(x) for x in new]}",
                    manager=m,
                )
        self._prev[id(m)] = now
        self._forgotten.pop(id(m), None)
        self._set_up.pop(id(m), None)
        self._remapped.pop(id(m), None)

    def _check_stack(self, m: DaxManager, old: list[ViewEntry], new: list[ViewEntry]) -> None:
        for e, kept_top in stack_evictions(old, new, self._forgotten.get(id(m), ()),
                                           self._remapped.get(id(m), [])):
            self._fail("osv_stack", f"{fmt_view([e])} was evicted below the top of the "
                       f"stack (a kept mapping ends at {kept_top:#x})", manager=m)


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
