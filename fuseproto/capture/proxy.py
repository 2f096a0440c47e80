"""A vhost-user recording proxy: sits between a VMM and a virtiofsd and records every FUSE
request and reply to pcap, changing nothing they say to each other.

Every vhost-user message is forwarded as it came, with its file descriptors, in both
directions (framing: :mod:`fuseproto.transport.vhost_user_proto`). The proxy keeps:

* its own read-only mapping of the guest memory (SET_MEM_TABLE, ADD_MEM_REG / REM_MEM_REG:
  the same fds, mapped again here, :class:`~fuseproto.capture.proxy_rings.GuestMap`);
* the kick and call eventfds: the daemon is handed eventfds of the proxy's own. A kick
  from the VMM is forwarded to the daemon after the avail ring has been read (the new
  chains recorded as requests, before the daemon can complete them and a guest reuse
  their descriptors); a call from the daemon is forwarded to the VMM after the used ring
  has been read (the replies recorded from the writable buffers, ``used.len`` bytes).
  While chains are in flight the rings are also read every ``scan_interval`` seconds
  (1 ms): a guest that drains its used ring takes entries no call announced (with
  EVENT_IDX the daemon calls once per drain), and reuses their buffers soon after.
  A kick never overtakes a message: the front-end messages already waiting are forwarded
  before it (QEMU sends SET_VRING_ENABLE without waiting for a reply and the guest may
  kick at once; the Rust daemon drops a kick that reaches a ring not enabled yet, and with
  EVENT_IDX the guest then never kicks again). And a queue whose chains stay pending with
  no used entry is kicked again (:data:`REKICK_FIRST`, doubling up to :data:`REKICK_MAX`):
  a kick the daemon dropped anyway must not hang the VM, and one too many is harmless;
* the backend channel (SET_BACKEND_REQ_FD): the daemon gets one end of a socket pair of the
  proxy's, whose requests (FS_MAP / FS_UNMAP, SHMEM_MAP, ...) go to the VMM's channel and
  whose replies come back, each recorded as an annotation record.

The pseudo-header carries the queue index, the direction and the minor INIT negotiated
(from the INIT request and reply the proxy sees). What the proxy cannot read -- a chain
outside guest memory, a payload of the wrong size, an INIT that does not decode -- becomes
an annotation record (:data:`~fuseproto.capture.frames.Direction.ANNOTATION`) and the
traffic goes on: the proxy only reads guest memory, never writes it.

Limits: the proxy reads the rings alongside the driver. A guest that takes a used entry
before the proxy's call reaches it (it polls the used ring) may reuse the buffer before the
proxy reads the reply; a reply whose unique is not its request's is then annotated. In-band
notifications (VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS) are forwarded but not
interposed: such rings are observed by the periodic scan only.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, TransportError
from ..session import negotiate_init
from ..transport.vhost_user_proto import (
    BACKEND_PAYLOADS,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_VRING_IDX_MASK,
    VHOST_USER_VRING_NOFD_MASK,
    VhostUserBackendRequest,
    VhostUserFSBackendMsg,
    VhostUserMemory,
    VhostUserMessage,
    VhostUserMMap,
    VhostUserPayloadError,
    VhostUserRequest,
    VhostUserSingleMemoryRegion,
    VhostUserU64,
    VhostUserVringAddr,
    VhostUserVringState,
    parse_payload,
    recv_message,
    request_name,
    send_message,
)
from ..wire import codec, structs
from ..wire.constants import fuse_opcode
from .frames import CaptureRecorder, Direction
from .proxy_rings import GuestMap, QueueWatch

__all__ = ["BACKEND_QUEUE", "FuseTap", "ProxyStats", "RecordingProxy"]

# The pseudo-header's queue field of an annotation about the backend channel or the
# vhost-user connection (not about a virtqueue).
BACKEND_QUEUE = 0xFFFF
# Largest vhost-user payload forwarded (the biggest known layout is ~4 KiB; GET_CONFIG's
# and future ones are smaller than this): a larger header ends the session.
MAX_FORWARDED_PAYLOAD = 1 << 20
# Replaced kick/call eventfd pairs kept forwarding (a VMM swaps call fds to mask vectors).
MAX_RETIRED = 64
# A peer that starts a message and stops mid-way: give up the session after this long.
MESSAGE_TIMEOUT = 30.0
# A queue with chains pending and no new used entry for REKICK_FIRST seconds is kicked
# again (then after twice as long each time, up to REKICK_MAX): a daemon may drop a kick
# (the Rust daemon reads and ignores a kick that reaches a ring not enabled yet), and a
# guest using EVENT_IDX sends no further kick until the daemon has moved avail_event, so
# one lost kick would block the queue for good. A kick with nothing new is harmless; the
# first comes later than most requests take (the slowest a guest workload made here, an
# fsync on the C daemon, ~0.12 s on a loaded machine).
REKICK_FIRST = 0.25
REKICK_MAX = 1.0
# Front-end messages forwarded ahead of one kick at most (those already waiting).
MAX_AHEAD = 64

_IN = structs.FAST["fuse_in_header"]
_IN_OPCODE = _IN.fields.index("opcode")
_IN_UNIQUE = _IN.fields.index("unique")
_OUT = structs.FAST["fuse_out_header"]
_OUT_UNIQUE = _OUT.fields.index("unique")
_INIT_OPS = (int(fuse_opcode.FUSE_INIT), int(fuse_opcode.CUSE_INIT))
_EVENTFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK
_R = VhostUserRequest


class FuseTap:
    """The proxy's side of the recorder: writes requests and replies, learns the minor
    from INIT (the one negotiation, :func:`fuseproto.session.negotiate_init`) and writes
    annotations."""

    def __init__(self, recorder: CaptureRecorder) -> None:
        self.recorder = recorder
        self._init: dict[int, Any] = {}  # unique -> the INIT request (at most a few)
        self.notes = 0

    def record(self, direction: int, queue: int, data: bytes, length: int) -> None:
        """One message: ``data`` its first bytes (all of it unless a snaplen cut it),
        ``length`` its whole length."""
        rec = self.recorder
        cut = None if length == len(data) else length
        if direction == Direction.REQUEST:
            rec(Direction.REQUEST, queue, data, orig_len=cut)
            if len(data) >= _IN.size:
                head = _IN.struct.unpack_from(data)
                if head[_IN_OPCODE] in _INIT_OPS:
                    self._saw_init(queue, head[_IN_UNIQUE], data)
            return
        rec(Direction.REPLY, queue, data, orig_len=cut)
        if self._init and len(data) >= _OUT.size:
            request = self._init.pop(_OUT.struct.unpack_from(data)[_OUT_UNIQUE], None)
            if request is not None:
                self._init_reply(queue, request, data)

    def _saw_init(self, queue: int, unique: int, data: bytes) -> None:
        try:
            self._init[unique] = codec.decode_request(data)
        except DecodeError as e:
            self.note(queue, f"INIT request unique {unique} does not decode ({e}); the "
                             "minor stays as it was")
            return
        while len(self._init) > 8:
            del self._init[next(iter(self._init))]

    def _init_reply(self, queue: int, request: Any, data: bytes) -> None:
        try:
            reply = codec.decode_reply(data, request)
        except DecodeError as e:
            self.note(queue, f"INIT reply does not decode ({e}); the minor stays as it was")
            return
        result = negotiate_init(request.body, None if reply.error else reply.body)
        if result is not None:
            self.recorder.minor = result.minor

    def note(self, queue: int, text: str) -> None:
        self.notes += 1
        self.recorder.annotate(queue, text)

    def flush(self) -> None:
        """Write what was recorded to the file (the proxy calls it after each round of
        events: whole records only, so the file is valid whenever the proxy dies)."""
        self.recorder.flush()


@dataclass
class ProxyStats:
    """What went through one session."""

    frontend_messages: int = 0
    daemon_messages: int = 0
    backend_messages: int = 0
    kicks: int = 0
    calls: int = 0
    rekicks: int = 0  # kicks the proxy repeated to a stalled queue (see REKICK_FIRST)
    requests: int = 0
    replies: int = 0
    notes: int = 0


@dataclass
class _Notify:
    """One interposed eventfd pair: ``source`` is polled, ``sink`` written after a scan."""

    queue: int
    source: int
    sink: int
    kind: str  # "kick" (VMM -> daemon) or "call" (daemon -> VMM)


@dataclass
class _Stall:
    """A queue with chains pending: since when nothing moved on its used ring."""

    used: int  # QueueWatch.last_used then
    since: float  # time.monotonic() of the last progress (or of the last kick sent)
    delay: float = REKICK_FIRST  # the next repeated kick after this long
    rekicks: int = 0  # kicks repeated since the last progress
    started: float = 0.0  # when the stall began


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class RecordingProxy:
    """One VMM connection forwarded to one daemon connection, recorded through ``tap``.

    :meth:`run` forwards until either side closes (or ``wakeup_fd`` becomes readable: a
    signal) and returns which: ``"frontend"``, ``"daemon"`` or ``"signal"``. The proxy owns
    both sockets and every fd it creates or receives; :meth:`close` releases them."""

    def __init__(self, vmm: socket.socket, daemon: socket.socket, tap: FuseTap, *,
                 scan_interval: float = 0.001, idle_interval: float = 0.02,
                 snaplen: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.vmm = vmm
        self.daemon = daemon
        self.tap = tap
        # How often the rings are read besides kicks and calls: while chains are in
        # flight (the driver may drain the used ring on its own, and with EVENT_IDX the
        # daemon calls only once per drain), and when nothing is (for polling drivers).
        self.scan_interval = scan_interval
        self.idle_interval = idle_interval
        # Read at most this many bytes of each message (the rest is never copied).
        self.snaplen = snaplen
        self.log = log  # status lines (a kick repeated), e.g. the CLI's stderr
        self.mem = GuestMap()
        self.queues: dict[int, QueueWatch] = {}
        self.stats = ProxyStats()
        self.closed_by: str | None = None
        self.why = ""  # what ended the session, in words
        self._poll = select.poll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._notify: dict[tuple[str, int], _Notify] = {}
        self._retired: list[_Notify] = []  # replaced pairs, still forwarded (bounded)
        # (our end of the daemon's channel, the VMM's channel)
        self._backend: tuple[socket.socket, socket.socket] | None = None
        self._stopping_rings: list[int] = []  # GET_VRING_BASE sent, reply not yet seen
        self._stalls: dict[int, _Stall] = {}  # queue -> its chains pending, no progress
        self._vmm_poll = select.poll()  # the VMM's socket alone: messages ahead of a kick
        self._vmm_poll.register(vmm.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        for s in (vmm, daemon):
            s.settimeout(MESSAGE_TIMEOUT)
        self._watch(vmm.fileno(), self._from_frontend)
        self._watch(daemon.fileno(), self._from_daemon)

    # -- plumbing -------------------------------------------------------------------------
    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def note(self, queue: int, text: str) -> None:
        self.stats.notes += 1
        self.tap.note(queue, text)

    def _queue(self, index: int) -> QueueWatch:
        q = self.queues.get(index)
        if q is None:
            q = self.queues[index] = QueueWatch(index)
            if self.snaplen is not None:
                q.limit = min(q.limit, self.snaplen)
        return q

    def scan(self, queue: QueueWatch) -> None:
        """Record what is new on ``queue``'s rings (never raises: a bug here must not stop
        the forwarding, so it becomes a note)."""
        try:
            queue.scan(self.mem, self.tap.record, self.note)
        except Exception as e:  # noqa: BLE001 -- see the docstring
            queue.started = False
            self.note(queue.index, f"queue {queue.index}: proxy error while reading the "
                                   f"rings, no longer observed: {type(e).__name__}: {e}")

    def scan_all(self) -> None:
        for q in self.queues.values():
            self.scan(q)

    # -- the loop --------------------------------------------------------------------------
    def run(self, wakeup_fd: int | None = None) -> str:
        if wakeup_fd is not None:
            self._poll.register(wakeup_fd, select.POLLIN)
        try:
            while self.closed_by is None:
                queues = self.queues.values()
                if any(q.pending for q in queues):
                    timeout = self.scan_interval
                else:
                    timeout = self.idle_interval if any(q.started for q in queues) else 1.0
                events = self._poll.poll(max(1, round(timeout * 1000)))
                if not events:
                    self.scan_all()
                    self._check_stalls()
                    self.tap.flush()
                    continue
                for fd, _ev in events:
                    if fd == wakeup_fd:
                        self.closed_by = "signal"
                        break
                    handler = self._handlers.get(fd)
                    if handler is not None:
                        handler()
                    if self.closed_by is not None:
                        break
                self._check_stalls()
                self.tap.flush()
        finally:
            if wakeup_fd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._poll.unregister(wakeup_fd)
            self.scan_all()  # what the rings hold when the session ends
            self.tap.flush()
            self._count()
        return self.closed_by

    def _count(self) -> None:
        self.stats.requests = sum(q.requests for q in self.queues.values())
        self.stats.replies = sum(q.replies for q in self.queues.values())

    # -- the front-end's messages -------------------------------------------------------
    def _from_frontend(self) -> None:
        if not self._vmm_poll.poll(0):
            return  # taken already, ahead of a kick (_messages_ahead)
        try:
            msg = recv_message(self.vmm, what="front-end message",
                               max_payload=MAX_FORWARDED_PAYLOAD)
        except TransportError as e:
            self._end("frontend", e)
            return
        self.stats.frontend_messages += 1
        fds = msg.fds
        keep: set[int] = set()
        try:
            fds, keep = self._observe_frontend(msg)
        except Exception as e:  # noqa: BLE001 -- whatever it is, the message goes through
            fds, keep = msg.fds, set()
            self.note(BACKEND_QUEUE, f"vhost-user {request_name(msg.request)} from the "
                                     f"front-end: {e} (forwarded unchanged, not observed)")
        try:
            send_message(self.daemon, msg.request, msg.payload, fds=fds, flags=msg.flags)
        except (TransportError, OSError) as e:  # OSError: a send timeout
            self._end("daemon", e)
        finally:
            for fd in msg.fds:
                if fd not in keep:
                    _close(fd)
            for fd in fds:
                if fd not in msg.fds and fd not in keep:
                    _close(fd)  # a stand-in we handed the daemon and do not keep

    def _observe_frontend(self, msg: VhostUserMessage) -> tuple[list[int], set[int]]:
        """Learn what ``msg`` says about memory and rings; returns the fds to forward (the
        proxy's stand-ins for kick/call/backend fds) and the received fds the proxy keeps."""
        req = msg.request
        if req == _R.SET_MEM_TABLE:
            table = VhostUserMemory.parse_body(msg.payload)
            try:
                self.mem.set_table(table.regions, msg.fds)
            finally:
                self._rings_moved()
        elif req == _R.ADD_MEM_REG:
            one = VhostUserSingleMemoryRegion.parse_body(msg.payload)
            if len(msg.fds) != 1:
                raise ValueError(f"ADD_MEM_REG with {len(msg.fds)} fds")
            self.mem.add(one.region, msg.fds[0])
            self._rings_moved()
        elif req == _R.REM_MEM_REG:
            self.mem.remove(VhostUserSingleMemoryRegion.parse_body(msg.payload).region)
            self._rings_moved()
        elif req == _R.SET_VRING_NUM:
            st = VhostUserVringState.parse_body(msg.payload)
            q = self._queue(st.index)
            q.size = st.num
            q.invalidate()
        elif req == _R.SET_VRING_BASE:
            st = VhostUserVringState.parse_body(msg.payload)
            self._queue(st.index).reset(st.num)
        elif req == _R.SET_VRING_ADDR:
            a = VhostUserVringAddr.parse_body(msg.payload)
            q = self._queue(a.index)
            q.desc, q.avail, q.used = a.descriptor, a.available, a.used
            q.invalidate()
        elif req == _R.GET_VRING_BASE:
            st = VhostUserVringState.parse_body(msg.payload)
            self.scan(self._queue(st.index))
            self._stopping_rings.append(st.index)
        elif req in (_R.SET_VRING_KICK, _R.SET_VRING_CALL):
            return self._interpose(req, VhostUserU64.parse_body(msg.payload).u64, msg.fds)
        elif req == _R.SET_BACKEND_REQ_FD:
            return self._interpose_backend(msg.fds)
        return msg.fds, set()

    def _rings_moved(self) -> None:
        for q in self.queues.values():
            q.invalidate()

    def _interpose(self, req: int, value: int, fds: list[int]) -> tuple[list[int], set[int]]:
        index = value & VHOST_USER_VRING_IDX_MASK
        kind = "kick" if req == _R.SET_VRING_KICK else "call"
        self._drop_notify(kind, index)
        q = self._queue(index)
        if kind == "kick":
            q.started = True
        if value & VHOST_USER_VRING_NOFD_MASK or len(fds) != 1:
            return fds, set()  # polled or in-band: the periodic scan observes the ring
        theirs = fds[0]
        ours = os.eventfd(0, _EVENTFD_FLAGS)
        # kick: the VMM writes ``theirs``, the daemon reads ``ours``; call: the reverse.
        n = (_Notify(index, theirs, ours, kind) if kind == "kick"
             else _Notify(index, ours, theirs, kind))
        self._notify[(kind, index)] = n
        self._watch(n.source, lambda: self._notified(n))
        return [ours], {theirs, ours}

    def _drop_notify(self, kind: str, index: int) -> None:
        """A new kick/call fd replaces the old one. The old pair stays watched and
        forwarded: the daemon switches only when it reads the message, and may signal
        the old fd until then (QEMU swaps call fds to mask a vector and checks the old one
        when it unmasks); a lost call would leave the guest waiting forever."""
        old = self._notify.pop((kind, index), None)
        if old is None:
            return
        self._retired.append(old)
        while len(self._retired) > MAX_RETIRED:
            gone = self._retired.pop(0)
            self._notified(gone)
            self._unwatch(gone.source)
            _close(gone.source)
            _close(gone.sink)

    def _notified(self, n: _Notify) -> None:
        try:
            os.eventfd_read(n.source)
        except BlockingIOError:
            return
        except OSError as e:
            self._unwatch(n.source)
            self.note(n.queue, f"queue {n.queue} {n.kind} eventfd: {e}; no longer forwarded")
            return
        # Read the rings first, then pass the notification on. A kick: the new chains
        # are read before the daemon may take them (once it has, a guest draining its used
        # ring can reuse their descriptors, indirect tables and buffers at once). A call:
        # the replies are read, and written to the file, before the driver is told.
        q = self.queues.get(n.queue)
        if n.kind == "kick":
            self.stats.kicks += 1
            # What the VMM said before this kick reaches the daemon before it (its
            # SET_VRING_ENABLE above all: a kick ahead of it is dropped by the Rust daemon).
            self._messages_ahead()
            # The daemon's current kick fd (the VMM may have replaced it meanwhile).
            n = self._notify.get(("kick", n.queue), n)
            q = self.queues.get(n.queue)
            stall = self._stalls.get(n.queue)
            if stall is not None:  # a fresh kick: the stall's clock starts again
                stall.since, stall.delay = time.monotonic(), REKICK_FIRST
        else:
            self.stats.calls += 1
        if q is not None:
            self.scan(q)
        if n.kind == "call":
            self.tap.flush()
        self._forward(n)

    def _messages_ahead(self) -> None:
        """Forward the front-end messages already waiting (at most MAX_AHEAD): sent
        before the kick being handled, they must reach the daemon first, as they would on a
        direct connection."""
        for _ in range(MAX_AHEAD):
            if self.closed_by is not None or not self._vmm_poll.poll(0):
                return
            self._from_frontend()

    def _forward(self, n: _Notify) -> None:
        try:
            os.eventfd_write(n.sink, 1)
        except OSError as e:
            self.note(n.queue, f"queue {n.queue}: cannot forward a {n.kind}: {e}")

    def _check_stalls(self) -> None:
        """Kick again a queue whose chains are pending with no used entry for a while
        (REKICK_FIRST, doubling up to REKICK_MAX): the VM must not hang on a kick the
        daemon dropped. Says so through ``log`` when the daemon then answered."""
        now = time.monotonic()
        for q in self.queues.values():
            stall = self._stalls.get(q.index)
            busy = q.started and bool(q.pending)
            if stall is not None and (not busy or stall.used != q.last_used):
                del self._stalls[q.index]
                if stall.rekicks and q.last_used != stall.used:
                    self._say(f"queue {q.index}: the daemon answered after {stall.rekicks} "
                              f"repeated kick(s), {now - stall.started:.3f} s without a "
                              "used entry (a kick lost, or a slow request)")
                stall = None
            if not busy:
                continue
            if stall is None:
                self._stalls[q.index] = _Stall(q.last_used, now, started=now)
                continue
            kick = self._notify.get(("kick", q.index))
            if kick is None or now - stall.since < stall.delay:
                continue
            self.scan(q)
            if q.last_used != stall.used or not q.pending:
                continue  # it moved: the next round says so
            self.stats.rekicks += 1
            stall.rekicks += 1
            stall.since = now
            stall.delay = min(stall.delay * 2, REKICK_MAX)
            self._forward(kick)

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    # -- the daemon's replies --------------------------------------------------------------
    def _from_daemon(self) -> None:
        try:
            msg = recv_message(self.daemon, what="back-end message",
                               max_payload=MAX_FORWARDED_PAYLOAD)
        except TransportError as e:
            self._end("daemon", e)
            return
        self.stats.daemon_messages += 1
        if msg.request == _R.GET_VRING_BASE and msg.is_reply and self._stopping_rings:
            # The daemon has stopped the ring: what it completed is all there will be.
            q = self.queues.get(self._stopping_rings.pop(0))
            if q is not None:
                self.scan(q)
                q.started = False
        try:
            send_message(self.vmm, msg.request, msg.payload, fds=msg.fds, flags=msg.flags)
        except (TransportError, OSError) as e:  # OSError: a send timeout
            self._end("frontend", e)
        finally:
            for fd in msg.fds:
                _close(fd)

    # -- the backend channel -----------------------------------------------------------
    def _interpose_backend(self, fds: list[int]) -> tuple[list[int], set[int]]:
        if len(fds) != 1:
            return fds, set()
        self._drop_backend()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        vmm = socket.socket(fileno=fds[0])  # now owns the VMM's fd
        for s in (ours, vmm):
            s.settimeout(MESSAGE_TIMEOUT)
        self._backend = (ours, vmm)
        self._watch(ours.fileno(), lambda: self._backend_forward(ours, vmm, "daemon"))
        self._watch(vmm.fileno(), lambda: self._backend_forward(vmm, ours, "front-end"))
        return [theirs.detach()], {fds[0]}

    def _drop_backend(self) -> None:
        if self._backend is None:
            return
        ours, vmm = self._backend
        self._backend = None
        for s in (ours, vmm):
            self._unwatch(s.fileno())
            s.close()

    def _backend_forward(self, src: socket.socket, dst: socket.socket, sender: str) -> None:
        """One backend-channel message from ``src`` (requests from the daemon, replies
        from the front-end) to ``dst``, recorded as an annotation."""
        try:
            msg = recv_message(src, what=f"backend message from the {sender}",
                               max_payload=MAX_FORWARDED_PAYLOAD)
        except TransportError as e:
            self.note(BACKEND_QUEUE, f"backend channel closed by the {sender} ({e})")
            self._drop_backend()  # one end gone: close the other, as a direct link would
            return
        self.stats.backend_messages += 1
        try:
            self.note(BACKEND_QUEUE, describe_backend(msg))
            send_message(dst, msg.request, msg.payload, fds=msg.fds, flags=msg.flags)
        except (TransportError, OSError) as e:
            self.note(BACKEND_QUEUE, f"backend channel: cannot forward from the {sender}: {e}")
        finally:
            for fd in msg.fds:
                _close(fd)

    # -- ending -------------------------------------------------------------------------
    def _end(self, side: str, why: Exception) -> None:
        if self.closed_by is None:
            self.closed_by = side
            self.why = str(why)

    def close(self) -> None:
        """Close both connections (the daemon then exits) and every fd the proxy holds."""
        for n in [*self._notify.values(), *self._retired]:
            self._unwatch(n.source)
            _close(n.source)
            _close(n.sink)
        self._notify.clear()
        self._retired.clear()
        self._drop_backend()
        for s in (self.vmm, self.daemon):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.mem.clear()


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


def connect_daemon(path: str, *, timeout: float = 10.0,
                   alive: Callable[[], bool] | None = None) -> socket.socket:
    """Connect to a daemon's vhost-user socket, retrying while it refuses (the C daemon
    creates the socket file a moment before it listens). Raises TransportError."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            return s
        except (ConnectionRefusedError, FileNotFoundError) as e:
            s.close()
            if (alive is not None and not alive()) or time.monotonic() > deadline:
                raise TransportError(f"cannot connect to {path}: {e}") from None
            time.sleep(0.005)
        except OSError as e:
            s.close()
            raise TransportError(f"cannot connect to {path}: {e}") from None

