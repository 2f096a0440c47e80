"""A vhost-user recording proxy: sits between a VMM and a virtiofsd and records every FUSE
request and reply to pcap, changing nothing they say to each other.

Two planes:

* the control plane (this module, Python): every vhost-user message is forwarded as it
  came, with its file descriptors, in both directions (framing:
  :mod:`fuseproto.transport.vhost_user_proto`), and what it says about the guest memory
  (SET_MEM_TABLE, ADD_MEM_REG / REM_MEM_REG), the rings (SET_VRING_NUM / BASE / ADDR,
  GET_VRING_BASE) and their eventfds is passed on to the data plane; the backend channel
  (SET_BACKEND_REQ_FD) is interposed here too;
* the data plane (:mod:`fuseproto.capture.relay`, a C process per session): it maps the
  guest memory read-only, waits on the kick and call eventfds (the daemon is handed
  eventfds of the proxy's own), and passes each kick on after reading the avail ring (the
  new chains recorded as requests before the daemon can complete them and a guest reuse
  their descriptors) and each call after reading the used ring (the replies recorded from
  the writable buffers, ``used.len`` bytes, written to the file before the driver is
  told). While chains are in flight it also reads the rings every ``scan_interval``
  seconds (1 ms), every 50 us while the driver has its interrupts off: a guest that drains
  its used ring takes entries no call announced (with EVENT_IDX the daemon calls once per
  drain), and reuses their buffers soon after.

Ordering rules (they fixed a real hang; tests/test_capture_proxy_order.py):

* A kick never overtakes a message: the front-end messages already waiting are forwarded
  before it (QEMU sends SET_VRING_ENABLE without waiting for a reply and the guest may
  kick at once; the Rust daemon drops a kick that reaches a ring not enabled yet, and with
  EVENT_IDX the guest then never kicks again). The relay looks at the VMM's socket before
  it passes a kick on, and at whether this module is forwarding a message (FE_BEGIN /
  FE_END around each); if either, it hands the kick back (a DEFERRED event): the waiting
  messages are forwarded here, then the relay is told to KICK.
* A queue whose chains stay pending with no used entry is kicked again
  (:data:`REKICK_FIRST`, doubling up to :data:`REKICK_MAX`): a kick the daemon dropped
  anyway must not hang the VM, and one too many is harmless.

The pseudo-header carries the queue index, the direction and the minor INIT negotiated:
the relay hands each INIT request and reply to this module (:func:`negotiate_init`, the
one negotiation) and waits for the minor before it records anything else. What the proxy
cannot read -- a chain outside guest memory, a payload of the wrong size, an INIT that
does not decode -- becomes an annotation record
(:data:`~fuseproto.capture.frames.Direction.ANNOTATION`) and the traffic goes on: the
proxy only reads guest memory, never writes it. Backend-channel messages are recorded as
annotations too. Should the relay die, kicks and calls are forwarded from here on,
unrecorded (an annotation and a status line say so): the VM must not hang because of the
proxy.

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
from typing import Any, BinaryIO

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
from .frames import FRAME_HEADER, LINKTYPE_FUSE, CaptureRecorder
from .pcap import DEFAULT_MAX_CAPLEN, FILE_HEADER, RECORD_FIELDS, RECORD_HEADER, PcapWriter
from .relay import MAX_INITS, Event, Relay

__all__ = ["BACKEND_QUEUE", "ProxyStats", "RecordingProxy", "cut_to_whole_records",
           "open_capture"]

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

_OUT = structs.FAST["fuse_out_header"]
_OUT_UNIQUE = _OUT.fields.index("unique")
_IN = structs.FAST["fuse_in_header"]
_IN_UNIQUE = _IN.fields.index("unique")
_EVENTFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK
_R = VhostUserRequest


def open_capture(path: str, snaplen: int | None = None) -> BinaryIO:
    """A session's capture file: created (replaced) with its pcap header written, for the
    relay to append records to (unbuffered: nothing waits in this process)."""
    f = open(path, "wb", buffering=0)  # noqa: SIM115 -- the caller closes it
    PcapWriter(f, LINKTYPE_FUSE, snaplen=(snaplen or DEFAULT_MAX_CAPLEN) + FRAME_HEADER.size)
    return f


def cut_to_whole_records(fd: int) -> int:
    """Cut a capture file back to the end of its last whole record (a writer killed in the
    middle of one leaves its first part) and put the file offset there; returns the size.
    Reads only the record headers."""
    size = os.fstat(fd).st_size
    caplen = RECORD_FIELDS.index("caplen")
    pos = FILE_HEADER.size
    while pos + RECORD_HEADER.size <= size:
        end = pos + RECORD_HEADER.size + RECORD_HEADER.unpack(
            os.pread(fd, RECORD_HEADER.size, pos))[caplen]
        if end > size:
            break
        pos = end
    os.ftruncate(fd, pos)
    os.lseek(fd, pos, os.SEEK_SET)
    return pos


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
    """One interposed eventfd pair: the relay waits on ``source`` and writes ``sink`` after
    a scan (the proxy keeps both too: they are closed here, and forwarded from here should
    the relay die)."""

    id: int
    queue: int
    source: int
    sink: int
    kind: str  # "kick" (VMM -> daemon) or "call" (daemon -> VMM)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class RecordingProxy:
    """One VMM connection forwarded to one daemon connection, recorded to ``output`` (a
    capture file as :func:`open_capture` makes it: the relay appends the records).

    :meth:`run` forwards until either side closes (or ``wakeup_fd`` becomes readable: a
    signal) and returns which: ``"frontend"``, ``"daemon"`` or ``"signal"``. The proxy owns
    both sockets and every fd it creates or receives; :meth:`close` releases them (the
    output file stays the caller's)."""

    def __init__(self, vmm: socket.socket, daemon: socket.socket, output: BinaryIO, *,
                 scan_interval: float = 0.001, idle_interval: float = 0.02,
                 snaplen: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.vmm = vmm
        self.daemon = daemon
        self.output = output
        # Read at most this many bytes of each message (the rest is never copied).
        self.snaplen = snaplen
        self.log = log  # status lines (a kick repeated), e.g. the CLI's stderr
        self.stats = ProxyStats()
        self.closed_by: str | None = None
        self.why = ""  # what ended the session, in words
        self.minor: int | None = None  # the minor INIT negotiated
        self._notes = 0  # annotations written by this module
        self._init: dict[int, Any] = {}  # unique -> the INIT request (at most MAX_INITS)
        self._poll = select.poll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._notify: dict[tuple[str, int], _Notify] = {}
        self._retired: list[_Notify] = []  # replaced pairs, still forwarded (bounded)
        self._ids = 0
        # (our end of the daemon's channel, the VMM's channel)
        self._backend: tuple[socket.socket, socket.socket] | None = None
        self._stopping_rings: list[int] = []  # GET_VRING_BASE sent, reply not yet seen
        self._vmm_poll = select.poll()  # the VMM's socket alone: messages ahead of a kick
        self._vmm_poll.register(vmm.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        self._direct: CaptureRecorder | None = None  # annotations once the relay is gone
        for s in (vmm, daemon):
            s.settimeout(MESSAGE_TIMEOUT)
        # (RelayError if it cannot be built or started: nothing is forwarded yet)
        self.relay = Relay(output.fileno(), vmm_fd=vmm.fileno(), snaplen=snaplen,
                           scan_interval=scan_interval, idle_interval=idle_interval,
                           rekick_first=REKICK_FIRST, rekick_max=REKICK_MAX,
                           on_event=self._relay_event)
        self._watch(vmm.fileno(), self._from_frontend)
        self._watch(daemon.fileno(), self._from_daemon)
        self._watch(self.relay.fileno(), self._from_relay)

    # -- plumbing -------------------------------------------------------------------------
    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def note(self, queue: int, text: str) -> None:
        """An annotation record (written by the relay, in order with its records)."""
        self._notes += 1
        if not self._send("ANNOTATE", queue, time.time_ns(),
                          payload=text.encode("utf-8", "replace")):
            assert self._direct is not None
            self._direct.annotate(queue, text)

    def _send(self, kind: str, queue: int = 0, a: int = 0, b: int = 0, c: int = 0, d: int = 0,
              *, payload: bytes = b"", fds: list[int] | None = None) -> bool:
        """A command to the relay; False if it is gone (the proxy has taken over then)."""
        if self.relay.send(kind, queue, a, b, c, d, payload=payload, fds=fds or ()):
            return True
        self._relay_lost()
        return False

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    # -- the loop --------------------------------------------------------------------------
    def run(self, wakeup_fd: int | None = None) -> str:
        if wakeup_fd is not None:
            self._poll.register(wakeup_fd, select.POLLIN)
        try:
            while self.closed_by is None:
                for fd, _ev in self._poll.poll(1000):
                    if fd == wakeup_fd:
                        self.closed_by = "signal"
                        break
                    handler = self._handlers.get(fd)
                    if handler is not None:
                        handler()
                    if self.closed_by is not None:
                        break
        finally:
            if wakeup_fd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._poll.unregister(wakeup_fd)
            # What the rings hold when the session ends, and the relay's counters.
            counts = self.relay.finish()
            for name in ("kicks", "calls", "rekicks", "requests", "replies"):
                setattr(self.stats, name, getattr(self.stats, name) + counts.get(name, 0))
            self.stats.notes = self._notes + counts.get("notes", 0)
        return self.closed_by

    # -- the relay -------------------------------------------------------------------------
    def _from_relay(self) -> None:
        for ev in self.relay.events():
            self._relay_event(ev)
        if self.relay.dead is not None:
            self._relay_lost()

    def _relay_event(self, ev: Event) -> None:
        if ev.kind == "INIT":
            self._init_event(ev)
        elif ev.kind == "DEFERRED":
            # A kick that came while front-end messages sent before it were waiting (or
            # being forwarded): they go first, then the kick.
            self._messages_ahead()
            self._send("KICK", ev.queue, ev.a)
        elif ev.kind == "LOG":
            self._say(ev.data.decode("utf-8", "replace"))

    def _init_event(self, ev: Event) -> None:
        """An INIT request (``ev.a`` 0) or its reply (1), ``ev.data`` its first bytes: learn
        the minor (the one negotiation), then let the relay go on (RESUME ``ev.b``)."""
        keep = 0
        data = ev.data
        if ev.a == 0:
            unique = _IN.struct.unpack_from(data)[_IN_UNIQUE]
            try:
                self._init[unique] = codec.decode_request(data)
                keep = 1
                while len(self._init) > MAX_INITS:
                    del self._init[next(iter(self._init))]
            except DecodeError as e:
                self.note(ev.queue, f"INIT request unique {unique} does not decode ({e}); "
                                    "the minor stays as it was")
        else:
            request = self._init.pop(_OUT.struct.unpack_from(data)[_OUT_UNIQUE], None)
            if request is not None:
                self._init_reply(ev.queue, request, data)
        self._send("RESUME", ev.queue, ev.b, keep)

    def _init_reply(self, queue: int, request: Any, data: bytes) -> None:
        try:
            reply = codec.decode_reply(data, request)
        except DecodeError as e:
            self.note(queue, f"INIT reply does not decode ({e}); the minor stays as it was")
            return
        result = negotiate_init(request.body, None if reply.error else reply.body)
        if result is not None:
            self.minor = result.minor
            self._send("MINOR", a=result.minor)

    def _relay_lost(self) -> None:
        """The relay died: from here on kicks and calls are forwarded by this module,
        unrecorded (the VM must not hang because of the proxy), and annotations are written
        here, after the last whole record the relay wrote."""
        if self._direct is not None:
            return
        with contextlib.suppress(ValueError):
            self._unwatch(self.relay.fileno())
        with contextlib.suppress(OSError):
            cut_to_whole_records(self.output.fileno())
        self._direct = CaptureRecorder(self.output, minor=self.minor, header=False,
                                       snaplen=self.snaplen or DEFAULT_MAX_CAPLEN)
        text = (f"the proxy's data plane (relay pid {self.relay.pid}) is gone: "
                f"{self.relay.dead}; kicks and calls are forwarded unrecorded from here on")
        self._say(text)
        self._notes += 1
        self._direct.annotate(BACKEND_QUEUE, text)
        for n in [*self._notify.values(), *self._retired]:
            self._watch(n.source, self._forwarder(n))
        for n in self._notify.values():
            # A kick or call the relay had taken and not yet passed on would be lost: one
            # more of each is harmless.
            with contextlib.suppress(OSError):
                os.eventfd_write(n.sink, 1)

    def _forwarder(self, n: _Notify) -> Callable[[], None]:
        return lambda: self._forward_unrecorded(n)

    def _forward_unrecorded(self, n: _Notify) -> None:
        try:
            os.eventfd_read(n.source)
        except BlockingIOError:
            return
        except OSError:
            self._unwatch(n.source)
            return
        if n.kind == "kick":
            self._messages_ahead()
            n = self._notify.get(("kick", n.queue), n)
        with contextlib.suppress(OSError):
            os.eventfd_write(n.sink, 1)

    # -- the front-end's messages -------------------------------------------------------
    def _from_frontend(self) -> None:
        if not self._vmm_poll.poll(0):
            return  # taken already, ahead of a kick (_messages_ahead)
        # The relay holds back kicks until FE_END: this message goes first.
        self._send("FE_BEGIN")
        try:
            self._one_frontend_message()
        finally:
            self._send("FE_END")

    def _one_frontend_message(self) -> None:
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
        """Tell the relay what ``msg`` says about memory and rings; returns the fds to
        forward (the proxy's stand-ins for kick/call/backend fds) and the received fds the
        proxy keeps. (The relay gets copies of the memory fds and maps them itself.)"""
        req = msg.request
        send = self._send
        if req == _R.SET_MEM_TABLE:
            table = VhostUserMemory.parse_body(msg.payload)
            send("MEM_CLEAR")
            if len(msg.fds) != len(table.regions):
                raise ValueError(f"{len(table.regions)} regions but {len(msg.fds)} fds")
            for region, fd in zip(table.regions, msg.fds, strict=True):
                send("MEM_ADD", 0, region.guest_addr, region.size, region.user_addr,
                     region.mmap_offset, payload=b"SET_MEM_TABLE", fds=[fd])
        elif req == _R.ADD_MEM_REG:
            r = VhostUserSingleMemoryRegion.parse_body(msg.payload).region
            if len(msg.fds) != 1:
                raise ValueError(f"ADD_MEM_REG with {len(msg.fds)} fds")
            send("MEM_ADD", 0, r.guest_addr, r.size, r.user_addr, r.mmap_offset,
                 payload=b"ADD_MEM_REG", fds=msg.fds)
        elif req == _R.REM_MEM_REG:
            r = VhostUserSingleMemoryRegion.parse_body(msg.payload).region
            send("MEM_REMOVE", 0, r.guest_addr, r.size, r.user_addr)
        elif req == _R.SET_FEATURES:
            # (EVENT_IDX or not: how the relay tells a driver that drains its used ring)
            send("FEATURES", 0, VhostUserU64.parse_body(msg.payload).u64)
        elif req == _R.SET_VRING_NUM:
            st = VhostUserVringState.parse_body(msg.payload)
            send("VRING_NUM", st.index, st.num)
        elif req == _R.SET_VRING_BASE:
            st = VhostUserVringState.parse_body(msg.payload)
            send("VRING_BASE", st.index, st.num)
        elif req == _R.SET_VRING_ADDR:
            a = VhostUserVringAddr.parse_body(msg.payload)
            send("VRING_ADDR", a.index, a.descriptor, a.available, a.used)
        elif req == _R.GET_VRING_BASE:
            st = VhostUserVringState.parse_body(msg.payload)
            send("SCAN", st.index)
            self._stopping_rings.append(st.index)
        elif req in (_R.SET_VRING_KICK, _R.SET_VRING_CALL):
            return self._interpose(req, VhostUserU64.parse_body(msg.payload).u64, msg.fds)
        elif req == _R.SET_BACKEND_REQ_FD:
            return self._interpose_backend(msg.fds)
        return msg.fds, set()

    def _interpose(self, req: int, value: int, fds: list[int]) -> tuple[list[int], set[int]]:
        index = value & VHOST_USER_VRING_IDX_MASK
        kind = "kick" if req == _R.SET_VRING_KICK else "call"
        self._drop_notify(kind, index)
        if kind == "kick":
            self._send("VRING_START", index)
        if value & VHOST_USER_VRING_NOFD_MASK or len(fds) != 1:
            return fds, set()  # polled or in-band: the periodic scan observes the ring
        theirs = fds[0]
        ours = os.eventfd(0, _EVENTFD_FLAGS)
        self._ids += 1
        # kick: the VMM writes ``theirs``, the daemon reads ``ours``; call: the reverse.
        n = (_Notify(self._ids, index, theirs, ours, kind) if kind == "kick"
             else _Notify(self._ids, index, ours, theirs, kind))
        self._notify[(kind, index)] = n
        if not self._send("NOTIFY_SET", index, n.id, int(kind == "call"),
                          fds=[n.source, n.sink]):
            self._watch(n.source, self._forwarder(n))  # (the others are watched already)
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
            self._send("NOTIFY_DROP", gone.queue, gone.id, 1)  # passed on a last time
            self._unwatch(gone.source)
            _close(gone.source)
            _close(gone.sink)

    def _messages_ahead(self) -> None:
        """Forward the front-end messages already waiting (at most MAX_AHEAD): sent
        before the kick being handled, they must reach the daemon first, as they would on a
        direct connection."""
        for _ in range(MAX_AHEAD):
            if self.closed_by is not None or not self._vmm_poll.poll(0):
                return
            self._from_frontend()

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
            self._send("VRING_STOP", self._stopping_rings.pop(0))
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
        """Close both connections (the daemon then exits), the relay (it writes what it
        holds and exits) and every fd the proxy holds."""
        trouble = self.relay.close()
        if trouble is not None and self._direct is None:  # (else it was said already)
            self._say(f"the proxy's data plane (relay pid {self.relay.pid}) did not end "
                      f"cleanly: {trouble}")
        if self._direct is not None:
            self._direct.flush()
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

