"""The mapping-aware program generator and the per-answer DAX oracles, unit by unit (the
end-to-end catches against the c-dax bug variants are in test_fuzz_sequences.py)."""

from __future__ import annotations

import os
import random

from construct import Container, ListContainer

from fuseproto.fuzz.dax_programs import (
    accepted_but_invalid,
    dax_program,
    fd_access_violations,
    mapping_kind,
)
from fuseproto.fuzz.steps import Step
from fuseproto.transport.backend import BackendEvent
from fuseproto.transport.vhost_user_proto import VhostUserBackendRequest as R
from fuseproto.transport.window import PAGE, Window
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode as O

WINDOW = 16 << 20


def _setup(fo, ln, mo, flags=2, fh=7):
    return Step(O.FUSE_SETUPMAPPING, Container(fh=fh, foffset=fo, len=ln, flags=flags,
                                               moffset=mo), node=-1)


def _remove(entries, count=None):
    return Step(O.FUSE_REMOVEMAPPING, Container(count=count, entries=ListContainer(
        Container(moffset=m, len=ln) for m, ln in entries)), node=-1)


def test_programs_encode_and_cover_the_boundary_shapes():
    rng = random.Random(3)
    kinds = set()
    for _ in range(300):
        prog = dax_program(rng, WINDOW)
        assert prog[0].op == O.FUSE_INIT and prog[1].op == O.FUSE_LOOKUP
        for s in prog:
            if s.op in (O.FUSE_SETUPMAPPING, O.FUSE_REMOVEMAPPING):
                kinds.add(mapping_kind(s, WINDOW).split(" (")[0])
                body = Container(s.fields, fh=7) if "fh" in s.fields else s.fields
                codec.encode_request(s.op, body, unique=2, nodeid=2)  # encodable
    for shape in ("aligned-2M in window", "aligned-4K in window, at the window end",
                  "past the window end by one page", "misaligned foffset", "misaligned len",
                  "misaligned moffset", "1 entries", "2-256 entries", ">256 entries",
                  "1 entries, lying count"):
        assert shape in kinds, (shape, sorted(kinds))


def test_accepted_but_invalid_reports_each_refusal_the_daemon_skipped():
    with Window(WINDOW) as w:
        ok = accepted_but_invalid(_setup(0, PAGE, 0), {"fh": 7}, {7: os.O_RDWR}, w, last=True)
        assert ok == []
        cases = {
            "accepted_misaligned": _setup(1, PAGE, 0),
            "accepted_outside_window": _setup(0, 2 * PAGE, WINDOW - PAGE),
        }
        for name, step in cases.items():
            got = accepted_but_invalid(step, {"fh": 7}, {7: os.O_RDWR}, w, last=True)
            assert [v.invariant for v in got] == [name]
        got = accepted_but_invalid(_setup(0, PAGE, 0, flags=1), {"fh": 7}, {7: os.O_RDONLY},
                                   w, last=True)
        assert [v.invariant for v in got] == ["accepted_write_on_read_only_handle"]
        got = accepted_but_invalid(_remove([(0, PAGE)], count=2), {}, {}, w, last=True)
        assert [v.invariant for v in got] == ["accepted_count_mismatch"]
        fd = os.memfd_create("f")
        try:
            os.ftruncate(fd, 4 * PAGE)
            w.map_fd(fd, 0, 0, 4 * PAGE, False)
            got = accepted_but_invalid(_remove([(0, 4 * PAGE)]), {}, {}, w, last=True)
            assert [v.invariant for v in got] == ["accepted_unmap_left_mapped"]
            w.unmap(0, 3 * PAGE)  # only the last page left: still reported
            got = accepted_but_invalid(_remove([(0, 4 * PAGE)]), {}, {}, w, last=True)
            assert [v.invariant for v in got] == ["accepted_unmap_left_mapped"]
            w.unmap(3 * PAGE, PAGE)
            assert accepted_but_invalid(_remove([(0, 4 * PAGE)]), {}, {}, w, last=True) == []
        finally:
            os.close(fd)


def test_fd_access_violation_when_a_read_only_handle_yields_a_writable_fd():
    ev = BackendEvent(R.FS_MAP, None, 0, os.O_RDWR)
    got = fd_access_violations([ev], 5, {5: os.O_RDONLY})
    assert [v.invariant for v in got] == ["handle_access"]
    assert fd_access_violations([BackendEvent(R.FS_MAP, None, 0, os.O_RDONLY)], 5,
                                {5: os.O_RDONLY}) == []
    assert fd_access_violations([ev], 5, {5: os.O_RDWR}) == []  # the handle allows it
