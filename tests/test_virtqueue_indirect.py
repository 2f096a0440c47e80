"""Indirect descriptors (VIRTIO_RING_F_INDIRECT_DESC, virtio 1.x 2.7.5.3): the table
layout against a model, then both real daemons with requests split the way Linux's
virtio_fs splits them (header, then each argument; reply header, then each reply area
or page), each taking one ring slot.

Both daemons offer the feature (C virtiofsd of QEMU 7.2: features 0x175000000, Rust
virtiofsd 1.13: 0x174000000; bit 28 in both), so nothing here is skipped.
"""

from __future__ import annotations

import os
import time
from itertools import pairwise

import pytest
from construct import Container

from fuseproto.client import IN_HEADER_SIZE, OUT_HEADER_SIZE, Client
from fuseproto.errors import TransportError, TransportTimeout
from fuseproto.transport.vhost_user import VIRTIO_F_RING_INDIRECT_DESC, VhostUserTransport
from fuseproto.transport.virtqueue import (
    U16,
    VIRTQ_DESC,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_ELEM,
    GuestMemory,
    SplitVirtqueue,
)
from fuseproto.wire import structs
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

PAGE = 4096
ATTR_OUT = structs.fuse_attr_out.sizeof()
GETATTR_IN = structs.fuse_getattr_in.sizeof()
# Linux's split of a GETATTR: in header | fuse_getattr_in, then out header | fuse_attr_out.
GETATTR_SEGMENTS = (IN_HEADER_SIZE,)
GETATTR_REPLY = [OUT_HEADER_SIZE, ATTR_OUT]


def _read_split(size: int) -> list[int]:
    """READ reply areas as Linux lays them out: the out header, then one per page."""
    return [OUT_HEADER_SIZE] + [PAGE] * (size // PAGE)


# -- the table layout, no daemon ------------------------------------------------------------

def _desc(mm, off):
    return VIRTQ_DESC.unpack_from(mm, off)


def _complete(vq: SplitVirtqueue, head: int, written: int) -> None:
    """Play the device: put ``head`` in the used ring."""
    mm = vq.mem.mm
    used_idx = U16.unpack_from(mm, vq.used_off + 2)[0]
    VIRTQ_USED_ELEM.pack_into(mm, vq.used_off + 4 + 8 * (used_idx % vq.size), head, written)
    U16.pack_into(mm, vq.used_off + 2, (used_idx + 1) & 0xFFFF)


def test_indirect_table_layout():
    mem = GuestMemory(1 << 20)
    try:
        vq = SplitVirtqueue(mem, 1, 8, indirect=True)
        out = [b"H" * IN_HEADER_SIZE, b"A" * 13, b"B" * 40]
        ins = [OUT_HEADER_SIZE, 100, PAGE]
        req = vq.add(out, ins, "t")
        mm = mem.mm
        assert vq.free_descriptors() == 7 and req.descs == [req.head]
        addr, ln, flags, nxt = _desc(mm, vq.desc_off + 16 * req.head)
        # One ring descriptor: INDIRECT alone (not NEXT, not WRITE), len 16 per entry.
        assert flags == VIRTQ_DESC_F_INDIRECT and nxt == 0
        assert ln == 16 * 6 == req.table_len and addr == mem.gpa(req.buf_off)
        assert (addr - mem.gpa_base) % 16 == 0
        table = [_desc(mm, req.buf_off + 16 * i) for i in range(6)]
        for i, (a, n, f, x) in enumerate(table):
            writable = i >= len(out)
            last = i == 5
            assert f == (VIRTQ_DESC_F_WRITE if writable else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            assert not f & VIRTQ_DESC_F_INDIRECT  # never nested
            assert x == (0 if last else i + 1)
            assert n == (ins[i - len(out)] if writable else len(out[i]))
            off = a - mem.gpa_base
            if not writable:
                assert bytes(mm[off:off + n]) == out[i]
        # Readable and writable areas do not overlap the table or each other.
        spans = sorted((a - mem.gpa_base, a - mem.gpa_base + n) for a, n, _, _ in table)
        spans.insert(0, (req.buf_off, req.buf_off + req.table_len))
        assert all(e <= s for (_, e), (s, _) in pairwise(spans))
        assert spans[-1][1] <= req.buf_off + req.buf_size
        assert table[len(out)][0] - mem.gpa_base == req.in_off
        # The device writes the reply across the areas; it comes back contiguous.
        mm[req.in_off:req.in_off + 20] = b"r" * 20
        _complete(vq, req.head, 20)
        (done,) = vq.collect()
        assert vq.take_reply(done) == b"r" * 20
        assert vq.free_descriptors() == 8 and mem.allocated == 0
        # One segment stays a direct descriptor; more than the queue size is refused.
        single = vq.add([b"x" * 8], [], "forget")
        assert _desc(mm, vq.desc_off + 16 * single.head)[2] == 0 and single.table_len == 0
        with pytest.raises(TransportError, match="exceed the queue size"):
            vq.add([b"h"], [1] * 8, "big")
        # An abandoned chain the device completes late frees its table with it.
        late = vq.add(out, ins, "late")
        late.abandoned = True
        _complete(vq, single.head, 0)
        _complete(vq, late.head, 0)
        assert [r.head for r in vq.collect()] == [single.head]
        vq.take_reply(single)
        assert vq.free_descriptors() == 8 and not vq.inflight and mem.allocated == 0
    finally:
        mem.close()


# -- against the daemons --------------------------------------------------------------------

def _spawn(installation, shared_dir, **kw) -> tuple[VhostUserTransport, Client]:
    t = VhostUserTransport.spawn(installation, shared_dir, indirect=True, **kw)
    c = Client(t)
    c.init()
    return t, c


def _getattr(c: Client, *, kick: bool = True):
    return c.submit(fuse_opcode.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0),
                    nodeid=FUSE_ROOT_ID, segments=GETATTR_SEGMENTS,
                    reply_size=GETATTR_REPLY, kick=kick)


def _read(c: Client, nodeid: int, fh: int, offset: int, size: int, *, kick: bool = True):
    return c.submit(fuse_opcode.FUSE_READ, Container(
        fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0, padding=0),
        nodeid=nodeid, segments=(IN_HEADER_SIZE,), reply_size=_read_split(size), kick=kick)


@pytest.mark.daemon
def test_negotiated_only_when_asked(no_leaks, installation, shared_dir):
    t, c = _spawn(installation, shared_dir)
    with t:
        # Both daemons offer bit 28 (see the module docstring), so asking agrees it.
        assert t.negotiated.indirect_desc
        assert t.negotiated.features == (1 << 32) | (1 << 30) | (1 << VIRTIO_F_RING_INDIRECT_DESC)
        assert all(vq.indirect for vq in t.queues)
    with VhostUserTransport.spawn(installation, shared_dir) as t:
        assert not t.negotiated.indirect_desc and not any(vq.indirect for vq in t.queues)


@pytest.mark.daemon
def test_full_ring_of_split_reads_matches_host(no_leaks, installation, shared_dir):
    data = os.urandom(16 * 32 * 1024)
    with open(os.path.join(shared_dir, "data"), "wb") as f:
        f.write(data)
    t, c = _spawn(installation, shared_dir, queue_size=16)
    with t:
        e = c.lookup(FUSE_ROOT_ID, "data")
        fh = c.open(e.nodeid).fh
        vq = t.queues[1]
        size = 32 * 1024
        # 16 requests of 2 + 9 segments each in a 16-entry ring: every slot used once.
        pend = [_read(c, e.nodeid, fh, i * size, size, kick=False) for i in range(16)]
        assert vq.free_descriptors() == 0
        with pytest.raises(TransportError, match="no free descriptors"):
            _getattr(c)
        t.kick(1)
        for i, p in reversed(list(enumerate(pend))):
            assert bytes(c.result(p).data) == data[i * size:(i + 1) * size]
        # Again, mixed with split GETATTRs, and unaligned reads that end short (EOF).
        pend = [(_getattr(c, kick=False), None) if i % 2 else
                (_read(c, e.nodeid, fh, len(data) - 1000 * i - 7, 4 * PAGE, kick=False), i)
                for i in range(16)]
        t.kick(1)
        for p, i in pend:
            body = c.result(p)
            if i is None:
                assert body.attr.ino == os.stat(shared_dir).st_ino
            else:
                assert bytes(body.data) == data[len(data) - 1000 * i - 7:][:4 * PAGE]
        assert vq.free_descriptors() == 16 and t.mem.allocated == 0


@pytest.mark.daemon
def test_hundred_split_requests_one_kick_small_ring(no_leaks, installation, shared_dir):
    t, c = _spawn(installation, shared_dir, queue_size=128)
    with t:
        vq = t.queues[1]
        segments = 1 + len(GETATTR_SEGMENTS) + len(GETATTR_REPLY)
        assert 100 * segments > vq.size  # would not fit as direct chains
        pend = [_getattr(c, kick=False) for _ in range(100)]
        assert vq.free_descriptors() == 128 - 100
        t.kick(1)
        ino = os.stat(shared_dir).st_ino
        assert {c.result(p).attr.ino for p in reversed(pend)} == {ino}
        assert vq.free_descriptors() == 128 and t.mem.allocated == 0


@pytest.mark.daemon
def test_timeout_then_late_completion_reclaims_table(no_leaks, installation, shared_dir):
    with open(os.path.join(shared_dir, "f"), "wb") as f:
        f.write(b"z" * 3 * PAGE)
    t, c = _spawn(installation, shared_dir, queue_size=16)
    try:
        e = c.lookup(FUSE_ROOT_ID, "f")
        fh = c.open(e.nodeid).fh
        vq = t.queues[1]
        assert t.mem.allocated == 0
        t.daemon.freeze()
        p = _read(c, e.nodeid, fh, 0, 4 * PAGE)
        assert p.token.table_len == 16 * 7 and t.mem.allocated == 1
        with pytest.raises(TransportTimeout):
            c.result(p, timeout=0.2)
        assert vq.free_descriptors() == 15 and t.mem.allocated == 1  # the daemon owns it
        t.daemon.thaw()
        deadline = time.monotonic() + 5
        while not t.done(p.token):
            assert time.monotonic() < deadline, "the daemon never completed the request"
            time.sleep(0.005)
        # Freed silently when it came back: its slot, its buffer and table.
        assert not vq.inflight and vq.free_descriptors() == 16 and t.mem.allocated == 0
        assert bytes(c.read(e.nodeid, fh, 0, 3 * PAGE)) == b"z" * 3 * PAGE
        assert t.mem.allocated == 0
    finally:
        t.daemon.thaw()
        t.close()


@pytest.mark.parametrize("indirect", [False, True])
def test_data_parts_start_on_a_page(indirect):
    """A side of two or more parts ends in data (WRITE's payload, READ's pages): the data
    starts on a page of guest memory, as a guest's page-backed buffers do (a daemon may do
    O_DIRECT I/O straight into it), and the headers before it end where it begins."""
    from fuseproto.wire import codec

    mem = GuestMemory(4 << 20)
    try:
        vq = SplitVirtqueue(mem, 1, 16, indirect=indirect)
        body = Container(fh=1, offset=0, size=None, write_flags=0, lock_owner=0, flags=0,
                         data=b"D" * 12288)
        raw = codec.encode_request(fuse_opcode.FUSE_WRITE, body, unique=2, nodeid=2)
        out, area = codec.kind(fuse_opcode.FUSE_WRITE).chain(raw, codec.decode_request(raw).body)
        assert isinstance(out, list) and len(out) == 2 and b"".join(out) == raw
        assert out[1] == b"D" * 12288
        rd = codec.encode_request(fuse_opcode.FUSE_READ, Container(
            fh=1, offset=0, size=65536, read_flags=0, lock_owner=0, flags=0), unique=4, nodeid=2)
        rout, rarea = codec.kind(fuse_opcode.FUSE_READ).chain(rd, codec.decode_request(rd).body)
        assert rout == rd and rarea == [OUT_HEADER_SIZE, 65536]
        for segs, areas in ((out, area), (rout, rarea), (rout, _read_split(16384))):
            req = vq.add(segs, areas, "t")
            mm = mem.mm
            if indirect:
                table = [_desc(mm, req.buf_off + 16 * i) for i in range(req.table_len // 16)]
            else:
                table, d = [], req.head
                while True:
                    table.append(_desc(mm, vq.desc_off + 16 * d))
                    if not table[-1][2] & VIRTQ_DESC_F_NEXT:
                        break
                    d = table[-1][3]
            reads = [(a - mem.gpa_base, n) for a, n, f, _ in table if not f & VIRTQ_DESC_F_WRITE]
            writes = [(a - mem.gpa_base, n) for a, n, f, _ in table if f & VIRTQ_DESC_F_WRITE]
            for side in (reads, writes):
                if len(side) > 1:
                    assert all(off % PAGE == 0 for off, _ in side[1:]), side
                    assert all(a + n == b for (a, n), (b, _) in pairwise(side)), side
            for (off, n), seg in zip(reads, segs if isinstance(segs, list) else [segs],
                                     strict=True):
                assert bytes(mm[off:off + n]) == seg
            assert writes[0][0] == req.in_off
            _complete(vq, req.head, 0)
            for done in vq.collect():
                vq.take_reply(done)
        assert mem.allocated == 0
    finally:
        mem.close()
