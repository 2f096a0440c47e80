"""The recording proxy must never make the VM hang: what QEMU does around a ring's start,
replayed by a raw frontend of ours against real c and rust daemons through the proxy (the
CLI, in a child process).

QEMU 7.2 starts a vhost-user-fs device with SET_VRING_NUM / BASE / ADDR / KICK per ring
(signalling each new kick fd once), then SET_VRING_ENABLE per ring, then SET_VRING_CALL
per ring (the guest notifiers), none waiting for a reply (seen through the proxy); the
guest may kick as soon as it runs again. Replayed here in standard_program's order. The Rust daemon (vhost-user-backend) reads a kick that reaches a
ring not enabled yet and drops it, and does not look at the ring when it is enabled; a
guest with EVENT_IDX then sends no further kick (avail_event never moved). Two ways the
proxy could lose that kick:

* forwarding it ahead of messages the VMM sent before it (the proxy was descheduled, the
  ENABLEs and the kick waited together, and a kick went out between two messages);
* a kick the daemon dropped anyway (it raced the ENABLE inside the daemon).

The proxy forwards the messages waiting before a kick first, and kicks a queue again when
its chains stay pending with no used entry (0.25 s, then doubling up to 1 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace

import pytest
from test_capture_proxy import Proxy

from fuseproto.capture import decode_capture
from fuseproto.fuzz.rawfront import RawFrontend, RingWriter, init_body, standard_program
from fuseproto.transport.vhost_user_proto import VhostUserRequest
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode

pytestmark = pytest.mark.daemon

R = VhostUserRequest
UNIQUE = 2
REQ_OFF = 8 << 20  # where the INIT request and its reply area live in guest memory


@pytest.fixture
def proxied(shared_dir, scratch_dir):
    """(proxy, frontend): the proxy runs the daemon the test names."""
    made: list[tuple[Proxy, RawFrontend]] = []

    def make(kind: str) -> tuple[Proxy, RawFrontend]:
        proxy = Proxy(scratch_dir, "--daemon", kind, "--shared-dir", shared_dir)
        try:
            fe = RawFrontend(proxy.listen, timeout=10.0)
        except BaseException:
            proxy.stop()
            raise
        made.append((proxy, fe))
        return proxy, fe

    yield make
    for proxy, fe in made:
        fe.close()
        if proxy.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy.proc.pid, signal.SIGCONT)  # never leave it stopped
            proxy.stop()


def handshake_until_rings(fe: RawFrontend) -> list:
    """The handshake up to the rings' setup (each reply awaited); returns the rest of QEMU's
    start (per ring NUM, BASE, ADDR, KICK, CALL; then the ENABLEs), without NEED_REPLY as
    QEMU 7.2 sends them."""
    prog = standard_program()
    at = next(i for i, s in enumerate(prog) if s.request == R.SET_VRING_NUM)
    for step in prog[:at]:
        expected, reply = fe.send_step(step)
        assert reply is not None or not expected, step
    return [replace(s, need_reply=False) for s in prog[at:]]


def post_init(fe: RawFrontend) -> RingWriter:
    """A FUSE INIT on ring 1 (two descriptors) and a kick, as a guest driver makes them."""
    ring = fe.ring(1)
    data = codec.encode_request(fuse_opcode.FUSE_INIT, init_body(), unique=UNIQUE)
    fe.mem.mm[REQ_OFF:REQ_OFF + len(data)] = data
    ring.desc(0, fe.gpa(REQ_OFF), len(data), 1, 1)
    ring.desc(1, fe.gpa(REQ_OFF + 4096), codec.reply_area(fuse_opcode.FUSE_INIT, None, 46),
              2, 0)
    ring.publish(0)
    os.eventfd_write(fe.kick_fds[1], 1)
    return ring


def answered(fe: RawFrontend, ring: RingWriter, timeout: float) -> bytes | None:
    """The INIT reply, or None if no used entry came within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for head, length in ring.used():
            assert head == 0, head
            return bytes(fe.mem.mm[REQ_OFF + 4096:REQ_OFF + 4096 + length])
        time.sleep(0.005)
    return None


def check_reply(reply: bytes | None, proxy: Proxy, fe: RawFrontend, what: str) -> None:
    if reply is None:
        fe.close()
        proxy.proc.terminate()  # SIGTERM: the proxy stops its daemon by PID
        proxy.wait()
        raise AssertionError(f"{what}: INIT never answered; the proxy said:\n"
                             f"{proxy.stderr[-3000:]}")
    assert int.from_bytes(reply[8:16], "little") == UNIQUE
    assert int.from_bytes(reply[4:8], "little", signed=True) == 0  # no error
    fe.close()
    assert proxy.wait() == 0, proxy.stderr
    kinds = [(m.kind, m.opcode) for m in decode_capture(proxy.pcap) if m.kind != "annotation"]
    assert kinds == [("request", fuse_opcode.FUSE_INIT), ("reply", fuse_opcode.FUSE_INIT)]


@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_kick_does_not_overtake_the_ring_setup_sent_before_it(kind, no_leaks, proxied):
    """The proxy is stopped (descheduled) while QEMU sends the rings' setup and the ENABLEs
    and the guest kicks: when it runs again, the kick must reach the daemon after the
    ENABLEs, as it would on a direct connection; the INIT is answered."""
    proxy, fe = proxied(kind)
    rest = handshake_until_rings(fe)
    os.kill(proxy.proc.pid, signal.SIGSTOP)
    try:
        for step in rest:
            assert fe.send_step(step) == (False, None)
        ring = post_init(fe)
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
    check_reply(answered(fe, ring, 10.0), proxy, fe, "kick queued behind the ENABLEs")


@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_kick_the_daemon_dropped_is_repeated(kind, no_leaks, proxied):
    """A kick that reaches the ring before it is enabled (the Rust daemon reads it and
    drops it: on a direct connection this INIT would never be answered): the proxy kicks
    again while the chain stays pending, and once the ENABLE is through the INIT is
    answered (the C daemon does not wait for the ENABLE)."""
    proxy, fe = proxied(kind)
    rest = handshake_until_rings(fe)
    enables = [s for s in rest if s.request == R.SET_VRING_ENABLE]
    for step in rest:
        if step.request != R.SET_VRING_ENABLE:
            assert fe.send_step(step) == (False, None)
    ring = post_init(fe)
    reply = answered(fe, ring, 0.3)  # the proxy forwards the kick; the ring is disabled
    if kind == "rust":
        assert reply is None, "the Rust daemon served a ring that is not enabled"
    for step in enables:
        assert fe.send_step(replace(step, need_reply=True))[1] is not None  # acked
    if reply is None:
        reply = answered(fe, ring, 10.0)
    check_reply(reply, proxy, fe, "kick before the ENABLE")
    if kind == "rust":
        assert "kicks repeated" in proxy.stderr and ", 0 kicks repeated" not in proxy.stderr
        assert "the daemon answered after" in proxy.stderr, proxy.stderr
