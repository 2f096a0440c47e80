"""The OSv dax_manager unit-test scenarios, in pytest.

A 10-chunk window; empty, half-full and full fixtures; coalescing; unmapping part of the
top mapping, several mappings, all of them and more than exist; mapping with and without
eviction on a full window; find hits and misses. Every decision is the seed's
(shared/seed/osv-virtiofs-dax-thread.txt, fs/virtiofs/virtiofs_dax.cc).
"""

from __future__ import annotations

import errno

import pytest

from fuseproto.dax.device import ModelDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import DaxChecker
from fuseproto.dax.messages import FUSE_REMOVEMAPPING, FUSE_SETUPMAPPING
from fuseproto.dax.osv import MappingPart, OsvDaxManager

C = 64 * 1024  # chunk size: a multiple of 2**12, small enough for real bytes
WINDOW_CHUNKS = 10


class Recorder:
    """Observer keeping every message and reply."""

    def __init__(self) -> None:
        self.sent: list = []

    def on_send(self, manager, msg) -> None:
        pass

    def on_reply(self, manager, msg, error) -> None:
        self.sent.append((msg, error))

    def on_read(self, *a) -> None:
        pass

    def clear(self) -> None:
        self.sent.clear()


def make(chunks: int = WINDOW_CHUNKS, extra: int = 0, **kw) -> tuple[OsvDaxManager, Recorder]:
    files = FileStore({n: bytes([n]) * (20 * C) for n in range(1, 6)})
    dev = ModelDevice(chunks * C + extra, files)
    mgr = OsvDaxManager(dev, files, chunk_size=C, **kw)
    rec = Recorder()
    mgr.observers.append(rec)
    DaxChecker.for_manager(mgr)  # every message and read checked as it happens
    return mgr, rec


@pytest.fixture
def empty():
    return make()


@pytest.fixture
def half():
    mgr, rec = make()
    assert mgr.map(1, 11, 2, 0)[0] == 0
    assert mgr.map(2, 12, 3, 0)[0] == 0
    rec.clear()
    return mgr, rec


@pytest.fixture
def full():
    mgr, rec = make()
    for nodeid, n in ((1, 2), (2, 3), (3, 5)):
        assert mgr.map(nodeid, 10 + nodeid, n, 0)[0] == 0
    rec.clear()
    return mgr, rec


def test_fixtures_state(empty, half, full):
    assert empty[0].mappings == [] and empty[0].first_empty() == 0
    assert half[0].mappings == [(1, 2, 0, 0), (2, 3, 0, 2)] and half[0].first_empty() == 5
    assert full[0].mappings == [(1, 2, 0, 0), (2, 3, 0, 2), (3, 5, 0, 5)]
    assert full[0].first_empty() == WINDOW_CHUNKS
    for mgr, _ in (empty, half, full):
        mgr.check_valid()


def test_map_on_empty_sends_one_setupmapping(empty):
    mgr, rec = empty
    assert mgr.map(4, 99, 3, 7) == (0, MappingPart(3, 0))
    assert mgr.mappings == [(4, 3, 7, 0)]
    [(msg, err)] = rec.sent
    assert err == 0 and msg.opcode == FUSE_SETUPMAPPING and msg.nodeid == 4
    b = msg.body
    assert (b.fh, b.foffset, b.len, b.flags, b.moffset) == (99, 7 * C, 3 * C, 0, 0)


def test_map_zero_chunks_is_a_noop(half):
    mgr, rec = half
    assert mgr.map(4, 1, 0, 0) == (0, MappingPart(0, 5))
    assert rec.sent == []


def test_coalescing_with_top_mapping_of_same_node(empty):
    mgr, rec = empty
    mgr.map(1, 1, 2, 0)
    assert mgr.map(1, 1, 3, 2) == (0, MappingPart(3, 2))
    assert mgr.mappings == [(1, 5, 0, 0)]
    assert len(rec.sent) == 2  # two SETUPMAPPINGs, one merged mapping


@pytest.mark.parametrize(
    "second",
    [(1, 3), (2, 2)],  # same node but a gap in the file; another node, adjacent chunk
    ids=["file-gap", "other-node"],
)
def test_no_coalescing(empty, second):
    mgr, _ = empty
    mgr.map(1, 1, 2, 0)
    nodeid, fstart = second
    mgr.map(nodeid, 1, 1, fstart)
    assert len(mgr.mappings) == 2


def test_coalescing_only_with_the_top(half):
    mgr, _ = half
    mgr.map(1, 1, 1, 2)  # node 1 continues at file chunk 2, but node 2 is on top
    assert mgr.mappings[-1] == (1, 1, 2, 5)
    assert len(mgr.mappings) == 3


def test_unmap_part_of_top(full):
    mgr, rec = full
    assert mgr.unmap(2) == (0, MappingPart(2, 8))
    assert mgr.mappings[-1] == (3, 3, 0, 5)
    assert rec.sent == []  # not deep: nothing sent


def test_unmap_several(full):
    mgr, rec = full
    assert mgr.unmap(6) == (0, MappingPart(6, 4))
    assert mgr.mappings == [(1, 2, 0, 0), (2, 2, 0, 2)]
    assert rec.sent == []


def test_unmap_all(full):
    mgr, _ = full
    assert mgr.unmap(10) == (0, MappingPart(10, 0))
    assert mgr.mappings == []


def test_unmap_more_than_exists(full, half, empty):
    assert full[0].unmap(15) == (0, MappingPart(10, 0))
    assert half[0].unmap(8) == (0, MappingPart(5, 0))
    assert empty[0].unmap(1) == (errno.ENODATA, MappingPart(0, 0))
    assert empty[0].unmap(0) == (0, MappingPart(0, 0))


def test_deep_unmap_sends_one_entry(full):
    mgr, rec = full
    assert mgr.unmap(6, deep=True) == (0, MappingPart(6, 4))
    [(msg, err)] = rec.sent
    assert msg.opcode == FUSE_REMOVEMAPPING and msg.nodeid == 0 and err == 0
    assert msg.body.count == 1
    assert [(e.moffset, e.len) for e in msg.body.entries] == [(4 * C, 6 * C)]
    assert [m.moffset for m in mgr.device.mappings()] == [0, 2 * C]


def test_map_full_window_without_eviction(full):
    mgr, rec = full
    assert mgr.map(4, 1, 1, 0, evict=False) == (errno.ENOBUFS, MappingPart(0, 10))
    assert rec.sent == []


def test_map_full_window_with_eviction(full):
    mgr, rec = full
    assert mgr.map(4, 1, 3, 0, evict=True) == (0, MappingPart(3, 7))
    assert mgr.mappings == [(1, 2, 0, 0), (2, 3, 0, 2), (3, 2, 0, 5), (4, 3, 0, 7)]
    # eviction sends no REMOVEMAPPING: the SETUPMAPPING overwrites the chunks
    assert [m.opcode for m, _ in rec.sent] == [FUSE_SETUPMAPPING]
    assert mgr.find(3, 2) is None and mgr.find(3, 1) == MappingPart(1, 6)


def test_map_with_eviction_of_whole_mappings(half):
    mgr, _ = half
    assert mgr.map(4, 1, 9, 0, evict=True) == (0, MappingPart(9, 1))
    assert mgr.mappings == [(1, 1, 0, 0), (4, 9, 0, 1)]


def test_map_more_than_window_maps_what_fits(empty):
    mgr, _ = empty
    assert mgr.map(4, 1, 25, 0, evict=True) == (0, MappingPart(10, 0))


def test_find_hits_and_misses(full):
    mgr, _ = full
    assert mgr.find(1, 0) == MappingPart(2, 0)
    assert mgr.find(2, 1) == MappingPart(2, 3)  # starts inside a mapping
    assert mgr.find(3, 4) == MappingPart(1, 9)
    assert mgr.find(2, 3) is None  # past the mapping's end
    assert mgr.find(4, 0) is None  # unknown node
    for nodeid in range(1, 5):
        for f in range(6):
            assert mgr.find(nodeid, f) == mgr.find_scan(nodeid, f)


def test_find_returns_first_match_in_window_order():
    mgr, _ = make(seed_defects={"duplicate_mappings"})
    mgr.map(1, 1, 1, 2)  # file chunk 2 at window 0
    mgr.map(2, 1, 1, 0)
    mgr.map(1, 1, 3, 1)  # file chunks 1..3 at window 2..4: chunk 2 twice
    assert mgr.find(1, 2) == MappingPart(1, 0)  # the lower copy
    assert mgr.find_scan(1, 2) == MappingPart(1, 0)
    mgr.check_valid()


def test_failed_setupmapping_leaves_view_without_evicted(full):
    """map_ll failing after an eviction: the evicted chunks stay out of the view (the
    C++ evicts before it sends) and the error is returned."""
    mgr, _ = full
    mgr.device.files.remove(4)  # the model device answers EBADF for an unknown node
    err, part = mgr.map(4, 1, 2, 0, evict=True)
    assert err != 0 and part is None
    assert mgr.first_empty() == 8
    mgr.check_valid()


def test_window_remainder_is_ignored():
    mgr, _ = make(chunks=3, extra=C // 2)
    assert mgr.window_chunks == 3
    assert mgr.accounting().total == 3 * C


def test_chunk_size_must_be_a_multiple_of_map_alignment():
    with pytest.raises(ValueError):
        OsvDaxManager(ModelDevice(10 * C, None), FileStore(), chunk_size=C + 512)


# ---- read (dax_manager::read + virtiofs_read) ---------------------------------------------


def test_read_maps_just_enough_chunks(empty):
    mgr, rec = empty
    res = mgr.read(1, C + 100, 2 * C)
    assert res.data == bytes([1]) * (2 * C) and not res.fell_back
    assert mgr.mappings == [(1, 3, 1, 0)]  # coffset 100 + 2C bytes -> 3 chunks
    assert res.segments[0].moffset == 100


def test_read_hit_is_short_to_the_mapping(empty):
    mgr, rec = empty
    mgr.read(1, 0, C)  # maps file chunk 0
    rec.clear()
    res = mgr.read(1, C // 2, 2 * C)
    assert len(res.data) == C // 2 and res.setups == 0 and rec.sent == []


def test_aggressive_read_maps_rest_of_file():
    mgr, _ = make(aggressive=True)
    mgr.read(2, 3 * C, 10)
    assert mgr.mappings == [(2, 10, 3, 0)]  # 17 chunks left, 10 fit


def test_read_falls_back_to_fuse_read_when_device_refuses(empty):
    mgr, _ = empty
    mgr.device.submit = lambda msg: errno.ENOSYS  # a daemon without DAX support
    files = mgr.backend
    res = mgr.read(3, 5, 1000)
    assert res.fell_back and res.error == errno.ENOSYS
    assert res.data == bytes([3]) * 1000 and files.fuse_reads == 1
    assert res.source == "fuse_read"


@pytest.mark.parametrize(
    "defects, expected",
    [((), errno.ENOBUFS), ({"enodata_on_empty_window"}, errno.ENODATA)],
    ids=["fixed", "seed"],
)
def test_window_smaller_than_a_chunk_falls_back(defects, expected):
    mgr, _ = make(chunks=0, extra=C // 2, seed_defects=defects)
    res = mgr.read(1, 0, 100)
    assert res.error == expected and res.fell_back and res.data == bytes([1]) * 100


def test_read_at_or_past_eof_is_empty(empty):
    mgr, rec = empty
    assert mgr.read(1, 20 * C, 10).data == b""
    assert rec.sent == []
