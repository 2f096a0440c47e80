"""The fast encode path (each part's ``build()``) against the construct (the reference).

* Every golden vector: its decoded body built both ways gives the vector's bytes.
* Hypothesis bodies per opcode (requests, replies, notifications), then the same bodies with
  lying length/count fields and with one field anywhere replaced by a bad or odd value, or
  removed: the fast builder gives the construct's bytes or fails where the construct fails
  (NotFast means "not mirrored": the codec then builds with the construct).
* Through the codec: the same bytes as the reference, EncodeError where it raises one;
  forced ``length``/``total_extlen``; ``make_request`` equals decode_request.
"""

from __future__ import annotations

import struct

import pytest
from construct import Container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire_properties import CODES, MINORS, OPCODES, body_strategy
from vectors.fuse_vectors import VECTORS
from wire_helpers import request_of

from fuseproto.errors import DecodeError, EncodeError
from fuseproto.wire import codec, messages

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
XATTR = (22, 23)

# Values a fuzzer (or a careless caller) may put anywhere in a body.
ODD = st.sampled_from(
    [
        None,
        0,
        1,
        -1,
        255,
        1 << 16,
        1 << 32,
        1 << 64,
        -(1 << 63) - 1,
        True,
        1.5,
        "str",
        b"",
        b"xy",
        b"\0",
        b"12345678",
        bytearray(b"ab"),
        memoryview(b"mv"),
        [],
        [0],
        [1, 2],
        (3, 4),
        [None],
        [Container()],
        [b"a"],
        {},
        Container(),
        Container(name=b"n"),
        [0] * 11,
        object(),
    ]
)
LYING = ("len", "size", "in_size", "count", "namelen", "in_iovs", "out_iovs", "nr_groups")


def fast(parts, body):
    """("ok", bytes) | ("error", type) | ("notfast", None) from the fast builder."""
    try:
        return "ok", messages.build_parts(parts, body)
    except messages.NotFast:
        return "notfast", None
    except Exception as e:  # noqa: BLE001 -- any error counts; the codec translates
        return "error", type(e)


def reference(parts, body):
    """("ok", bytes) | ("error", EncodeError) from the construct, as the codec used it."""
    try:
        return "ok", codec.build_reference(parts, body, ("test", 0))
    except EncodeError:
        return "error", EncodeError


def check_same(parts, body):
    f, ref = fast(parts, body), reference(parts, body)
    if f[0] == "notfast":
        return
    assert f[0] == ref[0], (f, ref, body)
    if f[0] == "ok":
        assert f[1] == ref[1], (f[1].hex(), ref[1].hex())
    # Through the codec: the reference's outcome whichever path built it.
    try:
        got = ("ok", codec._build_body(parts, body, ("test", 0)))
    except EncodeError:
        got = ("error", EncodeError)
    assert got == ref


def _copy(obj):
    """A copy of the dict/list structure (leaves shared: memoryview cannot be deep-copied)."""
    if isinstance(obj, dict):
        return type(obj)((k, _copy(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return type(obj)(_copy(v) for v in obj)
    return obj


def _paths(obj, path=()):
    """Every (path) to a dict value or list element in ``obj``."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*path, k))
            out.extend(_paths(v, (*path, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*path, i))
            out.extend(_paths(v, (*path, i)))
    return out


def _at(obj, path):
    for k in path[:-1]:
        obj = obj[k]
    return obj


@st.composite
def mutated(draw, body):
    """``body`` with one field (anywhere) replaced by an odd value, removed, or a lying
    length/count."""
    body = _copy(body)
    paths = _paths(body)
    if not paths:
        return body
    path = draw(st.sampled_from(paths))
    parent = _at(body, path)
    action = draw(st.sampled_from(["odd", "odd", "delete", "lie"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "lie" or path[-1] in LYING:
        parent[path[-1]] = draw(st.integers(0, 300) | st.sampled_from([None, (1 << 32) - 1]))
    else:
        parent[path[-1]] = draw(ODD)
    return body


@st.composite
def any_parts(draw):
    kind = draw(st.sampled_from(["request", "reply", "notification"]))
    if kind == "request":
        op = draw(st.sampled_from(OPCODES))
        return messages.request_parts(
            op,
            draw(st.sampled_from(MINORS)),
            draw(st.sampled_from([0, messages.FUSE_SETXATTR_EXT])),
        )
    if kind == "reply":
        op = draw(st.sampled_from(OPCODES))
        return messages.reply_parts(
            op, draw(st.sampled_from(MINORS)), draw(st.sampled_from([None, 0, 100]))
        )
    return messages.notification_parts(draw(st.sampled_from(CODES)))


# --- golden vectors ----------------------------------------------------------------------


def _vector_cases():
    out = []
    for v in VECTORS:
        minor = v.get("minor", 46)
        if v["kind"] == "request" and not v["ext"]:
            parts = messages.request_parts(v["opcode"], minor, v.get("flags", 0))
            out.append(
                (
                    v,
                    parts,
                    codec.decode_request(v["data"], minor, flags=v.get("flags", 0)).body,
                    v["data"][40:],
                )
            )
        elif v["kind"] == "reply" and v["body"] is not None:
            rq = request_of(v)
            xs = rq.body.get("size") if v["opcode"] in XATTR and isinstance(rq.body, dict) else None
            parts = messages.reply_parts(v["opcode"], minor, xs)
            out.append((v, parts, codec.decode_reply(v["data"], rq, minor).body, v["data"][16:]))
        elif v["kind"] == "notification":
            parts = messages.notification_parts(v["opcode"])
            out.append((v, parts, codec.decode_notification(v["data"]).body, v["data"][16:]))
    return [c for c in out if c[1] is not None]


VECTOR_CASES = _vector_cases()


@pytest.mark.parametrize("v,parts,body,raw", VECTOR_CASES, ids=[c[0]["name"] for c in VECTOR_CASES])
def test_vector_bodies(v, parts, body, raw):
    assert messages.build_parts(parts, body) == raw
    assert reference(parts, body) == ("ok", raw)
    # The expected body as written in the vector (plain dicts, lists) builds the same.
    if isinstance(v["body"], dict):
        assert messages.build_parts(parts, v["body"]) == raw


@SETTINGS
@given(st.sampled_from(VECTOR_CASES), st.data())
def test_vector_bodies_mutated(case, data):
    _, parts, body, _ = case
    check_same(parts, data.draw(mutated(body)))


# --- generated bodies --------------------------------------------------------------------


@SETTINGS
@given(any_parts(), st.data())
def test_generated_bodies(parts, data):
    if parts is None:
        return
    body = data.draw(body_strategy(parts))
    f = fast(parts, body)
    assert f[0] == "ok", f
    check_same(parts, body)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_parts(), st.data())
def test_generated_bodies_mutated(parts, data):
    if parts is None:
        return
    body = data.draw(body_strategy(parts))
    for _ in range(data.draw(st.integers(1, 3))):
        body = data.draw(mutated(body))
    check_same(parts, body)


@SETTINGS
@given(
    any_parts(),
    st.one_of(
        ODD,
        st.dictionaries(st.sampled_from(["name", "size", "data", "entries", "fh", "attr"]), ODD),
    ),
)
def test_odd_whole_bodies(parts, body):
    if parts is None or not isinstance(body, dict):
        return
    check_same(parts, body)


def test_not_fast_values_fall_back():
    parts = messages.reply_parts(1)  # LOOKUP reply: fuse_entry_out with a nested attr
    body = Container(nodeid=5, attr=[("ino", 7)])  # construct's Struct accepts pairs? it decides
    assert fast(parts, body)[0] == "notfast"
    check_same(parts, body)


def test_bad_values_are_encode_errors():
    op = 3  # GETATTR
    for bad in (-1, 1 << 64, "x", 1.5, b"ab"):
        with pytest.raises(EncodeError):
            codec.encode_request(op, Container(fh=bad), unique=2)
    with pytest.raises(EncodeError):
        codec.encode_request(1, Container(name=b"a\0b"), unique=2)
    with pytest.raises(EncodeError):
        codec.encode_request(1, Container(), unique=2)
    with pytest.raises(EncodeError):
        codec.encode_reply(15, Container(data=memoryview(b"x")), unique=2)
    with pytest.raises(EncodeError):
        codec.encode_request(op, Container(), unique=-1)
    with pytest.raises(EncodeError):
        codec.encode_notification(1, Container(kh=1 << 64))


# --- whole messages through the codec ------------------------------------------------------


@SETTINGS
@given(
    st.sampled_from(OPCODES),
    st.sampled_from(MINORS),
    st.data(),
    st.none() | st.integers(0, (1 << 32) - 1),
    st.none() | st.integers(0, (1 << 16) - 1),
    st.booleans(),
)
def test_requests_forced_header_fields(op, minor, data, length, total_extlen, with_ext):
    parts = messages.request_parts(op, minor)
    body = data.draw(body_strategy(parts))
    if data.draw(st.booleans()):
        body = data.draw(mutated(body))
    ext = [Container(groups=[1, 2])] if with_ext else None
    kw = dict(
        unique=6,
        nodeid=1,
        uid=2,
        gid=3,
        pid=4,
        minor=minor,
        ext=ext,
        length=length,
        total_extlen=total_extlen,
        padding=5,
    )
    try:
        payload = (
            codec.build_reference(parts, body, ("test", 0))
            if not isinstance(body, bytes)
            else body
        )
    except EncodeError:
        with pytest.raises(EncodeError):
            codec.encode_request(op, body, **kw)
        return
    extb = messages.build_ext(ext) if ext else b""
    n = 40 + len(payload) + len(extb)
    expect = (
        struct.pack(
            "<IIQQIIIHH",
            n if length is None else length,
            op,
            6,
            1,
            2,
            3,
            4,
            len(extb) // 8 if total_extlen is None else total_extlen,
            5,
        )
        + payload
        + extb
    )
    assert codec.encode_request(op, body, **kw) == expect
    # make_request: the Request decode_request gives, or its DecodeError.
    try:
        decoded = codec.decode_request(expect, minor)
    except DecodeError:
        with pytest.raises(DecodeError):
            codec.make_request(op, body, **kw)
        return
    request = codec.make_request(op, body, **kw)
    assert request.raw == expect
    assert request == decoded
    assert request.header == decoded.header and request.raw == decoded.raw
    assert request.ext == decoded.ext and request.opcode == decoded.opcode


@SETTINGS
@given(
    st.sampled_from(OPCODES),
    st.sampled_from(MINORS),
    st.sampled_from([None, 0, 100]),
    st.data(),
    st.none() | st.integers(0, (1 << 32) - 1),
    st.sampled_from([0, -2, -38]),
)
def test_replies_forced_length(op, minor, xsize, data, length, error):
    parts = messages.reply_parts(op, minor, xsize)
    if op in XATTR and xsize is not None:
        request = codec.decode_request(
            codec.encode_request(op, Container(size=xsize, name=b"a"), unique=2)
        )
    else:
        request = op
        if op in XATTR:
            parts = None  # shape chosen from the body below
    shape_from_body = parts is None
    body = data.draw(body_strategy(parts if parts is not None else messages.reply_parts(op, minor)))
    if data.draw(st.booleans()):
        body = data.draw(mutated(body))
    if shape_from_body:
        # Without a request the codec picks the xattr shape from the body as encoded
        # (after any mutation): a body without "value" is a fuse_getxattr_out.
        xs = 0 if isinstance(body, dict) and "value" not in body else None
        parts = messages.reply_parts(op, minor, xs)
    if error and data.draw(st.booleans()):
        body = None
    kw = dict(unique=8, error=error, minor=minor, length=length)
    if body is None and error:
        payload = b""
    else:
        try:
            payload = (
                codec.build_reference(parts, body, ("test", 0))
                if not isinstance(body, bytes)
                else body
            )
        except EncodeError:
            with pytest.raises(EncodeError):
                codec.encode_reply(request, body, **kw)
            return
    n = 16 + len(payload)
    assert (
        codec.encode_reply(request, body, **kw)
        == struct.pack("<IiQ", n if length is None else length, error, 8) + payload
    )


@SETTINGS
@given(st.sampled_from(CODES), st.data(), st.none() | st.integers(0, (1 << 32) - 1))
def test_notifications_forced_length(code, data, length):
    parts = messages.notification_parts(code)
    body = data.draw(body_strategy(parts))
    if data.draw(st.booleans()):
        body = data.draw(mutated(body))
    try:
        payload = (
            codec.build_reference(parts, body, ("test", 0))
            if not isinstance(body, bytes)
            else body
        )
    except EncodeError:
        with pytest.raises(EncodeError):
            codec.encode_notification(code, body, length=length)
        return
    n = 16 + len(payload)
    assert (
        codec.encode_notification(code, body, length=length)
        == struct.pack("<IiQ", n if length is None else length, int(code), 0) + payload
    )


def test_make_request_lazy_body():
    req = codec.make_request(3, Container(getattr_flags=1, fh=9), unique=2, nodeid=1)
    assert req == codec.decode_request(req.raw)
    assert req.body == Container(getattr_flags=1, dummy=0, fh=9)
    req.body = Container(x=1)  # still assignable
    assert req.body == Container(x=1)
    # A lying count: not lazy, the DecodeError decode_request raises.
    with pytest.raises(DecodeError):
        codec.make_request(49, Container(count=3, entries=[]), unique=2)
    with pytest.raises(DecodeError):
        codec.make_request(3, Container(), unique=2, length=7)
