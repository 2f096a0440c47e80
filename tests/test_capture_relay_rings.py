"""The capture relay reading the rings (fuseproto/capture/relay_ring.c, relay_mem.c) with
the rig of tests/relay_rig.py:

* the ring reader follows chains and indirect tables, and what it cannot follow (a
  descriptor out of range or outside guest memory, a loop, an indirect table of a bad
  size, a nested table, an absurd length, index jumps, guest memory that vanishes under
  its mapping, random garbage) becomes an annotation record: never a crash, never a
  record that does not parse;
* the subtle cases of reading a ring one step behind the device (a reply the daemon was
  quick with, a reused buffer, a request read twice, an entry read late) come out as the
  proxy has always recorded them;
* --snaplen cuts records (their length kept) and INIT is still read whole.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from relay_rig import (
    QUEUE,
    Ring,
    add_chain,
    fuse_request,
    unique_of,
)

from fuseproto.capture import read_records, unpack_frame
from fuseproto.capture.relay import Event
from fuseproto.transport.virtqueue import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode

# -- chains, and what cannot be read ------------------------------------------------------------

def test_follows_chains_and_indirect_tables(ring):
    g = ring.GPA + ring.DATA
    ring.mm[ring.DATA:ring.DATA + 48] = bytes(range(48))
    ring.desc(0, g, 40, VIRTQ_DESC_F_NEXT, 1)
    ring.desc(1, g + 40, 8, VIRTQ_DESC_F_NEXT, 2)
    ring.desc(2, g + 0x100, 64, VIRTQ_DESC_F_WRITE)
    # an indirect table at DATA+0x800: one readable, two writable entries
    table = ring.DATA + 0x800
    ring.desc(3, ring.GPA + table, 48, VIRTQ_DESC_F_INDIRECT)
    ring.desc(0, g, 16, VIRTQ_DESC_F_NEXT, 1, table=table)
    ring.desc(1, g + 0x200, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2, table=table)
    ring.desc(2, g + 0x300, 8, VIRTQ_DESC_F_WRITE, 0, table=table)
    ring.publish(0)
    ring.publish(3)
    ring.scan()
    assert ring.records == [(0, 1, bytes(range(48))), (0, 1, bytes(range(16)))]
    ring.mm[ring.DATA + 0x200:ring.DATA + 0x208] = b"A" * 8
    ring.mm[ring.DATA + 0x300:ring.DATA + 0x308] = b"B" * 8
    ring.use(3, 12)  # used.len spans both writable buffers of the indirect chain
    ring.scan()
    assert ring.records[-1] == (1, 1, b"A" * 8 + b"B" * 4)
    assert ring.notes == []


@pytest.mark.parametrize("fault,expect", [
    ("loop", "chain longer than 4 descriptors (a loop?)"),
    ("out-of-range", "descriptor index 9 out of range (4)"),
    ("outside-memory", "guest address 0xdead0000 (of a 8-byte buffer) is not in guest memory"),
    ("indirect-outside-memory", "guest address 0xdead0000+0x20 is not in guest memory"),
    ("nested-indirect", "an indirect descriptor inside an indirect table"),
    ("bad-table", "indirect table of 20 bytes (not a multiple of 16)"),
    ("empty-table", "indirect table of 0 bytes (not a multiple of 16)"),
    ("indirect-loop", "chain longer than 2 descriptors (a loop?)"),
    ("huge-indirect-loop", "chain longer than 65536 descriptors (a loop?)"),
    ("readable-after-writable", "a device-readable descriptor after a writable one"),
    ("huge", "4294967295 device-readable bytes, more than the proxy records (16777216)"),
    ("crosses-the-end", "guest address 0x300000 (of a 16-byte buffer) is not in guest memory"),
])
def test_annotates_what_it_cannot_read(ring, fault, expect):
    """Chains no daemon would accept: the relay notes them, records nothing for them, and
    goes on with the next chain."""
    g = ring.GPA + ring.DATA
    table = ring.DATA + 0x800
    if fault == "loop":
        ring.desc(0, g, 8, VIRTQ_DESC_F_NEXT, 2)
        ring.desc(2, g, 8, VIRTQ_DESC_F_NEXT, 0)
    elif fault == "out-of-range":
        ring.desc(0, g, 8, VIRTQ_DESC_F_NEXT, 9)
    elif fault == "outside-memory":
        ring.desc(0, 0xDEAD_0000, 8, 0)
    elif fault == "indirect-outside-memory":
        ring.desc(0, 0xDEAD_0000, 32, VIRTQ_DESC_F_INDIRECT)
    elif fault == "nested-indirect":
        ring.desc(0, ring.GPA + table, 16, VIRTQ_DESC_F_INDIRECT)
        ring.desc(0, ring.GPA + table, 16, VIRTQ_DESC_F_INDIRECT, table=table)
    elif fault == "bad-table":
        ring.desc(0, ring.GPA + table, 20, VIRTQ_DESC_F_INDIRECT)
    elif fault == "empty-table":
        ring.desc(0, ring.GPA + table, 0, VIRTQ_DESC_F_INDIRECT)
    elif fault == "indirect-loop":
        ring.desc(0, ring.GPA + table, 32, VIRTQ_DESC_F_INDIRECT)
        ring.desc(0, g, 8, VIRTQ_DESC_F_NEXT, 1, table=table)
        ring.desc(1, g, 8, VIRTQ_DESC_F_NEXT, 0, table=table)
    elif fault == "huge-indirect-loop":  # a table of 126,720 entries, entry 0 its own next
        at = ring.DATA + 0x10000
        ring.desc(0, ring.GPA + at, ring.SIZE - at, VIRTQ_DESC_F_INDIRECT)
        ring.desc(0, g, 8, VIRTQ_DESC_F_NEXT, 0, table=at)
    elif fault == "readable-after-writable":
        ring.desc(0, g, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2)
        ring.desc(2, g, 8, 0)
    elif fault == "huge":
        ring.desc(0, g, 0xFFFF_FFFF, 0)
    elif fault == "crosses-the-end":
        ring.desc(0, ring.GPA + ring.SIZE - 16, 32, 0)  # the last 16 bytes, and beyond
    ring.publish(0)
    ring.desc(1, g, 4, 0)  # a good chain after the bad one
    ring.mm[ring.DATA:ring.DATA + 4] = b"good"
    ring.publish(1)
    ring.scan()
    assert len(ring.notes) == 1, ring.notes
    assert ring.notes[0] == f"queue 1 avail head 0: request not recorded: {expect}"
    assert ring.records == [(0, 1, b"good")]
    assert ring.relay.proc.poll() is None


def test_notes_index_jumps_and_bad_used_entries(ring):
    struct.pack_into("<H", ring.mm, ring.AVAIL + 2, 77)  # avail.idx jumps by 77 > size 4
    ring.scan()
    assert ring.notes[-1] == ("queue 1: avail.idx moved from 0 to 77, more than the queue "
                              "size 4; those entries are not recorded")
    ring.use(2, 5)  # a used entry for a chain never made available
    ring.desc(2, ring.GPA + ring.DATA, 8, VIRTQ_DESC_F_WRITE)
    ring.scan()
    assert "its chain was not read when it was made available" in ring.notes[-1]
    struct.pack_into("<H", ring.mm, ring.USED + 2, 900)  # used.idx jumps
    ring.scan()
    assert "used.idx moved from 1 to 900" in ring.notes[-1]
    assert ring.records == []  # a reply that would pair with nothing is not recorded


@pytest.mark.parametrize("where,expect", [
    ("ring", "queue 1 not observed: frontend address 0x701ffff0+0x40 is not in guest memory"),
    ("size", "queue 1 not observed: queue size 6 is not a power of two <= 32768"),
])
def test_a_ring_outside_memory_is_not_observed(ring, where, expect):
    """A ring the relay cannot place is noted once; a new memory table makes it look again."""
    if where == "ring":
        ring.relay.send("VRING_ADDR", QUEUE, ring.UADDR + ring.SIZE - 0x10, ring.UADDR + ring.AVAIL,
                        ring.UADDR + ring.USED)
    else:
        ring.relay.send("VRING_NUM", QUEUE, 6)
    ring.scan()
    ring.scan()
    assert ring.notes == [expect]
    ring.relay.send("VRING_NUM", QUEUE, 4)
    ring.relay.send("VRING_ADDR", QUEUE, ring.UADDR + ring.DESC, ring.UADDR + ring.AVAIL,
                    ring.UADDR + ring.USED)
    ring.desc(0, ring.GPA + ring.DATA, 4, 0)
    ring.mm[ring.DATA:ring.DATA + 4] = b"back"
    ring.publish(0)
    ring.scan()
    assert ring.records == [(0, 1, b"back")]


@pytest.mark.parametrize("seed", range(6))
def test_random_rings_never_crash_it(tmp_path, seed):
    """Garbage in the descriptor table, the avail and used rings (and a memory table that
    changes under them): every scan ends, the relay stays up, the file parses and holds
    only whole records."""
    rng = random.Random(seed)
    r = Ring(str(tmp_path))
    try:
        for step in range(60):
            what = rng.randrange(6)
            if what == 0:  # a descriptor table of random bytes, mostly plausible addresses
                for i in range(4):
                    addr = rng.choice([r.GPA + rng.randrange(0x10000), rng.getrandbits(64),
                                       r.GPA + r.SIZE - rng.randrange(64)])
                    r.desc(i, addr, rng.choice([0, 8, 16, 40, 4096, rng.getrandbits(32)]),
                           rng.getrandbits(3), rng.randrange(8))
            elif what == 1:
                r.mm[r.AVAIL:r.AVAIL + 16] = rng.randbytes(16)
            elif what == 2:
                r.mm[r.USED:r.USED + 40] = rng.randbytes(40)
            elif what == 3:  # indirect tables in the data area
                off = r.DATA + 16 * rng.randrange(200)
                r.mm[off:off + 64] = rng.randbytes(64)
            elif what == 4:
                r.publish(rng.randrange(6))
            else:
                r.relay.send("VRING_BASE", QUEUE, rng.getrandbits(16))
            r.relay.send("SCAN", QUEUE)
            if step % 10 == 9:
                r.relay.sync()
        r.relay.sync()
        assert r.relay.proc.poll() is None
        r.relay.send("MEM_CLEAR")
        r.relay.send("SCAN", QUEUE)
        r.relay.sync()
        frames = r.frames()  # raises if a record is cut
        assert frames and all(f.direction in (0, 1, 3) for f in frames)
    finally:
        r.close()


def test_guest_memory_gone_from_under_the_mapping(ring):
    """The memfd shrinks under the relay's mapping (SIGBUS on a read): the queue is no
    longer observed, an annotation says why, and the relay carries on."""
    ring.desc(0, ring.GPA + ring.DATA + 0x4000, 64, 0)
    ring.publish(0)
    os.ftruncate(ring.fd, 0x1000)  # the rings stay, the data page goes
    ring.scan()
    assert ring.notes == ["queue 1: proxy error while reading the rings, no longer observed: "
                          "SIGBUS (guest memory gone from under its mapping)"]
    assert ring.records == []
    ring.relay.sync()
    assert ring.relay.proc.poll() is None



# -- reading one step behind the device -----------------------------------------------------------


def test_records_a_request_before_a_reply_the_daemon_was_quick_with(ring):
    """The daemon completes a chain made available while the relay was on the avail ring
    (here: while it waited for Python's word on an INIT): its request is still recorded
    first, then its reply."""
    reply_b = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=8, error=-2)
    add_chain(ring, 0, 0, fuse_request(6, fuse_opcode.FUSE_INIT))
    rb, _ = add_chain(ring, 2, 1, fuse_request(8))
    ring.mm[rb:rb + len(reply_b)] = reply_b

    def meanwhile(ev: Event) -> None:  # B published and completed
        ring.publish(2)
        ring.use(2, len(reply_b))

    ring.on_init = meanwhile
    ring.publish(0)
    ring.scan()
    assert [(d, unique_of(b)) for d, _, b in ring.records] == [(0, 6), (0, 8), (1, 8)]
    assert [(e.a, unique_of(e.data)) for e in ring.answers] == [(0, 6)]
    assert ring.notes == []


@pytest.mark.parametrize("overwritten", [True, False])
def test_tells_a_reused_buffer_from_a_wrong_unique(ring, overwritten):
    """A reply under another unique: a buffer the driver took and reused (its length field
    is not used.len) is annotated, not recorded; a daemon that names the wrong unique in an
    otherwise consistent reply is recorded as it sent it, and annotated."""
    rb, _ = add_chain(ring, 0, 0, fuse_request(6))
    ring.publish(0)
    ring.scan()
    if overwritten:
        ring.mm[rb:rb + 40] = fuse_request(10)[:40]  # a new request's bytes in the old buffer
        ring.use(0, 16)
    else:
        wrong = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=7, error=-2)
        ring.mm[rb:rb + 16] = wrong
        ring.use(0, 16)
    ring.scan()
    if overwritten:
        assert ring.records[1:] == []
        assert "the reply to unique 6 is not recorded" in ring.notes[0]
    else:
        assert unique_of(ring.records[1][2]) == 7
        assert "names unique 7, the chain's request was unique 6" in ring.notes[0]


def test_a_head_made_available_again_while_its_reply_was_read(ring):
    """Between the relay's look at the avail ring and its read of a used entry's buffer,
    the driver takes the reply, makes the head available again for a new request, and the
    daemon (polling: no kick needed) already wrote that request's whole reply there: not
    recorded as the old request's reply (nor as a daemon naming the wrong unique), and
    the new request and its reply are recorded in their turn."""
    init = codec.encode_reply(fuse_opcode.FUSE_INIT, None, unique=1, error=-22)
    ri, _ = add_chain(ring, 2, 1, fuse_request(1, fuse_opcode.FUSE_INIT))
    r0, _ = add_chain(ring, 0, 0, fuse_request(6))
    ring.publish(2)
    ring.publish(0)
    ring.scan()
    ring.mm[ri:ri + 16] = init
    ring.use(2, 16)  # the INIT reply: the relay waits for Python there (our moment)
    ring.use(0, 16)  # 6's reply, which the driver takes and reuses its head at once:
    reply10 = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=10, error=-2)

    def meanwhile(ev: Event) -> None:
        if ev.a == 1:
            add_chain(ring, 0, 0, fuse_request(10))
            ring.publish(0)
            ring.mm[r0:r0 + 16] = reply10

    ring.on_init = meanwhile
    ring.scan()  # (the rings moved while it read them: it reads them again, 10 included)
    assert [(d, unique_of(b)) for d, _, b in ring.records] == [(0, 1), (0, 6), (1, 1), (0, 10)]
    assert ring.notes == [
        "queue 1 used head 0: the reply to unique 6 is not recorded: the driver took it and "
        "made the head available again (unique 10), whose reply was in the buffer already "
        "when the proxy read it"]
    ring.use(0, 16)
    ring.scan()
    assert [(d, unique_of(b)) for d, _, b in ring.records][4:] == [(1, 10)]
    assert len(ring.notes) == 1


def test_does_not_record_past_the_chain_it_read(ring):
    """used.len larger than the writable bytes of the chain read at that head: not the
    chain the daemon completed (reused before the proxy read it): annotated, not recorded."""
    add_chain(ring, 0, 0, fuse_request(6))
    ring.publish(0)
    ring.scan()
    ring.use(0, 0x100 + 16)
    ring.scan()
    assert ring.records[1:] == []
    assert "the reply to unique 6 is not recorded: used.len 272 exceeds" in ring.notes[0]


def test_records_a_request_read_twice_once(ring):
    """An old avail entry read late (its descriptors already reused for a newer request,
    made available at another head) reads as that newer request: it is recorded once,
    annotated, and the reply pairs with the newer head."""
    req = fuse_request(242)
    rb, _ = add_chain(ring, 0, 0, req)
    ring.publish(0)
    ring.desc(2, ring.GPA + ring.DATA, len(req), VIRTQ_DESC_F_NEXT, 3)  # same buffers
    ring.desc(3, ring.GPA + rb, 0x100, VIRTQ_DESC_F_WRITE)
    ring.publish(2)
    ring.scan()
    assert [unique_of(b) for _, _, b in ring.records] == [242]
    assert "avail head 0 was read after the driver had reused" in ring.notes[0]
    reply = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=242, error=-2)
    ring.mm[rb:rb + len(reply)] = reply
    ring.use(2, len(reply))
    ring.scan()
    assert ring.records[-1] == (1, 1, reply)


def test_a_late_read_entry_then_its_own_reply(ring):
    """Head 0 read late holds request 408 (a later chain's, whose own entry is head 2);
    head 0's used entry then brings a whole reply to 406: neither 406 nor a second copy
    of 408 is recorded, and 408's reply pairs with the one 408 request recorded."""
    r0, _ = add_chain(ring, 0, 0, fuse_request(408))
    ring.publish(0)
    ring.scan()  # records 408 (read late: head 0 was 406's)
    ring.mm[r0:r0 + 16] = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=406,
                                             error=-2)
    ring.use(0, 16)
    add_chain(ring, 0, 1, fuse_request(410))  # head 0 reused for 410
    ring.publish(0)
    r2, _ = add_chain(ring, 2, 2, fuse_request(408))  # 408's own entry
    ring.publish(2)
    ring.scan()
    reply = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=408, error=-2)
    ring.mm[r2:r2 + 16] = reply
    ring.use(2, 16)
    ring.scan()
    assert [(d, unique_of(b)) for d, _, b in ring.records] == [(0, 408), (0, 410), (1, 408)]
    assert "avail head 0 was read late" in ring.notes[0]
    assert "unique 408 made available at head 2: recorded once already" in ring.notes[1]
    assert len(ring.notes) == 2


def test_pseudo_headers_carry_the_opcode_and_the_minor_python_gives(ring):
    """The opcode hint of a reply is its request's; the minor appears once Python has
    answered the INIT reply (MINOR), on every record after it, annotations included."""
    rb, _ = add_chain(ring, 0, 0, fuse_request(1, fuse_opcode.FUSE_INIT))
    ring.publish(0)
    ring.scan()
    ring.on_init = lambda ev: ring.relay.send("MINOR", a=36)
    ring.mm[rb:rb + 16] = codec.encode_reply(fuse_opcode.FUSE_INIT, None, unique=1, error=-22)
    ring.use(0, 16)
    ring.scan()
    ring.relay.send("ANNOTATE", 7, 1234, payload=b"from python")
    ring.relay.sync()
    frames = ring.frames()
    assert [(f.direction, f.opcode_hint, f.minor_hint) for f in frames] == [
        (0, fuse_opcode.FUSE_INIT, None), (1, fuse_opcode.FUSE_INIT, None), (3, None, 36)]
    assert [e.a for e in ring.answers] == [0, 1]  # the request, then its reply
    rec = list(read_records(ring.pcap))[-1]
    assert (rec.ts_ns, frames[-1].queue, frames[-1].data) == (1234, 7, b"from python")


# -- snaplen ----------------------------------------------------------------------------------------

def test_snaplen_cuts_records_and_keeps_their_length(tmp_path):
    """--snaplen 64: a request and a reply longer than that are cut to 64 bytes (their
    length kept), a short one is whole; an INIT is still handed to Python whole."""
    r = Ring(str(tmp_path), snaplen=64)
    try:
        init = fuse_request(1, fuse_opcode.FUSE_INIT)
        assert len(init) > 64
        add_chain(r, 0, 0, init)
        big = fuse_request(2) + bytes(200)
        rb, _ = add_chain(r, 2, 1, big)
        r.publish(0)
        r.publish(2)
        r.scan()
        reply = struct.pack("<IiQ", 16 + 200, 0, 2) + bytes(range(200))
        r.mm[rb:rb + len(reply)] = reply
        r.use(2, len(reply))
        r.scan()
        recs = list(read_records(r.pcap))
        assert [(len(x.data) - 16, x.orig_len - 16) for x in recs] == [
            (64, len(init)), (64, len(big)), (64, len(reply))]
        assert r.answers[0].data == init  # whole, whatever the snaplen
        assert [unpack_frame(x.data).data for x in recs][2] == reply[:64]
    finally:
        r.close()


