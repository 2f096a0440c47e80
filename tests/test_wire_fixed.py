"""The codec's one-struct paths for fixed-size bodies, differentially against the
construct reference.

A fixed-size :class:`~fuseproto.wire.codec.RequestKind` packs fuse_in_header and its
body in one ``struct.pack`` (``messages.prefixed_builder``) and makes the Request from the
values in hand; its ``decode_reply`` unpacks fuse_out_header and a fixed-size body in one ``unpack_from``
(``structs.fast_pair``). Both must give what the construct gives: same bytes, same
Containers, same errors.
"""

from __future__ import annotations

import enum
import struct

import pytest
from construct import Container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire_encode import mutated
from test_wire_properties import MINORS, OPCODES, body_strategy
from wire_helpers import common

from fuseproto.errors import (
    DecodeError,
    EncodeError,
    LengthMismatchError,
    TrailingDataError,
    TruncatedError,
)
from fuseproto.wire import codec, messages, structs

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIXED_REQUESTS = [
    (op, minor)
    for op in OPCODES
    for minor in MINORS
    if codec.kind(op, minor).fixed_request
]
FIXED_REPLIES = [
    (op, minor)
    for op in OPCODES
    for minor in MINORS
    if codec.kind(op, minor).fixed_reply_size is not None
]


class _Seven(enum.IntEnum):
    SEVEN = 7


# Header values: plain ints, int look-alikes (equal, not of type int), out of range.
HEADER_INT = st.one_of(
    st.integers(0, (1 << 32) - 1),
    st.sampled_from([True, _Seven.SEVEN, -1, 1 << 64, 1 << 32]),
)


def test_fixed_paths_cover_the_hot_opcodes():
    assert (3, 46) in FIXED_REQUESTS  # GETATTR: fuse_getattr_in
    assert (17, 46) in FIXED_REQUESTS  # STATFS: no body
    assert (3, 46) in FIXED_REPLIES and (14, 22) in FIXED_REPLIES  # attr_out, open_out


@SETTINGS
@given(st.sampled_from(FIXED_REQUESTS), st.data())
def test_fixed_request_matches_reference(case, data):
    op, minor = case
    parts = messages.request_parts(op, minor)
    body = data.draw(body_strategy(parts))
    if data.draw(st.booleans()):
        body = data.draw(mutated(body))
    if data.draw(st.booleans()) and not body:
        body = None
    hdr = {k: data.draw(HEADER_INT) for k in ("unique", "nodeid", "uid", "gid", "pid", "padding")}
    try:
        payload = codec.build_reference(parts, body, ("test", 0))
        expect = (
            struct.pack(
                "<IIQQIIIHH",
                40 + len(payload),
                op,
                hdr["unique"],
                hdr["nodeid"],
                hdr["uid"],
                hdr["gid"],
                hdr["pid"],
                0,
                hdr["padding"],
            )
            + payload
        )
    except (EncodeError, struct.error):
        with pytest.raises(EncodeError):
            codec.encode_request(op, body, minor=minor, **hdr)
        with pytest.raises(EncodeError):
            codec.make_request(op, body, minor=minor, **hdr)
        return
    assert codec.encode_request(op, body, minor=minor, **hdr) == expect
    request = codec.make_request(op, body, minor=minor, **hdr)
    assert request.raw == expect
    decoded = codec.decode_request(expect, minor)
    assert request == decoded
    assert request.header == decoded.header
    assert all(type(v) is int for v in request.header.values())
    assert (request.unique, request.nodeid) == (decoded.unique, decoded.nodeid)
    assert request.opcode is decoded.opcode and request.ext == decoded.ext == []
    common(parts, payload, request.body, size=len(payload) if parts else None)


@SETTINGS
@given(st.sampled_from(FIXED_REPLIES), st.data())
def test_fixed_reply_matches_reference(case, data):
    op, minor = case
    parts = messages.reply_parts(op, minor)
    size = 16 + sum(p.size for p in parts)
    body = data.draw(st.binary(min_size=size - 16, max_size=size - 16))
    n = size + data.draw(st.sampled_from([0, 0, 0, -1, 1, 8]))
    length = data.draw(st.sampled_from([n, n, n + 1, n - 8, 0]))
    error = data.draw(st.sampled_from([0, 0, 0, -2, -511, 1]))
    unique = data.draw(st.integers(0, (1 << 64) - 1))
    raw = (struct.pack("<IiQ", length, error, unique) + body + b"\xa5" * 8)[:n]
    if data.draw(st.booleans()):
        request = op
    else:
        rbody = data.draw(body_strategy(messages.request_parts(op, minor)))
        request = codec.decode_request(
            codec.encode_request(op, rbody, unique=2, minor=minor), minor
        )
    try:
        reply = codec.decode_reply(raw, request, minor)
    except DecodeError as e:
        got = type(e)
    else:
        got = reply
    # The reference: construct parses the header and the body; the documented checks.
    if n < 16:
        assert got is TruncatedError
        return
    header = structs.fuse_out_header.parse(raw)
    if header.len != n:
        assert got is LengthMismatchError
        return
    if header.error != 0:
        if n != 16:
            assert got is TrailingDataError
        else:
            assert got.body is None and got.error == error
        return
    if n != size:
        assert isinstance(got, type) and issubclass(got, DecodeError)
        return
    common(parts, raw[16:], got.body, size=size - 16)
    assert got.header == header
    assert got.header == Container(len=n, error=0, unique=unique)
    assert (got.unique, got.error, got.raw) == (unique, 0, raw)
    assert got.opcode == op and got.request is request


def test_no_fast_paths_for_variable_messages():
    assert not codec.kind(1, 46).fixed_request  # LOOKUP: a name
    assert codec.kind(15, 46).fixed_reply_size is None  # READ: data


def _every_parts() -> list[tuple]:
    """Every body's parts tuple: requests (with and without FUSE_SETXATTR_EXT), replies
    (xattr replies both ways), notifications, unknown (None)."""
    out = {None}
    for op in OPCODES:
        for minor in (*MINORS, 0, 3, 4, 8, 9, 11, 12):  # and the compat layouts
            for flags in (0, messages.FUSE_SETXATTR_EXT):
                out.add(messages.request_parts(op, minor, flags))
            for xsize in (None, 0, 1):
                out.add(messages.reply_parts(op, minor, xsize))
    for code in range(1, 12):
        out.add(messages.notification_parts(code))
    return sorted(out, key=repr)


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except DecodeError as e:
        return "error", (type(e), str(e), e.offset, e.path)


@SETTINGS
@given(st.sampled_from(_every_parts()), st.data())
def test_body_parser_is_parse_parts(parts, data):
    """The codec's per-kind body parser (one unpack for a fixed struct, no loop for an
    empty body) gives what parse_parts gives: the same body, or the same error (class,
    message, offset, field) -- at the struct's size, around it and at random lengths."""
    size = sum(getattr(p, "size", 0) for p in parts or ())
    n = data.draw(st.sampled_from([0, 1, size - 1, size, size, size + 1, size + 8])
                  | st.integers(0, 300))
    body = data.draw(st.binary(min_size=max(0, n), max_size=max(0, n)))
    pad = data.draw(st.sampled_from([0, 3]))
    buf = b"\xa5" * pad + body + b"\x5a" * pad  # off and end inside a larger buffer
    got = _outcome(messages.body_parser(parts), buf, pad, pad + len(body))
    assert got == _outcome(messages.parse_parts, parts, buf, pad, pad + len(body))
