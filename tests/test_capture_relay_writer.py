"""The capture relay's writer thread (fuseproto/capture/relay_out.c) with the rig of
tests/relay_rig.py: replies on shadowed queues written in place from the guest's buffers,
their used entries published only once written, in order; a full staging ring makes the
recorder wait and drops nothing; a record larger than the ring is written in its place.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time

import pytest
from relay_rig import (
    QUEUE,
    Pair,
    PipeCapture,
    Ring,
    big_chain,
    close_pipe_rig,
    fuse_request,
    read_reply,
    unique_of,
)

from fuseproto.capture import read_records, unpack_frame
from fuseproto.capture.frames import Direction
from fuseproto.capture.relay import Relay
from fuseproto.transport.virtqueue import (
    VIRTQ_DESC,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_ELEM,
)
from fuseproto.wire.constants import fuse_opcode

# -- the writer thread (relay_out.c) --------------------------------------------------------------


def _reply_of_size(r: Ring, kick: Pair, call: Pair, size: int) -> tuple[int, bytes]:
    """A READ of ``size`` bytes (unique 7) kicked, answered by the daemon side and called:
    where its reply buffer is in guest memory, and the reply."""
    rb = big_chain(r, 0, 0, 7, size)
    r.publish(0)
    os.eventfd_write(kick.source, 1)
    assert kick.signalled()
    reply = read_reply(7, size, 0x5A)
    r.mm[rb:rb + len(reply)] = reply
    r.use(0, len(reply))
    os.eventfd_write(call.source, 1)
    return rb, reply


@pytest.mark.parametrize("snaplen", [None, 8192], ids=["whole", "snaplen-8k"])
def test_shadow_an_entry_waits_for_its_record_only_when_written_in_place(tmp_path, snaplen):
    """A whole reply on a shadowed queue is written from the guest's buffer itself (no
    copy): its used entry reaches the guest's ring only once the record is written. With
    the capture a pipe nobody reads, the guest's used index does not move, nor is the
    guest called; once the pipe is read, it moves, the guest is called, and the record
    carries the bytes the buffer held (the guest reusing the buffer afterwards changes
    nothing). With a snaplen the record keeps 8 KiB of the 48 KiB (under IN_PLACE_MIN):
    that short copy is staged, so the entry is published at once even while the writer is
    stuck on the full pipe."""
    pipe = PipeCapture()
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0, capture=pipe.w, snaplen=snaplen)
    os.close(pipe.w)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    size = 48 << 10
    try:
        rb, reply = _reply_of_size(r, kick, call, size)
        if snaplen is None:
            assert not call.signalled(0.5)  # the writer waits on the pipe: nothing published
            assert r.guest_used()[0] == 0
            assert pipe.replies() == []
            pipe.drain()
            deadline = time.monotonic() + 5
            while r.guest_used()[0] == 0 and time.monotonic() < deadline:
                pipe.drain()
        assert call.signalled()  # (with a snaplen: although nobody has read the pipe)
        assert r.guest_used() == (1, [(0, len(reply)), (0, 0), (0, 0), (0, 0)])
        r.mm[rb:rb + len(reply)] = b"\xee" * len(reply)  # the guest reuses its buffer
        deadline = time.monotonic() + 5
        while not pipe.replies() and time.monotonic() < deadline:
            pipe.drain()
        assert pipe.replies() == [reply[:snaplen] if snaplen else reply]
        if snaplen is None:
            assert [f.data for f in pipe.frames() if f.direction == Direction.REQUEST] == [
                fuse_request(7)]
    finally:
        close_pipe_rig(r, pipe, kick, call)
    assert [f.data for f in pipe.frames()
            if f.direction == Direction.ANNOTATION] == []


def test_shadow_entries_are_published_in_order_as_their_replies_are_written(tmp_path):
    """Replies completed out of order, two per round, written from the guest's buffers
    through a small pipe read bit by bit: at every moment the guest's used index counts no
    more entries than there are whole replies in the file (sampled before reading what
    the pipe holds), the entries come in the daemon's order, and so do the records."""
    pipe = PipeCapture()
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0, capture=pipe.w)
    os.close(pipe.w)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    size = 16 << 10
    expected: list[bytes] = []
    try:
        unique = 200
        for rnd in range(3):
            bufs = {}
            for head, slot in ((0, 0), (2, 1)):
                unique += 1
                bufs[head] = (big_chain(r, head, slot, unique, size), unique)
                r.publish(head)
            os.eventfd_write(kick.source, 1)
            assert kick.signalled()
            for head in (2, 0):  # the second request completes first
                rb, u = bufs[head]
                reply = read_reply(u, size, (u * 7) % 251)
                r.mm[rb:rb + len(reply)] = reply
                r.use(head, len(reply))
                expected.append(reply)
            os.eventfd_write(call.source, 1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                idx = r.guest_used()[0]
                pipe.drain(once=True)  # (all the pipe holds: what was written before idx)
                assert idx <= len(pipe.replies()), (rnd, idx, len(pipe.replies()))
                if idx == len(expected):
                    break
                time.sleep(0.002)
            idx, entries = r.guest_used()
            assert idx == len(expected)
            assert [entries[(idx - 2) % 4], entries[(idx - 1) % 4]] == [
                (2, 16 + size), (0, 16 + size)]
        r.relay.sync()
        pipe.drain()
        assert pipe.replies() == expected
    finally:
        close_pipe_rig(r, pipe, kick, call)
    assert [f.data for f in pipe.frames() if f.direction == Direction.ANNOTATION] == []


def test_a_full_staging_ring_blocks_the_recorder_and_drops_nothing(tmp_path):
    """Records are copied into the staging ring and written by a thread of their own. A
    writer that cannot keep up (here: the capture is a pipe nobody reads yet) fills the
    ring; the recorder then waits (a stall, counted) -- the kick is not passed on before
    its requests are staged -- and nothing is dropped: once the pipe is read, every record
    comes out whole and in order."""
    import fcntl

    r_end, w_end = os.pipe()
    fcntl.fcntl(w_end, 1031, 4096)  # F_SETPIPE_SZ: a small pipe
    with os.fdopen(os.dup(w_end), "wb", buffering=0) as head:
        from fuseproto.capture.frames import FRAME_HEADER, LINKTYPE_FUSE
        from fuseproto.capture.pcap import DEFAULT_MAX_CAPLEN, PcapWriter
        PcapWriter(head, LINKTYPE_FUSE, snaplen=DEFAULT_MAX_CAPLEN + FRAME_HEADER.size)
    fd = os.memfd_create("ring-test")
    os.ftruncate(fd, Ring.SIZE)
    mm = mmap.mmap(fd, Ring.SIZE)
    relay = Relay(w_end, staging=16 << 10, scan_interval=5.0)
    os.close(w_end)
    kick = Pair(relay, 1, "kick")
    got = bytearray()

    def read_all() -> None:
        while chunk := os.read(r_end, 1 << 16):
            got.extend(chunk)

    reader = threading.Thread(target=read_all)
    try:
        relay.send("MEM_ADD", 0, Ring.GPA, Ring.SIZE, Ring.UADDR, 0, payload=b"t", fds=[fd])
        relay.send("VRING_NUM", QUEUE, 4)
        relay.send("VRING_ADDR", QUEUE, Ring.UADDR + Ring.DESC, Ring.UADDR + Ring.AVAIL,
                   Ring.UADDR + Ring.USED)
        relay.send("VRING_BASE", QUEUE, 0)
        relay.send("VRING_START", QUEUE)
        sent, idx, blocked = [], 0, False
        for _ in range(8):  # 8 rounds of 4 requests of 3000 bytes: 96 KB, > ring + pipe
            for head in range(4):
                unique = 1000 + len(sent)
                req = struct.pack("<IIQQIIII", 3000, fuse_opcode.FUSE_WRITE, unique, 1, 0, 0,
                                  0, 0).ljust(3000, bytes([len(sent) % 251]))
                at = Ring.DATA + 0x1000 * head
                mm[at:at + 3000] = req
                VIRTQ_DESC.pack_into(mm, Ring.DESC + 16 * head, Ring.GPA + at, 3000, 0, 0)
                struct.pack_into("<H", mm, Ring.AVAIL + 4 + 2 * (idx % 4), head)
                idx += 1
                struct.pack_into("<H", mm, Ring.AVAIL + 2, idx & 0xFFFF)
                sent.append(req)
            os.eventfd_write(kick.source, 1)
            if not kick.signalled(0.5):
                blocked = True  # the recorder waits for room: the kick waits behind it
                break
            for head in range(4):  # done, nothing written back: the heads are free again
                VIRTQ_USED_ELEM.pack_into(mm, Ring.USED + 4 + 8 * ((idx - 4 + head) % 4),
                                          head, 0)
            struct.pack_into("<H", mm, Ring.USED + 2, idx & 0xFFFF)
        assert blocked
        reader.start()  # the writer goes on; so does the recorder, then the kick
        assert kick.signalled()
        stats = relay.finish()
        assert stats["stalls"] >= 1 and stats["requests"] == len(sent)
    finally:
        kick.close()
        relay.close()
        if reader.is_alive():
            reader.join(10)
        os.close(r_end)
        mm.close()
        os.close(fd)
    pcap = tmp_path / "piped.pcap"
    pcap.write_bytes(bytes(got))
    frames = [unpack_frame(x.data) for x in read_records(str(pcap))]  # whole, or it raises
    assert [f.data for f in frames if f.direction == Direction.REQUEST] == sent
    assert [f for f in frames if f.direction == Direction.ANNOTATION] == []


def test_a_record_larger_than_the_staging_ring_is_written_in_its_place(tmp_path):
    """A record that does not fit the staging ring is written directly, after what was
    staged before it and before what comes after."""
    r = Ring(str(tmp_path), staging=4096)
    try:
        sizes = (100, 8000, 100)  # (the middle one is larger than the ring)
        for i, size in enumerate(sizes):
            at = r.DATA + 0x4000 * i
            req = struct.pack("<IIQ", size, fuse_opcode.FUSE_WRITE, 50 + i).ljust(size, b"x")
            r.mm[at:at + size] = req
            r.desc(i, r.GPA + at, size, 0)
            r.publish(i)
        r.scan()
        assert [len(b) for _, _, b in r.records] == list(sizes)
        assert [unique_of(b) for _, _, b in r.records] == [50, 51, 52]
        assert r.relay.finish()["stalls"] == 0
    finally:
        r.close()




# -- what the writer meets under an in-place reply ------------------------------------------------

def test_shadow_a_reply_whose_buffer_faults_under_the_writer(tmp_path):
    """Guest memory vanishes while the writer writes a reply from the guest's buffer (the
    memfd truncated under it: writev faults, EFAULT): the record keeps its length, holds
    the bytes before the fault and zeros from there on, an annotation says so, and the
    used entry is still published and the guest called (the VM does not hang)."""
    pipe = PipeCapture()
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0, capture=pipe.w)
    os.close(pipe.w)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    size, keep = 48 << 10, 16 << 10
    try:
        rb, reply = _reply_of_size(r, kick, call, size)
        assert not call.signalled(0.5)  # the writer waits on the pipe, before the body
        os.ftruncate(r.fd, rb + keep)  # (r.mm past this point is not to be touched now)
        deadline = time.monotonic() + 10
        while r.guest_used()[0] == 0 and time.monotonic() < deadline:
            pipe.drain()
        assert call.signalled()
        assert r.guest_used() == (1, [(0, len(reply)), (0, 0), (0, 0), (0, 0)])
        assert r.relay.proc.poll() is None
    finally:
        close_pipe_rig(r, pipe, kick, call)
    frames = pipe.frames()
    assert [f.data for f in frames if f.direction == Direction.REQUEST] == [fuse_request(7)]
    assert pipe.replies() == [reply[:keep] + bytes(len(reply) - keep)]
    assert [f.data.decode() for f in frames if f.direction == Direction.ANNOTATION] == [
        "queue 1: guest memory faulted while a reply was written (written as zeros)"]


class BigRing(Ring):
    """16,384 entries: more replies in flight than the writer's table of replies pending in
    place (SPLICES, 4,096) has room for."""

    NUM = 16384
    DESC, AVAIL, USED, DATA = 0, 0x40000, 0x49000, 0x70000
    SHADOW_SIZE = 0x22000


def test_shadow_more_in_place_replies_than_the_writer_has_room_for(tmp_path):
    """4,100 replies of 16 KiB on a shadowed queue while the writer cannot write (a pipe
    nobody reads): the 4,097th finds the table of replies pending in place full, and the
    recorder waits for the writer (a stall, counted; the staging ring is nowhere near
    full). Once the pipe is read every reply comes out whole, in the daemon's order, and
    every used entry reaches the guest, in order; nothing is dropped or annotated."""
    import fcntl

    pipe = PipeCapture()
    r = BigRing(str(tmp_path), shadow=True, scan_interval=5.0, capture=pipe.w)
    os.close(pipe.w)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    n, size = 4100, 16 << 10
    body = r.DATA + 0x70000  # one body buffer, shared by every chain
    r.mm[body:body + size] = bytes(range(256)) * (size // 256)
    expected = []
    stop = threading.Event()

    def read_on() -> None:
        while not stop.is_set():
            pipe.drain()
            time.sleep(0.001)

    reader = threading.Thread(target=read_on)
    try:
        for i in range(n):
            req, at, hdr = fuse_request(1000 + i), r.DATA + 64 * i, r.DATA + 0x50000 + 16 * i
            r.mm[at:at + len(req)] = req
            r.desc(3 * i, r.GPA + at, len(req), VIRTQ_DESC_F_NEXT, 3 * i + 1)
            r.desc(3 * i + 1, r.GPA + hdr, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                   3 * i + 2)
            r.desc(3 * i + 2, r.GPA + body, size, VIRTQ_DESC_F_WRITE)
            r.publish(3 * i)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled(10)  # (the requests are staged; the pipe holds 4 KiB of them)
        for i in range(n):
            hdr = r.DATA + 0x50000 + 16 * i
            r.mm[hdr:hdr + 16] = struct.pack("<IiQ", 16 + size, 0, 1000 + i)
            r.use(3 * i, 16 + size)
            expected.append(bytes(r.mm[hdr:hdr + 16]) + bytes(r.mm[body:body + size]))
        os.eventfd_write(call.source, 1)
        assert not call.signalled(1.0)  # nothing written, nothing published
        assert r.guest_used()[0] == 0
        fcntl.fcntl(pipe.r, 1031, 1 << 20)  # F_SETPIPE_SZ: read it faster from now on
        reader.start()
        deadline = time.monotonic() + 60
        while r.guest_used()[0] != n and time.monotonic() < deadline:
            time.sleep(0.01)
        idx, entries = r.guest_used()
        assert idx == n
        assert entries[:n] == [(3 * i, 16 + size) for i in range(n)]
        assert call.signalled()
        stats = r.relay.finish()
        assert (stats["requests"], stats["replies"], stats["mirrored"]) == (n, n, n)
        assert stats["stalls"] >= 1
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(10)
        close_pipe_rig(r, pipe, kick, call)
    frames = pipe.frames()
    assert [unique_of(f.data) for f in frames if f.direction == Direction.REQUEST] == [
        1000 + i for i in range(n)]
    assert pipe.replies() == expected
    assert [f.data for f in frames if f.direction == Direction.ANNOTATION] == []


def test_a_record_written_directly_from_memory_that_faults(tmp_path):
    """A record larger than the staging ring, written directly from guest memory whose
    pages past the first are gone (the memfd truncated): the record keeps its length,
    holds the first page's bytes and zeros for the rest, and an annotation says so."""
    r = Ring(str(tmp_path), staging=4096)
    try:
        at, size = r.DATA + 0x10000, 12000
        req = struct.pack("<IIQ", size, fuse_opcode.FUSE_WRITE, 50).ljust(size, b"x")
        r.mm[at:at + size] = req
        r.desc(0, r.GPA + at, size, 0)
        r.publish(0)
        os.ftruncate(r.fd, at + 4096)  # (r.mm past this point is not to be touched now)
        r.scan()
        assert r.records == [(0, QUEUE, req[:4096] + bytes(size - 4096))]
        assert r.notes == ["queue 1: guest memory faulted while a record was written "
                           "(written as zeros)"]
        assert r.relay.proc.poll() is None
    finally:
        r.close()
