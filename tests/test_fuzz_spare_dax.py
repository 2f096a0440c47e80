"""Warm spares beside a DAX daemon (our c-dax build): each daemon has a window, backend
channel and mapping record of its own, so a spare never sees the live daemon's mappings
and the live daemon never maps into a spare's window."""

from __future__ import annotations

import mmap
import os

import pytest
from construct import Container

from fuseproto.fuzz.harness import DaemonHarness
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode as O

pytestmark = pytest.mark.daemon

CHUNK = 2 << 20


def _setupmapping(h: DaemonHarness, moffset: int) -> bytes:
    h.unique += 2
    return codec.encode_request(O.FUSE_SETUPMAPPING, Container(
        fh=h.fhs["file"], foffset=0, len=CHUNK, flags=1, moffset=moffset),
        unique=h.unique, nodeid=h.nodes["file"], minor=h.minor, flags=h.flags)


def test_a_dax_daemon_gets_spares_with_windows_of_their_own(no_leaks):
    from fixtures_daemons import built_installation

    inst = built_installation("c-dax")
    with DaemonHarness(inst, spare=True) as h:
        assert h.has_dax and h.spare_allowed() and h.spare is not None
        assert h.spare.settle() >= 1  # spares made beside the live DAX daemon
        first_window, first_record, first_pid = h.window, h.dax, h.daemon.pid
        out = h.send(_setupmapping(h, 0))
        assert out.finding is None and out.cls.split(":")[1] == "0", (out.cls, out.detail)
        assert first_window.mapped_pages() == CHUNK // mmap.PAGESIZE
        assert any(e.result == 0 for e in first_record.events)
        h.start()  # the live daemon retired, a spare adopted
        assert h.spare.made >= 1 and h.daemon.pid != first_pid
        assert h.window is not first_window and h.window.base != first_window.base
        assert h.dax is not first_record
        # The spare's window and record hold nothing of the first daemon's mapping ...
        assert h.window.mapped_pages() == 0 and not h.dax.events
        out = h.send(_setupmapping(h, CHUNK))
        assert out.finding is None and out.cls.split(":")[1] == "0", (out.cls, out.detail)
        # ... and its own mapping lands in its own window.
        assert h.window.mapped_pages() == CHUNK // mmap.PAGESIZE
        assert len(h.dax.events) == 1 and h.dax.events[0].result == 0
    assert not os.path.exists(f"/proc/{first_pid}")  # retired: stopped and reaped
