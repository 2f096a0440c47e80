"""The capture proxy's data plane (fuseproto/capture/relay*.c) on its own: the real relay
process, fed real mapped memory (a memfd laid out by hand as a split virtqueue) and real
eventfds, its records read back from the pcap file it writes.

* the ring reader follows chains and indirect tables, and what it cannot follow (a
  descriptor out of range or outside guest memory, a loop, an indirect table of a bad
  size, a nested table, an absurd length, index jumps, guest memory that vanishes under
  its mapping, random garbage) becomes an annotation record: never a crash, never a
  record that does not parse;
* the subtle cases of reading a ring one step behind the device (a reply the daemon was
  quick with, a reused buffer, a request read twice, an entry read late) come out as the
  proxy has always recorded them;
* --snaplen cuts records (their length kept) and INIT is still read whole;
* kicks and calls are passed on after their records are in the file; a kick is handed
  back (DEFERRED) while a front-end message waits or is being forwarded; a stalled queue
  is kicked again;
* the file stays valid when the proxy is killed with SIGKILL under load (the relay
  finishes its record and exits), and when the relay itself is killed the proxy forwards
  on, unrecorded, and says so;
* the relay binary is cached by the hash of all its files.
"""

from __future__ import annotations

import mmap
import os
import random
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from fuseproto.capture import decode_capture, read_records, unpack_frame
from fuseproto.capture import relay as relay_mod
from fuseproto.capture.frames import Direction
from fuseproto.capture.proxy import open_capture
from fuseproto.capture.relay import Event, Relay
from fuseproto.transport.virtqueue import (
    VIRTQ_DESC,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_ELEM,
)
from fuseproto.wire import codec
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

QUEUE = 1


class Ring:
    """A 4-entry split virtqueue laid out by hand in a memfd (one region), watched by a
    relay that writes to ``pcap``."""

    GPA, UADDR = 0x10_0000, 0x7000_0000
    DESC, AVAIL, USED, DATA = 0, 0x100, 0x200, 0x1000
    SIZE = 0x200000
    # (shadow=True) the daemon's used ring, in a memfd of its own (as the proxy's)
    SHADOW_UADDR, SHADOW_SIZE, SHADOW_AT = 0x9000_0000, 0x2000, 0x1000

    def __init__(self, folder: str, *, snaplen: int | None = None, shadow: bool = False,
                 base: int = 0, capture: int | None = None, **relay_args) -> None:
        self.fd = os.memfd_create("ring-test")
        os.ftruncate(self.fd, self.SIZE)
        self.mm = mmap.mmap(self.fd, self.SIZE)
        self.pcap = os.path.join(folder, "relay.pcap")
        # (capture: a file descriptor of the caller's to record to instead, a pipe)
        self.out = open_capture(self.pcap, snaplen) if capture is None else None
        self.answers: list[Event] = []  # INIT events seen
        self.on_init = None  # called with the INIT event before the relay is resumed
        self.relay = Relay(self.out.fileno() if self.out else capture, snaplen=snaplen,
                           on_event=self._event, **relay_args)
        self.relay.send("MEM_ADD", 0, self.GPA, self.SIZE, self.UADDR, 0, payload=b"test",
                        fds=[self.fd])
        self.relay.send("VRING_NUM", QUEUE, 4)
        # (with a shadow, in QEMU's order: SET_VRING_BASE before SET_VRING_ADDR)
        self.shadow: mmap.mmap | None = None
        self.shadow_fd = -1
        if shadow:
            self.shadow_fd = os.memfd_create("shadow-test")
            os.ftruncate(self.shadow_fd, self.SHADOW_SIZE)
            self.shadow = mmap.mmap(self.shadow_fd, self.SHADOW_SIZE)
            self.relay.send("SHADOW", 0, self.SHADOW_UADDR, self.SHADOW_SIZE,
                            fds=[self.shadow_fd])
            struct.pack_into("<H", self.mm, self.AVAIL + 2, base)  # a ring used before
            struct.pack_into("<H", self.mm, self.USED + 2, base)
            self.relay.send("VRING_BASE", QUEUE, base)
        self.relay.send("VRING_ADDR", QUEUE, self.UADDR + self.DESC, self.UADDR + self.AVAIL,
                        self.UADDR + self.USED, self.SHADOW_UADDR + self.SHADOW_AT if shadow
                        else 0)
        if shadow:
            assert self.relay.wait_for("SHADOWED").a == 1
        else:
            self.relay.send("VRING_BASE", QUEUE, 0)
        self.relay.send("VRING_START", QUEUE)
        self.avail_idx = self.used_idx = base

    def _event(self, ev: Event) -> None:
        if ev.kind == "INIT":
            self.answers.append(ev)
            if self.on_init is not None:
                self.on_init(ev)
            self.relay.send("RESUME", ev.queue, ev.b, 1)

    def desc(self, i: int, addr: int, ln: int, flags: int, nxt: int = 0,
             table: int | None = None) -> None:
        off = (self.DESC + 16 * i) if table is None else table + 16 * i
        VIRTQ_DESC.pack_into(self.mm, off, addr, ln, flags, nxt)

    def publish(self, head: int) -> None:
        struct.pack_into("<H", self.mm, self.AVAIL + 4 + 2 * (self.avail_idx % 4), head)
        self.avail_idx += 1
        struct.pack_into("<H", self.mm, self.AVAIL + 2, self.avail_idx & 0xFFFF)

    def use(self, head: int, length: int) -> None:
        """A used entry, as the daemon writes it (in the shadow, with one)."""
        mem, used = (self.mm, self.USED) if self.shadow is None else (self.shadow,
                                                                      self.SHADOW_AT)
        VIRTQ_USED_ELEM.pack_into(mem, used + 4 + 8 * (self.used_idx % 4), head, length)
        self.used_idx += 1
        struct.pack_into("<H", mem, used + 2, self.used_idx & 0xFFFF)

    def guest_used(self) -> tuple[int, list[tuple[int, int]]]:
        """The guest's used ring: its index, and its 4 entries."""
        return (struct.unpack_from("<H", self.mm, self.USED + 2)[0],
                [VIRTQ_USED_ELEM.unpack_from(self.mm, self.USED + 4 + 8 * i) for i in range(4)])

    def scan(self) -> None:
        self.relay.send("SCAN", QUEUE)
        self.relay.sync()

    def frames(self) -> list:
        return [unpack_frame(r.data) for r in read_records(self.pcap)]

    @property
    def records(self) -> list[tuple[int, int, bytes]]:
        return [(int(f.direction), f.queue, f.data) for f in self.frames()
                if f.direction != Direction.ANNOTATION]

    @property
    def notes(self) -> list[str]:
        return [f.data.decode() for f in self.frames() if f.direction == Direction.ANNOTATION]

    def close(self) -> None:
        self.relay.close()
        if self.out is not None:
            self.out.close()
        self.mm.close()
        os.close(self.fd)
        if self.shadow is not None:
            self.shadow.close()
            os.close(self.shadow_fd)


@pytest.fixture
def ring(tmp_path) -> Iterator[Ring]:
    r = Ring(str(tmp_path))
    yield r
    r.close()


def unique_of(message: bytes) -> int:
    return int.from_bytes(message[8:16], "little")


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

def _request(unique: int, opcode: int = fuse_opcode.FUSE_GETATTR) -> bytes:
    if opcode == fuse_opcode.FUSE_INIT:
        body = {"major": 7, "minor": 38, "max_readahead": 0, "flags": 0, "flags2": 0,
                "unused": [0] * 11}
        return codec.encode_request(opcode, body, unique=unique)
    return codec.encode_request(fuse_opcode.FUSE_GETATTR, {"getattr_flags": 0, "dummy": 0,
                                "fh": 0}, unique=unique, nodeid=1)


def _chain(ring: Ring, head: int, slot: int, request: bytes) -> tuple[int, int]:
    """A request/reply descriptor pair at ``head`` (and head+1) in data slot ``slot``;
    returns the reply buffer's offset in the memfd and its size."""
    base = ring.DATA + 0x400 * slot
    ring.mm[base:base + len(request)] = request
    ring.desc(head, ring.GPA + base, len(request), VIRTQ_DESC_F_NEXT, head + 1)
    ring.desc(head + 1, ring.GPA + base + 0x200, 0x100, VIRTQ_DESC_F_WRITE)
    return base + 0x200, 0x100


def test_records_a_request_before_a_reply_the_daemon_was_quick_with(ring):
    """The daemon completes a chain made available while the relay was on the avail ring
    (here: while it waited for Python's word on an INIT): its request is still recorded
    first, then its reply."""
    reply_b = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=8, error=-2)
    _chain(ring, 0, 0, _request(6, fuse_opcode.FUSE_INIT))
    rb, _ = _chain(ring, 2, 1, _request(8))
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
    rb, _ = _chain(ring, 0, 0, _request(6))
    ring.publish(0)
    ring.scan()
    if overwritten:
        ring.mm[rb:rb + 40] = _request(10)[:40]  # a new request's bytes in the old buffer
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
    ri, _ = _chain(ring, 2, 1, _request(1, fuse_opcode.FUSE_INIT))
    r0, _ = _chain(ring, 0, 0, _request(6))
    ring.publish(2)
    ring.publish(0)
    ring.scan()
    ring.mm[ri:ri + 16] = init
    ring.use(2, 16)  # the INIT reply: the relay waits for Python there (our moment)
    ring.use(0, 16)  # 6's reply, which the driver takes and reuses its head at once:
    reply10 = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=10, error=-2)

    def meanwhile(ev: Event) -> None:
        if ev.a == 1:
            _chain(ring, 0, 0, _request(10))
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
    _chain(ring, 0, 0, _request(6))
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
    req = _request(242)
    rb, _ = _chain(ring, 0, 0, req)
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
    r0, _ = _chain(ring, 0, 0, _request(408))
    ring.publish(0)
    ring.scan()  # records 408 (read late: head 0 was 406's)
    ring.mm[r0:r0 + 16] = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=406,
                                             error=-2)
    ring.use(0, 16)
    _chain(ring, 0, 1, _request(410))  # head 0 reused for 410
    ring.publish(0)
    r2, _ = _chain(ring, 2, 2, _request(408))  # 408's own entry
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
    rb, _ = _chain(ring, 0, 0, _request(1, fuse_opcode.FUSE_INIT))
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
        init = _request(1, fuse_opcode.FUSE_INIT)
        assert len(init) > 64
        _chain(r, 0, 0, init)
        big = _request(2) + bytes(200)
        rb, _ = _chain(r, 2, 1, big)
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


# -- kicks, calls, and the order of things ----------------------------------------------------------

class Pair:
    """A kick or call eventfd pair handed to the relay: we write ``source`` (as the VMM or
    the daemon would), and read ``sink``."""

    def __init__(self, relay: Relay, ident: int, kind: str) -> None:
        flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
        self.source, self.sink = os.eventfd(0, flags), os.eventfd(0, flags)
        relay.send("NOTIFY_SET", QUEUE, ident, int(kind == "call"), fds=[self.source, self.sink])

    def signalled(self, timeout: float = 2.0) -> bool:
        if not select.select([self.sink], [], [], timeout)[0]:
            return False
        os.eventfd_read(self.sink)
        return True

    def close(self) -> None:
        os.close(self.source)
        os.close(self.sink)


def test_a_kick_and_a_call_are_passed_on_after_their_records(ring):
    kick, call = Pair(ring.relay, 1, "kick"), Pair(ring.relay, 2, "call")
    try:
        rb, _ = _chain(ring, 0, 0, _request(5))
        ring.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        ring.mm[ring.DATA:ring.DATA + 64] = bytes(64)  # the request's buffer, reused at once
        reply = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=5, error=-2)
        ring.mm[rb:rb + 16] = reply
        ring.use(0, 16)
        os.eventfd_write(call.source, 1)
        assert call.signalled()
        ring.mm[rb:rb + 16] = bytes(16)  # and the reply's
        ring.relay.sync()  # (the records are staged before; in the file after a SYNC)
        assert [b for _, _, b in ring.records] == [_request(5), reply]
        stats = ring.relay.finish()
        assert (stats["kicks"], stats["calls"], stats["requests"], stats["replies"]) == (
            1, 1, 1, 1)
    finally:
        kick.close()
        call.close()


@pytest.mark.parametrize("why", ["forwarding", "waiting"])
def test_a_kick_never_overtakes_a_frontend_message(tmp_path, why):
    """While Python forwards a front-end message (FE_BEGIN .. FE_END), or while one waits
    on the VMM's socket, a kick is not passed on: it comes back as DEFERRED, and goes out
    when Python says KICK (after the message)."""
    vmm_ours, vmm_theirs = socket.socketpair()
    events: list[Event] = []
    r = Ring(str(tmp_path), vmm_fd=vmm_ours.fileno())
    r.relay.on_event = events.append
    kick = Pair(r.relay, 1, "kick")
    try:
        if why == "forwarding":
            r.relay.send("FE_BEGIN")
        else:
            vmm_theirs.send(b"a vhost-user message")
        r.relay.sync()
        os.eventfd_write(kick.source, 1)
        deferred = r.relay.wait_for("DEFERRED")
        assert (deferred.queue, deferred.a) == (QUEUE, 1)
        assert not kick.signalled(0.2)
        for _ in range(3):  # more kicks meanwhile: held back, not reported again
            os.eventfd_write(kick.source, 1)
            r.relay.sync()
        if why == "forwarding":
            r.relay.send("FE_END")
        else:
            vmm_ours.recv(100)
        r.relay.send("KICK", QUEUE, 1)
        assert kick.signalled()  # the kick handed back, then the ones held behind it
        r.relay.sync()
        os.eventfd_write(kick.source, 1)  # nothing in the way now: straight through
        assert kick.signalled()
        assert events == []  # one DEFERRED in all
        assert 3 <= r.relay.finish()["kicks"] <= 5  # (writes read together count once)
    finally:
        kick.close()
        r.close()
        vmm_ours.close()
        vmm_theirs.close()


def test_a_stalled_queue_is_kicked_again(tmp_path):
    """A chain pending with no used entry: the relay kicks again after rekick_first, then
    after twice as long, and says so once the daemon answers."""
    logs: list[str] = []
    r = Ring(str(tmp_path), rekick_first=0.1, rekick_max=0.2)
    r.relay.on_event = lambda ev: logs.append(ev.data.decode()) if ev.kind == "LOG" else None
    kick = Pair(r.relay, 1, "kick")
    try:
        rb, _ = _chain(r, 0, 0, _request(5))
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        t0 = time.monotonic()
        assert kick.signalled(2.0) and kick.signalled(2.0)  # two repeated kicks
        assert time.monotonic() - t0 >= 0.25
        r.mm[rb:rb + 16] = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=5,
                                              error=-2)
        r.use(0, 16)
        deadline = time.monotonic() + 5
        while not logs and time.monotonic() < deadline:
            r.relay.sync()
            time.sleep(0.01)
        assert logs and logs[0].startswith("queue 1: the daemon answered after 2 repeated "
                                           "kick(s)"), logs
        assert r.relay.finish()["rekicks"] == 2
    finally:
        kick.close()
        r.close()


@pytest.mark.parametrize("how", ["no-interrupt flag", "event-idx used_event 0",
                                 "waiting for a call", "event-idx waiting for a call"])
def test_a_driver_draining_its_used_ring_is_watched_closely(tmp_path, how):
    """A reply published without a call (the daemon calls for nothing while the driver has
    its interrupts off) is read within a fraction of a millisecond when the driver says it
    drains the ring itself; a driver waiting for its call is not polled for it."""
    r = Ring(str(tmp_path), scan_interval=5.0)
    try:
        if "event-idx" in how:
            r.relay.send("FEATURES", 0, 1 << 29)  # VIRTIO_F_RING_EVENT_IDX
        rb, _ = _chain(r, 0, 0, _request(5))
        r.publish(0)
        r.scan()
        used_event = r.AVAIL + 4 + 2 * 4
        if how == "no-interrupt flag":
            struct.pack_into("<H", r.mm, r.AVAIL, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
        elif how == "event-idx used_event 0":
            struct.pack_into("<H", r.mm, used_event, 0x8000)  # (Linux writes 0: not next)
        elif how == "event-idx waiting for a call":
            struct.pack_into("<H", r.mm, used_event, 0)  # a call for entry 0, the next
        r.relay.sync()
        r.mm[rb:rb + 16] = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=5,
                                              error=-2)
        r.use(0, 16)
        deadline = time.monotonic() + 0.5
        while len(r.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        drains = "waiting" not in how
        assert (len(r.records) == 2) == drains, r.records
    finally:
        r.close()


# -- the shadow used ring (relay_shadow.c) ----------------------------------------------------------

GUEST_AVAIL_EVENT = Ring.USED + 4 + 8 * 4  # avail_event, after the guest's 4 used entries
GUEST_USED_EVENT = Ring.AVAIL + 4 + 2 * 4  # used_event, after the 4 avail entries
EVENT_IDX = 1 << 29  # VIRTIO_F_RING_EVENT_IDX


def _getattr_reply(unique: int) -> bytes:
    return codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=unique, error=-2)


def test_shadow_a_reply_is_recorded_before_the_guest_sees_its_entry(tmp_path):
    """The daemon's used entry is in the shadow: the guest's used ring does not move until
    the relay has the reply (a watcher of the guest's index reuses the reply's buffer the
    moment the index moves, as a draining guest does: the capture still holds the reply),
    and the guest is called."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    try:
        rb, _ = _chain(r, 0, 0, _request(5))
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        r.mm[rb:rb + 16] = _getattr_reply(5)
        r.use(0, 16)  # the daemon's entry, in the shadow
        r.relay.sync()
        assert r.guest_used()[0] == 0 and len(r.records) == 1  # not seen, not recorded

        def watch() -> None:
            deadline = time.monotonic() + 5
            while r.guest_used()[0] == 0 and time.monotonic() < deadline:
                pass
            r.mm[rb:rb + 16] = b"\xee" * 16  # the guest takes it and reuses the buffer

        th = threading.Thread(target=watch)
        th.start()
        os.eventfd_write(call.source, 1)  # the daemon's call
        th.join()
        r.relay.sync()
        assert [b for _, _, b in r.records] == [_request(5), _getattr_reply(5)]
        assert r.guest_used() == (1, [(0, 16), (0, 0), (0, 0), (0, 0)])
        assert call.signalled()
        stats = r.relay.finish()
        assert (stats["replies"], stats["mirrored"], stats["signals"]) == (1, 1, 1)
        assert r.notes == []
    finally:
        kick.close()
        call.close()
        r.close()


@pytest.mark.parametrize("how,called", [
    ("interrupts on", True),
    ("no-interrupt flag", False),
    ("event-idx: the new index passes used_event", True),
    ("event-idx: used_event further on", False),
])
def test_shadow_the_guest_is_called_as_it_asks(tmp_path, how, called):
    """The relay calls the guest itself, as the guest asked: never while it has set
    VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX, when the new used index passes used_event
    (vring_need_event). The entry is published either way."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0)
    call = Pair(r.relay, 2, "call")
    try:
        if "event-idx" in how:
            r.relay.send("FEATURES", 0, EVENT_IDX)
            struct.pack_into("<H", r.mm, GUEST_USED_EVENT, 0 if "passes" in how else 3)
        if how == "no-interrupt flag":
            struct.pack_into("<H", r.mm, r.AVAIL, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
        rb, _ = _chain(r, 0, 0, _request(5))
        r.publish(0)
        r.scan()
        r.mm[rb:rb + 16] = _getattr_reply(5)
        r.use(0, 16)
        os.eventfd_write(call.source, 1)
        assert call.signalled(0.5 if called else 0.3) == called
        r.relay.sync()
        assert r.guest_used()[0] == 1
        assert r.records[-1] == (1, QUEUE, _getattr_reply(5))
    finally:
        call.close()
        r.close()


def test_shadow_entries_reach_the_guest_in_order_across_the_wrap(tmp_path):
    """Replies completed out of order, 12 of them on a 4-entry ring whose indexes cross
    65535 -> 0: each reaches the guest's used ring at its place, in the daemon's order,
    after its record; the records pair one to one."""
    r = Ring(str(tmp_path), shadow=True, base=0xFFFA, scan_interval=5.0)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    try:
        unique = 100
        for _ in range(6):
            bufs = {}
            for head, slot in ((0, 0), (2, 1)):
                unique += 1
                bufs[head] = (_chain(r, head, slot, _request(unique))[0], unique)
                r.publish(head)
            os.eventfd_write(kick.source, 1)
            assert kick.signalled()
            for head in (2, 0):  # the second request completes first
                rb, u = bufs[head]
                r.mm[rb:rb + 16] = _getattr_reply(u)
                r.use(head, 16)
            os.eventfd_write(call.source, 1)
            assert call.signalled()
            r.relay.sync()
            idx, entries = r.guest_used()
            assert idx == r.used_idx & 0xFFFF
            assert [entries[(idx - 2) % 4], entries[(idx - 1) % 4]] == [(2, 16), (0, 16)]
        assert r.used_idx & 0xFFFF == 6  # (0xFFFA + 12, wrapped)
        replies = [unique_of(b) for d, _, b in r.records if d == 1]
        assert replies == [u for k in range(6) for u in (102 + 2 * k, 101 + 2 * k)]
        assert r.notes == []
    finally:
        kick.close()
        call.close()
        r.close()


def test_shadow_the_guest_kicks_for_what_the_relay_has_not_read(tmp_path):
    """With EVENT_IDX the guest's avail_event says how far the relay has read the avail
    ring (the guest kicks for anything newer), and entries the relay reads on its own
    (the periodic scan, not a kick) get a kick of the relay's own to the daemon."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=0.005)
    kick = Pair(r.relay, 1, "kick")
    try:
        r.relay.send("FEATURES", 0, EVENT_IDX)
        _chain(r, 0, 0, _request(5))
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        r.relay.sync()
        assert struct.unpack_from("<H", r.mm, GUEST_AVAIL_EVENT)[0] == 1
        _chain(r, 2, 1, _request(6))
        r.publish(2)  # no kick: the periodic scan reads it, and kicks the daemon
        assert kick.signalled()
        assert [unique_of(b) for _, _, b in r.records] == [5, 6]
        assert struct.unpack_from("<H", r.mm, GUEST_AVAIL_EVENT)[0] == 2
    finally:
        kick.close()
        r.close()


def test_shadow_declined_where_the_guest_ring_cannot_be_written(tmp_path):
    """A shadow the relay cannot use is declined with the reason (the proxy then forwards
    SET_VRING_ADDR unchanged): the guest's used ring outside guest memory, an offer
    outside the shadow."""
    r = Ring(str(tmp_path), shadow=True)
    try:
        r.relay.send("VRING_NUM", 2, 4)
        for used, offer, why in ((0xdead0000, r.SHADOW_UADDR, b"0xdead0000"),
                                 (r.UADDR + 0x800, 0x1234_0000, b"no shadow at 0x12340000")):
            r.relay.send("VRING_ADDR", 2, r.UADDR + r.DESC, r.UADDR + r.AVAIL, used, offer)
            ev = r.relay.wait_for("SHADOWED")
            assert (ev.queue, ev.a) == (2, 0) and why in ev.data, ev
    finally:
        r.close()

# -- the writer thread (relay_out.c) --------------------------------------------------------------

class PipeCapture:
    """A capture written to a small pipe that nobody reads until :meth:`drain` (the
    writer thread blocks in its write meanwhile)."""

    def __init__(self) -> None:
        import fcntl

        from fuseproto.capture.frames import FRAME_HEADER, LINKTYPE_FUSE
        from fuseproto.capture.pcap import DEFAULT_MAX_CAPLEN, PcapWriter
        self.r, self.w = os.pipe()
        fcntl.fcntl(self.w, 1031, 4096)  # F_SETPIPE_SZ: a small pipe
        with os.fdopen(os.dup(self.w), "wb", buffering=0) as head:
            PcapWriter(head, LINKTYPE_FUSE, snaplen=DEFAULT_MAX_CAPLEN + FRAME_HEADER.size)
        os.set_blocking(self.r, False)
        self.got = bytearray()

    def drain(self, once: bool = False) -> None:
        """Read what the pipe holds (once: what it holds now, one read of it)."""
        while True:
            try:
                chunk = os.read(self.r, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.got.extend(chunk)
            if once:
                return

    def frames(self) -> list:
        """The whole records read so far."""
        out, at = [], 24  # (the pcap file header)
        while at + 16 <= len(self.got):
            incl = struct.unpack_from("<I", self.got, at + 8)[0]
            if at + 16 + incl > len(self.got):
                break
            out.append(unpack_frame(bytes(self.got[at + 16:at + 16 + incl])))
            at += 16 + incl
        return out

    def replies(self) -> list[bytes]:
        return [f.data for f in self.frames() if f.direction == Direction.REPLY]

    def close(self) -> None:
        os.close(self.r)


def _close_pipe_rig(r: Ring, pipe: PipeCapture, *pairs: Pair) -> None:
    """The relay stopped (its writer's last records drained from the pipe), then the
    rest; the pipe's records stay readable (``pipe.got``)."""
    for p in pairs:
        p.close()
    r.relay.close()
    pipe.drain()
    r.close()
    pipe.close()


def _big_chain(r: Ring, head: int, slot: int, unique: int, size: int) -> int:
    """A request and a writable buffer for a reply of ``size`` bytes at ``head`` (and
    head+1); returns the buffer's offset in the memfd."""
    base = r.DATA + 0x400 * slot
    req = _request(unique)
    r.mm[base:base + len(req)] = req
    rb = 0x10000 * (slot + 1)
    r.desc(head, r.GPA + base, len(req), VIRTQ_DESC_F_NEXT, head + 1)
    r.desc(head + 1, r.GPA + rb, 16 + size, VIRTQ_DESC_F_WRITE)
    return rb


def _read_reply(unique: int, size: int, fill: int) -> bytes:
    return struct.pack("<IiQ", 16 + size, 0, unique) + bytes([fill]) * size


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
        rb = _big_chain(r, 0, 0, 7, size)
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        reply = _read_reply(7, size, 0x5A)
        r.mm[rb:rb + len(reply)] = reply
        r.use(0, len(reply))
        os.eventfd_write(call.source, 1)
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
                _request(7)]
    finally:
        _close_pipe_rig(r, pipe, kick, call)
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
                bufs[head] = (_big_chain(r, head, slot, unique, size), unique)
                r.publish(head)
            os.eventfd_write(kick.source, 1)
            assert kick.signalled()
            for head in (2, 0):  # the second request completes first
                rb, u = bufs[head]
                reply = _read_reply(u, size, (u * 7) % 251)
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
        _close_pipe_rig(r, pipe, kick, call)
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


# -- through the proxy, against real daemons ----------------------------------------------------------

def _loaded_client(proxy, stop: threading.Event, errors: list) -> threading.Thread:
    """READs of 128 KiB, 16 in flight, until the connection breaks or ``stop``."""
    from fuseproto.client import Client
    from fuseproto.transport.vhost_user import VhostUserTransport

    def run() -> None:
        try:
            with VhostUserTransport(proxy.listen, mode="interrupt", timeout=10.0) as t:
                c = Client(t)
                c.init()
                e = c.lookup(FUSE_ROOT_ID, "big")
                fh = c.open(e.nodeid).fh
                n = 0
                while not stop.is_set():
                    pend = [c.submit_read(e.nodeid, fh, (n + i) % 16 * (128 << 10), 128 << 10)
                            for i in range(16)]
                    for p in pend:
                        c.result(p)
                    n += 16
                    errors.append(n)
        except Exception as ex:  # noqa: BLE001 -- the connection ends with the proxy
            errors.append(ex)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _relay_pid(proxy) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children") as f:
            kids = f.read().split()
        for k in kids:
            with open(f"/proc/{k}/comm") as f:
                if f.read().startswith("relay-"):
                    return int(k)
        time.sleep(0.01)
    raise AssertionError("no relay process")


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.daemon
@pytest.mark.parametrize("run", range(3))
def test_sigkill_of_the_proxy_under_load_leaves_a_valid_capture(run, shared_dir, scratch_dir,
                                                                 daemon_installations):
    """SIGKILL of the proxy while 128 KiB READ replies stream into the capture: the relay
    (not the process killed) finishes the record it is writing and exits; every record in
    the file parses and decodes."""
    from test_capture_proxy import Proxy

    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(os.urandom(2 << 20))
    proxy = Proxy(scratch_dir, "--daemon", "rust", "--shared-dir", shared_dir)
    stop, progress = threading.Event(), []
    th = _loaded_client(proxy, stop, progress)
    relay_pid = _relay_pid(proxy)
    deadline = time.monotonic() + 20
    while sum(1 for p in progress if isinstance(p, int)) < 3 + run and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(run).random() * 0.05)
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.wait()
    stop.set()
    th.join(20)
    _wait_gone(relay_pid)
    started = next(ln for ln in proxy.stderr.splitlines() if " started " in ln)
    _wait_gone(int(started.split(" pid ")[1].split()[0]))  # the daemon, by its connection
    records = list(read_records(proxy.pcap))  # raises on a record cut short
    assert len(records) > 2 * 16 * 3
    msgs = list(decode_capture(proxy.pcap))
    assert [m for m in msgs if m.error is not None] == []
    import shutil
    shutil.rmtree(os.path.dirname(started.rsplit(" on ", 1)[1]), ignore_errors=True)


@pytest.mark.daemon
def test_ctrl_c_to_the_process_group_under_load(shared_dir, scratch_dir, daemon_installations):
    """A Ctrl-C reaches every process of the terminal's group, the relay too: it leaves the
    ending to the proxy (which closes the capture and exits 0) and never stops mid-record."""
    from test_capture_proxy import Proxy

    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(os.urandom(2 << 20))

    class GroupProxy(Proxy):  # in a process group of its own, as in a terminal
        def __init__(self, *args: str) -> None:
            real = subprocess.Popen
            subprocess.Popen = lambda *a, **kw: real(*a, start_new_session=True, **kw)
            try:
                super().__init__(*args)
            finally:
                subprocess.Popen = real

    proxy = GroupProxy(scratch_dir, "--daemon", "c", "--shared-dir", shared_dir)
    try:
        stop, progress = threading.Event(), []
        th = _loaded_client(proxy, stop, progress)
        relay_pid = _relay_pid(proxy)
        deadline = time.monotonic() + 20
        while sum(1 for p in progress if isinstance(p, int)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proxy.proc.pid, signal.SIGINT)
        assert proxy.wait() == 0, proxy.stderr
        stop.set()
        th.join(20)
        _wait_gone(relay_pid)
    finally:
        proxy.stop()
    assert "SIGINT: capture closed" in proxy.stderr, proxy.stderr
    assert "data plane" not in proxy.stderr  # the relay was not lost on the way
    msgs = list(decode_capture(proxy.pcap))
    assert len(msgs) > 4 * 16 and [m for m in msgs if m.error is not None] == []


@pytest.mark.daemon
def test_the_proxy_forwards_on_when_the_relay_dies(shared_dir, scratch_dir,
                                                   daemon_installations, no_leaks):
    """SIGKILL of the relay itself: the VM must not hang. The proxy forwards kicks and
    calls from then on (unrecorded), says so on stderr and in an annotation, and the file
    stays valid (cut back to the last whole record)."""
    from test_capture_proxy import Proxy, connect

    from fuseproto.client import Client

    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(os.urandom(2 << 20))
    proxy = Proxy(scratch_dir, "--daemon", "c", "--shared-dir", shared_dir)
    try:
        with connect(proxy.listen) as t:
            c = Client(t)
            c.init()
            e = c.lookup(FUSE_ROOT_ID, "big")
            fh = c.open(e.nodeid).fh
            os.kill(_relay_pid(proxy), signal.SIGKILL)
            for i in range(40):  # READs on, through the proxy alone
                pend = [c.submit_read(e.nodeid, fh, (i + k) % 16 * (128 << 10), 128 << 10)
                        for k in range(4)]
                assert all(len(c.result(p).data) == 128 << 10 for p in pend)
            assert c.getattr(FUSE_ROOT_ID).attr.ino
        assert proxy.wait() == 0, proxy.stderr
    finally:
        proxy.stop()
    assert "the proxy's data plane (relay pid" in proxy.stderr
    msgs = list(decode_capture(proxy.pcap))
    assert [m for m in msgs if m.error is not None] == []
    notes = [m.raw.decode() for m in msgs if m.kind == "annotation"]
    assert any("forwarded unrecorded from here on" in n for n in notes), notes


# -- the binary ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["-O2", "-O1", "-O0"])
def test_the_relay_builds_without_a_warning(tmp_path, opt):
    """The relay's files compile with no warning (-Wall -Wextra) at each optimization level
    (the runtime build does not use -Werror: a newer compiler's new warning must not stop
    the proxy; this test is where warnings fail)."""
    flags = [f for f in relay_mod.CFLAGS if not f.startswith("-O")]
    out = subprocess.run(["gcc", opt, *flags, "-Werror", "-o", str(tmp_path / "relay"),
                          *relay_mod.compile_units()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("edit", relay_mod.SOURCES)
def test_the_relay_is_built_once_per_source(tmp_path, monkeypatch, edit):
    """The cached binary is keyed by the bytes of every one of the relay's files (and the
    flags): the same sources find it again without gcc; an edit to any one of them (the
    header too) is rebuilt beside it."""
    monkeypatch.setenv("FUSEPROTO_CACHE", str(tmp_path / "cache"))
    first = relay_mod.executable()
    assert first.is_file() and first.parent == tmp_path / "cache" / "relay"
    monkeypatch.setenv("PATH", "/nonexistent")  # no compiler now: the cached one is used
    assert relay_mod.executable() == first
    edited = tmp_path / "src"
    edited.mkdir()
    for name in relay_mod.SOURCES:
        data = (relay_mod.SOURCE_DIR / name).read_bytes()
        (edited / name).write_bytes(data + b"\n/* edited */\n" if name == edit else data)
    monkeypatch.setattr(relay_mod, "SOURCE_DIR", edited)
    with pytest.raises(relay_mod.RelayError, match="gcc"):
        relay_mod.executable()  # rebuilt: needs the compiler
    monkeypatch.setenv("PATH", os.defpath)
    second = relay_mod.executable()
    assert second != first and second.is_file()
    out = subprocess.run([str(second)], capture_output=True, text=True)
    assert out.returncode != 0 and "usage" in out.stderr
