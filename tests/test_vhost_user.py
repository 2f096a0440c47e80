"""The vhost-user frontend and virtqueues against both real daemons, plus the backend
channel (DAX map/unmap) against a small in-test backend peer.

FUSE messages are built and decoded by the Client/Session; these tests are about moving
them: handshake, many in flight, timeouts, crashes, early close, no leaks.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import socket
import threading
import time

import pytest

from fuseproto.client import Client
from fuseproto.errors import TransportError, TransportTimeout
from fuseproto.transport import Transport
from fuseproto.transport.backend import BackendChannel, DaxMapHandler
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.transport.vhost_user_proto import (
    BACKEND_PAYLOADS,
    FRONTEND_PAYLOADS,
    HEADER_SIZE,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_VERSION,
    VhostUserBackendRequest,
    VhostUserFSBackendMsg,
    VhostUserHeader,
    VhostUserMemory,
    VhostUserMemoryRegion,
    VhostUserMMap,
    VhostUserPayloadError,
    VhostUserProtocolFeature,
    VhostUserRequest,
    VhostUserSingleMemoryRegion,
    VhostUserU64,
    VhostUserVringAddr,
    VhostUserVringState,
    parse_payload,
    recv_message,
    send_message,
)
from fuseproto.transport.window import Window
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

daemon_tests = pytest.mark.daemon


# -- schemas --------------------------------------------------------------------------------

def test_schema_sizes():
    assert HEADER_SIZE == VhostUserHeader.STRUCT.size == 12
    assert VhostUserVringAddr.STRUCT.size == 40
    assert VhostUserMMap.STRUCT.size == 40
    assert VhostUserFSBackendMsg.STRUCT.size == 256
    assert VhostUserSingleMemoryRegion.STRUCT.size == 8 + 32
    table = VhostUserMemory((VhostUserMemoryRegion(guest_addr=1, size=2, user_addr=3,
                                                   mmap_offset=4),) * 2).serialize_body()
    assert len(table) == 8 + 2 * 32
    assert VhostUserMemory.parse_body(table).regions[1].mmap_offset == 4


# One value of every layout: parse_body(serialize_body(x)) == x, and the bytes are the
# C struct's (little-endian fields in declaration order).
_LAYOUT_VECTORS = [
    (VhostUserHeader(5, 9, 72), bytes.fromhex("05000000" "09000000" "48000000")),
    (VhostUserU64(0x1_0000_0002), bytes.fromhex("0200000001000000")),
    (VhostUserVringState(1, 256), bytes.fromhex("01000000" "00010000")),
    (VhostUserVringAddr(1, 0, 2, 3, 4, 5),
     bytes.fromhex("01000000" "00000000") + b"".join(n.to_bytes(8, "little") for n in (2, 3, 4, 5))),
    (VhostUserMemory((VhostUserMemoryRegion(1, 2, 3, 4),)),
     bytes.fromhex("01000000" "00000000") + b"".join(n.to_bytes(8, "little") for n in (1, 2, 3, 4))),
    (VhostUserSingleMemoryRegion(VhostUserMemoryRegion(1, 2, 3, 4)),
     b"".join(n.to_bytes(8, "little") for n in (0, 1, 2, 3, 4))),
    (VhostUserMMap(shmid=2, fd_offset=3, shm_offset=4, len=5, flags=1),
     b"\x02" + bytes(7) + b"".join(n.to_bytes(8, "little") for n in (3, 4, 5, 1))),
    (VhostUserFSBackendMsg(tuple(range(8)), tuple(range(8, 16)), tuple(range(16, 24)),
                           tuple(range(24, 32))),
     b"".join(n.to_bytes(8, "little") for n in range(32))),
]


@pytest.mark.parametrize("value, raw", _LAYOUT_VECTORS, ids=lambda v: type(v).__name__)
def test_layouts_roundtrip_and_refuse_wrong_lengths(value, raw):
    layout = type(value)
    assert value.serialize_body() == raw
    assert layout.parse_body(raw) == value
    for bad in (raw[:-1], raw + b"\0", b""):
        with pytest.raises(VhostUserPayloadError, match=rf"payload of {len(bad)} bytes"):
            layout.parse_body(bad)


def test_memory_table_refuses_too_many_regions():
    with pytest.raises(VhostUserPayloadError, match="9 regions"):
        VhostUserMemory.parse_body((9).to_bytes(4, "little") + bytes(4 + 9 * 32))


def test_payload_registries():
    assert FRONTEND_PAYLOADS[VhostUserRequest.SET_MEM_TABLE] is VhostUserMemory
    assert FRONTEND_PAYLOADS[VhostUserRequest.GET_VRING_BASE] is VhostUserVringState
    assert BACKEND_PAYLOADS[VhostUserBackendRequest.SHMEM_MAP] is VhostUserMMap
    assert parse_payload(FRONTEND_PAYLOADS, VhostUserRequest.SET_FEATURES,
                         bytes(8)) == VhostUserU64(0)
    # A request the table does not know keeps its bytes.
    assert parse_payload(BACKEND_PAYLOADS, 77, b"raw") == b"raw"
    with pytest.raises(VhostUserPayloadError, match="payload of 3 bytes"):
        parse_payload(BACKEND_PAYLOADS, VhostUserBackendRequest.SHMEM_UNMAP, b"abc")


def test_vhost_user_transport_is_a_transport():
    assert issubclass(VhostUserTransport, Transport)


def test_framing_roundtrip_with_fd():
    a, b = socket.socketpair()
    fd = os.memfd_create("t")
    try:
        send_message(a, 21, b"\x01" * 8, fds=[fd], flags=VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK)
        msg = recv_message(b)
        assert (msg.request, msg.payload, msg.need_reply, msg.is_reply) == (21, b"\x01" * 8, True, False)
        assert len(msg.fds) == 1 and os.fstat(msg.fds[0]).st_ino == os.fstat(fd).st_ino
        os.close(msg.fds[0])
        a.close()
        with pytest.raises(TransportError, match="closed"):
            recv_message(b)
    finally:
        os.close(fd)
        a.close()
        b.close()


# -- against the daemons --------------------------------------------------------------------

@daemon_tests
def test_handshake_negotiates(vhost, daemon_kind):
    n = vhost.negotiated
    P = VhostUserProtocolFeature
    assert n.has(P.REPLY_ACK) and n.has(P.MQ)
    assert n.queue_num >= 2
    assert n.features == (1 << 32) | (1 << 30)
    assert len(vhost.queues) == 2 and len(vhost.kick_fds) == len(vhost.call_fds) == 2


@daemon_tests
@pytest.mark.parametrize("mode", ["poll", "eventfd"])
def test_init_and_getattr_in_both_modes(no_leaks, installation, shared_dir, mode):
    with VhostUserTransport.spawn(installation, shared_dir, mode=mode) as t:
        c = Client(t)
        init = c.init()
        assert init.major == 7 and init.minor == (36 if installation.kind == "c" else 38)
        assert c.session.initialized
        attr = c.getattr(FUSE_ROOT_ID).attr
        assert attr.ino == os.stat(shared_dir).st_ino


@daemon_tests
def test_many_in_flight_one_kick(no_leaks, installation, shared_dir):
    with VhostUserTransport.spawn(installation, shared_dir, queue_size=256) as t:
        c = Client(t)
        c.init()
        pend = [c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID, kick=False)
                for _ in range(100)]
        c.kick()
        inos = {c.result(p).attr.ino for p in reversed(pend)}  # any completion order
        assert inos == {os.stat(shared_dir).st_ino}
        # 256 descriptors, 2 per request: the 129th in flight has no room.
        held = [c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID, kick=False) for _ in range(128)]
        with pytest.raises(TransportError, match="no free descriptors"):
            c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID)
        with pytest.raises(TransportError, match="no free descriptors"):
            c.getattr(FUSE_ROOT_ID)
        # Refused by the transport, never sent: the session forgot them.
        assert sorted(c.session.pending) == sorted(p.unique for p in held)
        c.kick()
        for p in held:
            c.result(p)


@daemon_tests
def test_forget_goes_on_hiprio_and_is_reclaimed(no_leaks, installation, shared_dir):
    open(os.path.join(shared_dir, "f"), "w").close()
    with VhostUserTransport.spawn(installation, shared_dir, queue_size=16) as t:
        c = Client(t)
        c.init()
        for _ in range(40):  # more than the hiprio ring holds: reclaimed as they complete
            e = c.lookup(FUSE_ROOT_ID, "f")
            c.forget(e.nodeid, 1)
        # The last few may still be with the daemon (it serves hiprio on its own thread,
        # and a loaded machine delays it: 12 free once in CI); once served, reclaimed.
        deadline = time.monotonic() + 5
        while t.reclaim(0) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.reclaim(0) >= 15
        assert c.getattr(FUSE_ROOT_ID).attr.ino == os.stat(shared_dir).st_ino


@daemon_tests
def test_daemon_never_answering_times_out_then_recovers(no_leaks, installation, shared_dir):
    t = VhostUserTransport.spawn(installation, shared_dir)
    try:
        c = Client(t)
        c.init()
        t.daemon.freeze()
        p = c.submit(fuse_opcode.FUSE_GETATTR, _getattr_body(), nodeid=FUSE_ROOT_ID)
        # result() waits in a thread: a timeout that never fires fails here, within a
        # generous bound, instead of hanging until pytest-timeout; one that is ignored
        # (the transport's default used instead) shows in the figure the message names.
        outcome: list[BaseException | None] = []
        elapsed: list[float] = []

        def wait() -> None:
            start = time.monotonic()
            try:
                c.result(p, timeout=0.3)
                outcome.append(None)
            except BaseException as e:  # asserted below, typed
                outcome.append(e)
            elapsed.append(time.monotonic() - start)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(30)
        assert not waiter.is_alive(), "result(p, timeout=0.3) still blocked after 30 s"
        (err,) = outcome
        assert type(err) is TransportTimeout, repr(err)
        msg = str(err)
        assert f"FUSE_GETATTR unique {p.unique}" in msg, msg  # names the request
        assert "after 0.3 s" in msg, msg  # the timeout given, not the default
        assert "stopped" in msg, msg  # and the daemon's state
        assert 0.299 <= elapsed[0] < 30
        t.daemon.thaw()
        # The abandoned chain is reclaimed when the daemon finally uses it.
        assert c.getattr(FUSE_ROOT_ID).attr.ino == os.stat(shared_dir).st_ino
        assert not t.queues[1].inflight
    finally:
        t.daemon.thaw()
        t.close()
    assert not os.path.exists(t.socket_path)


@daemon_tests
def test_daemon_stopped_at_close_is_still_reaped(no_leaks, installation, shared_dir):
    t = VhostUserTransport.spawn(installation, shared_dir)
    c = Client(t)
    c.init()
    t.daemon.freeze()
    c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID)
    t.close()
    assert t.daemon.returncode is not None
    assert not os.path.exists(t.socket_path)


@daemon_tests
def test_daemon_crash_mid_session(no_leaks, installation, shared_dir):
    t = VhostUserTransport.spawn(installation, shared_dir)
    try:
        c = Client(t)
        c.init()
        t.daemon.freeze()  # so the request is surely still in flight
        p = c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID)
        t.daemon.signal(signal.SIGKILL)
        with pytest.raises(TransportError) as ei:
            c.result(p, timeout=5)
        assert not isinstance(ei.value, TransportTimeout)
        msg = str(ei.value)
        assert "SIGKILL" in msg and f"unique {p.unique}" in msg, msg
        # The transport stays broken, with the same explanation.
        with pytest.raises(TransportError, match="SIGKILL"):
            c.getattr(FUSE_ROOT_ID)
    finally:
        t.close()
    assert t.daemon.returncode == -signal.SIGKILL
    assert not os.path.exists(t.socket_path)


@daemon_tests
def test_frontend_closing_early(no_leaks, installation, shared_dir):
    t = VhostUserTransport.spawn(installation, shared_dir)
    c = Client(t)
    c.init()
    pend = [c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID) for _ in range(8)]
    t.close()
    # The daemon saw its one connection close and exited by itself.
    assert t.daemon.returncode == 0, t.daemon.log_tail()
    assert not os.path.exists(t.socket_path)
    with pytest.raises(TransportError, match="closed"):
        c.result(pend[-1])
    with pytest.raises(TransportError, match="closed"):
        c.getattr(FUSE_ROOT_ID)
    t.close()  # idempotent


@daemon_tests
def test_connect_to_dead_daemon_is_typed(no_leaks, daemon):
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit(5)
    with pytest.raises(TransportError, match=r"SIGKILL|connect"):
        VhostUserTransport(daemon.socket_path, daemon=daemon, own_daemon=False, timeout=1)


@daemon_tests
def test_backend_channel_set_up_when_offered(no_leaks, installation, shared_dir):
    window = Window(1 << 20)
    handler = DaxMapHandler(window)
    try:
        with VhostUserTransport.spawn(installation, shared_dir, backend_handler=handler) as t:
            c = Client(t)
            c.init()
            # Both released daemons offer the backend channel but cannot do DAX.
            assert t.negotiated.backend_channel
            assert c.getattr(FUSE_ROOT_ID).attr.ino == os.stat(shared_dir).st_ino
        assert handler.events == []
    finally:
        window.close()


# -- the backend channel against an in-test backend peer ------------------------------------

@pytest.fixture
def backend_peer():
    """(peer socket, window, handler): the test plays the daemon on ``peer``."""
    ours, peer = socket.socketpair()
    window = Window(16 * mmap.PAGESIZE)
    handler = DaxMapHandler(window)
    chan = BackendChannel(ours, handler)
    chan.start()
    try:
        yield peer, window, handler
    finally:
        peer.close()
        chan.close()
        chan.join()
        window.close()
        assert chan.error is None


def _ask(peer, request, payload, fds=()):
    send_message(peer, request, payload, fds=fds,
                 flags=VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK)
    reply = recv_message(peer)
    assert reply.is_reply and reply.request == request
    return VhostUserU64.parse_body(reply.payload).u64


def _mmap(fields: dict) -> bytes:
    return VhostUserMMap(**fields).serialize_body()


def _fs_msg(fields: dict) -> bytes:
    return VhostUserFSBackendMsg(**{k: tuple(v) for k, v in fields.items()}).serialize_body()


def _file(content: bytes) -> int:
    fd = os.memfd_create("dax-file")
    os.write(fd, content.ljust(4 * mmap.PAGESIZE, b"\0"))
    return fd


def test_shmem_map_and_unmap(backend_peer):
    peer, window, handler = backend_peer
    P = mmap.PAGESIZE
    fd = _file(b"A" * P + b"B" * P)
    try:
        m = dict(shmid=0, padding=bytes(7), fd_offset=P, shm_offset=3 * P, len=P, flags=1)
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP, _mmap(m), [fd]) == 0
        assert window.read(3 * P, 4) == b"BBBB"
        window.write(3 * P, b"xy")  # writable (flags bit 0): visible through the file
        assert os.pread(fd, 2, P) == b"xy"
        assert not window.is_mapped(2 * P, P)
        m["len"] = P
        assert _ask(peer, VhostUserBackendRequest.SHMEM_UNMAP, _mmap(m)) == 0
        assert not window.is_mapped(3 * P, P) and window.mapped_pages() == 0
    finally:
        os.close(fd)
    assert [e.result for e in handler.events] == [0, 0]


def test_shmem_map_read_only_and_errors(backend_peer):
    peer, window, handler = backend_peer
    P = mmap.PAGESIZE
    fd = _file(b"R" * P)
    try:
        m = dict(shmid=0, padding=bytes(7), fd_offset=0, shm_offset=0, len=P, flags=0)
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP, _mmap(m), [fd]) == 0
        assert window.read(0, 1) == b"R"
        with pytest.raises(OSError, match="not mapped writable") as ei:
            window.write(0, b"x")
        assert ei.value.errno == errno.EFAULT
        with pytest.raises(OSError, match="not mapped readable"):  # a hole: no SIGBUS
            window.read(P, 1)
        beyond = dict(m, shm_offset=16 * P)
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP, _mmap(beyond),
                    [fd]) == errno.EINVAL
        unaligned = dict(m, shm_offset=100)
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP, _mmap(unaligned),
                    [fd]) == errno.EINVAL
        other_region = dict(m, shmid=1)
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP,
                    _mmap(other_region), [fd]) == errno.EINVAL
        no_fd = _mmap(m)
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP, no_fd) == errno.EINVAL
        assert _ask(peer, 77, b"") == errno.ENOSYS
        assert _ask(peer, VhostUserBackendRequest.SHMEM_MAP, b"short", [fd]) == errno.EINVAL
    finally:
        os.close(fd)


def test_legacy_fs_map_and_unmap(backend_peer):
    peer, window, handler = backend_peer
    P = mmap.PAGESIZE
    fd = _file(b"0" * P + b"1" * P + b"2" * P)
    try:
        z = [0] * 8
        msg = dict(fd_offset=[2 * P, 0] + z[2:], cache_offset=[0, 5 * P] + z[2:],
                   len=[P, P] + z[2:], flags=[3, 1] + z[2:])
        assert _ask(peer, VhostUserBackendRequest.FS_MAP, _fs_msg(msg),
                    [fd]) == 0
        assert window.read(0, 1) == b"2" and window.read(5 * P, 1) == b"0"
        assert window.mapped_pages() == 2
        # len ~0: everything from cache_offset to the window's end.
        unmap = dict(fd_offset=z, cache_offset=z, len=[(1 << 64) - 1] + z[1:], flags=z)
        assert _ask(peer, VhostUserBackendRequest.FS_UNMAP,
                    _fs_msg(unmap)) == 0
        assert window.mapped_pages() == 0
    finally:
        os.close(fd)


def _getattr_body():
    from construct import Container

    return Container(getattr_flags=0, dummy=0, fh=0)


def _allowed_cpus(pid: int, tid: int | None = None) -> set[int]:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    with open(path) as f:
        line = next(ln for ln in f if ln.startswith("Cpus_allowed_list:"))
    cpus: set[int] = set()
    for part in line.split(":", 1)[1].strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


@daemon_tests
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_colocate_pins_daemon_and_caller_then_restores(no_leaks, installation, shared_dir):
    before = os.sched_getaffinity(0)
    cpu = max(before)
    with VhostUserTransport.spawn(installation, shared_dir, colocate=cpu) as t:
        c = Client(t)
        c.init()
        c.getattr(FUSE_ROOT_ID)  # the daemon has started its queue threads by now
        assert os.sched_getaffinity(0) == {cpu}
        pid = t.daemon.pid
        tids = [int(x) for x in os.listdir(f"/proc/{pid}/task")]
        assert len(tids) >= 2
        assert all(_allowed_cpus(pid, tid) == {cpu} for tid in tids)
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ValueError, match="CPU 4096 is not one this thread may run on"):
        VhostUserTransport.spawn(installation, shared_dir, colocate=4096)
    # colocate=True: the CPU this thread is on
    with VhostUserTransport.spawn(installation, shared_dir, colocate=True) as t:
        (cpu,) = os.sched_getaffinity(0)
        assert _allowed_cpus(t.daemon.pid) == {cpu}
        assert Client(t).init().major == 7
    assert os.sched_getaffinity(0) == before


@daemon_tests
def test_reply_areas_are_exact_for_fixed_replies(no_leaks, installation, shared_dir):
    """As Linux sizes out arguments: GETATTR gets 16 + sizeof(fuse_attr_out) bytes to
    write into, a LOOKUP 16 + sizeof(fuse_entry_out); a variable reply (READLINK) the
    default 16 + 4096. Both daemons answer into the exact areas."""
    os.symlink("target", os.path.join(shared_dir, "l"))
    with VhostUserTransport.spawn(installation, shared_dir) as t:
        c = Client(t)
        c.init()
        p = c.submit(3, _getattr_body(), nodeid=FUSE_ROOT_ID)
        assert p.token.in_size == 16 + 104
        assert c.result(p).attr.ino == os.stat(shared_dir).st_ino
        assert c.reply_area(1) == 16 + 128  # LOOKUP: fuse_entry_out
        e = c.lookup(FUSE_ROOT_ID, "l")
        assert c.reply_area(5) == 16 + 4096  # READLINK: a name
        assert c.readlink(e.nodeid) == b"target"


@daemon_tests
def test_more_request_queues_than_offered_is_a_typed_error(no_leaks, installation, shared_dir):
    """Both released daemons offer 2 queues (hiprio + one request queue) through
    GET_QUEUE_NUM; asking for two request queues fails in the handshake, named."""
    with pytest.raises(TransportError, match="daemon offers 2 queues, need 3"):
        VhostUserTransport.spawn(installation, shared_dir, request_queues=2)


def test_a_closed_window_refuses_to_map(tmp_path):
    """After close() the base address is gone: a MAP_FIXED there would land at a low
    address of this process. Every operation is refused with EBADF instead."""
    f = tmp_path / "file"
    f.write_bytes(b"x" * mmap.PAGESIZE)
    window = Window(4 * mmap.PAGESIZE)
    window.close()
    window.close()  # safe twice
    with open(f, "rb") as fh:
        for op in (lambda: window.map_fd(fh.fileno(), 0, 0, mmap.PAGESIZE, False),
                   lambda: window.unmap(0, mmap.PAGESIZE),
                   lambda: window.read(0, 1), lambda: window.write(0, b"y")):
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == errno.EBADF and "closed" in str(e.value)
