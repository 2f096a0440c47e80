"""The one table of forbidden DAX mapping shapes (fuseproto/dax/forbidden.py): each row's
request has that row's shape (its two halves agree), the model window device (the c-dax
daemon model) refuses each with the row's errno and changes nothing, and the fuzzers'
two users read it: the DAX target's probe and the oracle of what a daemon accepted.
The real c-dax refuses every row too: tests/test_dax_cdax.py
(test_refused_requests_get_the_right_errno_and_map_nothing)."""

from __future__ import annotations

import os

import pytest
from construct import Container, ListContainer

from fuseproto.dax.device import ModelDevice
from fuseproto.dax.forbidden import FORBIDDEN, Request, Where, refusal
from fuseproto.dax.host import FileStore
from fuseproto.dax.messages import FLAG_READ, removemapping, setupmapping
from fuseproto.fuzz.dax_programs import accepted_but_invalid
from fuseproto.fuzz.steps import Step
from fuseproto.transport.window import PAGE, Window
from fuseproto.wire.constants import fuse_opcode as O

GEOMETRIES = [(1, 2), (1, 37), (4096, 2 * 4096), (4096, 300 * 4096), (1 << 21, 5 << 21),
              (1 << 16, (9 << 16) + (3 << 16))]


def _wheres():
    for align, window in GEOMETRIES:
        top = (window // align - 2) * align
        for at in sorted({0, top, top // 2 // align * align}):
            yield Where(align, window, at, 2, 0)


def test_rows_cover_the_shapes_and_have_unique_names():
    names = [r.name for r in FORBIDDEN]
    assert len(set(names)) == len(names) >= 16
    assert {r.opcode for r in FORBIDDEN} == {O.FUSE_SETUPMAPPING, O.FUSE_REMOVEMAPPING}
    assert {r.violation for r in FORBIDDEN} >= {"accepted_misaligned", "accepted_outside_window",
                                                "accepted_count_mismatch",
                                                "accepted_write_on_read_only_handle"}


@pytest.mark.parametrize("row", FORBIDDEN, ids=lambda r: r.name)
def test_each_row_builds_its_own_shape(row):
    built = 0
    for w in _wheres():
        msg = row.build(w)
        if msg is None:
            assert w.alignment == 1  # only "no alignment to break"
            continue
        built += 1
        req = Request.of_message(msg, w.window, w.alignment, read_only=row.handles)
        assert refusal(req) is row, (w, refusal(req))
        if row.handles:  # the same request through a read-write handle is allowed
            assert refusal(req._replace(read_only=False)) is None
    assert built >= 8


@pytest.mark.parametrize("row", [r for r in FORBIDDEN if not r.handles], ids=lambda r: r.name)
def test_the_model_device_refuses_each_row_and_changes_nothing(row):
    for w in _wheres():
        msg = row.build(w)
        if msg is None:
            continue
        dev = ModelDevice(w.window, FileStore({2: bytes(w.window)}), w.alignment.bit_length() - 1)
        ok = setupmapping(2, fh=0, foffset=0, moffset=w.at, length=w.alignment, flags=FLAG_READ)
        assert dev.submit(ok) == 0  # something mapped, to see that it stays
        before = dev.mappings()
        assert dev.submit(msg) == row.errno, (row.name, w)  # through the codec's bytes
        assert dev.mappings() == before


def test_allowed_requests_match_no_row():
    for w in _wheres():
        a = w.alignment
        ok = [setupmapping(2, fh=0, foffset=a, moffset=w.at, length=2 * a, flags=f)
              for f in (0, 1, 2, 3)]
        ok.append(removemapping(0, [(w.at, a), (w.at + a, a)]))
        ok.append(removemapping(0, [(w.at, a)] * 256))
        for msg in ok:
            assert refusal(Request.of_message(msg, w.window, a)) is None, msg.describe()


@pytest.mark.parametrize("row", FORBIDDEN, ids=lambda r: r.name)
def test_accepting_a_row_is_reported_by_the_daemon_oracle(row):
    """``accepted_but_invalid`` (what a live DAX daemon answered 0) reads the same table:
    each row answered 0 is its violation."""
    size = 64 * PAGE
    msg = row.build(Where(PAGE, size, 8 * PAGE, 2, 7))
    body = msg.body
    if msg.opcode == O.FUSE_REMOVEMAPPING:
        fields = Container(count=body.count, entries=ListContainer(body.entries))
    else:
        fields = Container(body)
    mode = os.O_RDONLY if row.handles else os.O_RDWR
    with Window(size) as win:
        got = accepted_but_invalid(Step(msg.opcode, fields, node=-1), {"fh": 7}, {7: mode}, win,
                                   last=True)
    assert [v.invariant for v in got] == [row.violation]
    assert row.name in got[0].detail
