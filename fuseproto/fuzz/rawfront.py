"""A raw vhost-user front-end for the fuzzers below the FUSE layer: it sends exactly the
messages it is given (:mod:`.control_plane` fuzzes them) and hands out the rings to write
by hand (:mod:`.chains` builds hostile descriptor chains with :class:`RingWriter`).

Guest memory is one memfd shown to the daemon as one region, as two regions contiguous in
guest-physical addresses, or as two with a hole between them (:data:`LAYOUTS`); ring
layouts are :mod:`fuseproto.transport.virtqueue`'s, message layouts and framing
:mod:`fuseproto.transport.vhost_user_proto`'s (QEMU docs/interop/vhost-user.rst, virtio
1.x 2.7). :class:`LiveDaemon` is one sandboxed daemon on a fresh scratch share, started
and stopped by PID; :func:`wait_used`, :func:`stalled`, :func:`died` and
:func:`fuse_probe` are the verdicts both targets share (the live target's forensics).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import daemons
from ..capture.frames import Direction
from ..errors import TransportError, TransportTimeout
from ..transport.vhost_user_proto import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_VERSION,
    VHOST_USER_VRING_NOFD_MASK,
    VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    VhostUserMemory,
    VhostUserMemoryRegion,
    VhostUserMessage,
    VhostUserProtocolFeature,
    VhostUserRequest,
    VhostUserU64,
    VhostUserVringAddr,
    VhostUserVringState,
    recv_message,
    request_name,
    send_message,
)
from ..transport.virtqueue import (
    U16,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC,
    VIRTQ_USED_ELEM,
    GuestMemory,
    SplitVirtqueue,
)
from ..wire import codec
from ..wire.constants import fuse_opcode
from . import seeds
from .canaries import Canaries
from .forensics import Outcome, PanicWatch, count_slow, death_outcome, log_tail
from .harness import SANITIZER_ENV, SandboxedDaemon, escape_outcome, judge_reply, populate

__all__ = ["LAYOUTS", "Region", "layout_regions", "RingWriter", "RawFrontend", "memory_table",
           "CtlStep", "standard_program", "LiveDaemon", "wait_used", "stalled", "died",
           "init_body", "fuse_probe", "QUEUES", "QUEUE_SIZE", "VRING_STATE", "VRING_FD",
           "GETS", "KNOWN_REQUESTS", "MAY_REPLY", "TAKES_FD", "MEM_MODES", "ADDR_MODES",
           "FD_MODES", "WANT_PROTOCOL"]

R = VhostUserRequest
P = VhostUserProtocolFeature
#: How guest memory is shown to the daemon: one region; two regions contiguous in guest
#: physical addresses (a buffer may cross from one to the other: valid); two with a hole
#: between them (a buffer crossing the end of the first is partly outside memory).
LAYOUTS = ("one", "two", "gap")
REGION_GAP = 1 << 30
QUEUES = 2  # hiprio + one request queue: what both daemons offer
QUEUE_SIZE = 256
MEMORY_SIZE = 32 << 20
# What we ask for: REPLY_ACK (acks to check), MQ (GET_QUEUE_NUM), CONFIGURE_MEM_SLOTS.
WANT_PROTOCOL = 1 << P.REPLY_ACK | 1 << P.MQ | 1 << P.CONFIGURE_MEM_SLOTS
VRING_STATE = (R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ENABLE)
VRING_FD = (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR)
GETS = {R.GET_FEATURES: VhostUserU64, R.GET_PROTOCOL_FEATURES: VhostUserU64,
         R.GET_QUEUE_NUM: VhostUserU64, R.GET_MAX_MEM_SLOTS: VhostUserU64,
         R.GET_VRING_BASE: VhostUserVringState}
#: SET_MEM_TABLE tables other than ours (:func:`memory_table`).
MEM_MODES = ("std", "zero-size", "overlap", "beyond-file", "nine", "nregions-lie",
             "huge-size", "wrap", "none", "unaligned")
#: SET_VRING_ADDR field values other than ours.
ADDR_MODES = ("std", "outside", "unaligned", "zero", "max")
FD_MODES = ("std", "none", "extra", "bad")


# -- guest memory and the front-end ---------------------------------------------------------

@dataclass(frozen=True)
class Region:
    """A region of the memory table: ``size`` bytes at ``off`` in the memfd, at guest
    physical address ``gpa``."""

    off: int
    size: int
    gpa: int


def layout_regions(mem: GuestMemory, layout: str) -> tuple[Region, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "one":
        return (Region(0, mem.size, mem.gpa_base),)
    half = mem.size // 2
    gap = REGION_GAP if layout == "gap" else 0
    return (Region(0, half, mem.gpa_base), Region(half, mem.size - half,
                                                  mem.gpa_base + half + gap))


class RingWriter:
    """A split ring written by hand (the chain target's hostile chains and the probes):
    descriptors, avail entries and the avail index written as given, the used ring read
    as the daemon wrote it. Layouts: :mod:`fuseproto.transport.virtqueue`'s."""

    def __init__(self, mem: GuestMemory, vq: SplitVirtqueue):
        self.mem, self.vq, self.size = mem, vq, vq.size
        self.avail_idx = U16.unpack_from(mem.mm, vq.avail_off + 2)[0]
        self.last_used = U16.unpack_from(mem.mm, vq.used_off + 2)[0]
        # We poll; the daemon need not signal the call eventfd.
        U16.pack_into(mem.mm, vq.avail_off, VIRTQ_AVAIL_F_NO_INTERRUPT)

    def desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        VIRTQ_DESC.pack_into(self.mem.mm, self.vq.desc_off + 16 * (i % self.size),
                             addr & (1 << 64) - 1, length & 0xFFFFFFFF, flags & 0xFFFF,
                             nxt & 0xFFFF)

    def publish(self, head: int, advance: int = 1) -> None:
        """Put ``head`` in the next avail slot and move avail.idx by ``advance`` (1: as a
        driver does; more: a jump past what was written)."""
        u16 = self.mem.u16
        u16[(self.vq.avail_off >> 1) + 2 + (self.avail_idx % self.size)] = head & 0xFFFF
        self.avail_idx = (self.avail_idx + advance) & 0xFFFF
        u16[(self.vq.avail_off >> 1) + 1] = self.avail_idx

    def used(self) -> list[tuple[int, int]]:
        """New used entries ``(id, len)`` since the last call (at most a ring's worth)."""
        mm = self.mem.mm
        idx = U16.unpack_from(mm, self.vq.used_off + 2)[0]
        n = min((idx - self.last_used) & 0xFFFF, self.size)
        out = []
        for _ in range(n):
            out.append(VIRTQ_USED_ELEM.unpack_from(
                mm, self.vq.used_off + 4 + 8 * (self.last_used % self.size)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class RawFrontend:
    """A vhost-user front-end that sends exactly the messages it is given (no state
    machine of its own): the socket, guest memory shown as ``layout``, two rings' worth of
    ring memory (queue 0 hiprio, 1 requests), kick eventfds. The honest handshake is
    :func:`standard_program` run through :meth:`send_step`."""

    def __init__(self, socket_path: str, daemon: daemons.Daemon | None = None, *,
                 layout: str = "one", indirect: bool = False, timeout: float = 1.0,
                 memory_size: int = MEMORY_SIZE):
        self.daemon = daemon
        self.timeout = timeout
        self.indirect = indirect  # ask for VIRTIO_F_RING_INDIRECT_DESC when offered
        self.layout = layout
        self.mem = GuestMemory(memory_size)
        self.sock: socket.socket | None = None
        self.kick_fds: dict[int, int] = {}
        self.call_fds: dict[int, int] = {}
        self.offered = 0  # GET_FEATURES
        self.offered_protocol = 0  # GET_PROTOCOL_FEATURES
        self.protocol = 0  # agreed by the last SET_PROTOCOL_FEATURES
        self.features = 0  # the last SET_FEATURES
        self.tolerated: list[int] = []  # requests whose reply may come (or not)
        # What a finding's pcap shows (direction, queue, bytes, time_ns): each vhost-user
        # message both ways as an annotation, FUSE requests and replies on the rings.
        self.exchange: deque[tuple[int, int, bytes, int]] = deque(maxlen=512)
        try:
            self.regions = layout_regions(self.mem, layout)
            self.queues = [SplitVirtqueue(self.mem, i, QUEUE_SIZE) for i in range(QUEUES)]
            self._connect(socket_path)
        except BaseException:
            self.close()
            raise

    def _connect(self, path: str) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                self.sock = s
                return
            except ConnectionRefusedError:
                s.close()  # the C daemon binds a moment before it listens
                if time.monotonic() > deadline or (self.daemon and not self.daemon.running()):
                    raise TransportError(f"cannot connect to {path}") from None
                time.sleep(0.001)

    def gpa(self, off: int) -> int:
        """The guest physical address of memfd offset ``off`` under this layout."""
        for r in self.regions:
            if r.off <= off < r.off + r.size:
                return r.gpa + off - r.off
        raise ValueError(f"offset {off:#x} outside guest memory")

    @property
    def memory_end(self) -> int:
        return max(r.gpa + r.size for r in self.regions)

    def ring(self, q: int = 1) -> RingWriter:
        return RingWriter(self.mem, self.queues[q])

    # -- messages -------------------------------------------------------------------------
    def send_step(self, step: CtlStep) -> tuple[bool, VhostUserMessage | None]:
        """Send one step; returns (a reply was expected, the reply or None when none came
        within the timeout). Raises TransportError when the daemon closed the socket."""
        payload, fds, own = self._encode(step)
        flags = VHOST_USER_VERSION if step.flags is None else step.flags
        if step.need_reply:
            flags |= VHOST_USER_NEED_REPLY_MASK
        assert self.sock is not None
        self.note(f"front-end: {request_name(step.request)} flags={flags:#x} "
                  f"payload={len(payload)} fds={len(fds)} {payload[:64].hex()}")
        try:
            send_message(self.sock, step.request, payload, fds=fds, flags=flags)
        finally:
            for fd in own:
                os.close(fd)
        self._learn(step)
        need = bool(flags & VHOST_USER_NEED_REPLY_MASK)
        expect = step.request in GETS or (need and bool(self.protocol & 1 << P.REPLY_ACK))
        if not expect:
            if need or step.request in MAY_REPLY or step.request not in KNOWN_REQUESTS:
                # NEED_REPLY before REPLY_ACK is agreed, a GET_ we do not offer, a request
                # nobody knows: a reply may come or not; either is fine.
                self.tolerated.append(step.request)
            return False, None
        return True, self.recv(self.timeout)

    def recv(self, timeout: float) -> VhostUserMessage | None:
        """One message within ``timeout`` s, else None; TransportError on EOF."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            self.sock.settimeout(max(left, 0.05))
            try:
                msg = recv_message(self.sock, what="reply")
            except TransportTimeout:
                return None
            finally:
                self.sock.settimeout(None)
            for fd in msg.fds:
                os.close(fd)
            self.note(f"back-end: {request_name(msg.request)} flags={msg.flags:#x} "
                      f"payload={len(msg.payload)} fds={len(msg.fds)} {msg.payload[:64].hex()}")
            if msg.is_reply and msg.request in self.tolerated:
                self.tolerated.remove(msg.request)
                continue
            break
        if msg.request == R.GET_FEATURES and msg.is_reply and len(msg.payload) == 8:
            self.offered = VhostUserU64.parse_body(msg.payload).u64
        if msg.request == R.GET_PROTOCOL_FEATURES and msg.is_reply and len(msg.payload) == 8:
            self.offered_protocol = VhostUserU64.parse_body(msg.payload).u64
        return msg

    def note(self, text: str | bytes, direction: int = Direction.ANNOTATION,
             queue: int = 0) -> None:
        """Keep one record of :attr:`exchange` (text: an annotation; bytes: a FUSE
        message on ``queue``)."""
        data = text.encode() if isinstance(text, str) else text
        self.exchange.append((direction, queue, data, time.time_ns()))

    def pending(self) -> bool:
        """Something (a reply nobody asked for, or EOF) waits on the socket."""
        assert self.sock is not None
        return bool(select.select([self.sock], [], [], 0)[0])

    def std_features(self) -> int:
        f = 1 << VIRTIO_F_VERSION_1 | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        if self.indirect:
            f |= self.offered & 1 << VIRTIO_F_RING_INDIRECT_DESC
        return f

    def _learn(self, step: CtlStep) -> None:
        if step.request == R.SET_PROTOCOL_FEATURES and step.size_delta == 0:
            self.protocol = self.value_of(step)
        if step.request == R.SET_FEATURES and step.size_delta == 0:
            self.features = self.value_of(step)

    def value_of(self, step: CtlStep) -> int:
        """The value ``step`` sends (its own, or ours)."""
        if step.value is not None:
            return step.value
        if step.request == R.SET_FEATURES:
            return self.std_features()
        if step.request == R.SET_PROTOCOL_FEATURES:
            return self.offered_protocol & WANT_PROTOCOL
        if step.request == R.SET_VRING_NUM:
            return QUEUE_SIZE
        if step.request == R.SET_VRING_ENABLE:
            return 1
        return 0

    def _eventfd(self) -> int:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def _encode(self, step: CtlStep) -> tuple[bytes, list[int], list[int]]:
        """(payload, fds to send, fds to close after sending)."""
        req, idx = step.request, step.index if step.index is not None else 1
        fds: list[int] = []
        own: list[int] = []
        body: bytes
        if req in GETS and req != R.GET_VRING_BASE:
            body = b""
        elif req in VRING_STATE:
            body = VhostUserVringState(idx & 0xFFFFFFFF, self.value_of(step) & 0xFFFFFFFF
                                       ).serialize_body()
        elif req == R.SET_VRING_ADDR:
            body = self._vring_addr(idx, step.mode).serialize_body()
        elif req in VRING_FD:
            value = (idx & 0xFF) | (step.value or 0)
            body = VhostUserU64(value).serialize_body()
            if step.fds == "std" and not value & VHOST_USER_VRING_NOFD_MASK:
                fd = self._eventfd()
                table = self.kick_fds if req == R.SET_VRING_KICK else self.call_fds
                if req == R.SET_VRING_ERR:
                    own.append(fd)
                else:
                    with contextlib.suppress(KeyError, OSError):
                        os.close(table.pop(idx))
                    table[idx] = fd
                fds.append(fd)
        elif req == R.SET_MEM_TABLE:
            table_body, n = memory_table(self, step.mode)
            body = table_body
            if step.fds == "std":
                fds += [self.mem.fd] * n
        elif req in (R.SET_FEATURES, R.SET_PROTOCOL_FEATURES, R.SET_STATUS, R.SET_LOG_BASE):
            body = VhostUserU64(self.value_of(step) & (1 << 64) - 1).serialize_body()
        else:
            body = bytes(8) if step.value is None else VhostUserU64(
                step.value & (1 << 64) - 1).serialize_body()
            if req in (R.SET_OWNER, R.RESET_OWNER):
                body = b""
        if step.fds == "extra":
            fd = self._eventfd()
            own.append(fd)
            fds.append(fd)
        elif step.fds == "bad":
            # A regular file where an eventfd or a memfd belongs.
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            own.append(fd)
            fds = [fd] * max(1, len(fds))
        if step.size_delta < 0:
            body = body[:max(0, len(body) + step.size_delta)]
        elif step.size_delta > 0:
            body += bytes(step.size_delta)
        return body, fds, own

    def _vring_addr(self, idx: int, mode: str) -> VhostUserVringAddr:
        vq = self.queues[idx if 0 <= idx < QUEUES else 1]
        desc, used, avail = vq.desc_uaddr, vq.used_uaddr, vq.avail_uaddr
        if mode == "outside":
            desc = self.mem.uaddr_base + self.mem.size + (1 << 20)
        elif mode == "unaligned":
            desc, used = desc + 1, used + 2
        elif mode == "zero":
            desc = used = avail = 0
        elif mode == "max":
            desc = used = avail = (1 << 64) - 1
        return VhostUserVringAddr(index=idx & 0xFFFFFFFF, flags=0, descriptor=desc,
                                  used=used, available=avail, log=0)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None
        for fd in [*self.kick_fds.values(), *self.call_fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kick_fds, self.call_fds = {}, {}
        if getattr(self, "mem", None) is not None:
            with contextlib.suppress(BufferError):
                self.mem.close()


def memory_table(fe: RawFrontend, mode: str) -> tuple[bytes, int]:
    """SET_MEM_TABLE's payload for ``mode`` (:data:`MEM_MODES`) and how many fds go with
    it (one per region the table names)."""
    mem = fe.mem
    regs = [VhostUserMemoryRegion(r.gpa, r.size, mem.uaddr_base + r.off, r.off)
            for r in fe.regions]
    first = regs[0]
    if mode == "zero-size":
        regs = [replace(first, size=0)] + regs[1:]
    elif mode == "overlap":
        regs = regs + [replace(first, mmap_offset=0)]
    elif mode == "beyond-file":
        regs = [replace(first, mmap_offset=mem.size * 4)] + regs[1:]
    elif mode == "nine":
        regs = [replace(first, guest_addr=first.guest_addr + i * (1 << 32)) for i in range(9)]
    elif mode == "huge-size":
        regs = [replace(first, size=1 << 62)] + regs[1:]
    elif mode == "wrap":
        regs = [replace(first, guest_addr=(1 << 64) - 4096)] + regs[1:]
    elif mode == "none":
        regs = []
    elif mode == "unaligned":
        regs = [replace(first, mmap_offset=1, size=first.size - 4096)] + regs[1:]
    if mode == "nregions-lie":
        body = VhostUserMemory(tuple(regs)).serialize_body()
        return VhostUserMemory.STRUCT.pack(len(regs) + 2, 0) + body[8:], len(regs)
    n = len(regs)
    head = VhostUserMemory.STRUCT.pack(n, 0)
    return head + b"".join(r.serialize_body() for r in regs), n


# -- programs ------------------------------------------------------------------------------

@dataclass
class CtlStep:
    """One front-end message. ``index``: the ring (vring messages; default 1); ``value``:
    the u64 / vring number (None: ours); ``mode``: SET_MEM_TABLE's table or
    SET_VRING_ADDR's addresses (``std``: ours); ``fds``: ``std`` (what the message
    takes), ``none``, ``extra`` (one more), ``bad`` (/dev/null in their place);
    ``size_delta``: payload bytes cut (<0) or added (>0); ``flags``: the header's flags
    (None: version 1)."""

    request: int
    index: int | None = None
    value: int | None = None
    mode: str = "std"
    fds: str = "std"
    need_reply: bool = False
    size_delta: int = 0
    flags: int | None = None

    @property
    def name(self) -> str:
        return request_name(self.request)


def standard_program(queues: int = QUEUES) -> list[CtlStep]:
    """The handshake in QEMU's order (as :class:`~fuseproto.transport.vhost_user.
    VhostUserTransport` sends it): the seed every control program grows from."""
    prog = [CtlStep(R.GET_FEATURES), CtlStep(R.GET_PROTOCOL_FEATURES),
            CtlStep(R.SET_PROTOCOL_FEATURES), CtlStep(R.GET_QUEUE_NUM),
            CtlStep(R.GET_MAX_MEM_SLOTS), CtlStep(R.SET_OWNER), CtlStep(R.SET_FEATURES),
            CtlStep(R.SET_MEM_TABLE, need_reply=True)]
    for q in range(queues):
        prog += [CtlStep(R.SET_VRING_NUM, q), CtlStep(R.SET_VRING_BASE, q),
                 CtlStep(R.SET_VRING_ADDR, q), CtlStep(R.SET_VRING_KICK, q),
                 CtlStep(R.SET_VRING_CALL, q)]
    prog += [CtlStep(R.SET_VRING_ENABLE, q, need_reply=True) for q in range(queues)]
    return prog


KNOWN_REQUESTS = {int(r) for r in R}
MAY_REPLY = (R.GET_CONFIG, R.GET_STATUS, R.GET_VRING_BASE)
TAKES_FD = (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR, R.SET_MEM_TABLE)

# -- a daemon per program -------------------------------------------------------------------

class LiveDaemon:
    """One sandboxed daemon on a fresh scratch share (the live target's files), started
    and stopped by PID; its directory is removed on :meth:`stop`, also after a failure."""

    def __init__(self, installation: daemons.Installation, workdir: str,
                 env: dict[str, str] | None = None):
        self.base = tempfile.mkdtemp(prefix="d", dir=workdir)
        try:
            shared = os.path.join(self.base, "shared")
            os.mkdir(shared)
            populate(shared)
            # Escape canaries beside the share (.canaries), checked by escapes().
            self.canaries = Canaries.plant(self.base, shared)
            self.socket = os.path.join(self.base, "vhost.sock")
            self.daemon = SandboxedDaemon(installation, shared, self.socket,
                                          log_path=os.path.join(self.base, "daemon.log"),
                                          env={**SANITIZER_ENV, **(env or {})})
            self.daemon.start()
            self.canaries.rearm()  # the socket and log are there now
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.kind = installation.kind
        self.binary = installation.binary

    def escapes(self, name: str, reply: bytes = b"") -> list[Outcome]:
        """The escape findings (a canary beside the share read, written, linked, renamed,
        deleted, an entry created there) since the last look, and ``reply`` carrying a
        canary's token; ``name``: what ran."""
        breaches = self.canaries.check()
        if breaches:
            self.canaries.rearm()
        leak = self.canaries.scan(reply) if reply else None
        return [escape_outcome(name, b) for b in ([leak] if leak else []) + breaches]

    def log(self) -> str:
        try:
            return Path(self.daemon.log_path or "").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.daemon.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def wait_used(ring: RingWriter, head: int, live: LiveDaemon, timeout: float,
              seen: list[tuple[int, int]]) -> str:
    """Wait for ``head`` in the used ring: "done", "dead", "panic" or "timeout". Every
    used entry read goes to ``seen`` (in order)."""
    d = live.daemon
    watch = PanicWatch(d.log_path) if live.kind == "rust" else None
    start = time.monotonic()
    deadline, spin = start + timeout, start + 0.002
    while True:
        got = ring.used()
        seen += got
        if any(i == head for i, _ in got):
            return "done"
        now = time.monotonic()
        if now < spin:
            continue
        if not d.running():
            seen += ring.used()
            return "done" if any(i == head for i, _ in seen) else "dead"
        if watch is not None and watch.seen():
            return "panic"
        if now > deadline:
            return "timeout"
        time.sleep(0.0005)


def stalled(live: LiveDaemon, name: str, what: str, timeout: float) -> Outcome:
    """A stall while the process lives: a Rust worker panic when the log shows one, else
    a hang (what did not come: ``what``)."""
    from .forensics import crash_site

    log = live.log()
    site = crash_site(log)
    ev = {"opcode": name, "timeout_s": timeout, "log_tail": log_tail(log),
          "state": live.daemon.state()}
    if site is not None and "panicked at" in log:
        ev["site"] = site
        return Outcome(f"{name}:panic", "crash",
                       f"{live.kind} virtiofsd worker panicked after {name}: {site}", ev)
    return Outcome(f"{name}:hang", "hang", f"{what} within {timeout} s, daemon alive", ev)


def died(live: LiveDaemon, name: str, previous: list[str]) -> Outcome:
    status = live.daemon.wait_exit(2.0)
    if status is None:
        return stalled(live, name, "socket closed but the process did not exit", 2.0)
    return death_outcome(live.kind, name, status, live.log(), previous, live.binary)


def init_body() -> Any:
    """The seeds' FUSE_INIT body (what the live target's daemons are set up with)."""
    return next(s.body for s in seeds.request_seeds() if s.opcode == fuse_opcode.FUSE_INIT)


def fuse_probe(fe: RawFrontend, live: LiveDaemon, timeout: float, grace: float = 0.0,
               slow: dict[str, list[float]] | None = None) -> Outcome:
    """A FUSE INIT on ring 1 as a driver would put it (two descriptors in scratch
    memory): answered, judged by :func:`.harness.judge_reply`, or a stall. An answer
    within ``grace`` s after ``timeout`` is counted in ``slow`` (forensics.count_slow)."""
    ring = fe.ring(1)
    data = codec.encode_request(fuse_opcode.FUSE_INIT, init_body(), unique=2)
    area = codec.reply_area(fuse_opcode.FUSE_INIT, None, 46)
    off = 8 << 20
    fe.mem.mm[off:off + len(data)] = data
    fe.note(data, Direction.REQUEST, 1)
    ring.desc(0, fe.gpa(off), len(data), 1, 1)
    ring.desc(1, fe.gpa(off + 4096), area, 2, 0)
    ring.publish(0)
    with contextlib.suppress(OSError, KeyError):
        os.eventfd_write(fe.kick_fds[1], 1)
    seen: list[tuple[int, int]] = []
    t0 = time.monotonic()
    state = wait_used(ring, 0, live, timeout, seen)
    if state == "timeout" and grace > 0:
        state = wait_used(ring, 0, live, grace, seen)
        if state == "done" and slow is not None:
            count_slow(slow, "probe FUSE_INIT", 1, round(time.monotonic() - t0, 3))
    if state == "dead":
        return died(live, "probe FUSE_INIT", [])
    if state != "done":
        return stalled(live, "probe FUSE_INIT", "no reply to a FUSE INIT on a ring set up "
                       "for it", timeout)
    used_len = next(n for i, n in seen if i == 0)
    reply = bytes(fe.mem.mm[off + 4096:off + 4096 + min(used_len, area)])
    fe.note(reply, Direction.REPLY, 1)
    return judge_reply("FUSE_INIT", fuse_opcode.FUSE_INIT, 2, None, area, area, reply,
                       used_len, 46)


