"""A vhost-user frontend for virtio-fs: the part QEMU plays, without a VM.

It connects to a virtiofsd's socket, hands it memfd-backed guest memory and split
virtqueues (queue 0 = hiprio, 1.. = request queues), and then moves whole FUSE messages
through the rings. It never looks inside a FUSE message: callers encode and decode them
with :mod:`fuseproto.wire.codec` / :class:`fuseproto.session.Session`.

The messages, their layouts and the framing are :mod:`.vhost_user_proto`'s; this module
is the frontend's state: the handshake, which follows QEMU's order (SET_MEM_TABLE comes
before any SET_VRING_ADDR, and rings are started with SET_VRING_ENABLE only after their
kick/call fds are set), and the data path (QEMU docs/interop/vhost-user.rst, virtio 1.x).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import scratch
from ..errors import DaemonError, TransportError, TransportTimeout
from .backend import BackendChannel, BackendHandler
from .vhost_user_proto import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_VERSION,
    VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    Payload,
    VhostUserMemory,
    VhostUserMemoryRegion,
    VhostUserMessage,
    VhostUserPayloadError,
    VhostUserProtocolFeature,
    VhostUserRequest,
    VhostUserSingleMemoryRegion,
    VhostUserU64,
    VhostUserVringAddr,
    VhostUserVringState,
    recv_message,
    request_name,
    send_message,
)
from .virtqueue import GuestMemory, Inflight, SplitVirtqueue

# A tuple, not `bytes | bytearray | memoryview`: isinstance with a tuple is the faster check.
_BYTES_LIKE = (bytes, bytearray, memoryview)

if TYPE_CHECKING:
    from ..daemons import Daemon, Installation
    from .base import Transport

# tap(direction, queue, data): called for every request submitted and reply taken.
Tap = Callable[[int, int, bytes], Any]


def _tag_text(tag: object) -> str:
    """A request's tag as errors name it: a str as is, ``(opcode, unique)`` formatted
    (callers pass the tuple so the hot path formats nothing)."""
    if isinstance(tag, tuple) and len(tag) == 2:
        opcode, unique = tag
        name = getattr(opcode, "name", None)
        return f"{name if name is not None else opcode} unique {unique}"
    return str(tag)


# -- the transport --------------------------------------------------------------------------

@dataclass
class Negotiated:
    features: int = 0
    protocol_features: int = 0
    queue_num: int | None = None
    max_mem_slots: int | None = None
    backend_channel: bool = False

    def has(self, feature: VhostUserProtocolFeature) -> bool:
        return bool(self.protocol_features & 1 << feature)

    @property
    def indirect_desc(self) -> bool:
        """VIRTIO_RING_F_INDIRECT_DESC was agreed (SET_FEATURES)."""
        return bool(self.features & 1 << VIRTIO_F_RING_INDIRECT_DESC)


# Directions as the capture format numbers them (fuseproto.capture.frames.Direction).
_REQUEST, _REPLY = 0, 1


def _current_cpu() -> int:
    """The CPU the calling thread runs on now (field 39 of /proc/thread-self/stat)."""
    with open("/proc/thread-self/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    return int(stat[stat.rindex(")") + 2:].split()[36])


class VhostUserTransport:
    """FUSE-over-virtqueues to one virtiofsd.

    ``submit(request, reply_size)`` puts one request in flight and returns a token;
    ``wait(token, timeout)`` returns the reply bytes. ``request`` may be bytes (one
    device-readable descriptor) or a sequence of byte strings (one descriptor each, e.g.
    split the way Linux's virtio_fs splits them); ``reply_size`` likewise an int or a
    sequence of device-writable area sizes. ``reply_size`` 0 means no reply (FORGET).

    ``mode`` chooses completion: "poll" spins on the used ring before blocking on the call
    eventfd, "eventfd" blocks at once, "interrupt" looks at the used ring only after a
    call (as a guest driver waiting for its interrupt: a recording proxy then reads each
    reply before the caller can reuse its buffer). ``indirect`` asks for
    VIRTIO_RING_F_INDIRECT_DESC: if the daemon offers it, a request of several segments
    takes one ring descriptor (its table in guest memory) instead of one per segment;
    ``negotiated.indirect_desc`` says whether it was agreed. ``add_mem_reg``: hand the
    memory over with ADD_MEM_REG, as QEMU does once CONFIGURE_MEM_SLOTS is agreed, rather
    than SET_MEM_TABLE. ``daemon`` (optional) is the
    :class:`~fuseproto.daemons.Daemon` serving the socket; with it errors name
    what became of the process, and :meth:`close` stops it.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        daemon: Daemon | None = None,
        queue_size: int = 256,
        request_queues: int = 1,
        memory_size: int = 32 << 20,
        mode: str = "poll",
        spin_s: float = 0.0005,
        timeout: float = 5.0,
        backend_handler: BackendHandler | None = None,
        own_daemon: bool = True,
        tap: Tap | None = None,
        indirect: bool = False,
        add_mem_reg: bool = False,
    ) -> None:
        if mode not in ("poll", "eventfd", "interrupt"):
            raise ValueError("mode must be 'poll', 'eventfd' or 'interrupt'")
        self.socket_path = socket_path
        self.daemon = daemon
        self.own_daemon = own_daemon and daemon is not None
        self.queue_size = queue_size
        self.request_queues = request_queues
        self.mode = mode
        self.spin_s = spin_s if mode == "poll" else 0.0
        self.timeout = timeout
        self.backend_handler = backend_handler
        self.indirect = indirect
        # Hand the memory over with ADD_MEM_REG, as QEMU does once CONFIGURE_MEM_SLOTS is
        # agreed, instead of SET_MEM_TABLE (the default, kept when the daemon lacks it).
        self.add_mem_reg = add_mem_reg
        # tap(direction, queue, data): e.g. a fuseproto.capture.CaptureRecorder, which
        # writes every FUSE message that crosses the rings to a pcap file.
        self.tap = tap
        self.negotiated = Negotiated()
        self.queues: list[SplitVirtqueue] = []
        self.kick_fds: list[int] = []
        self.call_fds: list[int] = []
        self.sock: socket.socket | None = None
        self.mem: GuestMemory | None = None
        self.backend: BackendChannel | None = None
        self._broken: str | None = None
        self._closed = False
        self._next_queue = 0
        self._called: set[int] = set()  # queues whose call came while waiting on another
        self._tmpdir: str | None = None  # spawn()'s socket directory, removed on close
        self._restore_affinity: set[int] | None = None  # spawn(colocate=): the caller's CPUs
        try:
            self.mem = GuestMemory(memory_size)
            self._connect()
            self._handshake()
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------
    @classmethod
    def spawn(cls, installation: Installation, shared_dir: str, *,
              socket_path: str | None = None, daemon_args: list[str] | None = None,
              xattr: bool = True, colocate: bool | int = False,
              **kwargs: Any) -> VhostUserTransport:
        """Start a daemon on ``shared_dir`` (one per connection) and connect to it; the
        transport owns the daemon and stops it on close.

        ``colocate``: run the daemon on one CPU and pin the calling thread to that CPU
        until :meth:`close` (which restores its previous affinity). True picks the CPU
        this thread is on; an int names one. With one request at a time this saves a
        cross-CPU wake-up per request (in a VM whose idle vCPUs halt, the largest part of
        a round trip): about 1.6x the GETATTR round trips here. The price is that the
        daemon's work no longer overlaps the frontend's: large READs lose ~15%."""

        from ..daemons import Daemon

        pinned = None
        if colocate is not False:
            allowed = os.sched_getaffinity(0)
            cpu = _current_cpu() if colocate is True else int(colocate)
            if cpu not in allowed:
                raise ValueError(f"colocate: CPU {cpu} is not one this thread may run on "
                                 f"({sorted(allowed)})")
            pinned = (allowed, cpu)
        tmpdir = None
        if socket_path is None:
            tmpdir = scratch.directory("vu")
            socket_path = os.path.join(tmpdir, "vhost.sock")
        daemon = Daemon(installation, shared_dir, socket_path, extra_args=daemon_args,
                        xattr=xattr, cpus=None if pinned is None else {pinned[1]})
        try:
            daemon.start()
            t = cls(socket_path, daemon=daemon, **kwargs)
            if pinned is not None:
                try:
                    os.sched_setaffinity(0, {pinned[1]})
                except BaseException:
                    t.close()
                    raise
                t._restore_affinity = pinned[0]
        except BaseException:
            daemon.cleanup()
            if tmpdir:
                with contextlib.suppress(OSError):
                    os.rmdir(tmpdir)
            raise
        t._tmpdir = tmpdir
        return t

    def _connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(self.timeout)
            try:
                s.connect(self.socket_path)
                break
            except ConnectionRefusedError as e:
                s.close()
                # The C daemon creates the socket file (bind) a moment before it listens;
                # a refused connect never became a session, so trying again is safe.
                alive = self.daemon is None or self.daemon.running()
                if not alive or time.monotonic() > deadline:
                    raise TransportError(
                        f"cannot connect to {self.socket_path}: {e}{self._daemon_note()}")
                time.sleep(0.001)
            except OSError as e:
                s.close()
                raise TransportError(
                    f"cannot connect to {self.socket_path}: {e}{self._daemon_note()}")
        self.sock = s

    def _daemon_note(self) -> str:
        if self.daemon is None:
            return ""
        # Give a dying daemon a moment so the message can say how it ended.
        self.daemon.wait_exit(0.2)
        return f" ({self.daemon.describe()})"

    # -- control messages ---------------------------------------------------------------
    def _send(self, request: VhostUserRequest, payload: bytes | Payload = b"", *,
              fds: Sequence[int] = (), need_reply: bool = False) -> None:
        flags = VHOST_USER_VERSION
        if need_reply and self.negotiated.has(VhostUserProtocolFeature.REPLY_ACK):
            flags |= VHOST_USER_NEED_REPLY_MASK
        assert self.sock is not None
        send_message(self.sock, request, payload, fds=fds, flags=flags)
        if flags & VHOST_USER_NEED_REPLY_MASK:
            ack = self._reply(request)
            # The status is a u64; a reply without one counts as a refusal.
            try:
                value = VhostUserU64.parse_body(ack.payload).u64
            except VhostUserPayloadError:
                value = 1
            if value != 0:
                raise TransportError(f"daemon rejected {request.name} (REPLY_ACK {value})")

    def _reply(self, request: VhostUserRequest) -> VhostUserMessage:
        assert self.sock is not None
        try:
            msg = recv_message(self.sock, what=f"reply to {request.name}")
        except TransportTimeout as e:
            raise TransportTimeout(f"{e}{self._daemon_note()}")
        except TransportError as e:
            raise TransportError(f"{e}{self._daemon_note()}")
        for fd in msg.fds:
            os.close(fd)
        if msg.request != request or not msg.is_reply:
            raise TransportError(
                f"expected reply to {request.name}, got {request_name(msg.request)} flags {msg.flags:#x}"
            )
        return msg

    def _get_u64(self, request: VhostUserRequest) -> int:
        self._send(request)
        msg = self._reply(request)
        try:
            return VhostUserU64.parse_body(msg.payload).u64
        except VhostUserPayloadError as e:
            raise TransportError(f"{request.name} reply: {e}") from None

    def _set_u64(self, request: VhostUserRequest, value: int, *, fds: Sequence[int] = (),
                 need_reply: bool = False) -> None:
        self._send(request, VhostUserU64(value), fds=fds, need_reply=need_reply)

    def _handshake(self) -> None:
        P = VhostUserProtocolFeature
        n = self.negotiated
        features = self._get_u64(VhostUserRequest.GET_FEATURES)
        for bit in (VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES):
            if not features & 1 << bit:
                raise TransportError(f"daemon does not offer feature bit {bit} ({features:#x})")
        offered = self._get_u64(VhostUserRequest.GET_PROTOCOL_FEATURES)
        want = 1 << P.REPLY_ACK | 1 << P.MQ | 1 << P.CONFIGURE_MEM_SLOTS
        if self.backend_handler is not None:
            want |= 1 << P.BACKEND_REQ | 1 << P.BACKEND_SEND_FD | 1 << P.SHMEM
        # SET_PROTOCOL_FEATURES never takes NEED_REPLY: REPLY_ACK is not agreed yet.
        self._set_u64(VhostUserRequest.SET_PROTOCOL_FEATURES, offered & want)
        n.protocol_features = offered & want
        if n.has(P.MQ):
            n.queue_num = self._get_u64(VhostUserRequest.GET_QUEUE_NUM)
            if n.queue_num < 1 + self.request_queues:
                raise TransportError(
                    f"daemon offers {n.queue_num} queues, need {1 + self.request_queues}"
                )
        elif self.request_queues != 1:
            raise TransportError("daemon lacks the MQ protocol feature")
        if n.has(P.CONFIGURE_MEM_SLOTS):
            n.max_mem_slots = self._get_u64(VhostUserRequest.GET_MAX_MEM_SLOTS)
        if self.backend_handler is not None and n.has(P.BACKEND_REQ):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._send(VhostUserRequest.SET_BACKEND_REQ_FD, fds=[theirs.fileno()],
                           need_reply=True)
            finally:
                theirs.close()
            self.backend = BackendChannel(ours, self.backend_handler)
            self.backend.start()
            n.backend_channel = True
        self._send(VhostUserRequest.SET_OWNER)
        n.features = 1 << VIRTIO_F_VERSION_1 | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        if self.indirect:
            n.features |= features & 1 << VIRTIO_F_RING_INDIRECT_DESC
        self._set_u64(VhostUserRequest.SET_FEATURES, n.features)
        # Rings are carved from guest memory before the table is sent; SET_MEM_TABLE must
        # precede SET_VRING_ADDR, which the daemon translates through the table.
        mem = self.mem
        assert mem is not None
        self.queues = [SplitVirtqueue(mem, i, self.queue_size, indirect=n.indirect_desc)
                       for i in range(1 + self.request_queues)]
        region = VhostUserMemoryRegion(
            guest_addr=mem.gpa_base, size=mem.size, user_addr=mem.uaddr_base, mmap_offset=0)
        if self.add_mem_reg and n.has(P.CONFIGURE_MEM_SLOTS):
            self._send(VhostUserRequest.ADD_MEM_REG, VhostUserSingleMemoryRegion(region),
                       fds=[mem.fd], need_reply=True)
        else:
            self._send(VhostUserRequest.SET_MEM_TABLE, VhostUserMemory((region,)),
                       fds=[mem.fd], need_reply=True)
        for vq in self.queues:
            i = vq.index
            self._send(VhostUserRequest.SET_VRING_NUM, VhostUserVringState(i, vq.size))
            self._send(VhostUserRequest.SET_VRING_BASE, VhostUserVringState(i, 0))
            self._send(VhostUserRequest.SET_VRING_ADDR, VhostUserVringAddr(
                index=i, flags=0, descriptor=vq.desc_uaddr, used=vq.used_uaddr,
                available=vq.avail_uaddr, log=0))
            kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.kick_fds.append(kick)
            self._set_u64(VhostUserRequest.SET_VRING_KICK, i, fds=[kick])
            call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.call_fds.append(call)
            self._set_u64(VhostUserRequest.SET_VRING_CALL, i, fds=[call])
        # Wait for each ack: the Rust daemon drops a kick that races the enable.
        for vq in self.queues:
            self._send(VhostUserRequest.SET_VRING_ENABLE, VhostUserVringState(vq.index, 1),
                       need_reply=True)
        assert self.sock is not None
        self.sock.settimeout(None)
        self._poller = select.poll()
        self._sock_fd = self.sock.fileno()
        self._poller.register(self._sock_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        for call in self.call_fds:
            self._poller.register(call, select.POLLIN)

    # -- data path ----------------------------------------------------------------------
    def submit(self, request: bytes | Sequence[bytes | memoryview],
               reply_size: int | Sequence[int], *,
               hiprio: bool = False, queue: int | None = None, tag: object = None,
               kick: bool = True) -> Inflight:
        """Put one request in flight; returns the token :meth:`wait` takes. ``tag`` (a
        str, or ``(opcode, unique)``, formatted only when an error names it). The chain
        itself is :meth:`SplitVirtqueue.add`'s business (the one way onto a ring)."""
        if self._broken or self._closed:
            raise TransportError(self._broken or "transport is closed")
        if hiprio:
            qi = 0
        elif queue is not None:
            qi = queue
        elif self.request_queues == 1:
            qi = 1
        else:
            qi = 1 + self._next_queue
            self._next_queue = (self._next_queue + 1) % self.request_queues
        vq = self.queues[qi]
        if not reply_size:
            # Nobody waits for a reply-less request (FORGET): reclaim finished ones here,
            # and wait for room if the daemon has not caught up (it may be descheduled).
            self._collect(vq)
            need = vq.descriptors_for(1 if isinstance(request, _BYTES_LIKE) else len(request))
            if vq.free_descriptors() < need:
                self._wait_room(vq, need)
        token = vq.add(request, reply_size, tag)
        if self.tap is not None:
            self.tap(_REQUEST, qi, bytes(request) if isinstance(request, _BYTES_LIKE)
                     else b"".join(request))
        if self.spin_s and vq.interrupts:
            # Busy-polling: the daemon need not write the call eventfd (the flag is
            # written on a change only, not per request).
            vq.set_interrupts(False)
        if kick:
            self.kick(qi)
        return token

    def kick(self, queue: int = 1) -> None:
        """Notify the daemon that queue ``queue`` has new avail entries (unless it has
        suppressed notifications: VIRTQ_USED_F_NO_NOTIFY, virtio 1.x 2.7.10)."""
        if self.queues[queue].device_wants_kick():
            os.eventfd_write(self.kick_fds[queue], 1)

    def reclaim(self, queue: int = 0) -> int:
        """Recycle the finished reply-less chains (FORGETs) of queue ``queue`` now, as
        :meth:`submit` does before it adds one; returns the queue's free descriptors."""
        vq = self.queues[queue]
        self._collect(vq)
        return vq.free_descriptors()

    def done(self, token: Inflight) -> bool:
        if not token.done:
            self._collect(self.queues[token.queue])
        return token.done

    def _collect(self, vq: SplitVirtqueue) -> None:
        try:
            for req in vq.collect():
                if not req.in_size:  # no reply expected: recycle at once
                    vq.take_reply(req)
        except TransportError as e:
            self._broken = f"ring corrupted: {e}"
            raise

    def wait(self, token: Inflight, timeout: float | None = None) -> bytes:
        """The reply bytes of ``token``; raises TransportTimeout after ``timeout`` s (the
        request stays owned by the daemon and is reclaimed if it ever completes) and
        TransportError if the daemon or socket goes away first."""
        if token.taken:
            raise TransportError("reply already taken")
        vq = self.queues[token.queue]
        if not token.done:
            self._block_until(vq, token, self.timeout if timeout is None else timeout)
        token.taken = True
        reply = vq.take_reply(token)
        if self.tap is not None:
            self.tap(_REPLY, token.queue, reply)
        return reply

    def _block_until(self, vq: SplitVirtqueue, token: Inflight, timeout: float) -> None:
        if self._broken:
            raise TransportError(self._broken)
        if self._closed:
            raise TransportError("transport is closed")
        now = time.monotonic()
        deadline = now + timeout
        if self.spin_s:
            # Spin on the used index with as little work per turn as possible: x1 latency
            # is the time from the daemon's store to our next load.
            spin_end = now + min(self.spin_s, timeout)
            has_used = vq.has_used
            monotonic = time.monotonic
            turns = 0
            while True:
                if has_used():
                    self._collect(vq)
                    if token.done:
                        return
                turns += 1
                if not turns & 15 and monotonic() > spin_end:
                    break
        # "interrupt": the ring is read only once a call came (interrupts stay on, so none
        # is lost); the other modes look before they block.
        look = self.mode != "interrupt" or vq.index in self._called
        self._called.discard(vq.index)
        while True:
            vq.set_interrupts(True)
            if look:
                self._collect(vq)
            if token.done:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                token.abandoned = True
                what = f" to {_tag_text(token.tag)}" if token.tag else ""
                state = f"; {self.daemon.describe()}" if self.daemon is not None else ""
                raise TransportTimeout(
                    f"no reply{what} on queue {vq.index} after {timeout:.3g} s{state}"
                )
            look = self._poll_once(vq, token, remaining) or self.mode != "interrupt"

    def _wait_room(self, vq: SplitVirtqueue, n: int) -> None:
        deadline = time.monotonic() + self.timeout
        while vq.free_descriptors() < n:
            vq.set_interrupts(True)
            self._collect(vq)
            if vq.free_descriptors() >= n:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = f"; {self.daemon.describe()}" if self.daemon is not None else ""
                raise TransportTimeout(
                    f"queue {vq.index} stayed full ({len(vq.inflight)} requests in flight) "
                    f"for {self.timeout:.3g} s{state}")
            self._poll_once(vq, None, remaining)

    def _poll_once(self, vq: SplitVirtqueue, token: Inflight | None, remaining: float) -> bool:
        """Block on the call eventfds and the socket for a short slice; returns whether a
        call came."""
        # Short slices: bound a lost wakeup (store->load reordering on the flag) and let
        # us notice a daemon that died without the socket saying so.
        for fd, _ev in self._poller.poll(max(1, int(min(remaining, 0.05) * 1000))):
            if fd == self._sock_fd:
                self._connection_lost(vq, token)
            else:
                self._called.add(self.call_fds.index(fd))
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
        if self.daemon is not None and not self.daemon.running():
            self._connection_lost(vq, token)
        if vq.index in self._called:
            self._called.discard(vq.index)
            return True
        return False

    def _connection_lost(self, vq: SplitVirtqueue, token: Inflight | None) -> None:
        # The daemon never writes to this socket unprompted: readable means EOF.
        self._collect(vq)
        if token is not None and token.done:
            return
        inflight = sum(len(q.inflight) for q in self.queues)
        what = f" to {_tag_text(token.tag)}" if token is not None and token.tag else ""
        self._broken = (
            f"vhost-user connection closed by the daemon{self._daemon_note()} with "
            f"{inflight} request(s) in flight; no reply{what}"
        )
        exc = DaemonError if self.daemon is not None else TransportError
        raise TransportError(self._broken) from exc(self._broken)

    # -- teardown -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (the daemon exits), stop an owned daemon by PID, release
        memory and fds. Safe to call twice and while requests are in flight."""
        if self._closed:
            return
        self._closed = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        if self.backend is not None:
            self.backend.close()
        if self.daemon is not None and self.own_daemon:
            # It exits by itself once the connection is gone; give it a moment first
            # (unless it is stopped and cannot).
            if self.daemon.state() not in ("T", "t"):
                self.daemon.wait_exit(1.0)
            self.daemon.cleanup()
            tmp = self._tmpdir
            if tmp:
                with contextlib.suppress(OSError):
                    os.rmdir(tmp)
        for fd in self.kick_fds + self.call_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kick_fds, self.call_fds = [], []
        for vq in self.queues:
            for req in vq.inflight.values():
                req.abandoned = True
        if self.mem is not None:
            try:
                self.mem.close()
            except BufferError:
                pass  # a caller still holds a view into guest memory; freed with it
        if self.backend is not None:
            self.backend.join()
        restore = self._restore_affinity
        if restore is not None:
            self._restore_affinity = None
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, restore)

    def __enter__(self) -> VhostUserTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:
    def _is_a_transport(t: VhostUserTransport) -> Transport:
        return t  # mypy checks VhostUserTransport against the Transport protocol here


__all__ = ["Negotiated", "Tap", "VhostUserTransport"]
