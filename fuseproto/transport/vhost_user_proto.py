"""The vhost-user protocol: message types, payload layouts and framing, with no state.

Used by the frontend (:mod:`.vhost_user`, the part QEMU plays) and by the backend channel
(:mod:`.backend`, requests the daemon sends back). Facts from QEMU's
docs/interop/vhost-user.rst:

* every message is a 12-byte header (request u32, flags u32, size u32) plus ``size``
  payload bytes; fds travel as SCM_RIGHTS ancillary data;
* header flags bits 0-1 are the version (1), bit 2 marks a reply, bit 3 asks for a
  REPLY_ACK (a u64 reply, 0 = success);
* payloads are little-endian C structs ("Message types" / "Payload").

Each payload layout is one class with ``parse_body(data)`` (which checks the length first
and raises :class:`VhostUserPayloadError` naming the actual length) and
``serialize_body()`` (through a precompiled :class:`struct.Struct`). Which layout a
request carries is a table (:data:`FRONTEND_PAYLOADS`, :data:`BACKEND_PAYLOADS`);
:func:`parse_payload` keeps the bytes of a request the table does not know, as data.
"""

from __future__ import annotations

import array
import enum
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, Self

from ..errors import TransportError, TransportTimeout

VHOST_USER_VERSION = 0x1
VHOST_USER_REPLY_MASK = 1 << 2
VHOST_USER_NEED_REPLY_MASK = 1 << 3
# SET_VRING_KICK / _CALL / _ERR u64: the ring index, and "no fd (poll instead)".
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 1 << 8
# Largest payload accepted from a peer: the biggest layout we know is a memory table.
MAX_PAYLOAD = 4096 + 256
# SET_MEM_TABLE: at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS).
VHOST_MEMORY_BASELINE_NREGIONS = 8
# Legacy virtio-fs DAX draft: entries per FS_MAP/FS_UNMAP message.
VHOST_USER_FS_BACKEND_ENTRIES = 8

# Feature bits (virtio 1.x 6, vhost-user.rst "Feature bits").
VIRTIO_F_RING_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32


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


# VhostUserMMap.flags / FS_MAP flags: what the mapping may do.
VHOST_USER_FLAG_MAP_RW = 1 << 0  # VhostUserMMap.flags: 0 read-only, 1 read-write
VHOST_USER_FS_FLAG_MAP_R = 1 << 0
VHOST_USER_FS_FLAG_MAP_W = 1 << 1


class VhostUserPayloadError(TransportError):
    """A payload whose length does not fit its layout (or a field out of range)."""


def request_name(request: int) -> str:
    """A front-end request's name, or ``request N`` for one we do not know."""
    try:
        return VhostUserRequest(request).name
    except ValueError:
        return f"request {request}"


# -- payload layouts ---------------------------------------------------------------------------

class Payload(Protocol):
    """What every layout class offers."""

    STRUCT: ClassVar[struct.Struct]

    def serialize_body(self) -> bytes: ...


def _check_size(cls: type, data: bytes | bytearray | memoryview, size: int) -> None:
    if len(data) != size:
        raise VhostUserPayloadError(
            f"{cls.__name__}: payload of {len(data)} bytes, expected {size}")


class _Flat:
    """A layout whose dataclass fields are its STRUCT's fields, in order: parse_body checks
    the length, then unpacks; serialize_body packs the fields."""

    __slots__ = ()
    STRUCT: ClassVar[struct.Struct]

    @classmethod
    def parse_body(cls, data: bytes | bytearray | memoryview) -> Self:
        _check_size(cls, data, cls.STRUCT.size)
        return cls(*cls.STRUCT.unpack(data))

    def serialize_body(self) -> bytes:
        obj: Any = self  # a dataclass: every subclass is one
        return self.STRUCT.pack(*(getattr(obj, f.name) for f in fields(obj)))


@dataclass(frozen=True, slots=True)
class VhostUserHeader(_Flat):
    """The 12-byte header in front of every message."""

    request: int
    flags: int
    size: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<III")


HEADER_SIZE = VhostUserHeader.STRUCT.size


@dataclass(frozen=True, slots=True)
class VhostUserU64(_Flat):
    """A u64: features, queue counts, vring index for KICK/CALL/ERR, REPLY_ACK status."""

    u64: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class VhostUserVringState(_Flat):
    """struct vhost_vring_state: a ring index and a number (size, base, enable)."""

    index: int
    num: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class VhostUserVringAddr(_Flat):
    """struct vhost_vring_addr: the ring's parts as frontend virtual addresses, which the
    daemon translates through the memory table."""

    index: int
    flags: int
    descriptor: int
    used: int
    available: int
    log: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQQQQ")


@dataclass(frozen=True, slots=True)
class VhostUserMemoryRegion(_Flat):
    """One region of guest memory: its guest-physical and frontend addresses."""

    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QQQQ")


@dataclass(frozen=True, slots=True)
class VhostUserMemory:
    """SET_MEM_TABLE: nregions (u32), padding (u32), then the regions (one fd each)."""

    regions: tuple[VhostUserMemoryRegion, ...]
    padding: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II")

    @classmethod
    def parse_body(cls, data: bytes | bytearray | memoryview) -> VhostUserMemory:
        head = cls.STRUCT.size
        if len(data) < head:
            raise VhostUserPayloadError(
                f"{cls.__name__}: payload of {len(data)} bytes, expected at least {head}")
        nregions, padding = cls.STRUCT.unpack_from(data)
        if nregions > VHOST_MEMORY_BASELINE_NREGIONS:
            raise VhostUserPayloadError(
                f"{cls.__name__}: {nregions} regions, at most "
                f"{VHOST_MEMORY_BASELINE_NREGIONS}")
        one = VhostUserMemoryRegion.STRUCT.size
        _check_size(cls, data, head + nregions * one)
        unpack = VhostUserMemoryRegion.STRUCT.unpack_from
        regions = tuple(VhostUserMemoryRegion(*unpack(data, head + i * one))
                        for i in range(nregions))
        return cls(regions, padding)

    def serialize_body(self) -> bytes:
        return self.STRUCT.pack(len(self.regions), self.padding) + b"".join(
            r.serialize_body() for r in self.regions)


@dataclass(frozen=True, slots=True)
class VhostUserSingleMemoryRegion:
    """ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region."""

    region: VhostUserMemoryRegion
    padding: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QQQQQ")

    @classmethod
    def parse_body(cls, data: bytes | bytearray | memoryview) -> VhostUserSingleMemoryRegion:
        _check_size(cls, data, cls.STRUCT.size)
        padding, *region = cls.STRUCT.unpack(data)
        return cls(VhostUserMemoryRegion(*region), padding)

    def serialize_body(self) -> bytes:
        r = self.region
        return self.STRUCT.pack(self.padding, r.guest_addr, r.size, r.user_addr,
                                r.mmap_offset)


@dataclass(frozen=True, slots=True)
class VhostUserMMap:
    """Backend SHMEM_MAP / SHMEM_UNMAP ("MMAP request"): map ``len`` bytes of the fd at
    ``fd_offset`` to ``shm_offset`` of shared memory region ``shmid``."""

    shmid: int
    fd_offset: int
    shm_offset: int
    len: int
    flags: int
    padding: bytes = bytes(7)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<B7sQQQQ")

    @classmethod
    def parse_body(cls, data: bytes | bytearray | memoryview) -> VhostUserMMap:
        _check_size(cls, data, cls.STRUCT.size)
        shmid, padding, fd_offset, shm_offset, length, flags = cls.STRUCT.unpack(data)
        return cls(shmid, fd_offset, shm_offset, length, flags, padding)

    def serialize_body(self) -> bytes:
        return self.STRUCT.pack(self.shmid, self.padding, self.fd_offset, self.shm_offset,
                                self.len, self.flags)


_ENTRIES = VHOST_USER_FS_BACKEND_ENTRIES


def _no_entries() -> tuple[int, ...]:
    return (0,) * _ENTRIES


@dataclass(frozen=True, slots=True)
class VhostUserFSBackendMsg:
    """Legacy virtio-fs DAX draft FS_MAP / FS_UNMAP / FS_SYNC, as rust-vmm's vhost crate
    lays it out: parallel arrays of 8 entries; an entry of len 0 ends the list."""

    fd_offset: tuple[int, ...] = field(default_factory=_no_entries)
    cache_offset: tuple[int, ...] = field(default_factory=_no_entries)
    len: tuple[int, ...] = field(default_factory=_no_entries)
    flags: tuple[int, ...] = field(default_factory=_no_entries)

    STRUCT: ClassVar[struct.Struct] = struct.Struct(f"<{4 * _ENTRIES}Q")

    @classmethod
    def parse_body(cls, data: bytes | bytearray | memoryview) -> VhostUserFSBackendMsg:
        _check_size(cls, data, cls.STRUCT.size)
        v = cls.STRUCT.unpack(data)
        n = _ENTRIES
        return cls(v[:n], v[n:2 * n], v[2 * n:3 * n], v[3 * n:])

    def serialize_body(self) -> bytes:
        for name in ("fd_offset", "cache_offset", "len", "flags"):
            if len(getattr(self, name)) != _ENTRIES:
                raise VhostUserPayloadError(
                    f"VhostUserFSBackendMsg.{name} has {len(getattr(self, name))} entries, "
                    f"not {_ENTRIES}")
        return self.STRUCT.pack(*self.fd_offset, *self.cache_offset, *self.len, *self.flags)


# -- which request carries which layout (vhost-user.rst "Front-end message types") ------------
# The reply of a GET_* request has the same layout as listed; a REPLY_ACK is a u64.

_R = VhostUserRequest
_B = VhostUserBackendRequest
_FRONTEND_LAYOUTS: tuple[tuple[type, tuple[VhostUserRequest, ...]], ...] = (
    (VhostUserU64, (_R.GET_FEATURES, _R.SET_FEATURES, _R.GET_PROTOCOL_FEATURES,
                    _R.SET_PROTOCOL_FEATURES, _R.GET_QUEUE_NUM, _R.GET_MAX_MEM_SLOTS,
                    _R.SET_VRING_KICK, _R.SET_VRING_CALL, _R.SET_VRING_ERR, _R.SET_STATUS,
                    _R.GET_STATUS)),
    (VhostUserVringState, (_R.SET_VRING_NUM, _R.SET_VRING_BASE, _R.GET_VRING_BASE,
                           _R.SET_VRING_ENABLE)),
    (VhostUserVringAddr, (_R.SET_VRING_ADDR,)),
    (VhostUserMemory, (_R.SET_MEM_TABLE,)),
    (VhostUserSingleMemoryRegion, (_R.ADD_MEM_REG, _R.REM_MEM_REG)),
)
_BACKEND_LAYOUTS: tuple[tuple[type, tuple[VhostUserBackendRequest, ...]], ...] = (
    (VhostUserMMap, (_B.SHMEM_MAP, _B.SHMEM_UNMAP)),
    (VhostUserFSBackendMsg, (_B.FS_MAP, _B.FS_UNMAP, _B.FS_SYNC)),
)
FRONTEND_PAYLOADS: dict[int, type] = {
    request: layout for layout, requests in _FRONTEND_LAYOUTS for request in requests}
BACKEND_PAYLOADS: dict[int, type] = {
    request: layout for layout, requests in _BACKEND_LAYOUTS for request in requests}


def parse_payload(table: dict[int, type], request: int,
                  data: bytes | bytearray | memoryview) -> object:
    """The payload of ``request`` parsed by the layout ``table`` names (raises
    :class:`VhostUserPayloadError` on a bad length); the raw bytes when ``table`` has no
    layout for it (kept as data, not refused)."""
    layout = table.get(request)
    if layout is None:
        return bytes(data)
    return layout.parse_body(data)  # type: ignore[attr-defined]


# -- framing ----------------------------------------------------------------------------------

@dataclass
class VhostUserMessage:
    """One received message: header fields, raw payload and the fds that came with it
    (the receiver owns and closes them)."""

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


def describe_backend(msg: VhostUserMessage) -> str:
    """One line for a backend-channel message (request or reply), as annotations say it."""
    B = VhostUserBackendRequest
    try:
        name = B(msg.request).name
    except ValueError:
        name = f"request {msg.request}"
    if msg.is_reply:
        try:
            value = VhostUserU64.parse_body(msg.payload).u64
            return f"backend reply {name}: {value}"
        except VhostUserPayloadError as e:
            return f"backend reply {name}: {e}"
    flags = " need_reply" if msg.flags & VHOST_USER_NEED_REPLY_MASK else ""
    fd = f" fds={len(msg.fds)}" if msg.fds else ""
    try:
        body = parse_payload(BACKEND_PAYLOADS, msg.request, msg.payload)
    except VhostUserPayloadError as e:
        return f"backend {name}{flags}{fd}: {e}"
    if isinstance(body, VhostUserFSBackendMsg):
        entries = []
        for i in range(len(body.len)):
            if not body.len[i]:
                break
            entries.append(f"[fd_offset={body.fd_offset[i]:#x} cache_offset="
                           f"{body.cache_offset[i]:#x} len={body.len[i]:#x} "
                           f"flags={body.flags[i]:#x}]")
        return f"backend {name}{flags}{fd}: {' '.join(entries) or 'no entries'}"
    if isinstance(body, VhostUserMMap):
        return (f"backend {name}{flags}{fd}: shmid={body.shmid} fd_offset={body.fd_offset:#x} "
                f"shm_offset={body.shm_offset:#x} len={body.len:#x} flags={body.flags:#x}")
    return f"backend {name}{flags}{fd}: {len(msg.payload)} payload bytes"


def send_message(sock: socket.socket, request: int, payload: bytes | Payload = b"", *,
                 fds: Sequence[int] = (), flags: int = VHOST_USER_VERSION) -> None:
    """Send one message (``payload`` as bytes or a layout object), ``fds`` as SCM_RIGHTS.
    Raises TransportError if the peer has gone."""
    body = payload if isinstance(payload, bytes) else payload.serialize_body()
    data = VhostUserHeader(int(request), flags, len(body)).serialize_body() + body
    anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
           if fds else [])
    try:
        sent = sock.sendmsg([data], anc)
        if sent != len(data):
            sock.sendall(data[sent:])
    except (BrokenPipeError, ConnectionResetError) as e:
        raise TransportError(
            f"vhost-user socket closed while sending {request_name(request)}: {e}") from e


def recv_message(sock: socket.socket, *, what: str = "message",
                 max_payload: int = MAX_PAYLOAD) -> VhostUserMessage:
    """Read one message (header + payload + fds). Raises TransportError on EOF or a
    payload over ``max_payload`` bytes and TransportTimeout if the socket's timeout
    expires; fds received before an error are closed."""
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
        hdr = VhostUserHeader.parse_body(head)
        if hdr.size > max_payload:
            raise TransportError(f"vhost-user {what}: payload size {hdr.size} too large")
        payload = b""
        while len(payload) < hdr.size:
            more = sock.recv(hdr.size - len(payload))
            if not more:
                raise TransportError(f"vhost-user socket closed mid-payload ({what})")
            payload += more
    except TimeoutError:
        _close_all(fds)
        raise TransportTimeout(f"no vhost-user {what} within {sock.gettimeout()} s") from None
    except ConnectionResetError as e:
        _close_all(fds)
        raise TransportError(f"vhost-user socket reset while waiting for {what}: {e}") from e
    except TransportError:
        _close_all(fds)
        raise
    return VhostUserMessage(hdr.request, hdr.flags, payload, fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


__all__ = [
    "BACKEND_PAYLOADS", "FRONTEND_PAYLOADS", "HEADER_SIZE", "MAX_PAYLOAD", "Payload",
    "VHOST_MEMORY_BASELINE_NREGIONS", "VHOST_USER_FLAG_MAP_RW", "VHOST_USER_FS_BACKEND_ENTRIES",
    "VHOST_USER_FS_FLAG_MAP_R", "VHOST_USER_FS_FLAG_MAP_W", "VHOST_USER_F_PROTOCOL_FEATURES",
    "VHOST_USER_NEED_REPLY_MASK", "VHOST_USER_REPLY_MASK", "VHOST_USER_VERSION",
    "VHOST_USER_VRING_IDX_MASK", "VHOST_USER_VRING_NOFD_MASK", "VIRTIO_F_RING_EVENT_IDX",
    "VIRTIO_F_RING_INDIRECT_DESC", "VIRTIO_F_VERSION_1", "VhostUserBackendRequest",
    "VhostUserFSBackendMsg", "VhostUserHeader", "VhostUserMMap", "VhostUserMemory",
    "VhostUserMemoryRegion", "VhostUserMessage", "VhostUserPayloadError",
    "VhostUserProtocolFeature", "VhostUserRequest", "VhostUserSingleMemoryRegion",
    "VhostUserU64", "VhostUserVringAddr", "VhostUserVringState", "describe_backend",
    "parse_payload",
    "recv_message", "request_name", "send_message",
]
