"""A vhost-user recording proxy: sits between a VMM and a virtiofsd and records every FUSE
request and reply to pcap.

* The control plane (this module): every vhost-user message is forwarded, with its fds,
  both ways (:mod:`fuseproto.transport.vhost_user_proto`); what it says about guest memory,
  the rings and their eventfds is passed on to the data plane; the backend channel is
  interposed too (its messages recorded as annotations).
* The data plane (:mod:`fuseproto.capture.relay`, a C process per session) maps guest
  memory, waits on the kick and call eventfds (the daemon gets eventfds of the proxy's
  own), records each new request before it passes a kick on. The daemon's used rings are
  in a shadow region of the proxy's (added to the daemon's memory table, SET_VRING_ADDR's
  used address rewritten: :class:`~fuseproto.capture.relay.ShadowRings`, relay_shadow.c):
  the relay records each reply, then copies its used entry into the guest's used ring and
  calls the guest as it asked, so the guest never sees a reply that is not recorded.
  While chains are in flight it reads the rings every ``scan_interval`` (1 ms), every
  50 us while the driver has its interrupts off (the daemon then calls for nothing).

Ordering rules (they fixed a real hang; tests/test_capture_proxy_order.py):

* A kick never overtakes a message: the front-end messages already waiting go first (QEMU
  sends SET_VRING_ENABLE without waiting for a reply and the guest may kick at once; the
  Rust daemon drops a kick to a ring not enabled yet). The relay looks at the VMM's socket
  and at whether this module is forwarding a message (FE_BEGIN / FE_END); if either, it
  hands the kick back (DEFERRED): the waiting messages are forwarded, then KICK.
* A queue whose chains stay pending with no used entry is kicked again (REKICK_FIRST,
  doubling up to REKICK_MAX): one too many is harmless.
* A GET_VRING_BASE reply reaches the VMM once the relay has published what the daemon
  completed.
* A kick handed back and not answered within ANSWER_TIMEOUT is passed on all the same:
  a lost answer once held a queue's kicks back for good (a guest's umount hung).

The pseudo-header carries the queue, the direction and the minor INIT negotiated (the
relay waits for it). What the proxy cannot read becomes an annotation record and the
traffic goes on. Should the relay die, kicks and calls are forwarded and used entries
published from here on, unrecorded (an annotation and a status line say so): the VM must
not hang because of the proxy.

Limits: a ring the shadow cannot serve (its used ring outside writable guest memory, 8
regions in a SET_MEM_TABLE without CONFIGURE_MEM_SLOTS; with it the VMM is told one slot
less) is read alongside the driver, annotated: a guest may take a reply first. In-band
notifications are forwarded but not interposed (such rings are observed by the periodic
scan). The dirty log of a shadowed used ring (live migration) is not kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import TransportError
from ..transport.vhost_user_proto import (
    VHOST_USER_VRING_IDX_MASK,
    VHOST_USER_VRING_NOFD_MASK,
    VIRTIO_F_RING_EVENT_IDX,
    VhostUserMemory,
    VhostUserMessage,
    VhostUserRequest,
    VhostUserSingleMemoryRegion,
    VhostUserU64,
    VhostUserVringAddr,
    VhostUserVringState,
    describe_backend,
    recv_message,
    request_name,
    send_message,
)
from .frames import CaptureRecorder
from .pcap import DEFAULT_MAX_CAPLEN
from .relay import (
    SHADOW_UADDR,
    Event,
    InitAnswers,
    Relay,
    RelayError,
    ShadowRing,
    ShadowRings,
    cut_to_whole_records,
    open_capture,
    shadow_slot,
)

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
# (the Rust daemon ignores a kick that reaches a ring not enabled yet), and one lost kick
# can block a queue for good. A kick with nothing new is harmless; the first comes later
# than most requests take (the slowest here: an fsync on the C daemon, ~0.12 s loaded).
REKICK_FIRST = 0.25
REKICK_MAX = 1.0
# Front-end messages forwarded ahead of one kick at most (those already waiting).
MAX_AHEAD = 64

_EVENTFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK
_R = VhostUserRequest


@dataclass
class ProxyStats:
    """What went through one session."""

    frontend_messages: int = 0
    daemon_messages: int = 0
    backend_messages: int = 0
    kicks: int = 0
    calls: int = 0
    rekicks: int = 0  # kicks the proxy repeated to a stalled queue (see REKICK_FIRST)
    call_swaps: int = 0  # SET_VRING_CALLs replacing a queue's call fd (vector masking)
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
        self._inits = InitAnswers()
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
        # The shadow used rings (relay_shadow.c): the proxy's region, whether the daemon's
        # memory table has it, the ring sizes (SET_VRING_NUM), the negotiated features.
        self.shadow = ShadowRings()
        self._ring_num: dict[int, int] = {}
        self._event_idx = False
        self._held: list[Event] = []  # DEFERRED events held while the relay was awaited
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
        _gpa, size, uaddr, _off = self.shadow.region()
        self._send("SHADOW", 0, uaddr, size, fds=[self.shadow.fd])

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
                mirroring = self._direct is not None and self.shadow.rings
                ready = self._poll.poll(1 if mirroring else 1000)
                if mirroring:
                    self._mirror_all()
                for fd, _ev in ready:
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

    def _await_relay(self, kind: str) -> Event | None:
        """The relay's next ``kind`` event (None if it is gone). Meanwhile an INIT is
        answered, and a kick handed back is held (:attr:`_held`): the front-end message
        being handled goes first."""
        def meanwhile(ev: Event) -> None:
            if ev.kind == "DEFERRED":
                self._held.append(ev)
            else:
                self._relay_event(ev)

        self.relay.on_event = meanwhile
        try:
            if kind == "SYNCED":
                self.relay.sync()
                got = Event("SYNCED", 0, 0, 0, b"")
            else:
                got = self.relay.wait_for(kind)
            # What came after it in the same read: the relay's socket will not wake the
            # poll for these (a DEFERRED left there would hold the queue's kicks back).
            for ev in self.relay.events():
                meanwhile(ev)
            return got
        except RelayError:
            self._relay_lost()
            return None
        finally:
            self.relay.on_event = self._relay_event

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for ev in held:
            self._relay_event(ev)

    def _init_event(self, ev: Event) -> None:
        """An INIT request or reply: learn the minor (InitAnswers), let the relay go on."""
        keep, minor = self._inits.answer(ev, self.note)
        if minor is not None:
            self.minor = minor
            self._send("MINOR", a=minor)
        self._send("RESUME", ev.queue, ev.b, keep)

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
            self._watch(n.source, functools.partial(self._forward_unrecorded, n))
        for n in self._notify.values():
            # A kick or call the relay had taken and not yet passed on would be lost: one
            # more of each is harmless.
            with contextlib.suppress(OSError):
                os.eventfd_write(n.sink, 1)

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
        elif n.queue in self.shadow.rings:
            return  # run() publishes its used entries and calls the guest (_mirror_all)
        with contextlib.suppress(OSError):
            os.eventfd_write(n.sink, 1)

    def _mirror_all(self) -> None:
        """The relay's work on shadowed queues, once it is gone (ShadowRings.mirror_all):
        a call for published entries, a kick for avail entries the guest may not have
        kicked for (one too many of either is harmless)."""
        for queue, kind in self.shadow.mirror_all(self._event_idx, self.note):
            n = self._notify.get((kind, queue))
            if n is not None:
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
        self._release_held()

    def _one_frontend_message(self) -> None:
        try:
            msg = recv_message(self.vmm, what="front-end message",
                               max_payload=MAX_FORWARDED_PAYLOAD)
        except TransportError as e:
            self._end("frontend", e)
            return
        self.stats.frontend_messages += 1
        payload, fds = msg.payload, msg.fds
        keep: set[int] = set()
        try:
            payload, fds, keep = self._observe_frontend(msg)
        except Exception as e:  # noqa: BLE001 -- whatever it is, the message goes through
            payload, fds, keep = msg.payload, msg.fds, set()
            self.note(BACKEND_QUEUE, f"vhost-user {request_name(msg.request)} from the "
                                     f"front-end: {e} (forwarded unchanged, not observed)")
        try:
            send_message(self.daemon, msg.request, payload, fds=fds, flags=msg.flags)
        except (TransportError, OSError) as e:  # OSError: a send timeout
            self._end("daemon", e)
        finally:
            for fd in msg.fds:
                if fd not in keep:
                    _close(fd)
            for fd in fds:
                if fd not in msg.fds and fd not in keep:
                    _close(fd)  # a stand-in we handed the daemon and do not keep

    def _observe_frontend(self, msg: VhostUserMessage
                          ) -> tuple[bytes, list[int], set[int]]:
        """Tell the relay what ``msg`` says about memory and rings; returns the payload and
        fds to forward (the proxy's stand-ins for kick/call/backend fds; its shadow region
        in the memory table and the used ring addresses) and the received fds the proxy
        keeps. (The relay gets copies of the memory fds and maps them itself.)"""
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
            payload = self.shadow.set_mem_table(table, msg.fds)
            if payload is not None:  # the shadow goes last in the table (one more fd)
                return payload, [*msg.fds, self.shadow.fd], {self.shadow.fd}
        elif req == _R.ADD_MEM_REG:
            r = VhostUserSingleMemoryRegion.parse_body(msg.payload).region
            if len(msg.fds) != 1:
                raise ValueError(f"ADD_MEM_REG with {len(msg.fds)} fds")
            send("MEM_ADD", 0, r.guest_addr, r.size, r.user_addr, r.mmap_offset,
                 payload=b"ADD_MEM_REG", fds=msg.fds)
            self.shadow.add_mem_reg(r, msg.fds[0], msg.need_reply)
        elif req == _R.REM_MEM_REG:
            r = VhostUserSingleMemoryRegion.parse_body(msg.payload).region
            send("MEM_REMOVE", 0, r.guest_addr, r.size, r.user_addr)
            self.shadow.remove_memory(r.user_addr, r.size)
        elif req == _R.SET_PROTOCOL_FEATURES:
            self.shadow.protocol_features = VhostUserU64.parse_body(msg.payload).u64
        elif req == _R.SET_FEATURES:
            # (EVENT_IDX or not: how the relay tells a driver that drains its used ring)
            features = VhostUserU64.parse_body(msg.payload).u64
            self._event_idx = bool(features >> VIRTIO_F_RING_EVENT_IDX & 1)
            send("FEATURES", 0, features)
        elif req == _R.SET_VRING_NUM:
            st = VhostUserVringState.parse_body(msg.payload)
            self._ring_num[st.index] = st.num
            send("VRING_NUM", st.index, st.num)
        elif req == _R.SET_VRING_BASE:
            st = VhostUserVringState.parse_body(msg.payload)
            send("VRING_BASE", st.index, st.num)
        elif req == _R.SET_VRING_ADDR:
            return self._vring_addr(VhostUserVringAddr.parse_body(msg.payload), msg), msg.fds, set()
        elif req == _R.GET_VRING_BASE:
            st = VhostUserVringState.parse_body(msg.payload)
            send("SCAN", st.index)
            self._stopping_rings.append(st.index)
        elif req in (_R.SET_VRING_KICK, _R.SET_VRING_CALL):
            return (msg.payload,
                    *self._interpose(req, VhostUserU64.parse_body(msg.payload).u64, msg.fds))
        elif req == _R.SET_BACKEND_REQ_FD:
            return (msg.payload, *self._interpose_backend(msg.fds))
        return msg.payload, msg.fds, set()

    def _vring_addr(self, a: VhostUserVringAddr, msg: VhostUserMessage) -> bytes:
        """SET_VRING_ADDR: the daemon's used ring goes into the shadow (relay_shadow.c)
        when the shadow is in its memory table (or can be added to it) and the relay can
        write the guest's used ring; otherwise the message goes as it came, and the relay
        reads the replies from the guest's used ring (a guest may then take one first)."""
        where = shadow_slot(a.index)
        message = self.shadow.add_message() if where is not None else None
        if message is not None:  # the shadow region, into the daemon's table first
            try:
                send_message(self.daemon, _R.ADD_MEM_REG, message[0], fds=[self.shadow.fd],
                             flags=message[1])
            except (TransportError, OSError) as e:
                self._end("daemon", e)
        why = self.shadow.declined(a.index) or ("the daemon's connection is closed"
                                                if self.closed_by is not None else None)
        where = None if why else where
        self._send("VRING_ADDR", a.index, a.descriptor, a.available, a.used, where or 0)
        self.shadow.rings.pop(a.index, None)
        ev = self._await_relay("SHADOWED") if where is not None else None
        if where is None or ev is None or not ev.a:
            why = why or ("the relay is gone" if ev is None else ev.data.decode("utf-8", "replace"))
            self.note(a.index, f"queue {a.index}: the daemon's used ring is the guest's "
                               f"({why}); a reply the guest takes first is not recorded")
            return msg.payload
        self.shadow.rings[a.index] = ShadowRing(self._ring_num.get(a.index, 0), a.available,
                                                a.used, where - SHADOW_UADDR)
        return dataclasses.replace(a, used=where).serialize_body()

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
            self._watch(n.source, functools.partial(self._forward_unrecorded, n))
        return [ours], {theirs, ours}

    def _drop_notify(self, kind: str, index: int) -> None:
        """A new kick/call fd replaces the old one. The old pair stays watched and
        forwarded: the daemon switches only when it reads the message, and may signal
        the old fd until then (QEMU swaps call fds to mask a vector and checks the old one
        when it unmasks); a lost call would leave the guest waiting forever."""
        old = self._notify.pop((kind, index), None)
        if old is None:
            return
        if kind == "call":
            self.stats.call_swaps += 1
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
        if msg.request == _R.ADD_MEM_REG and msg.is_reply and self.shadow.reply_is_ours():
            if msg.payload != bytes(8):
                self.note(BACKEND_QUEUE, f"the daemon refused the shadow region (ADD_MEM_REG "
                                         f"reply {msg.payload.hex()})")
            for fd in msg.fds:
                _close(fd)
            return
        payload = (self.shadow.max_mem_slots(msg.payload)  # one slot kept for the shadow
                   if msg.request == _R.GET_MAX_MEM_SLOTS and msg.is_reply else msg.payload)
        if msg.request == _R.GET_VRING_BASE and msg.is_reply and self._stopping_rings:
            # The daemon has stopped the ring: what it completed is all there will be, and
            # it reaches the guest's used ring (a shadowed queue) before the VMM hears so.
            self._send("VRING_STOP", self._stopping_rings.pop(0))
            self._await_relay("SYNCED")
        try:
            send_message(self.vmm, msg.request, payload, fds=msg.fds, flags=msg.flags)
        except (TransportError, OSError) as e:  # OSError: a send timeout
            self._end("frontend", e)
        finally:
            for fd in msg.fds:
                _close(fd)
        self._release_held()

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
        self.shadow.close()


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

