"""Defects of the committed OSv DAX series (the seed), each failing-then-fixed.

Each test runs one scenario twice: with the defect switched on (``seed_defects``), where
it is an ``xfail(strict=True)`` -- the defect must still be demonstrated --, and with the
corrected default, where it passes. The checks that catch each defect are the black-box
invariants of fuseproto.dax.invariants, not knowledge of the manager's internals.
"""

from __future__ import annotations

import errno

import pytest

from fuseproto.dax.device import ModelDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import DaxChecker, InvariantViolation
from fuseproto.dax.osv import OsvDaxManager, OsvVirtiofs

C = 64 * 1024


def pattern(tag: int, n: int) -> bytes:
    return bytes((tag * 37 + i * 7 + (i >> 12)) & 0xFF for i in range(n))


def seed_and_fixed(defect: str, raises: type[BaseException] = InvariantViolation):
    return pytest.mark.parametrize(
        "defects",
        [
            pytest.param(
                {defect},
                id="seed",
                marks=pytest.mark.xfail(strict=True, raises=raises, reason=f"seed defect {defect}"),
            ),
            pytest.param(set(), id="fixed"),
        ],
    )


@seed_and_fixed("unregistered_manager")
def test_two_mounts_of_one_device_share_one_manager(defects):
    """virtiofs_mount creates a manager but never inserts it into dax_managers: two
    mounts get two managers over one window, the second maps over the first's chunks,
    and the first then serves the second's file from its stale view."""
    a, b = pattern(1, 3 * C), pattern(2, 3 * C)
    files = FileStore({1: a, 2: b})
    dev = ModelDevice(4 * C, files)
    fs = OsvVirtiofs(seed_defects=defects, chunk_size=C)
    m1, m2 = fs.mount(dev, files), fs.mount(dev, files)
    managers = list({id(m.dax_mgr): m.dax_mgr for m in (m1, m2)}.values())
    checker = DaxChecker(dev.window_size, dev.map_alignment, files=files, device=dev)
    checker.attach(*managers)
    assert m1.read(1, 0, 100).data == a[:100]
    assert m2.read(2, 0, 100).data == b[:100]
    assert m1.read(1, 0, 100).data == a[:100]
    checker.check_state()
    assert m1.dax_mgr is m2.dax_mgr


def test_last_unmount_forgets_the_device_manager():
    files = FileStore({1: pattern(1, C)})
    dev = ModelDevice(4 * C, files)
    fs = OsvVirtiofs(chunk_size=C)
    m1, m2 = fs.mount(dev, files), fs.mount(dev, files)
    fs.unmount(m1)
    assert fs.dax_managers  # m2 still uses it (use_count 2 -> not the last)
    fs.unmount(m2)
    assert not fs.dax_managers
    m3 = fs.mount(dev, files)
    assert m3.dax_mgr is not m1.dax_mgr and m3.read(1, 0, 10).data == pattern(1, C)[:10]


@seed_and_fixed("duplicate_mappings")
def test_reread_after_eviction_does_not_map_chunks_twice(defects):
    """A file whose first chunk was evicted while its next chunks stayed lower in the
    window: re-reading it from the start maps the whole range again, so chunks 1..2 sit
    twice in the window and live data (W) is evicted for the copies."""
    x, y, w = pattern(1, 3 * C), pattern(2, 3 * C), pattern(3, 4 * C)
    files = FileStore({1: x, 2: y, 3: w})
    dev = ModelDevice(6 * C, files)
    mgr = OsvDaxManager(dev, files, chunk_size=C, seed_defects=defects)
    checker = DaxChecker.for_manager(
        mgr, enabled={"no_duplicate_chunks", "read_bytes", "read_stale_range", "view_overlap"}
    )
    mgr.read(1, C, 2 * C)  # X chunks 1..2 at window 0..1
    mgr.read(1, 0, C)  # X chunk 0 at window 2
    mgr.read(2, 0, 3 * C)  # Y at 3..5: full
    mgr.read(3, 0, 4 * C)  # W evicts Y and X chunk 0 (the top four)
    checker.check_state()
    got = b""
    while len(got) < 3 * C:  # the application re-reads X from the start
        got += mgr.read(1, len(got), 3 * C - len(got)).data
        checker.check_state()
    assert got == x
    assert mgr.stats.bytes_mapped == 11 * C  # X:2+1, Y:3, W:4, X chunk 0 again: 1


@seed_and_fixed("enodata_on_empty_window", raises=AssertionError)
def test_aggressive_read_of_file_larger_than_window_uses_dax(defects):
    """Aggressive mode maps the rest of the file; on an empty window a file larger than
    the window makes map() ask unmap() for chunks that are not there: ENODATA, FUSE_READ,
    window still empty -- the file never goes through DAX."""
    big = pattern(5, 12 * C)
    files = FileStore({5: big})
    dev = ModelDevice(8 * C, files)
    mgr = OsvDaxManager(dev, files, chunk_size=C, aggressive=True, seed_defects=defects)
    DaxChecker.for_manager(mgr)
    for off in (0, C, 5 * C):
        res = mgr.read(5, off, 100)
        assert res.data == big[off : off + 100]
        assert not res.fell_back, f"read at {off:#x} fell back to FUSE_READ ({res.error})"


@seed_and_fixed("map_alignment_unset", raises=AssertionError)
def test_device_without_map_alignment_falls_back_to_fuse_read(defects):
    """The manager's constructor asserts on ``1ull << get_map_alignment()``; with no
    map_alignment negotiated (-1) that is a negative shift (x86: 1 << 63, the assert
    fails and OSv aborts at mount). The code it replaced answered ENOTSUP."""
    data = pattern(4, 2 * C)
    files = FileStore({4: data})
    dev = ModelDevice(8 * C, files, map_alignment=None)
    mgr = OsvDaxManager(dev, files, chunk_size=C, seed_defects=defects)
    res = mgr.read(4, 10, 1000)
    assert res.data == data[10:1010] and res.fell_back and res.error == errno.ENOTSUP


@seed_and_fixed("no_forget")
def test_forgotten_node_id_reused_for_another_file(defects):
    """Not a bug of the seed's own paths (it has no FORGET), but of the interface: a
    node id the daemon reuses must not be served from the old file's mappings."""
    old, new = pattern(1, 2 * C), pattern(9, 2 * C)
    files = FileStore({7: old})
    dev = ModelDevice(8 * C, files)
    mgr = OsvDaxManager(dev, files, chunk_size=C, seed_defects=defects)
    DaxChecker.for_manager(mgr)
    assert mgr.read(7, 0, 100).data == old[:100]
    mgr.forget(7)
    files.add(7, new)  # LOOKUP of another file gets node id 7 again
    assert mgr.read(7, 0, 100).data == new[:100]
