"""The vhost-user control plane as a fuzz target: programs of front-end messages sent to a
fresh real daemon, and a raw front-end the chain target (:mod:`.chains`) builds on.

A *program* is a list of :class:`CtlStep` (one front-end message each: the request, the
ring index, the value, which file descriptors go with it, a payload made shorter or
longer than its layout, NEED_REPLY). :func:`standard_program` is the handshake as QEMU
orders it (GET_FEATURES ... SET_MEM_TABLE, then per ring NUM, BASE, ADDR, KICK, CALL, then
ENABLE); the fuzzer inserts hostile steps (boundary values, ring indices past the queue
count, odd memory tables, missing or extra fds, unknown requests, a REPLY flag from the
front-end), deletes, duplicates and swaps steps, and changes one step's fields. Layouts
and framing are :mod:`fuseproto.transport.vhost_user_proto`'s, rings
:mod:`fuseproto.transport.virtqueue`'s (QEMU docs/interop/vhost-user.rst, virtio 1.x 2.7).

Oracles, per step and per program (:func:`run_control_program`):

* **crash** -- killed by a signal, an assertion or fortify abort, a sanitizer report, a
  Rust panic in the log (the same forensics as the live target);
* **daemon-exit** -- it exited after a step that is valid in its place (:func:`step_valid`
  and :class:`ControlModel`); after an invalid one an exit is a refusal (outcome class
  ``refused-exit``, not a finding): a back-end may drop a front-end that breaks the
  protocol;
* **hang** -- a step that asks for a reply (GET_*, or NEED_REPLY once REPLY_ACK is agreed)
  gets none while the process lives and the socket is open; at the end the control
  socket must still answer GET_FEATURES; and when the model says ring 1 is set up
  (memory table, NUM, ADDR, KICK, enabled, with the values we use, whatever hostile steps
  came between), a FUSE INIT on it must be answered (a queue the process holds but does
  not serve);
* **protocol** -- a reply without the reply flag or for another request, a payload of the
  wrong size, a reply nobody asked for, a valid step refused (REPLY_ACK non-zero).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .. import daemons
from ..errors import DaemonError, TransportError, TransportTimeout
from ..transport.vhost_user_proto import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_REPLY_MASK,
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
from .findings import Finding, FindingStore
from .forensics import Outcome, PanicWatch, death_outcome, log_tail, outcome_signature
from .harness import SANITIZER_ENV, SandboxedDaemon, judge_reply, populate

__all__ = ["LAYOUTS", "Region", "layout_regions", "RawFrontend", "RingWriter", "CtlStep",
           "standard_program", "step_valid", "ControlModel", "ControlResult",
           "run_control_program", "hostile_step", "mutate_program", "fuzz_control_plane",
           "ControlStats", "program_to_json", "program_from_json", "LiveDaemon"]

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
_VRING_STATE = (R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ENABLE)
_VRING_FD = (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR)
_GETS = {R.GET_FEATURES: VhostUserU64, R.GET_PROTOCOL_FEATURES: VhostUserU64,
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
        try:
            send_message(self.sock, step.request, payload, fds=fds, flags=flags)
        finally:
            for fd in own:
                os.close(fd)
        self._learn(step)
        need = bool(flags & VHOST_USER_NEED_REPLY_MASK)
        expect = step.request in _GETS or (need and bool(self.protocol & 1 << P.REPLY_ACK))
        if not expect:
            if need or step.request in _MAY_REPLY or step.request not in _KNOWN:
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
            if msg.is_reply and msg.request in self.tolerated:
                self.tolerated.remove(msg.request)
                continue
            break
        if msg.request == R.GET_FEATURES and msg.is_reply and len(msg.payload) == 8:
            self.offered = VhostUserU64.parse_body(msg.payload).u64
        if msg.request == R.GET_PROTOCOL_FEATURES and msg.is_reply and len(msg.payload) == 8:
            self.offered_protocol = VhostUserU64.parse_body(msg.payload).u64
        return msg

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
        if req in _GETS and req != R.GET_VRING_BASE:
            body = b""
        elif req in _VRING_STATE:
            body = VhostUserVringState(idx & 0xFFFFFFFF, self.value_of(step) & 0xFFFFFFFF
                                       ).serialize_body()
        elif req == R.SET_VRING_ADDR:
            body = self._vring_addr(idx, step.mode).serialize_body()
        elif req in _VRING_FD:
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


_KNOWN = {int(r) for r in R}
_MAY_REPLY = (R.GET_CONFIG, R.GET_STATUS, R.GET_VRING_BASE)
_TAKES_FD = (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR, R.SET_MEM_TABLE)


def step_valid(step: CtlStep, offered: int = 0, offered_protocol: int = 0) -> bool:
    """Whether ``step`` on its own is a message the protocol allows (QEMU's vhost-user.rst:
    ring indices below the queue count, payload as long as its layout, the fds it takes,
    features among those the daemon offered (``offered``, ``offered_protocol``: 0 when
    the program never asked, and then only ours count), VERSION_1 (virtio-fs has no
    legacy interface), a power-of-two ring size up to 32768, addresses inside memory and
    aligned, a table of 1..8 regions that fit the memfd, NEED_REPLY only once REPLY_ACK
    is agreed (checked by the caller))."""
    req = step.request
    if req not in _KNOWN or req in (R.SEND_RARP, R.NET_SET_MTU, R.IOTLB_MSG,
                                    R.SET_VRING_ENDIAN, R.SET_LOG_BASE, R.SET_LOG_FD,
                                    R.SET_BACKEND_REQ_FD, R.GET_CONFIG, R.SET_CONFIG,
                                    R.ADD_MEM_REG, R.REM_MEM_REG, R.SET_STATUS,
                                    R.GET_STATUS, R.RESET_OWNER):
        return False  # not offered here, or deprecated (RESET_OWNER)
    if step.size_delta or step.mode != "std":
        return False
    if step.flags is not None and step.flags & ~VHOST_USER_NEED_REPLY_MASK != VHOST_USER_VERSION:
        return False
    if step.fds != "std" and not (step.fds == "none" and req not in _TAKES_FD):
        return False
    idx = 1 if step.index is None else step.index
    if req in (*_VRING_STATE, R.SET_VRING_ADDR, *_VRING_FD) and not 0 <= idx < QUEUES:
        return False
    v = step.value
    if v is None:
        return True
    if req == R.SET_VRING_NUM:
        return 1 <= v <= 32768 and not v & (v - 1)
    if req == R.SET_VRING_BASE:
        return 0 <= v <= 0xFFFF
    if req == R.SET_VRING_ENABLE:
        return v in (0, 1)
    if req == R.SET_FEATURES:
        return bool(offered) and not v & ~offered and bool(v >> VIRTIO_F_VERSION_1 & 1)
    if req == R.SET_PROTOCOL_FEATURES:
        return bool(offered_protocol) and not v & ~offered_protocol
    if req in _VRING_FD:
        return v in (0, VHOST_USER_VRING_NOFD_MASK) and not (
            v and req == R.SET_VRING_KICK)  # a kick we cannot poll for: not ours to use
    return True


@dataclass
class _Ring:
    num: bool = False
    base: bool = True  # avail/used start at 0 (our RingWriter starts from memory anyway)
    addr: bool = False
    kick: bool = False
    enabled: bool = False


@dataclass
class ControlModel:
    """What a program has set up, step by step: whether ring 1 must serve a request at
    the end. ``certain`` turns false once an invalid step touched ring 0/1 or the memory
    table (then nothing is expected of the ring); steps naming rings past the queue count
    leave it alone: the daemon must refuse or ignore them."""

    certain: bool = True
    broken: bool = False  # an invalid step was sent: an exit after it is a refusal
    owner: bool = False
    features: int | None = None
    mem: bool = False
    rings: dict[int, _Ring] = field(default_factory=lambda: {q: _Ring() for q in range(QUEUES)})

    def apply(self, step: CtlStep, valid: bool, fe: RawFrontend) -> bool:
        """Record ``step`` (``valid``: :func:`step_valid`); returns whether it is valid
        *in its place* (SET_VRING_ADDR needs a memory table first)."""
        req = step.request
        idx = 1 if step.index is None else step.index
        if valid and req == R.SET_VRING_ADDR and not self.mem:
            valid = False  # the addresses are translated through a table not yet given
        if not valid:
            self.broken = True
            touches_ring = idx in self.rings and req in (*_VRING_STATE, R.SET_VRING_ADDR,
                                                         *_VRING_FD)
            if touches_ring or req in (R.SET_MEM_TABLE, R.SET_FEATURES, R.RESET_OWNER,
                                       R.SET_PROTOCOL_FEATURES) or req not in _KNOWN:
                self.certain = False
            return False
        ring = self.rings.get(idx)
        if req == R.SET_OWNER:
            self.owner = True
        elif req == R.SET_FEATURES:
            self.features = fe.value_of(step)
        elif req == R.SET_MEM_TABLE:
            self.mem = True
        elif ring is None:
            pass
        elif req == R.SET_VRING_NUM:
            ring.num = fe.value_of(step) == QUEUE_SIZE
        elif req == R.SET_VRING_BASE:
            ring.base = fe.value_of(step) == 0
        elif req == R.SET_VRING_ADDR:
            ring.addr = True
        elif req == R.SET_VRING_KICK:
            ring.kick = step.fds == "std" and not step.value
        elif req == R.SET_VRING_ENABLE:
            ring.enabled = fe.value_of(step) == 1
        elif req == R.GET_VRING_BASE:
            ring.kick = False  # stops the ring until the next SET_VRING_KICK
        return True

    def serving(self, q: int = 1) -> bool:
        r = self.rings[q]
        f = self.features
        enabled = r.enabled or (f is not None and not f >> VHOST_USER_F_PROTOCOL_FEATURES & 1)
        return (self.certain and self.owner and self.mem and f is not None
                and bool(f >> VIRTIO_F_VERSION_1 & 1) and r.num and r.base and r.addr and r.kick
                and enabled)


def hostile_step(rng: random.Random) -> CtlStep:
    """One message a front-end should not send (or sends rarely): boundary values, ring
    indices past the queue count, odd tables and addresses, wrong fds and sizes."""
    k = rng.randrange(12)
    idx = rng.choice((0, 1, 1, 2, 3, 255, 256, 0xFFFF, 0xFFFFFFFF))
    if k == 0:
        return CtlStep(rng.choice(_VRING_STATE), idx,
                       rng.choice((None, 0, 1, 2, 3, 255, 256, 32768, 32769, 0xFFFF,
                                   0x10000, 0xFFFFFFFF)))
    if k == 1:
        return CtlStep(R.SET_VRING_ADDR, idx, mode=rng.choice(ADDR_MODES))
    if k == 2:
        return CtlStep(rng.choice(_VRING_FD), idx & 0xFF if rng.random() < 0.7 else idx,
                       rng.choice((None, None, VHOST_USER_VRING_NOFD_MASK, 1 << 9)),
                       fds=rng.choice(FD_MODES))
    if k == 3:
        return CtlStep(R.SET_MEM_TABLE, mode=rng.choice(MEM_MODES),
                       fds=rng.choice(FD_MODES), need_reply=rng.random() < 0.7)
    if k == 4:
        return CtlStep(rng.choice((R.SET_FEATURES, R.SET_PROTOCOL_FEATURES)),
                       value=rng.choice((0, 1 << VIRTIO_F_VERSION_1, (1 << 64) - 1,
                                         1 << 63, None)))
    if k == 5:
        return CtlStep(rng.choice(list(_GETS)), idx if rng.random() < 0.5 else None)
    if k == 6:
        return CtlStep(rng.choice((R.RESET_OWNER, R.SET_OWNER, R.SET_STATUS, R.GET_STATUS,
                                   R.SET_LOG_BASE, R.SEND_RARP, R.SET_VRING_ENDIAN,
                                   R.GET_CONFIG, R.IOTLB_MSG)), value=rng.choice((None, 0, 1)))
    if k == 7:
        return CtlStep(rng.choice((0, 26, 35, 41, 99, 0xFFFF, 0xFFFFFFFF)))  # unknown
    base = CtlStep(rng.choice(list(R)), 1)
    if k == 8:
        return replace(base, size_delta=rng.choice((-8, -4, -1, 1, 8, 64)))
    if k == 9:
        return replace(base, fds=rng.choice(("extra", "bad")))
    if k == 10:
        return replace(base, flags=rng.choice((0, 2, 3, VHOST_USER_VERSION |
                                               VHOST_USER_REPLY_MASK, 0xFFFFFFFF)))
    return replace(base, need_reply=True)


def mutate_program(prog: list[CtlStep], rng: random.Random) -> list[CtlStep]:
    """Insert hostile steps, delete, duplicate, swap, or change one step's fields."""
    out = [replace(s) for s in prog]
    for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
        k = rng.randrange(10)
        i = rng.randrange(len(out) + 1)
        if k < 5 or not out:
            out.insert(i, hostile_step(rng))
        elif k == 5 and len(out) > 1:
            del out[min(i, len(out) - 1)]
        elif k == 6:
            j = min(i, len(out) - 1)
            out.insert(j, replace(out[j]))
        elif k == 7 and len(out) > 1:
            j = min(i, len(out) - 2)
            out[j], out[j + 1] = out[j + 1], out[j]
        else:
            j = min(i, len(out) - 1)
            h = hostile_step(rng)
            out[j] = replace(out[j], **{f.name: getattr(h, f.name) for f in fields(h)
                                        if f.name != "request" and rng.random() < 0.4})
    return out[:80]


def step_tag(step: CtlStep) -> str:
    """What is odd about ``step``, coarsely (a finding signature's cause part):
    ``SET_VRING_ADDR[index>=2,mode=zero]``."""
    odd = []
    idx = step.index
    if idx is not None and not 0 <= idx < QUEUES and step.request in (
            *_VRING_STATE, R.SET_VRING_ADDR, *_VRING_FD):
        odd.append(f"index>={QUEUES}")
    if step.mode != "std":
        odd.append(f"mode={step.mode}")
    if step.fds != "std":
        odd.append(f"fds={step.fds}")
    if step.size_delta:
        odd.append("size" + ("-" if step.size_delta < 0 else "+"))
    if step.flags is not None:
        odd.append("flags")
    if step.need_reply:
        odd.append("need-reply")
    if step.value is not None and not odd:
        odd.append("value")
    return step.name + (f"[{','.join(odd)}]" if odd else "")


def program_to_json(prog: list[CtlStep]) -> list[dict[str, Any]]:
    return [dict(asdict(s), name=s.name) for s in prog]


def program_from_json(items: list[dict[str, Any]]) -> list[CtlStep]:
    names = {f.name for f in fields(CtlStep)}
    return [CtlStep(**{k: v for k, v in d.items() if k in names}) for d in items]


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
            self.socket = os.path.join(self.base, "vhost.sock")
            self.daemon = SandboxedDaemon(installation, shared, self.socket,
                                          log_path=os.path.join(self.base, "daemon.log"),
                                          env={**SANITIZER_ENV, **(env or {})})
            self.daemon.start()
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.kind = installation.kind
        self.binary = installation.binary

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


def fuse_probe(fe: RawFrontend, live: LiveDaemon, timeout: float) -> Outcome:
    """A FUSE INIT on ring 1 as a driver would put it (two descriptors in scratch
    memory): answered, judged by :func:`.harness.judge_reply`, or a stall."""
    ring = fe.ring(1)
    data = codec.encode_request(fuse_opcode.FUSE_INIT, init_body(), unique=2)
    area = codec.reply_area(fuse_opcode.FUSE_INIT, None, 46)
    off = 8 << 20
    fe.mem.mm[off:off + len(data)] = data
    ring.desc(0, fe.gpa(off), len(data), 1, 1)
    ring.desc(1, fe.gpa(off + 4096), area, 2, 0)
    ring.publish(0)
    with contextlib.suppress(OSError, KeyError):
        os.eventfd_write(fe.kick_fds[1], 1)
    seen: list[tuple[int, int]] = []
    state = wait_used(ring, 0, live, timeout, seen)
    if state == "dead":
        return died(live, "probe FUSE_INIT", [])
    if state != "done":
        return stalled(live, "probe FUSE_INIT", "no reply to a FUSE INIT on a ring set up "
                       "for it", timeout)
    used_len = next(n for i, n in seen if i == 0)
    reply = bytes(fe.mem.mm[off + 4096:off + 4096 + min(used_len, area)])
    return judge_reply("FUSE_INIT", fuse_opcode.FUSE_INIT, 2, None, area, area, reply,
                       used_len, 46)


# -- one program ----------------------------------------------------------------------------

@dataclass
class ControlResult:
    """What a program did: an outcome per step sent (and the probes'), the first finding,
    whether ring 1 was expected to serve and whether it did."""

    outcomes: list[Outcome] = field(default_factory=list)
    finding: Outcome | None = None
    expected_serving: bool = False
    served: bool | None = None
    steps_run: int = 0
    log: str = ""
    first_invalid: str | None = None  # step_tag() of the first step invalid in its place


def _check_reply(step: CtlStep, msg: VhostUserMessage, valid: bool) -> Outcome | None:
    """A protocol finding when ``msg`` is not a proper reply to ``step``."""
    name = step.name
    ev: dict[str, Any] = {"step": name, "reply_request": msg.request, "flags": msg.flags,
                          "payload": msg.payload[:64].hex()}
    if msg.request != step.request or not msg.is_reply:
        return Outcome(f"{name}:reply-mismatch", "protocol",
                       f"reply to {name} is {request_name(msg.request)} with flags "
                       f"{msg.flags:#x}", ev)
    if msg.flags & 3 != VHOST_USER_VERSION:
        return Outcome(f"{name}:reply-version", "protocol",
                       f"reply to {name} has version {msg.flags & 3}", ev)
    layout = _GETS.get(R(step.request)) if step.request in _KNOWN else None
    size = layout.STRUCT.size if layout is not None else VhostUserU64.STRUCT.size
    if len(msg.payload) != size:
        return Outcome(f"{name}:reply-size", "protocol",
                       f"reply to {name} carries {len(msg.payload)} bytes, its layout "
                       f"{size}", ev)
    if layout is None and valid and VhostUserU64.parse_body(msg.payload).u64 != 0:
        return Outcome(f"{name}:refused-valid", "protocol",
                       f"{name}, valid in its place, was refused (REPLY_ACK "
                       f"{VhostUserU64.parse_body(msg.payload).u64})", ev)
    if step.request == R.GET_FEATURES and valid:
        need = 1 << VIRTIO_F_VERSION_1 | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        if VhostUserU64.parse_body(msg.payload).u64 & need != need:
            return Outcome(f"{name}:features", "protocol",
                           "GET_FEATURES lacks VERSION_1 or PROTOCOL_FEATURES", ev)
    return None


def run_control_program(prog: list[CtlStep], installation: daemons.Installation, *,
                        workdir: str, layout: str = "one", timeout: float = 0.5,
                        env: dict[str, str] | None = None) -> ControlResult:
    """Run ``prog`` against a fresh daemon and judge it (see the module docstring)."""
    res = ControlResult()
    live = LiveDaemon(installation, workdir, env)
    fe: RawFrontend | None = None
    model = ControlModel()
    sent: list[str] = []
    try:
        fe = RawFrontend(live.socket, live.daemon, layout=layout, timeout=timeout)
        for step in prog:
            valid = step_valid(step, fe.offered, fe.offered_protocol)
            if step.need_reply and not fe.protocol & 1 << P.REPLY_ACK:
                valid = False  # NEED_REPLY before REPLY_ACK is agreed: undefined
            valid = model.apply(step, valid, fe)
            if not valid and res.first_invalid is None and step_tag(step) != \
                    f"{step.name}[need-reply]":  # an early NEED_REPLY is harmless
                res.first_invalid = step_tag(step)
            name = step.name
            sent.append(name)
            res.steps_run += 1
            try:
                expected, msg = fe.send_step(step)
                if not expected and fe.pending():
                    msg = fe.recv(0.01)  # nobody asked: a finding, or EOF (raises)
                    if msg is not None:
                        res.finding = Outcome(f"{name}:unsolicited", "protocol",
                                              f"a reply ({request_name(msg.request)}) to "
                                              f"{name}, which asks for none",
                                              {"step": name, "flags": msg.flags})
                        break
            except TransportError:
                out = died(live, name, sent[-4:-1])
                if out.finding == "daemon-exit" and (model.broken or not valid):
                    out = Outcome(f"refused-exit:{name}", None, out.detail, out.evidence)
                res.outcomes.append(out)
                res.finding = out if out.finding else None
                break
            if expected and msg is None:
                if not live.daemon.running():
                    res.finding = died(live, name, sent[-4:-1])
                elif valid and not model.broken:
                    res.finding = stalled(live, name, f"no reply to {name}", timeout)
                else:
                    res.outcomes.append(Outcome(f"noreply:{name}"))
                    continue
                res.outcomes.append(res.finding)
                break
            out = _check_reply(step, msg, valid) if msg is not None else None
            res.outcomes.append(out or Outcome(f"{name}:{'ok' if valid else 'taken'}"))
            if out is not None:
                res.finding = out
                break
        else:
            res.expected_serving = model.serving(1)
            res.finding = _end_probes(fe, live, model, res, timeout)
    finally:
        if fe is not None:
            fe.close()
        res.log = live.log()[-4000:]
        live.stop()
    return res


def _end_probes(fe: RawFrontend, live: LiveDaemon, model: ControlModel, res: ControlResult,
                timeout: float) -> Outcome | None:
    """After the program: a ring set up for us must answer a FUSE INIT, and the control
    socket must still answer GET_FEATURES (or be closed by a daemon that exited)."""
    if res.expected_serving:
        out = fuse_probe(fe, live, timeout)
        res.outcomes.append(out)
        res.served = out.finding is None
        if out.finding is not None:
            return out
    elif not live.daemon.running():
        out = died(live, "after the program", [])
        if out.finding == "daemon-exit" and model.broken:
            res.outcomes.append(Outcome("refused-exit:late", None, out.detail, out.evidence))
            return None
        return out
    try:
        expected, msg = fe.send_step(CtlStep(R.GET_FEATURES))
    except TransportError:
        out = died(live, "probe GET_FEATURES", [])
        if out.finding == "daemon-exit" and model.broken:
            res.outcomes.append(Outcome("refused-exit:late", None, out.detail, out.evidence))
            return None
        return out
    if msg is None:
        if not live.daemon.running():
            return died(live, "probe GET_FEATURES", [])
        return stalled(live, "probe GET_FEATURES", "control socket open but no reply to "
                       "GET_FEATURES", timeout)
    return _check_reply(CtlStep(R.GET_FEATURES), msg, True)


# -- the loop -------------------------------------------------------------------------------

@dataclass
class ControlStats:
    daemon: str
    programs: int = 0
    steps: int = 0
    seconds: float = 0.0
    served: int = 0  # programs whose ring 1 was set up and answered the FUSE probe
    classes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def per_second(self) -> float:
        return self.programs / self.seconds if self.seconds else 0.0


def record_control_finding(store: FindingStore, label: str, installation: daemons.Installation,
                           prog: list[CtlStep], layout: str, out: Outcome, log: str,
                           cause: str | None = None) -> Finding:
    """File ``out`` with a reproducer: the program as JSON (``fuseproto fuzz replay``)."""
    sig = outcome_signature(label, out) or ""
    if out.finding in ("crash", "daemon-exit", "hang", "protocol") and cause \
            and "site" not in out.evidence:
        # No site in the log: the first odd step is the cause, not the step it died at.
        how = out.evidence.get("signal") or out.cls.split(":")[1 if ":" in out.cls else 0]
        sig = f"{out.finding}:{label}:{how}:{cause}"
    sig = sig.replace(":", ":control:", 1)
    f = Finding("control_plane", out.finding or "", sig, out.detail[:300], daemon=label,
                evidence=dict(out.evidence, log_tail=log_tail(log, 10)))
    doc = {"target": "control_plane", "daemon": label, "daemon_binary": installation.binary,
           "daemon_variant": installation.variant, "layout": layout,
           "first_invalid": cause, "log_tail": log_tail(log, 10),
           "finding": {"kind": out.finding, "signature": sig, "detail": out.detail},
           "program": program_to_json(prog)}
    return store.add(f, doc, suffix=".json")


def replay_control(doc: dict[str, Any], installation: daemons.Installation,
                   timeout: float = 0.5) -> ControlResult:
    """Run a control-plane reproducer's program again on a fresh daemon."""
    wd = tempfile.mkdtemp(prefix="fuseproto-ctl-")
    try:
        return run_control_program(program_from_json(doc["program"]), installation,
                                   workdir=wd, layout=doc.get("layout", "one"),
                                   timeout=timeout)
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def fuzz_control_plane(installation: daemons.Installation, *, seconds: float,
                       store: FindingStore, seed: int = 0, label: str | None = None,
                       timeout: float = 0.5, max_programs: int | None = None,
                       env: dict[str, str] | None = None) -> ControlStats:
    """Mutated control programs, each on a fresh daemon, for ``seconds``; a program that
    reaches a new outcome class joins the corpus; findings go to ``store``."""
    label = label or installation.kind
    rng = random.Random(seed)
    st = ControlStats(label)
    corpus: list[list[CtlStep]] = [standard_program()]
    t0 = time.monotonic()
    wd = tempfile.mkdtemp(prefix="fuseproto-ctl-")
    try:
        while time.monotonic() - t0 < seconds and (max_programs is None
                                                    or st.programs < max_programs):
            parent = rng.choice(corpus)
            prog = parent if st.programs == 0 else mutate_program(parent, rng)
            layout = LAYOUTS[st.programs % len(LAYOUTS)]
            try:
                res = run_control_program(prog, installation, workdir=wd, layout=layout,
                                          timeout=timeout, env=env)
            except (DaemonError, TransportError, OSError) as e:
                st.error = f"{type(e).__name__}: {e}"
                break
            st.programs += 1
            st.steps += res.steps_run
            st.served += bool(res.served)
            new = False
            for o in res.outcomes:
                new |= o.cls not in st.classes
                st.classes[o.cls] = st.classes.get(o.cls, 0) + 1
            if res.finding is not None:
                f = record_control_finding(store, label, installation, prog, layout,
                                           res.finding, res.log, res.first_invalid)
                if all(x.signature != f.signature for x in st.findings):
                    st.findings.append(f)
            elif new and len(corpus) < 500:
                corpus.append(prog)
    finally:
        shutil.rmtree(wd, ignore_errors=True)
        st.seconds = time.monotonic() - t0
    return st
