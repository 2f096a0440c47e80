"""The rig of tests/test_capture_relay_*.py: the capture proxy's data plane
(fuseproto/capture/relay*.c) on its own, fed real mapped memory (a memfd laid out by hand
as a split virtqueue) and real eventfds, its records read back from the pcap file (or
pipe) it writes. The ``ring`` fixture is imported by tests/conftest.py."""

from __future__ import annotations

import mmap
import os
import select
import struct
from collections.abc import Iterator

import pytest

from fuseproto.capture import read_records, unpack_frame
from fuseproto.capture.frames import Direction
from fuseproto.capture.proxy import open_capture
from fuseproto.capture.relay import Event, Relay
from fuseproto.transport.virtqueue import (
    VIRTQ_DESC,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_ELEM,
)
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode

QUEUE = 1


class Ring:
    """A 4-entry split virtqueue laid out by hand in a memfd (one region), watched by a
    relay that writes to ``pcap``. (A subclass may lay out a larger one: NUM entries.)"""

    NUM = 4
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
        self.relay.send("VRING_NUM", QUEUE, self.NUM)
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
        struct.pack_into("<H", self.mm, self.AVAIL + 4 + 2 * (self.avail_idx % self.NUM), head)
        self.avail_idx += 1
        struct.pack_into("<H", self.mm, self.AVAIL + 2, self.avail_idx & 0xFFFF)

    def use(self, head: int, length: int) -> None:
        """A used entry, as the daemon writes it (in the shadow, with one)."""
        mem, used = (self.mm, self.USED) if self.shadow is None else (self.shadow,
                                                                      self.SHADOW_AT)
        VIRTQ_USED_ELEM.pack_into(mem, used + 4 + 8 * (self.used_idx % self.NUM), head, length)
        self.used_idx += 1
        struct.pack_into("<H", mem, used + 2, self.used_idx & 0xFFFF)

    def guest_used(self) -> tuple[int, list[tuple[int, int]]]:
        """The guest's used ring: its index, and its NUM entries."""
        return (struct.unpack_from("<H", self.mm, self.USED + 2)[0],
                [VIRTQ_USED_ELEM.unpack_from(self.mm, self.USED + 4 + 8 * i)
                 for i in range(self.NUM)])

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


def fuse_request(unique: int, opcode: int = fuse_opcode.FUSE_GETATTR) -> bytes:
    if opcode == fuse_opcode.FUSE_INIT:
        body = {"major": 7, "minor": 38, "max_readahead": 0, "flags": 0, "flags2": 0,
                "unused": [0] * 11}
        return codec.encode_request(opcode, body, unique=unique)
    return codec.encode_request(fuse_opcode.FUSE_GETATTR, {"getattr_flags": 0, "dummy": 0,
                                "fh": 0}, unique=unique, nodeid=1)


def add_chain(ring: Ring, head: int, slot: int, request: bytes) -> tuple[int, int]:
    """A request/reply descriptor pair at ``head`` (and head+1) in data slot ``slot``;
    returns the reply buffer's offset in the memfd and its size."""
    base = ring.DATA + 0x400 * slot
    ring.mm[base:base + len(request)] = request
    ring.desc(head, ring.GPA + base, len(request), VIRTQ_DESC_F_NEXT, head + 1)
    ring.desc(head + 1, ring.GPA + base + 0x200, 0x100, VIRTQ_DESC_F_WRITE)
    return base + 0x200, 0x100


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


GUEST_AVAIL_EVENT = Ring.USED + 4 + 8 * 4  # avail_event, after the guest's 4 used entries
GUEST_USED_EVENT = Ring.AVAIL + 4 + 2 * 4  # used_event, after the 4 avail entries
EVENT_IDX = 1 << 29  # VIRTIO_F_RING_EVENT_IDX


def getattr_reply(unique: int) -> bytes:
    return codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=unique, error=-2)


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


def close_pipe_rig(r: Ring, pipe: PipeCapture, *pairs: Pair) -> None:
    """The relay stopped (its writer's last records drained from the pipe), then the
    rest; the pipe's records stay readable (``pipe.got``)."""
    for p in pairs:
        p.close()
    r.relay.close()
    pipe.drain()
    r.close()
    pipe.close()


def big_chain(r: Ring, head: int, slot: int, unique: int, size: int) -> int:
    """A request and a writable buffer for a reply of ``size`` bytes at ``head`` (and
    head+1); returns the buffer's offset in the memfd."""
    base = r.DATA + 0x400 * slot
    req = fuse_request(unique)
    r.mm[base:base + len(req)] = req
    rb = 0x10000 * (slot + 1)
    r.desc(head, r.GPA + base, len(req), VIRTQ_DESC_F_NEXT, head + 1)
    r.desc(head + 1, r.GPA + rb, 16 + size, VIRTQ_DESC_F_WRITE)
    return rb


def read_reply(unique: int, size: int, fill: int) -> bytes:
    return struct.pack("<IiQ", 16 + size, 0, unique) + bytes([fill]) * size

