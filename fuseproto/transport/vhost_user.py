"""A vhost-user frontend for virtio-fs: the part QEMU plays, without a VM.

It connects to a virtiofsd's socket, hands it memfd-backed guest memory and split
virtqueues (queue 0 = hiprio, 1.. = request queues), and then moves whole FUSE messages
through the rings. It never looks inside a FUSE message: callers encode and decode them
with :mod:`fuseproto.wire.codec` / :class:`fuseproto.session.Session`.

Facts used (QEMU docs/interop/vhost-user.rst, virtio 1.x spec):
* every message is a 12-byte header (request u32, flags u32, size u32) plus ``size``
  payload bytes; fds travel as SCM_RIGHTS ancillary data; flags bits 0-1 are the
  version (1), bit 2 marks a reply, bit 3 asks for a REPLY_ACK;
* the handshake follows QEMU's order, SET_MEM_TABLE comes before any SET_VRING_ADDR, and
  rings are started with SET_VRING_ENABLE only after their kick/call fds are set.
"""

from __future__ import annotations

import array
import contextlib
import enum
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from construct import Array, Bytes, Int8ul, Int32ul, Int64ul, Struct, this

from ..errors import DaemonError, TransportError, TransportTimeout
from .virtqueue import GuestMemory, Inflight, SplitVirtqueue, _unpack_u16

# A tuple, not `bytes | bytearray | memoryview`: that builds a UnionType on every call.
_BYTES_LIKE = (bytes, bytearray, memoryview)

# -- message schemas (vhost-user.rst "Message types" / "Payload") ---------------------------

VhostUserHeader = Struct("request" / Int32ul, "flags" / Int32ul, "size" / Int32ul)
VhostUserU64 = Struct("u64" / Int64ul)
VhostUserVringState = Struct("index" / Int32ul, "num" / Int32ul)
VhostUserVringAddr = Struct(
    "index" / Int32ul,
    "flags" / Int32ul,
    "descriptor" / Int64ul,  # frontend virtual addresses, translated via the mem table
    "used" / Int64ul,
    "available" / Int64ul,
    "log" / Int64ul,
)
VhostUserMemoryRegion = Struct(
    "guest_addr" / Int64ul,
    "size" / Int64ul,
    "user_addr" / Int64ul,
    "mmap_offset" / Int64ul,
)
VhostUserMemory = Struct(
    "nregions" / Int32ul,
    "padding" / Int32ul,
    "regions" / Array(this.nregions, VhostUserMemoryRegion),
)
VhostUserSingleMemoryRegion = Struct("padding" / Int64ul, "region" / VhostUserMemoryRegion)
# Backend -> frontend: VHOST_USER_BACKEND_SHMEM_MAP / _UNMAP payload ("MMAP request").
VhostUserMMap = Struct(
    "shmid" / Int8ul,
    "padding" / Bytes(7),
    "fd_offset" / Int64ul,
    "shm_offset" / Int64ul,
    "len" / Int64ul,
    "flags" / Int64ul,
)
# Legacy virtio-fs DAX draft (FS_MAP/FS_UNMAP), as rust-vmm's vhost crate lays it out:
# parallel arrays of VHOST_USER_FS_BACKEND_ENTRIES (8) entries; unused entries have len 0.
VHOST_USER_FS_BACKEND_ENTRIES = 8
VhostUserFSBackendMsg = Struct(
    "fd_offset" / Array(VHOST_USER_FS_BACKEND_ENTRIES, Int64ul),
    "cache_offset" / Array(VHOST_USER_FS_BACKEND_ENTRIES, Int64ul),
    "len" / Array(VHOST_USER_FS_BACKEND_ENTRIES, Int64ul),
    "flags" / Array(VHOST_USER_FS_BACKEND_ENTRIES, Int64ul),
)

HEADER_SIZE = VhostUserHeader.sizeof()
VHOST_USER_VERSION = 0x1
VHOST_USER_REPLY_MASK = 1 << 2
VHOST_USER_NEED_REPLY_MASK = 1 << 3
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 1 << 8
MAX_PAYLOAD = 4096 + 256


class VhostUserRequest(enum.IntEnum):
    """Front-end message types."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class VhostUserBackendRequest(enum.IntEnum):
    """Back-end message types (sent on the SET_BACKEND_REQ_FD channel)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    # The legacy virtio-fs DAX draft used 6-9; upstream reassigned 6-8 to SHARED_OBJECT_*.
    FS_MAP = 6
    FS_UNMAP = 7
    FS_SYNC = 8
    SHMEM_MAP = 9
    SHMEM_UNMAP = 10


class VhostUserProtocolFeature(enum.IntEnum):
    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19
    SHMEM = 20


VIRTIO_F_RING_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32

PAYLOADS = {
    VhostUserRequest.SET_VRING_NUM: VhostUserVringState,
    VhostUserRequest.SET_VRING_BASE: VhostUserVringState,
    VhostUserRequest.GET_VRING_BASE: VhostUserVringState,
    VhostUserRequest.SET_VRING_ENABLE: VhostUserVringState,
    VhostUserRequest.SET_VRING_ADDR: VhostUserVringAddr,
    VhostUserRequest.SET_MEM_TABLE: VhostUserMemory,
    VhostUserRequest.ADD_MEM_REG: VhostUserSingleMemoryRegion,
    VhostUserRequest.REM_MEM_REG: VhostUserSingleMemoryRegion,
}


def _bit(n: int) -> int:
    return 1 << n


# -- framing --------------------------------------------------------------------------------

@dataclass
class VhostUserMessage:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_REPLY_MASK)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_NEED_REPLY_MASK)


def send_message(sock: socket.socket, request: int, payload: bytes = b"", *,
                 fds: Sequence[int] = (), flags: int = VHOST_USER_VERSION) -> None:
    data = VhostUserHeader.build(dict(request=int(request), flags=flags, size=len(payload))) + payload
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    try:
        sent = sock.sendmsg([data], anc)
        if sent != len(data):
            sock.sendall(data[sent:])
    except (BrokenPipeError, ConnectionResetError) as e:
        raise TransportError(f"vhost-user socket closed while sending {_name(request)}: {e}")


def recv_message(sock: socket.socket, *, what: str = "message") -> VhostUserMessage:
    """Read one message (header + payload + fds). Raises TransportError on EOF and
    TransportTimeout if the socket's timeout expires."""
    fds: list[int] = []
    try:
        head, anc, _flags, _ = sock.recvmsg(HEADER_SIZE, socket.CMSG_SPACE(8 * 4))
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(blob[: len(blob) - len(blob) % arr.itemsize])
                fds.extend(arr)
        if not head:
            raise TransportError(f"vhost-user socket closed by peer while waiting for {what}")
        while len(head) < HEADER_SIZE:
            more = sock.recv(HEADER_SIZE - len(head))
            if not more:
                raise TransportError(f"vhost-user socket closed mid-header ({what})")
            head += more
        hdr = VhostUserHeader.parse(head)
        if hdr.size > MAX_PAYLOAD:
            raise TransportError(f"vhost-user {what}: payload size {hdr.size} too large")
        payload = b""
        while len(payload) < hdr.size:
            more = sock.recv(hdr.size - len(payload))
            if not more:
                raise TransportError(f"vhost-user socket closed mid-payload ({what})")
            payload += more
    except TimeoutError:
        for fd in fds:
            os.close(fd)
        raise TransportTimeout(f"no vhost-user {what} within {sock.gettimeout()} s")
    except ConnectionResetError as e:
        for fd in fds:
            os.close(fd)
        raise TransportError(f"vhost-user socket reset while waiting for {what}: {e}")
    except TransportError:
        for fd in fds:
            os.close(fd)
        raise
    return VhostUserMessage(hdr.request, hdr.flags, payload, fds)


def _tag_text(tag: object) -> str:
    """A request's tag as errors name it: a str as is, ``(opcode, unique)`` formatted
    (callers pass the tuple so the hot path formats nothing)."""
    if isinstance(tag, tuple) and len(tag) == 2:
        opcode, unique = tag
        name = getattr(opcode, "name", None)
        return f"{name if name is not None else opcode} unique {unique}"
    return str(tag)


def _name(request: int) -> str:
    try:
        return VhostUserRequest(request).name
    except ValueError:
        return f"request {request}"


# -- the transport --------------------------------------------------------------------------

@dataclass
class Negotiated:
    features: int = 0
    protocol_features: int = 0
    queue_num: int | None = None
    max_mem_slots: int | None = None
    backend_channel: bool = False

    def has(self, feature: VhostUserProtocolFeature) -> bool:
        return bool(self.protocol_features & _bit(feature))

    @property
    def indirect_desc(self) -> bool:
        """VIRTIO_RING_F_INDIRECT_DESC was agreed (SET_FEATURES)."""
        return bool(self.features & _bit(VIRTIO_F_RING_INDIRECT_DESC))


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
    eventfd, "eventfd" blocks at once. ``indirect`` asks for VIRTIO_RING_F_INDIRECT_DESC:
    if the daemon offers it, a request of several segments takes one ring descriptor (its
    table in guest memory) instead of one per segment; ``negotiated.indirect_desc`` says
    whether it was agreed. ``daemon`` (optional) is the
    :class:`~fuseproto.daemons.Daemon` serving the socket; with it errors name
    what became of the process, and :meth:`close` stops it.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        daemon=None,
        queue_size: int = 256,
        request_queues: int = 1,
        memory_size: int = 32 << 20,
        mode: str = "poll",
        spin_s: float = 0.0005,
        timeout: float = 5.0,
        backend_handler=None,
        own_daemon: bool = True,
        tap=None,
        indirect: bool = False,
    ):
        if mode not in ("poll", "eventfd"):
            raise ValueError("mode must be 'poll' or 'eventfd'")
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
        # tap(direction, queue, data): e.g. a fuseproto.capture.CaptureRecorder, which
        # writes every FUSE message that crosses the rings to a pcap file.
        self.tap = tap
        self.negotiated = Negotiated()
        self.queues: list[SplitVirtqueue] = []
        self.kick_fds: list[int] = []
        self.call_fds: list[int] = []
        self.sock: socket.socket | None = None
        self.mem: GuestMemory | None = None
        self.backend = None
        self._broken: str | None = None
        self._closed = False
        self._next_queue = 0
        try:
            self.mem = GuestMemory(memory_size)
            self._connect()
            self._handshake()
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------
    @classmethod
    def spawn(cls, installation, shared_dir: str, *, socket_path: str | None = None,
              daemon_args: list[str] | None = None, xattr: bool = True,
              colocate: bool | int = False, **kwargs) -> VhostUserTransport:
        """Start a daemon on ``shared_dir`` (one per connection) and connect to it; the
        transport owns the daemon and stops it on close.

        ``colocate``: run the daemon on one CPU and pin the calling thread to that CPU
        until :meth:`close` (which restores its previous affinity). True picks the CPU
        this thread is on; an int names one. With one request at a time this saves a
        cross-CPU wake-up per request (in a VM whose idle vCPUs halt, the largest part of
        a round trip): about 1.6x the GETATTR round trips here. The price is that the
        daemon's work no longer overlaps the frontend's: large READs lose ~15%."""
        import tempfile

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
            tmpdir = tempfile.mkdtemp(prefix="fuseproto-vu-")
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
    def _send(self, request: VhostUserRequest, payload: bytes = b"", *, fds: Sequence[int] = (),
              need_reply: bool = False) -> None:
        flags = VHOST_USER_VERSION
        if need_reply and self.negotiated.has(VhostUserProtocolFeature.REPLY_ACK):
            flags |= VHOST_USER_NEED_REPLY_MASK
        assert self.sock is not None
        send_message(self.sock, request, payload, fds=fds, flags=flags)
        if flags & VHOST_USER_NEED_REPLY_MASK:
            ack = self._reply(request)
            value = VhostUserU64.parse(ack.payload).u64 if len(ack.payload) >= 8 else 1
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
                f"expected reply to {request.name}, got {_name(msg.request)} flags {msg.flags:#x}"
            )
        return msg

    def _get_u64(self, request: VhostUserRequest) -> int:
        self._send(request)
        msg = self._reply(request)
        if len(msg.payload) != 8:
            raise TransportError(f"{request.name} reply has {len(msg.payload)} payload bytes, not 8")
        return VhostUserU64.parse(msg.payload).u64

    def _set_u64(self, request: VhostUserRequest, value: int, **kw) -> None:
        self._send(request, VhostUserU64.build(dict(u64=value)), **kw)

    def _handshake(self) -> None:
        P = VhostUserProtocolFeature
        n = self.negotiated
        features = self._get_u64(VhostUserRequest.GET_FEATURES)
        for bit in (VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES):
            if not features & _bit(bit):
                raise TransportError(f"daemon does not offer feature bit {bit} ({features:#x})")
        offered = self._get_u64(VhostUserRequest.GET_PROTOCOL_FEATURES)
        want = _bit(P.REPLY_ACK) | _bit(P.MQ) | _bit(P.CONFIGURE_MEM_SLOTS)
        if self.backend_handler is not None:
            want |= _bit(P.BACKEND_REQ) | _bit(P.BACKEND_SEND_FD) | _bit(P.SHMEM)
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
            from .backend import BackendChannel

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
        n.features = _bit(VIRTIO_F_VERSION_1) | _bit(VHOST_USER_F_PROTOCOL_FEATURES)
        if self.indirect:
            n.features |= features & _bit(VIRTIO_F_RING_INDIRECT_DESC)
        self._set_u64(VhostUserRequest.SET_FEATURES, n.features)
        # Rings are carved from guest memory before the table is sent; SET_MEM_TABLE must
        # precede SET_VRING_ADDR, which the daemon translates through the table.
        mem = self.mem
        assert mem is not None
        self.queues = [SplitVirtqueue(mem, i, self.queue_size, indirect=n.indirect_desc)
                       for i in range(1 + self.request_queues)]
        table = VhostUserMemory.build(dict(nregions=1, padding=0, regions=[dict(
            guest_addr=mem.gpa_base, size=mem.size, user_addr=mem.uaddr_base, mmap_offset=0)]))
        self._send(VhostUserRequest.SET_MEM_TABLE, table, fds=[mem.fd], need_reply=True)
        for vq in self.queues:
            i = vq.index
            self._send(VhostUserRequest.SET_VRING_NUM,
                       VhostUserVringState.build(dict(index=i, num=vq.size)))
            self._send(VhostUserRequest.SET_VRING_BASE,
                       VhostUserVringState.build(dict(index=i, num=0)))
            self._send(VhostUserRequest.SET_VRING_ADDR, VhostUserVringAddr.build(dict(
                index=i, flags=0, descriptor=vq.desc_uaddr, used=vq.used_uaddr,
                available=vq.avail_uaddr, log=0)))
            kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.kick_fds.append(kick)
            self._set_u64(VhostUserRequest.SET_VRING_KICK, i, fds=[kick])
            call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.call_fds.append(call)
            self._set_u64(VhostUserRequest.SET_VRING_CALL, i, fds=[call])
        # Wait for each ack: the Rust daemon drops a kick that races the enable.
        for vq in self.queues:
            self._send(VhostUserRequest.SET_VRING_ENABLE,
                       VhostUserVringState.build(dict(index=vq.index, num=1)), need_reply=True)
        self.sock.settimeout(None)
        self._poller = select.poll()
        self._poller.register(self.sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        self._fd_queue = {}
        for vq, call in zip(self.queues, self.call_fds, strict=True):
            self._poller.register(call, select.POLLIN)
            self._fd_queue[call] = vq

    # -- data path ----------------------------------------------------------------------
    def submit(self, request: bytes | Sequence[bytes], reply_size: int | Sequence[int], *,
               hiprio: bool = False, queue: int | None = None, tag: object = None,
               kick: bool = True) -> Inflight:
        """Put one request in flight; returns the token :meth:`wait` takes. ``tag`` (a
        str, or ``(opcode, unique)``, formatted only when an error names it)."""
        if self._broken or self._closed:
            raise TransportError(self._broken or "transport is closed")
        token = None
        if (type(request) is bytes and type(reply_size) is int and reply_size
                and not hiprio and queue is None and self.request_queues == 1):
            # The common request (one device-readable buffer, one reply area) straight to
            # the ring: what vq.add does for it, without building lists.
            vq = self.queues[qi := 1]
            if not vq.indirect and len(vq._free_desc) >= 2:
                out: Sequence = (request,)
                token = vq._add_one_one(request, reply_size, tag)
        if token is None:
            out = (request,) if isinstance(request, _BYTES_LIKE) else list(request)
            if isinstance(reply_size, int):
                ins: Sequence[int] = (reply_size,) if reply_size else ()
            else:
                ins = list(reply_size)  # type: ignore[arg-type]
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
            if not ins:
                # Nobody waits for a reply-less request (FORGET): reclaim finished ones
                # here, and wait for room if the daemon has not caught up (it may be
                # descheduled).
                self._collect(vq)
                need = vq.descriptors_for(len(out))
                if vq.free_descriptors() < need:
                    self._wait_room(vq, need)
            token = vq.add(out, ins, tag)
        if self.tap is not None:
            self.tap(_REQUEST, qi, b"".join(out))
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
            self._block_until(vq, (token,), self.timeout if timeout is None else timeout)
        token.taken = True
        reply = vq.take_reply(token)
        if self.tap is not None:
            self.tap(_REPLY, token.queue, reply)
        return reply

    def wait_all(self, tokens: Sequence[Inflight], timeout: float | None = None) -> list[bytes]:
        """Replies for ``tokens`` in order (one deadline for all)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = []
        for t in tokens:
            out.append(self.wait(t, max(0.0, deadline - time.monotonic())))
        return out

    def _block_until(self, vq: SplitVirtqueue, tokens: Sequence[Inflight], timeout: float) -> None:
        token = tokens[0]
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
            mm = vq._mm
            used_idx_off = vq._used_idx_off
            unpack = _unpack_u16
            monotonic = time.monotonic
            turns = 0
            while True:
                if unpack(mm, used_idx_off)[0] != vq._last_used:
                    self._collect(vq)
                    if token.done:
                        return
                turns += 1
                if not turns & 15 and monotonic() > spin_end:
                    break
        while True:
            vq.set_interrupts(True)
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
            self._poll_once(vq, token, remaining)

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

    def _poll_once(self, vq: SplitVirtqueue, token: Inflight | None, remaining: float) -> None:
        """Block on the call eventfds and the socket for a short slice."""
        # Short slices: bound a lost wakeup (store->load reordering on the flag) and let
        # us notice a daemon that died without the socket saying so.
        for fd, _ev in self._poller.poll(max(1, int(min(remaining, 0.05) * 1000))):
            if fd == self.sock.fileno():
                self._connection_lost(vq, token)
            else:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
        if self.daemon is not None and not self.daemon.running():
            self._connection_lost(vq, token)

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
            tmp = getattr(self, "_tmpdir", None)
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
        restore = getattr(self, "_restore_affinity", None)
        if restore is not None:
            self._restore_affinity = None
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, restore)

    def __enter__(self) -> VhostUserTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "VhostUserHeader", "VhostUserU64", "VhostUserVringState", "VhostUserVringAddr",
    "VhostUserMemoryRegion", "VhostUserMemory", "VhostUserSingleMemoryRegion",
    "VhostUserMMap", "VhostUserFSBackendMsg", "VhostUserRequest", "VhostUserBackendRequest",
    "VhostUserProtocolFeature", "VhostUserMessage", "VhostUserTransport", "send_message",
    "recv_message",
]
