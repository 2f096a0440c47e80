"""Hypothesis properties of the codec: roundtrip per opcode, arbitrary bytes, differential.

* Bodies are generated per opcode from the message declaration (each part kind has a
  strategy), encoded, decoded and re-encoded.
* Arbitrary bytes, and arbitrary bodies behind a correct header, give a message or a
  DecodeError; a message re-encodes to the same bytes.
* The fast path (codec) and the declarative construct (messages.*_body) accept and reject
  the same body bytes and agree on the result.
"""

from __future__ import annotations

import io
import random
import struct

import pytest
from construct import ConstructError, Container, Struct, Terminated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectors.fuse_vectors import VECTORS
from wire_helpers import common

from fuseproto.errors import DecodeError
from fuseproto.wire import codec, messages, structs
from fuseproto.wire import constants as C
from fuseproto.wire.constructs import UntilEnd

OPCODES = [
    op for op in C.fuse_opcode
    if op not in (C.fuse_opcode.CUSE_INIT_BSWAP_RESERVED, C.fuse_opcode.FUSE_INIT_BSWAP_RESERVED)
]
CODES = list(C.fuse_notify_code)
MINORS = [22, 23, 36, 46]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _int(code: str):
    """Integers of struct code ``code`` (lowercase: signed)."""
    bits = 8 * struct.calcsize(code)
    if code.islower():
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


def tree_strategy(tree):
    """Containers for a layout tree (``structs.FAST[...].tree``: the codec's own layout)."""
    parts = {}
    for n in tree:
        if n.kind == "int":
            parts[n.name] = _int(n.code)
        elif n.kind == "array":
            parts[n.name] = st.lists(_int(n.code), min_size=n.count, max_size=n.count)
        elif n.kind == "bytes":
            parts[n.name] = st.binary(min_size=n.count, max_size=n.count)
        elif n.kind == "struct":
            parts[n.name] = tree_strategy(n.children)
    return st.fixed_dictionaries(parts).map(Container)


def struct_strategy(name: str):
    return tree_strategy(structs.FAST[name].tree)


def fixed_strategy(part: messages.Fixed):
    return tree_strategy(part.fl.tree)


NAME = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"n"))


def part_strategy(part, body_so_far):
    """A strategy for the fields ``part`` adds (a dict to merge)."""
    if isinstance(part, messages.Fixed):
        return fixed_strategy(part)
    if isinstance(part, messages.AnySize):
        return st.sampled_from(sorted(part.variants)).flatmap(lambda n: fixed_strategy(part.variants[n]))
    if isinstance(part, messages.Name):
        return NAME.map(lambda n: {part.field: n})
    if isinstance(part, messages.NameN):
        return NAME.map(lambda n: {part.field: n})
    if isinstance(part, messages.Sized | messages.Rest):
        mx = 64 if getattr(part, "limit", None) is None else min(64, part.limit)
        return st.binary(max_size=mx).map(lambda d: {part.field: d})
    if isinstance(part, messages.Counted):
        item = st.integers(0, (1 << 64) - 1) if part.item == "u64" else struct_strategy(part.item)
        mx = 8 if part.limit is None else min(8, part.limit)
        return st.lists(item, max_size=mx).map(lambda xs: {part.field: xs})
    if isinstance(part, messages.Dirents):
        if part.plus:
            rec = st.builds(
                lambda e, d, n: Container(entry_out=e, dirent=Container(d, name=n)),
                struct_strategy("fuse_entry_out"),
                st.fixed_dictionaries({"ino": _int("Q"), "off": _int("Q"), "type": _int("I")}),
                NAME,
            )
        else:
            rec = st.builds(
                lambda d, n: Container(d, name=n),
                st.fixed_dictionaries({"ino": _int("Q"), "off": _int("Q"), "type": _int("I")}),
                NAME,
            )
        return st.lists(rec, max_size=4).map(lambda xs: {"entries": xs})
    if isinstance(part, messages.IoctlOut):
        iov = struct_strategy("fuse_ioctl_iovec")
        return st.one_of(
            st.binary(max_size=32).map(lambda d: {"data": d}),
            st.tuples(st.lists(iov, max_size=3), st.lists(iov, max_size=3)).map(
                lambda t: {"in_iov": t[0], "out_iov": t[1]}
            ),
        )
    raise AssertionError(part)


def body_strategy(parts):
    if parts is None:
        return st.binary(max_size=64)
    strat = st.just(Container())
    for p in parts:
        def merge(body, p=p):
            return part_strategy(p, body).map(lambda extra: _merged(body, extra))
        strat = strat.flatmap(merge)
    return strat


def _merged(body, extra):
    out = Container(body)
    for k, v in extra.items():
        out[k] = v
    if "in_iov" in extra:  # the retry form needs FUSE_IOCTL_RETRY in fuse_ioctl_out.flags
        out["flags"] = out.get("flags", 0) | messages.FUSE_IOCTL_RETRY
    elif "data" in extra and "in_iovs" in out:
        out["flags"] = out.get("flags", 0) & ~messages.FUSE_IOCTL_RETRY
    for k in ("size", "in_size", "count", "namelen", "in_iovs", "out_iovs", "nr_groups"):
        if k in out and k not in extra and _derived(out, k):
            out[k] = None  # let the builder derive lengths and counts
    return out


def _derived(body, k):
    return (k in ("size", "in_size") and ("data" in body or "value" in body)) or (
        k == "count" and "entries" in body) or (k == "namelen" and "name" in body) or (
        k in ("in_iovs", "out_iovs") and ("in_iov" in body or "data" in body))


def _subset(actual, expected) -> bool:
    """Every non-None field of ``expected`` is in ``actual`` (derived ones may be added)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            v is None or (k in actual and _subset(actual[k], v)) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_subset, actual, expected))
    return actual == expected


@st.composite
def request_case(draw):
    op = draw(st.sampled_from(OPCODES) | st.integers(54, 5000))
    minor = draw(st.sampled_from(MINORS))
    flags = draw(st.sampled_from([0, messages.FUSE_SETXATTR_EXT]))
    parts = messages.request_parts(op, minor, flags)
    body = draw(body_strategy(parts))
    return op, minor, flags, body


@SETTINGS
@given(request_case(), st.integers(0, (1 << 64) - 1), st.lists(st.integers(0, 2**32 - 1), max_size=3))
def test_request_roundtrip(case, unique, groups):
    op, minor, flags, body = case
    ext = [Container(groups=groups)] if groups else None
    data = codec.encode_request(op, body, unique=unique, nodeid=1, minor=minor, flags=flags, ext=ext)
    req = codec.decode_request(data, minor, flags=flags)
    assert req.unique == unique
    if isinstance(body, bytes):
        assert req.body == body
    else:
        assert _subset(req.body, body)
    assert [list(r.groups) for r in req.ext] == ([groups] if groups else [])
    again = codec.encode_request(op, req.body, unique=unique, nodeid=1, minor=minor, flags=flags, ext=req.ext)
    assert again == data
    assert codec.decode_request(again, minor, flags=flags) == req


@st.composite
def reply_case(draw):
    op = draw(st.sampled_from(OPCODES) | st.integers(54, 5000))
    minor = draw(st.sampled_from(MINORS))
    xsize = draw(st.sampled_from([None, 0, 100]))
    parts = messages.reply_parts(op, minor, xsize)
    body = draw(body_strategy(parts))
    return op, minor, xsize, body


@SETTINGS
@given(reply_case(), st.integers(1, (1 << 64) - 1))
def test_reply_roundtrip(case, unique):
    op, minor, xsize, body = case
    if xsize is not None and op in (C.fuse_opcode.FUSE_GETXATTR, C.fuse_opcode.FUSE_LISTXATTR):
        request = codec.decode_request(codec.encode_request(op, Container(size=xsize, name=b"a"), unique=unique))
    else:
        request = op
    data = codec.encode_reply(request, body, unique=unique, minor=minor)
    rep = codec.decode_reply(data, request, minor)
    if isinstance(body, bytes):
        assert rep.body == body
    else:
        assert _subset(rep.body, body)
    assert codec.encode_reply(request, rep.body, unique=unique, minor=minor) == data


@SETTINGS
@given(st.sampled_from(CODES) | st.integers(10, 100), st.data())
def test_notification_roundtrip(code, data):
    body = data.draw(body_strategy(messages.notification_parts(code)))
    raw = codec.encode_notification(code, body)
    n = codec.decode_notification(raw)
    assert codec.encode_notification(code, n.body) == raw


# --- arbitrary bytes ------------------------------------------------------------------------

def _any_decode(data: bytes, op: int, minor: int):
    out = []
    for fn in (
        lambda: codec.decode_request(data, minor),
        lambda: codec.decode_request(data, minor, flags=messages.FUSE_SETXATTR_EXT),
        lambda: codec.decode_reply(data, op, minor),
        lambda: codec.decode_notification(data),
    ):
        try:
            out.append(fn())
        except DecodeError:
            out.append(None)
    return out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(OPCODES), st.sampled_from(MINORS))
def test_arbitrary_bytes(data, op, minor):
    _any_decode(data, op, minor)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(OPCODES) | st.integers(0, 2**32 - 1), st.binary(max_size=300),
       st.integers(0, 6), st.sampled_from(MINORS), st.integers(0, 2**16 - 1))
def test_arbitrary_bodies_behind_a_valid_header(op, body, extlen, minor, pad):
    """Well-framed garbage: any accepted message re-encodes to the same bytes."""
    n = 40 + len(body)
    data = struct.pack("<IIQQIIIHH", n, op, 7, 1, 0, 0, 0, extlen, pad) + body
    try:
        req = codec.decode_request(data, minor)
    except DecodeError:
        pass
    else:
        h = req.header
        again = codec.encode_request(op, req.body, unique=7, nodeid=1, minor=minor, ext=req.ext,
                                     total_extlen=h.total_extlen, padding=h.padding)
        assert again == data
    rdata = struct.pack("<IiQ", 16 + len(body), 0, 7) + body
    try:
        rep = codec.decode_reply(rdata, op, minor)
    except DecodeError:
        pass
    else:
        assert codec.encode_reply(op, rep.body, unique=7, minor=minor) == rdata
    ndata = struct.pack("<IiQ", 16 + len(body), op & 0xF or 1, 0) + body
    try:
        nt = codec.decode_notification(ndata)
    except DecodeError:
        pass
    else:
        assert codec.encode_notification(nt.code, nt.body) == ndata


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VECTORS), st.data())
def test_mutated_vectors(v, data):
    """Byte flips in golden vectors: message or DecodeError, and accepted ones roundtrip."""
    raw = bytearray(v["data"])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    from wire_helpers import decode_vector, encode_message

    try:
        msg = decode_vector(v, bytes(raw))
    except DecodeError:
        return
    if v["kind"] == "request":
        h = msg.header
        again = codec.encode_request(h.opcode, msg.body, unique=h.unique, nodeid=h.nodeid, uid=h.uid,
                                     gid=h.gid, pid=h.pid, minor=v.get("minor", 46),
                                     flags=v.get("flags", 0), ext=msg.ext,
                                     total_extlen=h.total_extlen, padding=h.padding)
        assert again == bytes(raw)
    elif v["kind"] == "notification":
        assert encode_message(v, msg) == bytes(raw)


# --- differential: fast path vs the declarative construct -------------------------------------

def _construct_parse(con, body: bytes):
    try:
        return True, con.parse_stream(io.BytesIO(body))
    except (ConstructError, DecodeError):
        return False, None


def _fast_parse(parts, body: bytes):
    try:
        return True, messages.parse_parts(parts, body, 0, len(body))
    except DecodeError:
        return False, None


def _check_differential(parts, con, body: bytes):
    ok_f, fast = _fast_parse(parts, body)
    ok_c, slow = _construct_parse(con, body)
    assert ok_f == ok_c, (ok_f, ok_c, body)
    if ok_f:
        assert fast == slow


def _vector_bodies():
    out = []
    for v in VECTORS:
        if v["kind"] == "request" and not v["ext"]:
            out.append((v, v["data"][40:]))
        elif v["kind"] in ("reply", "notification") and v["body"] is not None:
            out.append((v, v["data"][16:]))
    return out


def _parts_and_con(v):
    minor = v.get("minor", 46)
    if v["kind"] == "request":
        return (messages.request_parts(v["opcode"], minor, v.get("flags", 0)),
                messages.request_body(v["opcode"], minor, v.get("flags", 0)))
    if v["kind"] == "reply":
        from wire_helpers import request_of

        xs = request_of(v).body
        xsize = xs.get("size") if isinstance(xs, dict) and v["opcode"] in (22, 23) else None
        return messages.reply_parts(v["opcode"], minor, xsize), messages.reply_body(v["opcode"], minor, xsize)
    return messages.notification_parts(v["opcode"]), messages.notification_body(v["opcode"])


@pytest.mark.parametrize("v,body", _vector_bodies(), ids=[v["name"] for v, _ in _vector_bodies()])
def test_differential_vectors(v, body):
    parts, con = _parts_and_con(v)
    _check_differential(parts, con, body)
    for k in range(len(body)):
        _check_differential(parts, con, body[:k])
    _check_differential(parts, con, body + b"\0")


@pytest.mark.parametrize("v,body", _vector_bodies(), ids=[v["name"] for v, _ in _vector_bodies()])
def test_common_vectors(v, body):
    """Each golden body: the construct, the fast parser and the fast builder all agree with
    the hand-written expectation (wire_helpers.common)."""
    common(_parts_and_con(v)[0], body, v["body"])


@pytest.mark.parametrize("name", sorted(structs.ALL))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_common_structs(name, data):
    """Each struct: construct, compiled construct and the codegen fast path agree."""
    raw = data.draw(st.binary(min_size=structs.FAST[name].size, max_size=structs.FAST[name].size))
    common(name, raw, structs.ALL[name].parse(raw), size=len(raw))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_vector_bodies()), st.data())
def test_differential_mutated(vb, data):
    v, body = vb
    parts, con = _parts_and_con(v)
    raw = bytearray(body)
    if raw:
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    raw += data.draw(st.binary(max_size=3))
    _check_differential(parts, con, bytes(raw))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(OPCODES), st.sampled_from(MINORS), st.binary(max_size=200))
def test_differential_random(op, minor, body):
    _check_differential(messages.request_parts(op, minor), messages.request_body(op, minor), body)
    _check_differential(messages.reply_parts(op, minor), messages.reply_body(op, minor), body)


@pytest.mark.parametrize("op", [28, 44])  # READDIR, READDIRPLUS
def test_dirent_records_repeated_are_parsed_as_each(op):
    """The dirent lists' construct reads a record whose bytes repeat an earlier record's
    (of this list or of one parsed before: one construct parses all 60) as a copy of it
    (UntilEnd(repeats=True)): the same list, or the same error, as parsing every record
    -- for lists of copies (the mutators' 255/256/257), shuffled (copies apart), runs
    broken by one changed record, and a copy cut short at the end; and each entry is its
    own object."""
    rng = random.Random(op)
    con = messages.reply_body(op)
    until = con.subcons[0].subcon
    assert isinstance(until, UntilEnd) and until.repeats
    every = Struct("entries" / UntilEnd(until.subcon), Terminated)
    for _ in range(60):
        ents = []
        for _k in range(rng.choice((1, 2, 5))):
            d = {"ino": rng.getrandbits(64), "off": rng.getrandbits(8), "type": 4,
                 "name": b"n" * rng.randrange(0, 20)}
            ents.append({"entry_out": {"nodeid": rng.getrandbits(8)}, "dirent": d}
                        if op == 44 else d)
        ents = ents + [ents[-1]] * rng.choice((0, 1, 7, 255, 256))
        if rng.random() < 0.4:
            rng.shuffle(ents)
        raw = bytearray(messages.build_parts(messages.reply_parts(op), {"entries": ents}))
        cut = rng.random()
        if cut < 0.3:
            i = rng.randrange(len(raw))
            raw[i] ^= 1 << rng.randrange(8)  # one record differs (or a broken namelen)
        elif cut < 0.5:
            del raw[len(raw) - rng.randrange(1, 30):]  # the last copy cut short
        got, want = _construct_outcome(con, bytes(raw)), _construct_outcome(every, bytes(raw))
        assert got == want
        if got[0] == "ok":
            assert len({id(e) for e in got[1].entries}) == len(got[1].entries)


def _construct_outcome(con, raw):
    try:
        return "ok", con.parse(raw)
    except ConstructError as e:
        return "error", type(e)
