"""fuseproto.Session: pairing by unique, INIT negotiation, FORGET/INTERRUPT rules,
notifications, typed protocol errors, bounded memory.

The contract under test: feed_request/feed_reply return a message or raise DecodeError or
ProtocolError, whatever the bytes, and a message that raises leaves the session unchanged
(except a reply whose body fails to decode, which still completes its request).
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from construct import Container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fuseproto import Session
from fuseproto.errors import (
    DecodeError,
    LengthMismatchError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    TruncatedError,
)
from fuseproto.wire import codec
from fuseproto.wire.codec import Notification, Reply, Request
from fuseproto.wire.constants import (
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_UNIQUE_RESEND,
    InitFlags,
    fuse_notify_code,
    fuse_opcode,
)

OP = fuse_opcode
NC = fuse_notify_code


# --- builders (all through the codec) ------------------------------------------------------


def init_in(minor: int = 45, flags: int = 0) -> Container:
    lo, hi = InitFlags(flags | InitFlags.FUSE_INIT_EXT).words()
    return Container(major=7, minor=minor, max_readahead=1 << 17, flags=lo, flags2=hi,
                     unused=[0] * 11)  # fmt: skip


def init_out(minor: int = 46, flags: int = 0, **kw: Any) -> Container:
    lo, hi = InitFlags(flags | InitFlags.FUSE_INIT_EXT).words()
    out = Container(major=7, minor=minor, max_readahead=1 << 17, flags=lo, flags2=hi,
                    max_write=1 << 20, max_pages=256, time_gran=1)  # fmt: skip
    out.update(kw)
    return out


def request_bytes(opcode: int, body: Any, unique: int, **hdr: Any) -> bytes:
    return codec.encode_request(opcode, body, unique=unique, **hdr)


def reply_bytes(request: Any, body: Any, unique: int, error: int = 0, **kw: Any) -> bytes:
    return codec.encode_reply(request, body, unique=unique, error=error, **kw)


def initialized_pair(
    flags: int = 0, kernel_minor: int = 45, fs_minor: int = 46
) -> tuple[Session, Session]:
    """A kernel-side session (builds requests) and a server-side one (feeds them)."""
    kernel, server = Session(), Session()
    _, data = kernel.build_request(OP.FUSE_INIT, init_in(kernel_minor, flags))
    req = server.feed_request(data)
    rep = server.build_reply(req, init_out(fs_minor, flags))
    kernel.feed_reply(rep)
    return kernel, server


# Simple requests and a valid reply body for each (the MemFS test covers the rest).
SIMPLE: dict[int, tuple[Container, Container]] = {
    OP.FUSE_GETATTR: (Container(getattr_flags=0, dummy=0, fh=0), Container(attr=Container(ino=7))),
    OP.FUSE_LOOKUP: (Container(name=b"x"), Container(nodeid=7, attr=Container(ino=7))),
    OP.FUSE_READ: (Container(fh=1, offset=0, size=16), Container(data=b"0123456789")),
    OP.FUSE_STATFS: (Container(), Container(st=Container(bsize=4096))),
    OP.FUSE_UNLINK: (Container(name=b"gone"), Container()),
    OP.FUSE_GETXATTR: (Container(size=0, name=b"user.a"), Container(size=3, padding=0)),
}


# --- INIT ----------------------------------------------------------------------------------


def test_init_negotiates_minor_flags_and_limits() -> None:
    flags = InitFlags.FUSE_ASYNC_READ | InitFlags.FUSE_MAP_ALIGNMENT | InitFlags.FUSE_PASSTHROUGH
    kernel = Session()
    assert not kernel.initialized and kernel.minor == FUSE_KERNEL_MINOR_VERSION
    unique, data = kernel.build_request(OP.FUSE_INIT, init_in(45, flags))
    assert unique == 2 and kernel.next_unique == 4
    assert kernel.offered_flags == flags | InitFlags.FUSE_INIT_EXT
    reply = kernel.feed_reply(
        reply_bytes(unique_request(kernel, unique), init_out(46, flags, map_alignment=21), unique)
    )
    assert isinstance(reply, Reply) and reply.opcode == OP.FUSE_INIT
    assert kernel.initialized
    assert kernel.minor == 45  # min(request minor, reply minor)
    assert kernel.flags == flags | InitFlags.FUSE_INIT_EXT
    assert InitFlags.FUSE_PASSTHROUGH in kernel.flags  # a flags2 bit, joined
    assert kernel.max_write == 1 << 20 and kernel.max_pages == 256
    assert kernel.map_alignment == 21
    assert not kernel.pending


def unique_request(session: Session, unique: int) -> Request:
    return session.pending[unique]


def test_flags2_ignored_without_init_ext() -> None:
    server = Session()
    body = init_in(45)
    body.flags = 0  # no FUSE_INIT_EXT: flags2 is not valid
    body.flags2 = 0xFFFF
    req = server.feed_request(request_bytes(OP.FUSE_INIT, body, 2))
    assert server.offered_flags == 0
    out = init_out(44)
    out.flags = int(InitFlags.FUSE_ASYNC_READ)
    out.flags2 = 0xFFFF
    server.build_reply(req, out)
    assert server.flags == InitFlags.FUSE_ASYNC_READ and server.minor == 44
    assert server.map_alignment is None  # FUSE_MAP_ALIGNMENT not negotiated


def test_old_minor_init_reply_then_compat_decoding() -> None:
    kernel = Session()
    unique, _ = kernel.build_request(OP.FUSE_INIT, init_in(45))
    # A 7.22 server answers with the 24-byte fuse_init_out.
    old = Container(major=7, minor=22, max_readahead=0, flags=0, max_background=0,
                    congestion_threshold=0, max_write=4096)  # fmt: skip
    kernel.feed_reply(reply_bytes(kernel.pending[unique], old, unique, minor=22))
    assert kernel.minor == 22 and kernel.max_write == 4096 and kernel.max_pages is None
    # Requests and replies are now built and decoded at 7.22 (entry_out is still full size
    # at 7.22; statfs too) -- the pairing works at the negotiated minor.
    unique, _ = kernel.build_request(OP.FUSE_LOOKUP, Container(name=b"a"), nodeid=1)
    rep = kernel.feed_reply(
        reply_bytes(kernel.pending[unique], Container(nodeid=9), unique, minor=22)
    )
    assert rep.body.nodeid == 9


def test_failed_init_allows_another_and_second_init_is_an_error() -> None:
    server = Session()
    req = server.feed_request(request_bytes(OP.FUSE_INIT, init_in(), 2))
    with pytest.raises(RemoteProtocolError):
        server.feed_request(request_bytes(OP.FUSE_INIT, init_in(), 4))  # first in flight
    server.build_reply(req, None, error=-errno.EPROTO)
    assert not server.initialized
    req = server.feed_request(request_bytes(OP.FUSE_INIT, init_in(), 4))
    server.build_reply(req, init_out())
    assert server.initialized
    with pytest.raises(RemoteProtocolError):
        server.feed_request(request_bytes(OP.FUSE_INIT, init_in(), 6))


# --- pairing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", list(SIMPLE))
def test_reply_is_paired_with_its_request(opcode: int) -> None:
    kernel, server = initialized_pair()
    body, reply_body = SIMPLE[opcode]
    unique, data = kernel.build_request(opcode, body, nodeid=1)
    req = server.feed_request(data)
    assert req.unique == unique and server.pending[unique] is req
    rep = kernel.feed_reply(server.build_reply(req, reply_body))
    assert rep.request is kernel.pending.get(unique, rep.request)
    assert rep.request.opcode == opcode and rep.unique == unique and rep.error == 0
    assert not kernel.pending and not server.pending


def test_session_kinds_equal_the_codec_and_follow_minor_and_flags() -> None:
    """build_request/feed_reply go through the codec's RequestKind for the negotiated
    minor and flags: same bytes, same Request and Reply as the codec's module functions,
    and a new kind when the minor or flags change."""
    kernel, server = initialized_pair()
    body = Container(getattr_flags=0, dummy=0, fh=0)
    seen = []
    for minor in (kernel.minor, 22):
        kernel.minor = minor
        k = kernel.kind(OP.FUSE_GETATTR)
        assert k is codec.kind(OP.FUSE_GETATTR, minor, int(kernel.flags)) and k.minor == minor
        seen.append(k)
        unique, data = kernel.build_request(OP.FUSE_GETATTR, body, nodeid=5, uid=1, pid=2)
        expect = codec.encode_request(OP.FUSE_GETATTR, body, unique=unique, nodeid=5, uid=1,
                                      pid=2, minor=minor)
        assert data == expect and kernel.pending[unique] == codec.decode_request(expect, minor)
        req = server.feed_request(data)
        raw = server.build_reply(req, SIMPLE[int(OP.FUSE_GETATTR)][1])
        rep = kernel.feed_reply(raw)
        ref = codec.decode_reply(raw, req, minor)
        assert (rep.header, rep.body, rep.opcode) == (ref.header, ref.body, ref.opcode)
    assert seen[0] is not seen[1]
    kernel.flags = kernel.flags | InitFlags.FUSE_SETXATTR_EXT
    assert kernel.kind(OP.FUSE_SETXATTR).flags & InitFlags.FUSE_SETXATTR_EXT
    assert kernel.kind(OP.FUSE_SETXATTR).parts != codec.kind(OP.FUSE_SETXATTR, 22).parts


def test_replies_in_any_order() -> None:
    kernel, server = initialized_pair()
    sent = []
    for opcode, (body, _) in SIMPLE.items():
        _, data = kernel.build_request(opcode, body, nodeid=1)
        sent.append(server.feed_request(data))
    for req in reversed(sent):
        rep = kernel.feed_reply(server.build_reply(req, SIMPLE[int(req.opcode)][1]))
        assert rep.request.opcode == req.opcode and rep.request.body == req.body
    assert not kernel.pending and not server.pending


def test_getxattr_reply_shape_follows_the_request_size() -> None:
    kernel, _ = initialized_pair()
    u0, _ = kernel.build_request(OP.FUSE_GETXATTR, Container(size=0, name=b"user.a"))
    u1, _ = kernel.build_request(OP.FUSE_GETXATTR, Container(size=64, name=b"user.a"))
    rep1 = kernel.feed_reply(reply_bytes(kernel.pending[u1], Container(value=b"abc"), u1))
    rep0 = kernel.feed_reply(reply_bytes(kernel.pending[u0], Container(size=3), u0))
    assert rep1.body.value == b"abc" and rep0.body.size == 3


def test_error_reply() -> None:
    kernel, _ = initialized_pair()
    unique, _ = kernel.build_request(OP.FUSE_LOOKUP, Container(name=b"nope"), nodeid=1)
    rep = kernel.feed_reply(reply_bytes(OP.FUSE_LOOKUP, None, unique, error=-errno.ENOENT))
    assert rep.error == -errno.ENOENT and rep.body is None and not kernel.pending


def test_reply_to_unknown_unique_is_remote_error_and_changes_nothing() -> None:
    kernel, _ = initialized_pair()
    unique, _ = kernel.build_request(OP.FUSE_STATFS, Container())
    with pytest.raises(RemoteProtocolError):
        kernel.feed_reply(reply_bytes(OP.FUSE_STATFS, Container(), unique + 2))
    assert list(kernel.pending) == [unique]
    kernel.feed_reply(reply_bytes(OP.FUSE_STATFS, Container(), unique))
    with pytest.raises(RemoteProtocolError):  # a second reply to the same unique
        kernel.feed_reply(reply_bytes(OP.FUSE_STATFS, Container(), unique))


def test_duplicate_unique_in_flight() -> None:
    _, server = initialized_pair()
    server.feed_request(request_bytes(OP.FUSE_STATFS, Container(), 10))
    with pytest.raises(RemoteProtocolError):
        server.feed_request(request_bytes(OP.FUSE_GETATTR, Container(), 10))
    assert server.pending[10].opcode == OP.FUSE_STATFS
    kernel, _ = initialized_pair()
    kernel.build_request(OP.FUSE_STATFS, Container(), unique=10)
    with pytest.raises(LocalProtocolError):
        kernel.build_request(OP.FUSE_STATFS, Container(), unique=10)
    with pytest.raises(RemoteProtocolError):
        server.feed_request(request_bytes(OP.FUSE_STATFS, Container(), 0))


def test_error_values_the_kernel_rejects() -> None:
    kernel, server = initialized_pair()
    unique, data = kernel.build_request(OP.FUSE_STATFS, Container())
    for bad in (1, -512, -4095):
        with pytest.raises(RemoteProtocolError):
            kernel.feed_reply(reply_bytes(OP.FUSE_STATFS, None, unique, error=bad))
        assert unique in kernel.pending
    req = server.feed_request(data)
    with pytest.raises(LocalProtocolError):
        server.build_reply(req, None, error=5)
    assert unique in server.pending


def test_undecodable_reply_body_still_completes_the_request() -> None:
    kernel, _ = initialized_pair()
    unique, _ = kernel.build_request(OP.FUSE_GETATTR, Container())
    good = reply_bytes(OP.FUSE_GETATTR, Container(), unique)
    short = good[:-8]
    bad = codec.encode_reply(OP.FUSE_GETATTR, short[16:], unique=unique)  # raw, too short
    with pytest.raises(DecodeError) as excinfo:
        kernel.feed_reply(bad)
    assert excinfo.value.request.unique == unique  # type: ignore[attr-defined]
    assert not kernel.pending


def test_header_level_garbage_changes_nothing() -> None:
    kernel, _ = initialized_pair()
    unique, _ = kernel.build_request(OP.FUSE_STATFS, Container())
    good = reply_bytes(OP.FUSE_STATFS, Container(), unique)
    with pytest.raises(TruncatedError):
        kernel.feed_reply(good[:10])
    with pytest.raises(LengthMismatchError):
        kernel.feed_reply(good[:-1])
    with pytest.raises(LengthMismatchError):
        kernel.feed_reply(good + b"\0")
    assert unique in kernel.pending
    kernel.feed_reply(good)


def test_build_reply_checks_the_request_is_in_flight() -> None:
    kernel, server = initialized_pair()
    _, data = kernel.build_request(OP.FUSE_STATFS, Container())
    req = server.feed_request(data)
    server.build_reply(req, Container())
    with pytest.raises(LocalProtocolError):
        server.build_reply(req, Container())
    stranger = codec.decode_request(data)
    with pytest.raises(LocalProtocolError):
        server.build_reply(stranger, Container())


# --- FORGET, INTERRUPT, RESEND ----------------------------------------------------------------


def test_forgets_expect_no_reply() -> None:
    kernel, server = initialized_pair()
    u1, d1 = kernel.build_request(OP.FUSE_FORGET, Container(nlookup=1), nodeid=5)
    u2, d2 = kernel.build_request(
        OP.FUSE_BATCH_FORGET,
        Container(entries=[Container(nodeid=5, nlookup=1), Container(nodeid=6, nlookup=2)]),
    )
    assert not kernel.pending
    assert server.feed_request(d1).opcode == OP.FUSE_FORGET
    batch = server.feed_request(d2)
    assert [e.nodeid for e in batch.body.entries] == [5, 6]
    assert not server.pending and not server.expects_reply(batch)
    with pytest.raises(RemoteProtocolError):
        kernel.feed_reply(reply_bytes(OP.FUSE_FORGET, None, u1, error=-errno.ENOSYS))
    with pytest.raises(LocalProtocolError):
        server.build_reply(batch, Container())


def test_interrupt_eagain_then_eintr() -> None:
    kernel, server = initialized_pair()
    target_unique, data = kernel.build_request(OP.FUSE_SETLKW, Container(fh=1))
    target = server.feed_request(data)
    int_unique, idata = kernel.build_request(OP.FUSE_INTERRUPT, Container(unique=target_unique))
    assert int_unique == target_unique | 1
    interrupt = server.feed_request(idata)
    assert server.interrupts == {target_unique: int_unique}
    assert kernel.interrupts == {target_unique: int_unique}
    assert not server.expects_reply(interrupt)
    # "Not now": the kernel will send the INTERRUPT again.
    rep = kernel.feed_reply(server.build_reply(interrupt, None, error=-errno.EAGAIN))
    assert rep.error == -errno.EAGAIN and rep.request.opcode == OP.FUSE_INTERRUPT
    again = server.feed_request(idata)  # the resend is not a duplicate
    kernel.build_request(OP.FUSE_INTERRUPT, Container(unique=target_unique))
    # ... but sending it a third time without an EAGAIN in between is.
    with pytest.raises(RemoteProtocolError):
        server.feed_request(idata)
    rep = kernel.feed_reply(server.build_reply(target, None, error=-errno.EINTR))
    assert rep.error == -errno.EINTR and rep.request.opcode == OP.FUSE_SETLKW
    assert not server.pending and not server.interrupts
    assert not kernel.pending and not kernel.interrupts
    # The interrupt is over with its target: a late EAGAIN is a reply to nothing.
    with pytest.raises(LocalProtocolError):
        server.build_reply(again, None, error=-errno.EAGAIN)
    with pytest.raises(RemoteProtocolError):
        kernel.feed_reply(reply_bytes(OP.FUSE_INTERRUPT, None, int_unique, error=-errno.EAGAIN))


def test_interrupt_enosys_and_crossing_reply() -> None:
    kernel, server = initialized_pair()
    t, data = kernel.build_request(OP.FUSE_READ, Container(fh=1, size=4))
    target = server.feed_request(data)
    _, idata = kernel.build_request(OP.FUSE_INTERRUPT, Container(unique=t))
    interrupt = server.feed_request(idata)
    with pytest.raises(LocalProtocolError):
        server.build_reply(interrupt, Container())  # only an error answers an INTERRUPT
    kernel.feed_reply(server.build_reply(interrupt, None, error=-errno.ENOSYS))
    assert not server.interrupts and t in server.pending
    kernel.feed_reply(server.build_reply(target, Container(data=b"ab")))
    # An INTERRUPT that crosses the reply names a request no longer in flight: ignored.
    late = server.feed_request(request_bytes(OP.FUSE_INTERRUPT, Container(unique=t), t | 1))
    assert late.opcode == OP.FUSE_INTERRUPT and not server.interrupts and not server.pending


def test_resent_request_replaces_the_original() -> None:
    _, server = initialized_pair()
    server.feed_request(request_bytes(OP.FUSE_STATFS, Container(), 20))
    resent = server.feed_request(
        request_bytes(OP.FUSE_STATFS, Container(), 20 | FUSE_UNIQUE_RESEND)
    )
    assert list(server.pending) == [20 | FUSE_UNIQUE_RESEND]
    server.build_reply(resent, Container())
    assert not server.pending


# --- notifications ------------------------------------------------------------------------------


def test_notifications_are_decoded_and_do_not_touch_pending() -> None:
    kernel, server = initialized_pair()
    unique, _ = kernel.build_request(OP.FUSE_STATFS, Container())
    notes = [
        (NC.FUSE_NOTIFY_INVAL_INODE, Container(ino=5, off=0, len=-1)),
        (NC.FUSE_NOTIFY_INVAL_ENTRY, Container(parent=1, flags=0, name=b"x")),
        (NC.FUSE_NOTIFY_STORE, Container(nodeid=5, offset=0, data=b"abc")),
        (NC.FUSE_NOTIFY_PRUNE, Container(entries=[5, 6, 7])),
        (NC.FUSE_NOTIFY_RESEND, Container()),
    ]
    for code, body in notes:
        note = kernel.feed_reply(server.build_notification(code, body))
        assert isinstance(note, Notification) and note.code == code
    assert list(kernel.pending) == [unique]
    with pytest.raises(DecodeError):  # unique 0 with error 0 is not a notification
        kernel.feed_reply(codec.encode_reply(OP.FUSE_STATFS, None, unique=0))


# --- bounded memory --------------------------------------------------------------------------------


def test_max_pending_is_enforced_on_both_sides() -> None:
    server = Session(max_pending=3)
    for u in (2, 4, 6):
        server.feed_request(request_bytes(OP.FUSE_STATFS, Container(), u))
    with pytest.raises(RemoteProtocolError):
        server.feed_request(request_bytes(OP.FUSE_STATFS, Container(), 8))
    # FORGETs and stale INTERRUPTs take no room, so they are still fine.
    server.feed_request(request_bytes(OP.FUSE_FORGET, Container(nlookup=1), 8))
    assert len(server.pending) == 3
    server.build_reply(server.pending[4], Container())
    server.feed_request(request_bytes(OP.FUSE_STATFS, Container(), 10))

    kernel = Session(max_pending=2)
    kernel.build_request(OP.FUSE_STATFS, Container())
    kernel.build_request(OP.FUSE_STATFS, Container())
    with pytest.raises(LocalProtocolError):
        kernel.build_request(OP.FUSE_STATFS, Container())
    assert len(kernel.pending) == 2 and kernel.next_unique == 6


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Session(max_pending=0)
    with pytest.raises(ValueError):
        Session(first_unique=3)


# --- any bytes: a message or DecodeError/ProtocolError -------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_give_a_message_or_a_documented_error(data: bytes, as_reply: bool) -> None:
    kernel, server = initialized_pair()
    kernel.build_request(OP.FUSE_READ, Container(fh=1, size=8))
    kernel.build_request(OP.FUSE_GETXATTR, Container(size=0, name=b"n"))
    session = kernel if as_reply else server
    before = dict(session.pending)
    try:
        msg = session.feed_reply(data) if as_reply else session.feed_request(data)
    except (DecodeError, ProtocolError):
        # Only a paired reply whose body fails may complete a request.
        assert set(session.pending) <= set(before)
    else:
        assert isinstance(msg, Request | Reply | Notification)
    session.check_valid()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SIMPLE)), st.integers(0, 15), st.binary(max_size=8))
def test_mutated_replies_to_pending_requests(opcode: int, cut: int, tail: bytes) -> None:
    """Valid replies cut short or extended, with their header len fixed up: the session
    answers with a message or a documented error, and stays valid."""
    kernel, _ = initialized_pair()
    body, reply_body = SIMPLE[opcode]
    unique, _ = kernel.build_request(opcode, body)
    good = reply_bytes(kernel.pending[unique], reply_body, unique)
    payload = good[16 : max(16, len(good) - cut)] + tail
    mutated = codec.encode_reply(opcode, payload, unique=unique)  # raw body bytes
    try:
        kernel.feed_reply(mutated)
    except (DecodeError, ProtocolError):
        pass
    assert not kernel.pending  # the reply named it: done either way
    kernel.check_valid()


# --- the state machine --------------------------------------------------------------------------------


class SessionMachine(RuleBasedStateMachine):
    """Random interleavings of requests, replies, forgets, interrupts and notifications,
    fed to a Session that only observes (feed_request / feed_reply), against a model."""

    MAX_PENDING = 5

    uniques = Bundle("uniques")

    def __init__(self) -> None:
        super().__init__()
        self.session = Session(max_pending=self.MAX_PENDING)
        self.model: dict[int, int] = {}  # unique -> opcode of requests in flight
        self.interrupts: dict[int, int] = {}  # target unique -> interrupt unique
        self.eagain: set[int] = set()  # interrupt uniques answered -EAGAIN
        self.next = 2

    @initialize()
    def negotiate(self) -> None:
        req = self.session.feed_request(request_bytes(OP.FUSE_INIT, init_in(45), 1 << 40))
        self.session.feed_reply(reply_bytes(req, init_out(46), 1 << 40))
        assert self.session.minor == 45

    def fresh(self) -> int:
        self.next += 2
        return self.next

    @rule(target=uniques, opcode=st.sampled_from(sorted(SIMPLE)), reuse=st.booleans())
    def request(self, opcode: int, reuse: bool) -> int:
        unique = next(iter(self.model)) if reuse and self.model else self.fresh()
        data = request_bytes(opcode, SIMPLE[opcode][0], unique, nodeid=1)
        if unique in self.model or len(self.model) >= self.MAX_PENDING:
            with pytest.raises(RemoteProtocolError):
                self.session.feed_request(data)
            return unique
        req = self.session.feed_request(data)
        assert req.unique == unique
        self.model[unique] = opcode
        return unique

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), error=st.sampled_from([0, 0, -errno.ENOENT, -errno.EINTR]))
    def reply(self, data: st.DataObject, error: int) -> None:
        unique = data.draw(st.sampled_from(sorted(self.model)))
        opcode = self.model[unique]
        req = self.session.pending[unique]
        raw = reply_bytes(req, None if error else SIMPLE[opcode][1], unique, error=error)
        rep = self.session.feed_reply(raw)
        assert rep.request is req and rep.request.opcode == opcode and rep.error == error
        del self.model[unique]
        int_unique = self.interrupts.pop(unique, None)
        self.eagain.discard(int_unique or -1)

    @rule(unique=uniques)
    def reply_to_a_past_or_never_sent_unique(self, unique: int) -> None:
        if unique in self.model:
            return
        with pytest.raises(RemoteProtocolError):
            self.session.feed_reply(reply_bytes(OP.FUSE_STATFS, Container(), unique))

    @rule(batch=st.booleans(), n=st.integers(1, 3))
    def forget(self, batch: bool, n: int) -> None:
        unique = self.fresh()
        if batch:
            body = Container(entries=[Container(nodeid=i + 2, nlookup=1) for i in range(n)])
            data = request_bytes(OP.FUSE_BATCH_FORGET, body, unique)
        else:
            data = request_bytes(OP.FUSE_FORGET, Container(nlookup=n), unique, nodeid=2)
        self.session.feed_request(data)
        with pytest.raises(RemoteProtocolError):
            self.session.feed_reply(reply_bytes(OP.FUSE_FORGET, None, unique, error=-1))

    @rule(target_unique=uniques)
    def interrupt(self, target_unique: int) -> None:
        int_unique = target_unique | 1
        data = request_bytes(OP.FUSE_INTERRUPT, Container(unique=target_unique), int_unique)
        tracked = self.interrupts.get(target_unique)
        if tracked is not None and tracked not in self.eagain:
            with pytest.raises(RemoteProtocolError):
                self.session.feed_request(data)
            return
        self.session.feed_request(data)
        if tracked is not None:
            self.eagain.discard(tracked)
        elif target_unique in self.model:
            self.interrupts[target_unique] = int_unique

    @precondition(lambda self: bool(self.interrupts))
    @rule(data=st.data(), error=st.sampled_from([-errno.EAGAIN, -errno.ENOSYS]))
    def interrupt_reply(self, data: st.DataObject, error: int) -> None:
        target = data.draw(st.sampled_from(sorted(self.interrupts)))
        int_unique = self.interrupts[target]
        rep = self.session.feed_reply(reply_bytes(OP.FUSE_INTERRUPT, None, int_unique, error=error))
        assert rep.request.opcode == OP.FUSE_INTERRUPT
        if error == -errno.EAGAIN:
            self.eagain.add(int_unique)
        else:
            del self.interrupts[target]
            self.eagain.discard(int_unique)

    @rule(ino=st.integers(1, 100))
    def notification(self, ino: int) -> None:
        note = self.session.feed_reply(
            codec.encode_notification(NC.FUSE_NOTIFY_INVAL_INODE, Container(ino=ino, off=0, len=0))
        )
        assert note.code == NC.FUSE_NOTIFY_INVAL_INODE and note.body.ino == ino

    @rule(data=st.binary(max_size=64), as_reply=st.booleans())
    def garbage(self, data: bytes, as_reply: bool) -> None:
        before = set(self.model)
        try:
            msg = self.session.feed_reply(data) if as_reply else self.session.feed_request(data)
        except (DecodeError, ProtocolError):
            # A reply that names a pending request completes it even when it fails.
            gone = before - set(self.session.pending)
            assert len(gone) <= 1
            for unique in gone:
                self._forget_model(unique)
            return
        self._sync_model(msg)

    def _forget_model(self, unique: int) -> None:
        del self.model[unique]
        int_unique = self.interrupts.pop(unique, None)
        self.eagain.discard(int_unique or -1)

    def _sync_model(self, msg: Any) -> None:
        # Random bytes may form a real message: follow what the session made of it.
        for unique in set(self.model) - set(self.session.pending):
            self._forget_model(unique)
        for unique, req in self.session.pending.items():
            self.model.setdefault(unique, int(req.opcode))
        self.interrupts = {t: i for t, i in self.session.interrupts.items()}
        self.eagain &= set(self.interrupts.values())
        if isinstance(msg, Request) and msg.opcode == OP.FUSE_INTERRUPT:
            self.eagain.discard(msg.unique)

    @invariant()
    def matches_the_model(self) -> None:
        self.session.check_valid()
        assert len(self.session.pending) <= self.MAX_PENDING
        assert set(self.session.pending) == set(self.model)
        for unique, opcode in self.model.items():
            assert self.session.pending[unique].opcode == opcode
        assert dict(self.session.interrupts) == self.interrupts


SessionMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_session_state_machine = SessionMachine.TestCase
