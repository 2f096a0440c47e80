"""LinuxDaxManager: the decisions of fs/fuse/dax.c, one scenario each."""

from __future__ import annotations

import errno

import pytest

from fuseproto.dax.device import ModelDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import DaxChecker
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.messages import (
    FH_NONE,
    FLAG_READ,
    FLAG_WRITE,
    FUSE_REMOVEMAPPING,
    FUSE_SETUPMAPPING,
)

R = 1 << 21  # FUSE_DAX_SZ


class Log:
    def __init__(self) -> None:
        self.msgs: list = []

    def on_send(self, m, msg) -> None:
        self.msgs.append(msg)

    def on_reply(self, *a) -> None:
        pass

    def on_read(self, *a) -> None:
        pass

    def of(self, opcode: int) -> list:
        return [m for m in self.msgs if m.opcode == opcode]


def make(nranges: int = 10, shift: int = 21, files: dict | None = None, **kw):
    store = FileStore(files or {n: bytes([n]) * (8 * (1 << shift) + 5) for n in (2, 3, 4)})
    dev = ModelDevice(nranges << shift, store)
    mgr = LinuxDaxManager(dev, store, range_shift=shift, **kw)
    log = Log()
    mgr.observers.append(log)
    checker = DaxChecker.for_manager(mgr)
    return mgr, log, checker


def test_setupmapping_fields():
    mgr, log, _ = make()
    res = mgr.read(2, R + 10, 100)
    assert res.data == bytes([2]) * 100
    [msg] = log.msgs
    b = msg.body
    assert msg.opcode == FUSE_SETUPMAPPING and msg.nodeid == 2
    assert (b.fh, b.foffset, b.len, b.flags, b.moffset) == (FH_NONE, R, R, FLAG_READ, 0)
    assert res.segments[0].moffset == 10


def test_read_spanning_ranges_maps_each_range():
    mgr, log, _ = make()
    res = mgr.read(3, R - 4, 8)
    assert res.data == bytes([3]) * 8
    assert [m.body.foffset for m in log.msgs] == [0, R]
    assert [s.length for s in res.segments] == [4, 4]


def test_no_mapping_at_or_past_eof():
    mgr, log, _ = make(files={2: b"x" * 100})
    assert mgr.read(2, 100, 10).data == b""
    assert mgr.read(2, 5000, 10).data == b""
    assert log.msgs == []
    assert mgr.read(2, 90, 100).data == b"x" * 10  # stops at end of file


def test_free_list_is_fifo_and_starts_in_window_order():
    mgr, _, _ = make(background="off")
    assert mgr.free_list() == [i * R for i in range(10)]
    mgr.read(2, 0, 1)
    mgr.read(3, 0, 1)
    assert mgr.busy_list() == [0, R]
    mgr.forget(2)
    assert mgr.free_list() == [i * R for i in range(2, 10)] + [0]  # freed to the tail


def test_background_reclaim_below_threshold_frees_up_to_ten_from_busy_head():
    mgr, log, _ = make(nranges=20)  # threshold: 20 % of 20 = 4
    for i in range(16):
        mgr.read(2 + i % 3, (i // 3) * R, 1)
    assert len(mgr.free_list()) == 4 and mgr.worker_passes == 0
    mgr.read(4, 6 * R, 1)  # free 3 < 4: kicked; one pass frees 10, oldest first
    assert mgr.worker_passes == 1
    assert len(mgr.free_list()) == 3 + 10
    removed = [m.body.entries[0].moffset for m in log.of(FUSE_REMOVEMAPPING)]
    assert removed == [i * R for i in range(10)]  # the busy list's head
    assert all(m.body.count == 1 for m in log.of(FUSE_REMOVEMAPPING))


def test_inline_reclaim_takes_lowest_chunk_of_same_inode():
    mgr, log, _ = make(nranges=4, background="off")
    for k in range(3):
        mgr.read(2, k * R, 1)
    mgr.read(3, 0, 1)  # window full: node 2 chunks 0..2, node 3 chunk 0
    log.msgs.clear()
    mgr.read(3, 5 * R, 1)  # node 3 reclaims its own lowest chunk (0), reuses 3R
    rm, setup = log.msgs
    assert rm.opcode == FUSE_REMOVEMAPPING and rm.nodeid == 3
    assert [(e.moffset, e.len) for e in rm.body.entries] == [(3 * R, R)]
    assert setup.body.moffset == 3 * R and setup.body.foffset == 5 * R
    assert mgr.free_list() == []


def test_inode_without_ranges_waits_for_worker():
    mgr, log, _ = make(nranges=3, background="off")
    for k in range(3):
        mgr.read(2, k * R, 1)
    log.msgs.clear()
    res = mgr.read(4, 0, 1)  # node 4 has nothing to reclaim inline: the worker frees
    assert res.data == b"\x04" and mgr.worker_passes >= 1
    assert log.msgs[0].opcode == FUSE_REMOVEMAPPING


def test_range_in_use_is_never_reclaimed():
    mgr, log, checker = make(nranges=3, background="off")
    for k in range(3):
        mgr.read(2, k * R, 1)
    pinned = [mgr.pin(2, k * R) for k in range(3)]
    res = mgr.read(2, 5 * R, 1)  # everything in use: the kernel would sleep
    assert res.error == errno.EAGAIN and res.data == b""
    assert log.of(FUSE_REMOVEMAPPING) == []
    mgr.unpin(pinned[1])
    assert mgr.read(2, 5 * R, 1).data == b"\x02"
    [rm] = log.of(FUSE_REMOVEMAPPING)
    assert rm.body.entries[0].moffset == pinned[1]
    checker.check_state()


def test_writable_upgrade_at_same_window_offset():
    mgr, log, _ = make()
    mgr.read(2, 0, 1)
    w = mgr.write(2, 10, b"hello")
    assert (w.written, w.via, w.error) == (5, "dax", 0)
    first, upgrade = log.msgs
    assert upgrade.body.moffset == first.body.moffset == 0
    assert upgrade.body.flags == FLAG_READ | FLAG_WRITE
    assert mgr.read(2, 8, 9).data == b"\x02\x02hello\x02\x02"
    assert mgr.backend.data(2)[10:15] == b"hello"


def test_extending_write_goes_as_fuse_write():
    mgr, log, _ = make(files={2: b"a" * 100})
    w = mgr.write(2, 95, b"0123456789")
    assert w.via == "fuse_write" and log.msgs == []
    assert mgr.read(2, 90, 20).data == b"aaaaa0123456789"


def test_forget_sends_batches_of_at_most_256_last_chunk_first():
    shift = 12
    mgr, log, _ = make(nranges=300, shift=shift, files={2: b"z" * (300 << shift)}, background="off")
    for k in range(300):
        mgr.read(2, k << shift, 1)
    log.msgs.clear()
    mgr.forget(2)
    batches = log.of(FUSE_REMOVEMAPPING)
    assert [b.body.count for b in batches] == [256, 44]
    offs = [e.moffset for b in batches for e in b.body.entries]
    assert offs == [k << shift for k in reversed(range(300))]
    assert mgr.free_list() == offs  # freed in that order, to the tail
    assert mgr.accounting().mapped == 0


def test_unmount_drops_every_inode():
    mgr, log, _ = make()
    mgr.read(2, 0, 1)
    mgr.read(3, 0, 1)
    mgr.unmount()
    assert len(log.of(FUSE_REMOVEMAPPING)) == 2 and mgr.view() == []


def test_map_alignment_larger_than_range_is_refused():
    store = FileStore()
    with pytest.raises(ValueError):
        LinuxDaxManager(ModelDevice(8 * R, store, map_alignment=22), store)


def test_pinned_in_is_pinned_filtered_to_the_ranges():
    """pinned_in (what the checker asks per message) answers exactly pinned() filtered to
    the ranges that overlap the given ones, for few ranges (index walk) and many."""
    import random

    from fuseproto.dax.manager import DaxManager

    P = 4096

    store = FileStore({2: bytes(64 * P)})
    mgr = LinuxDaxManager(ModelDevice(16 * P, store), store, range_shift=12)
    for i in range(12):
        mgr.read(2, i * P, P)
    for off in (0, 3 * P, 4 * P, 11 * P):
        assert mgr.pin(2, off) is not None
    rng = random.Random(5)
    for _ in range(300):
        ranges = [(rng.randrange(-2, 18) * P // rng.choice((1, 2)), rng.randrange(0, 5) * P)
                  for _ in range(rng.choice((1, 2, 3, 7)))]
        assert mgr.pinned_in(ranges) == DaxManager.pinned_in(mgr, ranges), ranges
