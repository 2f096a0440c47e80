"""The shadow used rings (fuseproto/capture/relay_shadow.c) with the rig of
tests/relay_rig.py: the daemon's used entries reach the guest's used ring only after their
replies are recorded, in order, the guest called as it asks; what cannot be shadowed is
declined with its reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import time

import pytest
from relay_rig import (
    EVENT_IDX,
    GUEST_AVAIL_EVENT,
    GUEST_USED_EVENT,
    QUEUE,
    Pair,
    Ring,
    add_chain,
    fuse_request,
    getattr_reply,
    unique_of,
)

from fuseproto.capture import relay as relay_mod
from fuseproto.capture.relay import SHADOW_QUEUES, ShadowRings, shadow_slot

# -- the shadow used ring (relay_shadow.c) ----------------------------------------------------------


def test_shadow_a_reply_is_recorded_before_the_guest_sees_its_entry(tmp_path):
    """The daemon's used entry is in the shadow: the guest's used ring does not move until
    the relay has the reply (a watcher of the guest's index reuses the reply's buffer the
    moment the index moves, as a draining guest does: the capture still holds the reply),
    and the guest is called."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    try:
        rb, _ = add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        r.mm[rb:rb + 16] = getattr_reply(5)
        r.use(0, 16)  # the daemon's entry, in the shadow
        r.relay.sync()
        assert r.guest_used()[0] == 0 and len(r.records) == 1  # not seen, not recorded

        def watch() -> None:
            deadline = time.monotonic() + 5
            while r.guest_used()[0] == 0 and time.monotonic() < deadline:
                pass
            r.mm[rb:rb + 16] = b"\xee" * 16  # the guest takes it and reuses the buffer

        th = threading.Thread(target=watch)
        th.start()
        os.eventfd_write(call.source, 1)  # the daemon's call
        th.join()
        r.relay.sync()
        assert [b for _, _, b in r.records] == [fuse_request(5), getattr_reply(5)]
        assert r.guest_used() == (1, [(0, 16), (0, 0), (0, 0), (0, 0)])
        assert call.signalled()
        stats = r.relay.finish()
        assert (stats["replies"], stats["mirrored"], stats["signals"]) == (1, 1, 1)
        assert r.notes == []
    finally:
        kick.close()
        call.close()
        r.close()


@pytest.mark.parametrize("how,called", [
    ("interrupts on", True),
    ("no-interrupt flag", False),
    ("event-idx: the new index passes used_event", True),
    ("event-idx: used_event further on", False),
])
def test_shadow_the_guest_is_called_as_it_asks(tmp_path, how, called):
    """The relay calls the guest itself, as the guest asked: never while it has set
    VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX, when the new used index passes used_event
    (vring_need_event). The entry is published either way."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0)
    call = Pair(r.relay, 2, "call")
    try:
        if "event-idx" in how:
            r.relay.send("FEATURES", 0, EVENT_IDX)
            struct.pack_into("<H", r.mm, GUEST_USED_EVENT, 0 if "passes" in how else 3)
        if how == "no-interrupt flag":
            struct.pack_into("<H", r.mm, r.AVAIL, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
        rb, _ = add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        r.scan()
        r.mm[rb:rb + 16] = getattr_reply(5)
        r.use(0, 16)
        os.eventfd_write(call.source, 1)
        assert call.signalled(0.5 if called else 0.3) == called
        r.relay.sync()
        assert r.guest_used()[0] == 1
        assert r.records[-1] == (1, QUEUE, getattr_reply(5))
    finally:
        call.close()
        r.close()


def test_shadow_entries_reach_the_guest_in_order_across_the_wrap(tmp_path):
    """Replies completed out of order, 12 of them on a 4-entry ring whose indexes cross
    65535 -> 0: each reaches the guest's used ring at its place, in the daemon's order,
    after its record; the records pair one to one."""
    r = Ring(str(tmp_path), shadow=True, base=0xFFFA, scan_interval=5.0)
    kick, call = Pair(r.relay, 1, "kick"), Pair(r.relay, 2, "call")
    try:
        unique = 100
        for _ in range(6):
            bufs = {}
            for head, slot in ((0, 0), (2, 1)):
                unique += 1
                bufs[head] = (add_chain(r, head, slot, fuse_request(unique))[0], unique)
                r.publish(head)
            os.eventfd_write(kick.source, 1)
            assert kick.signalled()
            for head in (2, 0):  # the second request completes first
                rb, u = bufs[head]
                r.mm[rb:rb + 16] = getattr_reply(u)
                r.use(head, 16)
            os.eventfd_write(call.source, 1)
            assert call.signalled()
            r.relay.sync()
            idx, entries = r.guest_used()
            assert idx == r.used_idx & 0xFFFF
            assert [entries[(idx - 2) % 4], entries[(idx - 1) % 4]] == [(2, 16), (0, 16)]
        assert r.used_idx & 0xFFFF == 6  # (0xFFFA + 12, wrapped)
        replies = [unique_of(b) for d, _, b in r.records if d == 1]
        assert replies == [u for k in range(6) for u in (102 + 2 * k, 101 + 2 * k)]
        assert r.notes == []
    finally:
        kick.close()
        call.close()
        r.close()


def test_shadow_the_guest_kicks_for_what_the_relay_has_not_read(tmp_path):
    """With EVENT_IDX the guest's avail_event says how far the relay has read the avail
    ring (the guest kicks for anything newer), and entries the relay reads on its own
    (the periodic scan, not a kick) get a kick of the relay's own to the daemon."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=0.005)
    kick = Pair(r.relay, 1, "kick")
    try:
        r.relay.send("FEATURES", 0, EVENT_IDX)
        add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        r.relay.sync()
        assert struct.unpack_from("<H", r.mm, GUEST_AVAIL_EVENT)[0] == 1
        add_chain(r, 2, 1, fuse_request(6))
        r.publish(2)  # no kick: the periodic scan reads it, and kicks the daemon
        assert kick.signalled()
        r.relay.sync()  # the kick goes first; the record is written after (CI saw [5])
        assert [unique_of(b) for _, _, b in r.records] == [5, 6]
        assert struct.unpack_from("<H", r.mm, GUEST_AVAIL_EVENT)[0] == 2
    finally:
        kick.close()
        r.close()


def test_shadow_declined_where_the_guest_ring_cannot_be_written(tmp_path):
    """A shadow the relay cannot use is declined with the reason (the proxy then forwards
    SET_VRING_ADDR unchanged): the guest's used ring outside guest memory, an offer
    outside the shadow."""
    r = Ring(str(tmp_path), shadow=True)
    try:
        r.relay.send("VRING_NUM", 2, 4)
        for used, offer, why in ((0xdead0000, r.SHADOW_UADDR, b"0xdead0000"),
                                 (r.UADDR + 0x800, 0x1234_0000, b"no shadow at 0x12340000")):
            r.relay.send("VRING_ADDR", 2, r.UADDR + r.DESC, r.UADDR + r.AVAIL, used, offer)
            ev = r.relay.wait_for("SHADOWED")
            assert (ev.queue, ev.a) == (2, 0) and why in ev.data, ev
    finally:
        r.close()



# -- where the shadow goes, and where it cannot --------------------------------------------------

def test_shadow_every_queue_a_kick_names_has_a_slot(tmp_path):
    """The proxy's shadow region has a slot for every queue vhost-user can name (a kick's
    8-bit index: the relay's MAX_QUEUES), each large enough for the largest ring: the relay
    takes the offer for queues 64 and 255 of 32,768 entries; past 255 there is no slot,
    and the reason says so."""
    src = (relay_mod.SOURCE_DIR / "relay.h").read_text()
    assert SHADOW_QUEUES == int(re.search(r"#define MAX_QUEUES (\d+)", src)[1]) == 256
    shadows = ShadowRings()
    r = Ring(str(tmp_path))
    try:
        _gpa, size, uaddr, _off = shadows.region()
        r.relay.send("SHADOW", 0, uaddr, size, fds=[shadows.fd])
        for q in (64, SHADOW_QUEUES - 1):
            r.relay.send("VRING_NUM", q, 32768)
            r.relay.send("VRING_ADDR", q, r.UADDR + r.DESC, r.UADDR + r.AVAIL,
                         r.UADDR + r.USED, shadow_slot(q))
            ev = r.relay.wait_for("SHADOWED")
            assert (ev.queue, ev.a) == (q, 1), ev
        assert shadow_slot(SHADOW_QUEUES) is None
        assert shadows.declined(SHADOW_QUEUES) == (
            "queue index 256 is past the last a kick names (255)")
    finally:
        r.close()
        shadows.close()


@pytest.mark.parametrize("regions,slots", [(7, False), (8, False), (8, True)])
def test_shadow_room_in_the_memory_table(regions, slots):
    """SET_MEM_TABLE carries 8 regions at most: with 7 the shadow goes last; with 8 and no
    CONFIGURE_MEM_SLOTS it cannot, and the reason says so; with CONFIGURE_MEM_SLOTS it is
    added on its own (ADD_MEM_REG, acknowledged with REPLY_ACK) whatever the table holds."""
    from fuseproto.transport.vhost_user_proto import (
        VhostUserMemory,
        VhostUserMemoryRegion,
        VhostUserProtocolFeature,
    )

    P = VhostUserProtocolFeature
    shadows = ShadowRings()
    fd = os.memfd_create("regions")
    try:
        shadows.protocol_features = 1 << P.REPLY_ACK | (1 << P.CONFIGURE_MEM_SLOTS if slots
                                                         else 0)
        table = VhostUserMemory(tuple(VhostUserMemoryRegion(i << 30, 1 << 20, 0x7000_0000
                                                            + (i << 30), 0)
                                      for i in range(regions)))
        payload = shadows.set_mem_table(table, [fd] * regions)
        message = shadows.add_message()
        if regions < 8:
            assert payload is not None and message is None
            sent = VhostUserMemory.parse_body(payload).regions
            assert sent[:-1] == table.regions and sent[-1] == VhostUserMemoryRegion(
                *shadows.region())
        else:
            assert payload is None and (message is not None) == slots
        if regions < 8 or slots:
            assert shadows.declined(0) is None
        else:
            assert shadows.declined(0) == (
                "SET_MEM_TABLE with 8 regions leaves no room for the shadow region (8 at "
                "most; CONFIGURE_MEM_SLOTS not agreed)")
        assert shadows.reply_is_ours() == (message is not None)
    finally:
        shadows.close()
        os.close(fd)


def test_shadow_a_slot_of_the_daemons_is_kept_for_the_shadow():
    """GET_MAX_MEM_SLOTS reaches the front-end one less than the daemon said: a front-end
    that fills every slot it is told of still leaves the shadow region one."""
    from fuseproto.transport.vhost_user_proto import VhostUserU64

    shadows = ShadowRings()
    try:
        for said, told in ((509, 508), (32, 31), (1, 1)):
            reply = shadows.max_mem_slots(VhostUserU64(said).serialize_body())
            assert VhostUserU64.parse_body(reply).u64 == told
        assert shadows.max_mem_slots(b"\x01\x02") == b"\x01\x02"  # (not ours to judge)
    finally:
        shadows.close()



def test_shadow_the_proxy_publishes_in_order_and_never_moves_the_guest_back():
    """Once the relay is gone the proxy publishes the daemon's used entries itself
    (ShadowRings.mirror): new entries are copied and the index published; a daemon index
    behind the one the guest was given is never published (the guest's driver would see
    its used index jump by nearly 2**16), said once, and publishing resumes when the
    daemon passes it."""
    import mmap

    from fuseproto.capture.relay import ShadowRing
    from fuseproto.transport import virtqueue as vq

    size, avail_at, used_at, base = 8, 0x1000, 0x2000, 0x40000000
    guest = os.memfd_create("guest")
    os.ftruncate(guest, 0x4000)
    shadows = ShadowRings()
    notes: list[str] = []
    try:
        shadows.add_memory(base, 0x4000, 0, guest)
        slot = shadow_slot(1) - relay_mod.SHADOW_UADDR
        shadows.rings[1] = ShadowRing(size, base + avail_at, base + used_at, slot)
        gm = mmap.mmap(guest, 0x4000)
        sh = mmap.mmap(shadows.fd, relay_mod.SHADOW_SIZE)
        u16, elem = struct.Struct("<H"), vq.VIRTQ_USED_ELEM

        def daemon_uses(idx: int, heads: list[int]) -> None:
            for i, head in enumerate(heads):
                at = slot + vq.VIRTQ_USED_RING + elem.size * ((idx - len(heads) + i) % size)
                elem.pack_into(sh, at, head, 100 + head)
            u16.pack_into(sh, slot + vq.VIRTQ_USED_IDX, idx)

        def guest_idx() -> int:
            return u16.unpack_from(gm, used_at + vq.VIRTQ_USED_IDX)[0]

        daemon_uses(3, [5, 6, 7])
        assert shadows.mirror_all(False, lambda q, t: notes.append(t)) == [(1, "call")]
        assert guest_idx() == 3 and notes == []
        assert [elem.unpack_from(gm, used_at + vq.VIRTQ_USED_RING + elem.size * k)
                for k in range(3)] == [(5, 105), (6, 106), (7, 107)]
        u16.pack_into(sh, slot + vq.VIRTQ_USED_IDX, 1)  # the daemon's index goes back
        for _ in range(3):
            assert shadows.mirror_all(False, lambda q, t: notes.append(t)) == []
        assert guest_idx() == 3
        assert len(notes) == 1 and "used index 1 is behind the 3" in notes[0], notes
        daemon_uses(4, [2, 3, 4, 1])  # and passes it again: published from 3 on
        assert shadows.mirror_all(False, lambda q, t: notes.append(t)) == [(1, "call")]
        assert guest_idx() == 4 and len(notes) == 1
        assert elem.unpack_from(gm, used_at + vq.VIRTQ_USED_RING + elem.size * 3) == (1, 101)
        gm.close()
        sh.close()
    finally:
        shadows.close()
        os.close(guest)


# -- the same, through the proxy against real daemons ---------------------------------------------

class RawVmm:
    """A front-end that sends vhost-user messages one by one (the memory tables our
    transport never sends: 8 regions, every slot filled) and waits for each reply due."""

    def __init__(self, path: str, slots: bool) -> None:
        from fuseproto.capture.proxy import connect_daemon

        self.sock = connect_daemon(path)  # (retries while the C daemon is not listening yet)
        self.sock.settimeout(20)
        self.mem = os.memfd_create("raw-vmm")
        try:
            self._handshake(slots)
        except BaseException:
            self.close()
            raise

    def _handshake(self, slots: bool) -> None:
        from fuseproto.transport.vhost_user_proto import (
            VHOST_USER_F_PROTOCOL_FEATURES,
            VIRTIO_F_VERSION_1,
            VhostUserProtocolFeature,
            VhostUserRequest,
        )

        R, P = VhostUserRequest, VhostUserProtocolFeature
        os.ftruncate(self.mem, 512 * 0x10000)
        self.ask(R.GET_FEATURES)
        offered = self.ask(R.GET_PROTOCOL_FEATURES)
        want = 1 << P.REPLY_ACK | (1 << P.CONFIGURE_MEM_SLOTS if slots else 0)
        assert offered & want == want
        self.ask(R.SET_PROTOCOL_FEATURES, offered & want)
        self.slots = self.ask(R.GET_MAX_MEM_SLOTS) if slots else 0
        self.ask(R.SET_OWNER)
        self.ask(R.SET_FEATURES, 1 << VIRTIO_F_VERSION_1 | 1 << VHOST_USER_F_PROTOCOL_FEATURES)

    @staticmethod
    def region(i: int):
        """Region i: 64 KiB of the memfd, 1 GiB apart (guest and front-end addresses)."""
        from fuseproto.transport.vhost_user_proto import VhostUserMemoryRegion

        return VhostUserMemoryRegion(i << 30, 0x10000, 0x7F00_0000_0000 + (i << 30),
                                     i * 0x10000)

    def ask(self, request: int, value: int | bytes | None = None, fds: tuple = (),
            ack: bool = False) -> int:
        """Send; returns the u64 of the reply (a GET_, or the ack asked for), else 0."""
        from fuseproto.transport.vhost_user_proto import (
            VHOST_USER_NEED_REPLY_MASK,
            VHOST_USER_VERSION,
            VhostUserU64,
            recv_message,
            send_message,
        )

        payload = (VhostUserU64(value).serialize_body() if isinstance(value, int) else
                   value or b"")
        flags = VHOST_USER_VERSION | (VHOST_USER_NEED_REPLY_MASK if ack else 0)
        send_message(self.sock, request, payload, fds=fds, flags=flags)
        if not ack and not request.name.startswith("GET_"):
            return 0
        reply = recv_message(self.sock)
        assert reply.request == request and reply.is_reply
        return VhostUserU64.parse_body(reply.payload).u64

    def rings(self) -> None:
        """Queue 0's rings in region 0 (SET_VRING_NUM / BASE / ADDR), then a GET_ to know
        the daemon has read them (and the proxy's own ADD_MEM_REG before them)."""
        from fuseproto.transport.vhost_user_proto import (
            VhostUserRequest,
            VhostUserVringAddr,
            VhostUserVringState,
        )

        R = VhostUserRequest
        base = self.region(0).user_addr
        self.ask(R.SET_VRING_NUM, VhostUserVringState(0, 64).serialize_body())
        self.ask(R.SET_VRING_BASE, VhostUserVringState(0, 0).serialize_body())
        self.ask(R.SET_VRING_ADDR, VhostUserVringAddr(0, 0, base, base + 0x2000,
                                                      base + 0x1000, 0).serialize_body())
        self.ask(R.GET_FEATURES)

    def close(self) -> None:
        self.sock.close()
        os.close(self.mem)


def _notes(proxy) -> list[str]:
    from fuseproto.capture import decode_capture

    return [m.raw.decode() for m in decode_capture(proxy.pcap) if m.kind == "annotation"]


@contextlib.contextmanager
def _vmm_through_proxy(scratch_dir: str, shared_dir: str, kind: str, *, slots: bool):
    """A proxy starting a ``kind`` daemon and a RawVmm on it; on leaving, the VMM
    disconnects, the proxy must end by itself (exit 0), and is stopped by PID anyway."""
    from test_capture_proxy import Proxy

    proxy = Proxy(scratch_dir, "--daemon", kind, "--shared-dir", shared_dir)
    try:
        vmm = RawVmm(proxy.listen, slots=slots)
        try:
            yield proxy, vmm
        finally:
            vmm.close()
        assert proxy.wait() == 0, proxy.stderr
    finally:
        proxy.stop()


@pytest.mark.daemon
@pytest.mark.parametrize("kind", ["c", "rust"])
def test_shadow_through_the_proxy_when_the_vmm_fills_every_slot(
        kind, daemon_installations, shared_dir, scratch_dir, no_leaks):
    """CONFIGURE_MEM_SLOTS: the VMM hears of one slot less than the daemon has, so a VMM
    that fills every slot it was told of (ADD_MEM_REG, each acknowledged) still leaves the
    shadow region its own: the daemon takes it, queue 0's used ring goes there, and no
    annotation says otherwise. (Told the daemon's own number, 509, and filling it, the Rust
    daemon closed the connection on the proxy's ADD_MEM_REG: the VM's file system gone.)"""
    from fuseproto import daemons
    from fuseproto.transport.vhost_user_proto import (
        VhostUserRequest,
        VhostUserSingleMemoryRegion,
    )

    d = daemons.Daemon(daemon_installations[kind], shared_dir,
                       os.path.join(scratch_dir, "direct.sock"))
    d.start()
    try:
        direct = RawVmm(d.socket_path, slots=True)  # the daemon's own number
        direct.close()
        assert d.wait_exit(10) is not None, d.describe()
    finally:
        d.cleanup()
    with _vmm_through_proxy(scratch_dir, shared_dir, kind, slots=True) as (proxy, vmm):
        assert 1 < vmm.slots == direct.slots - 1 <= 511, (vmm.slots, direct.slots)
        for i in range(vmm.slots):
            body = VhostUserSingleMemoryRegion(vmm.region(i)).serialize_body()
            assert vmm.ask(VhostUserRequest.ADD_MEM_REG, body, fds=(vmm.mem,),
                           ack=True) == 0, i
        vmm.rings()
    assert _notes(proxy) == [], proxy.stderr


@pytest.mark.daemon
@pytest.mark.parametrize("regions", [7, 8])
def test_shadow_through_the_proxy_with_a_full_set_mem_table(
        regions, daemon_installations, shared_dir, scratch_dir, no_leaks):
    """No CONFIGURE_MEM_SLOTS: a SET_MEM_TABLE of 7 regions gets the shadow as its 8th
    (nothing to say); one of 8, the most it carries, has no room for it: queue 0's used
    ring stays the guest's, and an annotation says why."""
    from fuseproto.transport.vhost_user_proto import VhostUserMemory, VhostUserRequest

    with _vmm_through_proxy(scratch_dir, shared_dir, "rust", slots=False) as (proxy, vmm):
        table = VhostUserMemory(tuple(vmm.region(i) for i in range(regions)))
        assert vmm.ask(VhostUserRequest.SET_MEM_TABLE, table.serialize_body(),
                       fds=(vmm.mem,) * regions, ack=True) == 0
        vmm.rings()
    assert _notes(proxy) == ([] if regions < 8 else [
        "queue 0: the daemon's used ring is the guest's (SET_MEM_TABLE with 8 regions "
        "leaves no room for the shadow region (8 at most; CONFIGURE_MEM_SLOTS not agreed)); "
        "a reply the guest takes first is not recorded"]), proxy.stderr


# -- the end of a session: where the rings and the relay disagree --------------------------


def test_finish_says_which_side_waits(tmp_path):
    """A VM that hung: at FINISH the relay says, before its last reading, which requests it
    has not read and which chains still wait for a reply (and nothing once all is
    settled)."""
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0, idle_interval=5.0)
    logs: list[str] = []
    r.relay.on_event = lambda ev: logs.append(ev.data.decode()) if ev.kind == "LOG" else None
    try:
        add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        r.scan()  # read: its chain waits for a reply
        add_chain(r, 2, 1, fuse_request(6))
        r.publish(2)  # never read (no kick, no scan)
        assert r.relay.finish()["requests"] == 2  # (the last reading took it)
        assert [ln for ln in logs if "at the end" in ln] == [
            "queue 1 at the end: avail idx 2 (the relay read to 1), the daemon's used idx 0 "
            "(recorded to 0), the guest's used idx 0 (published to 0), avail flags 0x0, 1 "
            "chain(s) waiting for a reply; a kick owed to the daemon; stalled"]
    finally:
        r.close()


def test_finish_is_quiet_when_all_is_settled(tmp_path):
    r = Ring(str(tmp_path), shadow=True, scan_interval=5.0, idle_interval=5.0)
    logs: list[str] = []
    r.relay.on_event = lambda ev: logs.append(ev.data.decode()) if ev.kind == "LOG" else None
    try:
        rb, _ = add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        r.scan()
        r.mm[rb:rb + 16] = getattr_reply(5)
        r.use(0, 16)
        r.scan()  # recorded and published to the guest
        assert r.guest_used()[0] == 1
        assert r.relay.finish()["replies"] == 1
        assert not [ln for ln in logs if "at the end" in ln], logs
    finally:
        r.close()
