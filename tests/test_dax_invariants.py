"""Every DAX invariant can fail: each is fed a violation (and a near miss that must pass).

A check that never fires passes every test that runs it, so each entry of
``invariants.INVARIANTS`` has a case here that breaks exactly that invariant, through
the same doors a manager uses (``send``, ``window_read``, ``finish_read``, the state a
manager exposes) or :func:`check_trace` for captured traffic. ``test_every_invariant_has_a_case``
keeps the table complete when an invariant is added.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from fuseproto.dax.device import ModelDevice, RefusingDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import INVARIANTS, DaxChecker, TraceRecord, check_trace
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.manager import Accounting, DaxManager, ReadResult, Segment, ViewEntry
from fuseproto.dax.messages import FLAG_READ, removemapping, setupmapping

P = 4096
WINDOW = 16 * P
FILES = {2: bytes(range(256)) * (4 * P // 256), 3: b"\x33" * (4 * P)}


class Scripted(DaxManager):
    """A manager whose state the test sets: ``entries`` (its view), ``acc`` (its
    accounting; default: the view's bytes as mapped), ``pins`` and, when given,
    ``free`` (its free list, as LinuxDaxManager.free_list() reports it)."""

    def __init__(self, device, backend, *, policy: str = "scripted", sender: str = "") -> None:
        self.name = policy  # DaxChecker(policy="auto") picks the policy checks by name
        super().__init__(device, backend, sender=sender)
        self.entries: list[ViewEntry] = []
        self.acc: Accounting | None = None
        self.pins: list[tuple[int, int]] = []
        self.free: list[int] | None = None

    def read(self, nodeid, offset, size, *, fh=0):
        raise NotImplementedError

    def forget(self, nodeid):
        self.entries = [e for e in self.entries if e.nodeid != nodeid]

    def unmount(self):
        self.entries, self.unmounted = [], True

    def view(self):
        return sorted(self.entries, key=lambda e: e.moffset)

    def accounting(self):
        if self.acc is not None:
            return self.acc
        mapped = sum(e.length for e in self.entries)
        return Accounting(mapped, WINDOW - mapped, WINDOW)

    def pinned(self):
        return list(self.pins)

    def free_list(self):
        return list(self.free or [])


class World:
    """One window over FILES, a checker that collects, and helpers to set the device up
    behind the checker's back (what a manager would have done before)."""

    def __init__(self, enabled=None) -> None:
        self.files = FileStore(FILES)
        self.dev = ModelDevice(WINDOW, self.files)
        self.checker = DaxChecker(
            WINDOW,
            12,
            files=self.files,
            device=self.dev,
            enabled=enabled,
            raise_on_violation=False,
        )

    def manager(self, policy: str = "scripted", sender: str = "", device=None,
                **state) -> Scripted:
        m = Scripted(device or self.dev, self.files, policy=policy, sender=sender)
        for k, v in state.items():
            setattr(m, k, v)
        self.checker.attach(m)
        return m

    def map(self, nodeid: int, moffset: int, length: int, foffset: int = 0) -> ViewEntry:
        msg = setupmapping(
            nodeid, fh=0, foffset=foffset, length=length, flags=FLAG_READ, moffset=moffset
        )
        assert self.dev.submit(msg) == 0
        return ViewEntry(moffset, length, nodeid, foffset)

    def found(self) -> list[str]:
        return [v.invariant for v in self.checker.violations]


def _setup(moffset: int, length: int = P, foffset: int = 0, nodeid: int = 2):
    return setupmapping(
        nodeid, fh=0, foffset=foffset, length=length, flags=FLAG_READ, moffset=moffset
    )


# Each case takes ``bad`` and returns the invariants it tripped: with ``bad`` it breaks
# exactly the named invariant, without it it is the nearest correct thing.


def _alignment_setup(bad: bool) -> list[str]:
    w = World()
    w.manager().send(_setup(P + (P // 2 if bad else 0)))
    return w.found()


def _alignment_remove(bad: bool) -> list[str]:
    w = World()
    w.manager().send(removemapping(2, [(P, P // 2 if bad else P)]))
    return w.found()


def _inside_window_setup(bad: bool) -> list[str]:
    w = World()
    w.checker.check_message(_setup(WINDOW - P, 2 * P if bad else P))
    return w.found()


def _inside_window_remove(bad: bool) -> list[str]:
    w = World()
    w.checker.check_message(removemapping(2, [(WINDOW if bad else WINDOW - P, P)]))
    return w.found()


def _removemapping_count(bad: bool) -> list[str]:
    w = World()
    w.manager().send(removemapping(2, [(0, P)], count=2 if bad else None))
    return w.found()


def _removemapping_too_many(bad: bool) -> list[str]:
    w = World()
    w.checker.check_message(removemapping(2, [(0, P)] * (257 if bad else 256)))
    return w.found()


def _view_overlap(bad: bool) -> list[str]:
    w = World()
    w.map(2, 0, 3 * P)  # file 2 [0, 3P) at window 0: both entries agree with the device
    second = ViewEntry(P, 2 * P, 2, P) if bad else w.map(2, 3 * P, P, 3 * P)
    w.manager(entries=[ViewEntry(0, 2 * P, 2, 0), second])
    w.checker.check_state()
    return w.found()


def _view_matches_device(bad: bool) -> list[str]:
    w = World()
    w.map(2, 0, P)
    w.manager(entries=[ViewEntry(0, P, 3 if bad else 2, 0)])
    w.checker.check_state()
    return w.found()


def _cross_manager_overlap(bad: bool) -> list[str]:
    w = World()
    mine = w.map(2, 0, P)
    other = w.map(2, P, P, P)
    w.manager(sender="a", entries=[mine])
    w.manager(sender="b", entries=[mine if bad else other])
    w.checker.check_state()
    return w.found()


def _cross_manager_overlap_on_reply(bad: bool) -> list[str]:
    w = World()
    w.manager(sender="a", entries=[w.map(2, 0, P)])
    b = w.manager(sender="b")
    b.send(_setup(0 if bad else P, foffset=0, nodeid=3))
    return w.found()


def _accounting_sum(bad: bool) -> list[str]:
    w = World()
    w.manager(acc=Accounting(P, WINDOW - P - (P if bad else 0), WINDOW))
    w.checker.check_state()
    return w.found()


def _accounting_view(bad: bool) -> list[str]:
    w = World()
    e = w.map(2, 0, 2 * P)
    w.manager(
        entries=[e], acc=Accounting(P if bad else 2 * P, WINDOW - (P if bad else 2 * P), WINDOW)
    )
    w.checker.check_state()
    return w.found()


def _read_bytes_data(bad: bool) -> list[str]:
    w = World()
    m = w.manager()
    data = FILES[2][P : P + 100]
    if bad:
        data = data[:50] + b"\xff" + data[51:]
    m.finish_read(2, P, 100, ReadResult(data, [Segment(P, 100, None)]))
    return w.found()


def _read_bytes_length(bad: bool) -> list[str]:
    w = World()
    m = w.manager()
    data = FILES[2][:100]
    m.finish_read(2, 0, 100, ReadResult(data, [Segment(0, 90 if bad else 100, None)]))
    return w.found()


def _read_stale_range(bad: bool) -> list[str]:
    w = World()
    w.map(3 if bad else 2, 0, P)
    m = w.manager()
    m.window_read(0, P, nodeid=2, foffset=0)
    return w.found()


def _osv_stack_new_mapping(bad: bool) -> list[str]:
    w = World()
    m = w.manager("osv", entries=[w.map(2, 0, P)])
    m.send(_setup(2 * P if bad else P, foffset=P))
    return w.found()


def _osv_stack_eviction(bad: bool) -> list[str]:
    w = World()
    low, top = w.map(2, 0, P), w.map(3, P, P)
    m = w.manager("osv", entries=[low, top])
    m.entries = [top] if bad else [low]  # evict below the top / the top
    w.checker.check_state()
    return w.found()


def _linux_in_use_remove(bad: bool) -> list[str]:
    w = World()
    m = w.manager("linux", entries=[w.map(2, 0, P), w.map(3, P, P)], pins=[(0, P)])
    m.send(removemapping(2 if bad else 3, [(0 if bad else P, P)]))
    return w.found()


def _linux_in_use_remap(bad: bool) -> list[str]:
    w = World()
    m = w.manager("linux", entries=[w.map(2, 0, P)], pins=[(0, P)])
    # remapping a range in use is allowed only as the writable upgrade of the same data
    m.send(_setup(0, nodeid=3 if bad else 2))
    return w.found()


def _linux_free_fifo(bad: bool) -> list[str]:
    w = World()
    m = w.manager("linux", free=[2 * P, 3 * P, 4 * P])
    if bad:  # 4P handed out from the middle of the list
        m.send(_setup(4 * P))
        m.free = [2 * P, 3 * P]
    else:  # the head taken (and set up there), then 0 freed to the tail
        m.send(_setup(2 * P))
        m.free = [3 * P, 4 * P, 0]
    w.checker.check_state()
    return w.found()


def _linux_free_fifo_reorder(bad: bool) -> list[str]:
    w = World()
    m = w.manager("linux", free=[0, P, 2 * P])
    # nothing taken, but the order changed: not a FIFO
    m.free = [P, 0, 2 * P] if bad else [0, P, 2 * P, 3 * P]
    w.checker.check_state()
    return w.found()


def _decode(bad: bool) -> list[str]:
    raw = _setup(0).raw
    if bad:
        raw = raw[:-8]  # the body cut short, fuse_in_header.len fixed up
        raw = len(raw).to_bytes(4, "little") + raw[4:]
    return [v.invariant for v in check_trace([TraceRecord("a", raw)], WINDOW)]


def _cross_manager_overlap_trace(bad: bool) -> list[str]:
    recs = [
        TraceRecord("a", _setup(0).raw),
        TraceRecord("b", _setup(0 if bad else P, nodeid=3).raw),
    ]
    return [v.invariant for v in check_trace(recs, WINDOW)]


def _no_duplicate_chunks(bad: bool) -> list[str]:
    w = World(enabled={"no_duplicate_chunks"})
    first = w.map(2, 0, P)
    second = w.map(2, P, P, 0 if bad else P)
    w.manager(entries=[first, second])
    w.checker.check_state()
    return w.found()


def _past_eof(bad: bool) -> list[str]:
    w = World()
    w.manager().send(_setup(0, foffset=len(FILES[2]) if bad else len(FILES[2]) - P))
    return w.found()


def _read(m: Scripted, offset: int, size: int) -> None:
    data = FILES[2][offset : offset + size]
    m.finish_read(2, offset, size, ReadResult(data, [Segment(offset, len(data), None)]))


def _miss_span_outside(bad: bool) -> list[str]:
    w = World()
    m = w.manager(chunk_size=P)
    m.send(_setup(P, foffset=2 * P if bad else 0))  # a read of [0, 100) needs chunk 0 only
    _read(m, 0, 100)
    return w.found()


def _miss_span_too_much(bad: bool) -> list[str]:
    w = World()
    m = w.manager(chunk_size=P)
    m.send(_setup(0, foffset=P))
    if bad:  # the same chunk mapped twice for one read
        m.send(_setup(P, foffset=P))
    _read(m, P + 10, P - 20)
    return w.found()


def _miss_span_write(bad: bool) -> list[str]:
    w = World()
    m = w.manager(chunk_size=P)
    m.send(_setup(0, length=2 * P if bad else P, foffset=0))
    w.checker.note_write(m, 2, 100, 200)
    return w.found()


def _unit_alignment(bad: bool) -> list[str]:
    w = World()
    m = w.manager(chunk_size=2 * P)
    m.send(_setup(P if bad else 2 * P, length=2 * P))  # 4 KiB-aligned, not chunk-aligned
    return w.found()


def _unit_alignment_remove(bad: bool) -> list[str]:
    w = World()
    m = w.manager(range_size=2 * P)
    m.send(removemapping(2, [(0, 2 * P), (2 * P, P if bad else 2 * P)]))
    return w.found()


def _writable_flag(bad: bool) -> list[str]:
    w = World()
    w.map(2, 0, P)  # read-only on the device
    w.manager(entries=[ViewEntry(0, P, 2, 0, writable=bad)])
    w.checker.check_state()
    return w.found()


def _refused_request(bad: bool) -> list[str]:
    w = World()
    w.map(2, 0, P)  # an old mapping left on the device (OSv evicts without a message)
    dev = RefusingDevice(w.dev)
    m = w.manager(device=dev)
    dev.refuse(errno.EIO)
    assert m.send(_setup(0)) == errno.EIO
    if bad:  # the manager records the mapping the device refused
        m.entries = [ViewEntry(0, P, 2, 0)]
    w.checker.check_state()
    return w.found()


def _in_use_leak(bad: bool) -> list[str]:
    w = World()
    m = w.manager(entries=[w.map(2, 0, P)], pins=[(0, P)])
    w.checker.check_in_use(m, [] if bad else [0])
    return w.found()


class _OneBatch(LinuxDaxManager):
    """Linux with its REMOVEMAPPING batching broken: one message for every range."""

    def _removemapping_list(self, nodeid, ranges):
        return self.send_removemapping(nodeid, [(r.window_offset, r.length) for r in ranges])


def _removemapping_hundreds(bad: bool) -> list[str]:
    """Forgetting an inode with 300 ranges: correct batches of at most 256 entries."""
    files = FileStore({2: bytes(300 * P)})
    dev = ModelDevice(300 * P, files)
    mgr = (_OneBatch if bad else LinuxDaxManager)(dev, files, range_shift=12,
                                                   background="off")
    checker = DaxChecker.for_manager(mgr, raise_on_violation=False)
    assert len(mgr.read(2, 0, 300 * P).data) == 300 * P and len(mgr.view()) == 300
    mgr.forget(2)
    checker.check_state()
    return [v.invariant for v in checker.violations]


def _invalid_accepted(bad: bool) -> list[str]:
    w = World()
    msg = _setup(P + 1)  # misaligned: a device must refuse it
    w.checker.check_refused(msg, 0 if bad else w.dev.submit(msg), "moffset misaligned", False)
    return w.found()


def _invalid_accepted_changed(bad: bool) -> list[str]:
    w = World()
    msg = removemapping(0, [(0, P)], count=2)
    w.checker.check_refused(msg, errno.EINVAL, "count is not the entries", bad)
    return w.found()


CASES: dict[str, list[Callable[[bool], list[str]]]] = {
    "alignment": [_alignment_setup, _alignment_remove],
    "inside_window": [_inside_window_setup, _inside_window_remove],
    "removemapping_count": [_removemapping_count, _removemapping_too_many,
                            _removemapping_hundreds],
    "view_overlap": [_view_overlap],
    "view_matches_device": [_view_matches_device],
    "cross_manager_overlap": [
        _cross_manager_overlap,
        _cross_manager_overlap_on_reply,
        _cross_manager_overlap_trace,
    ],
    "accounting": [_accounting_sum, _accounting_view],
    "read_bytes": [_read_bytes_data, _read_bytes_length],
    "read_stale_range": [_read_stale_range],
    "osv_stack": [_osv_stack_new_mapping, _osv_stack_eviction],
    "linux_in_use": [_linux_in_use_remove, _linux_in_use_remap],
    "linux_free_fifo": [_linux_free_fifo, _linux_free_fifo_reorder],
    "decode": [_decode],
    "no_duplicate_chunks": [_no_duplicate_chunks],
    "past_eof": [_past_eof],
    "miss_span": [_miss_span_outside, _miss_span_too_much, _miss_span_write],
    "unit_alignment": [_unit_alignment, _unit_alignment_remove],
    "writable_flag": [_writable_flag],
    "refused_request": [_refused_request],
    "in_use_leak": [_in_use_leak],
    "invalid_accepted": [_invalid_accepted, _invalid_accepted_changed],
}


def test_every_invariant_has_a_case():
    assert set(CASES) == set(INVARIANTS)


@pytest.mark.parametrize(
    "invariant, case",
    [(name, case) for name, cases in CASES.items() for case in cases],
    ids=lambda x: x if isinstance(x, str) else x.__name__.lstrip("_"),
)
def test_invariant_fails_on_its_violation_only(invariant, case):
    assert case(False) == []
    assert case(True) == [invariant]


def test_a_setup_that_failed_in_a_trace_holds_no_window_bytes():
    recs = [
        TraceRecord("a", _setup(0).raw, errno.EIO),
        TraceRecord("b", _setup(0, nodeid=3).raw),
    ]
    assert check_trace(recs, WINDOW) == []
