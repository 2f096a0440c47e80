"""The capture relay's kicks and calls (fuseproto/capture/relay_notify.c) with the rig of
tests/relay_rig.py: kicks and calls are passed on after their records are in the file; a
kick is handed back (DEFERRED) while a front-end message waits or is being forwarded; a
stalled queue is kicked again; a driver draining its used ring is watched closely.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time

import pytest
from relay_rig import (
    QUEUE,
    Pair,
    Ring,
    add_chain,
    fuse_request,
)

from fuseproto.capture.relay import Event
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode

# -- kicks, calls, and the order of things ----------------------------------------------------------


def test_a_kick_and_a_call_are_passed_on_after_their_records(ring):
    kick, call = Pair(ring.relay, 1, "kick"), Pair(ring.relay, 2, "call")
    try:
        rb, _ = add_chain(ring, 0, 0, fuse_request(5))
        ring.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        ring.mm[ring.DATA:ring.DATA + 64] = bytes(64)  # the request's buffer, reused at once
        reply = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=5, error=-2)
        ring.mm[rb:rb + 16] = reply
        ring.use(0, 16)
        os.eventfd_write(call.source, 1)
        assert call.signalled()
        ring.mm[rb:rb + 16] = bytes(16)  # and the reply's
        ring.relay.sync()  # (the records are staged before; in the file after a SYNC)
        assert [b for _, _, b in ring.records] == [fuse_request(5), reply]
        stats = ring.relay.finish()
        assert (stats["kicks"], stats["calls"], stats["requests"], stats["replies"]) == (
            1, 1, 1, 1)
    finally:
        kick.close()
        call.close()


@pytest.mark.parametrize("why", ["forwarding", "waiting"])
def test_a_kick_never_overtakes_a_frontend_message(tmp_path, why):
    """While Python forwards a front-end message (FE_BEGIN .. FE_END), or while one waits
    on the VMM's socket, a kick is not passed on: it comes back as DEFERRED, and goes out
    when Python says KICK (after the message)."""
    vmm_ours, vmm_theirs = socket.socketpair()
    events: list[Event] = []
    r = Ring(str(tmp_path), vmm_fd=vmm_ours.fileno())
    r.relay.on_event = events.append
    kick = Pair(r.relay, 1, "kick")
    try:
        if why == "forwarding":
            r.relay.send("FE_BEGIN")
        else:
            vmm_theirs.send(b"a vhost-user message")
        r.relay.sync()
        os.eventfd_write(kick.source, 1)
        deferred = r.relay.wait_for("DEFERRED")
        assert (deferred.queue, deferred.a) == (QUEUE, 1)
        assert not kick.signalled(0.2)
        for _ in range(3):  # more kicks meanwhile: held back, not reported again
            os.eventfd_write(kick.source, 1)
            r.relay.sync()
        if why == "forwarding":
            r.relay.send("FE_END")
        else:
            vmm_ours.recv(100)
        r.relay.send("KICK", QUEUE, 1)
        assert kick.signalled()  # the kick handed back, then the ones held behind it
        r.relay.sync()
        os.eventfd_write(kick.source, 1)  # nothing in the way now: straight through
        assert kick.signalled()
        assert events == []  # one DEFERRED in all
        assert 3 <= r.relay.finish()["kicks"] <= 5  # (writes read together count once)
    finally:
        kick.close()
        r.close()
        vmm_ours.close()
        vmm_theirs.close()


def test_a_kick_handed_back_and_never_answered_is_passed_on(tmp_path):
    """A DEFERRED that Python never answers (it was lost, or Python hangs in a message)
    does not hold the queue's kicks back for good: after the answer timeout the relay
    passes the kick on, and says so."""
    logs: list[str] = []
    r = Ring(str(tmp_path), answer_timeout=0.3)
    r.relay.on_event = lambda ev: logs.append(ev.data.decode()) if ev.kind == "LOG" else None
    kick = Pair(r.relay, 1, "kick")
    try:
        r.relay.send("FE_BEGIN")  # and no FE_END, no KICK
        r.relay.sync()
        os.eventfd_write(kick.source, 1)
        assert r.relay.wait_for("DEFERRED").queue == QUEUE
        assert not kick.signalled(0.1)
        os.eventfd_write(kick.source, 1)  # held behind it
        assert kick.signalled(3.0)
        r.relay.sync()
        said = [ln for ln in logs if "not answered" in ln]
        assert len(said) == 1 and re.fullmatch(
            rf"queue {QUEUE}: a kick handed back [0-9.]+ s ago was not answered; passed on",
            said[0]), logs
    finally:
        kick.close()
        r.close()


def test_a_stalled_queue_is_kicked_again(tmp_path):
    """A chain pending with no used entry: the relay kicks again after rekick_first, then
    after twice as long, and says so once the daemon answers."""
    logs: list[str] = []
    r = Ring(str(tmp_path), rekick_first=0.1, rekick_max=0.2)
    r.relay.on_event = lambda ev: logs.append(ev.data.decode()) if ev.kind == "LOG" else None
    kick = Pair(r.relay, 1, "kick")
    try:
        rb, _ = add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        os.eventfd_write(kick.source, 1)
        assert kick.signalled()
        t0 = time.monotonic()
        assert kick.signalled(2.0) and kick.signalled(2.0)  # two repeated kicks
        assert time.monotonic() - t0 >= 0.25
        r.mm[rb:rb + 16] = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=5,
                                              error=-2)
        r.use(0, 16)
        deadline = time.monotonic() + 5
        while not logs and time.monotonic() < deadline:
            r.relay.sync()
            time.sleep(0.01)
        assert logs and logs[0].startswith("queue 1: the daemon answered after 2 repeated "
                                           "kick(s)"), logs
        assert r.relay.finish()["rekicks"] == 2
    finally:
        kick.close()
        r.close()


@pytest.mark.parametrize("how", ["no-interrupt flag", "event-idx used_event 0",
                                 "waiting for a call", "event-idx waiting for a call"])
def test_a_driver_draining_its_used_ring_is_watched_closely(tmp_path, how):
    """A reply published without a call (the daemon calls for nothing while the driver has
    its interrupts off) is read within a fraction of a millisecond when the driver says it
    drains the ring itself; a driver waiting for its call is not polled for it."""
    r = Ring(str(tmp_path), scan_interval=5.0)
    try:
        if "event-idx" in how:
            r.relay.send("FEATURES", 0, 1 << 29)  # VIRTIO_F_RING_EVENT_IDX
        rb, _ = add_chain(r, 0, 0, fuse_request(5))
        r.publish(0)
        r.scan()
        used_event = r.AVAIL + 4 + 2 * 4
        if how == "no-interrupt flag":
            struct.pack_into("<H", r.mm, r.AVAIL, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
        elif how == "event-idx used_event 0":
            struct.pack_into("<H", r.mm, used_event, 0x8000)  # (Linux writes 0: not next)
        elif how == "event-idx waiting for a call":
            struct.pack_into("<H", r.mm, used_event, 0)  # a call for entry 0, the next
        r.relay.sync()
        r.mm[rb:rb + 16] = codec.encode_reply(fuse_opcode.FUSE_GETATTR, None, unique=5,
                                              error=-2)
        r.use(0, 16)
        deadline = time.monotonic() + 0.5
        while len(r.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        drains = "waiting" not in how
        assert (len(r.records) == 2) == drains, r.records
    finally:
        r.close()




def test_events_after_the_awaited_one_are_kept(ring):
    """One read of the control socket can bring the event waited for and more after it:
    those stay for the next reader, in order. (A DEFERRED dropped that way -- QEMU kicks
    every queue once as it starts them, while the proxy waits for SHADOWED -- held that
    queue's kicks back for good: the daemon never saw a FORGET, and a Linux guest's
    umount waited for them forever.)"""
    rel = ring.relay
    for n in (101, 102, 103):
        rel.send("SYNC", a=n)
    time.sleep(0.3)  # all three answers wait on the socket: one read takes them together
    assert rel.wait_for("SYNCED").a == 101
    assert rel.wait_for("SYNCED", timeout=2.0).a == 102
    assert [(ev.kind, ev.a) for ev in rel.events()] == [("SYNCED", 103)]
