"""Golden vectors (tests/vectors/fuse_vectors.py): decode, encode, truncation, trailing data."""

from __future__ import annotations

import pytest
from vectors.fuse_vectors import VECTORS
from wire_helpers import decode_vector, encode_message, restamp, restamp_request

from fuseproto.errors import DecodeError, LengthMismatchError, TruncatedError
from fuseproto.wire import constants as C

IDS = [v["name"] for v in VECTORS]


def test_every_opcode_has_request_and_reply_vectors():
    reqs = {v["opcode"] for v in VECTORS if v["kind"] == "request"}
    reps = {v["opcode"] for v in VECTORS if v["kind"] == "reply"}
    for op in C.fuse_opcode:
        if op in (C.fuse_opcode.CUSE_INIT_BSWAP_RESERVED, C.fuse_opcode.FUSE_INIT_BSWAP_RESERVED):
            continue
        assert op in reqs, op
        assert op in reps, op
    codes = {v["opcode"] for v in VECTORS if v["kind"] == "notification"}
    assert set(C.fuse_notify_code) <= codes


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_decode(v):
    msg = decode_vector(v)
    assert msg.body == v["body"]
    assert msg.raw == v["data"]
    assert msg.header.len == len(v["data"])
    if v["kind"] == "request":
        assert msg.ext == v["ext"]
        assert int(msg.opcode) == v["opcode"]
    if v["kind"] == "notification":
        assert int(msg.code) == v["opcode"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_encode_decoded(v):
    msg = decode_vector(v)
    assert encode_message(v, msg) == v["data"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_encode_from_expected(v):
    """The hand-written expected body (plain dicts) builds the hand-written bytes."""
    msg = decode_vector(v)
    if v["body"] is None:
        # Only error replies have no body: the header alone, built from its error.
        assert (v["kind"], len(v["data"])) == ("reply", 16) and msg.header.error < 0
        assert msg.body is None and encode_message(v, msg) == v["data"]
        return
    assert encode_message(v, msg, body=v["body"]) == v["data"]


def _header_size(v: dict) -> int:
    return 40 if v["kind"] == "request" else 16  # fuse_in_header / fuse_out_header


def _header_name(v: dict) -> str:
    return "fuse_in_header" if v["kind"] == "request" else "fuse_out_header"


def _decode_error(v: dict, data: bytes) -> DecodeError:
    """The error decoding ``data`` raises; fails if it decodes, or if the error is a
    translated bug (the codec turns an unexpected exception into a DecodeError with the
    exception as ``__cause__``: that is an escape, not a check)."""
    with pytest.raises(DecodeError) as ei:
        decode_vector(v, data)
    err = ei.value
    assert err.__cause__ is None, f"{len(data)} bytes: a translated bug: {err!r}"
    return err


def documented_cut_error(v: dict, k: int) -> tuple[type[DecodeError], str]:
    """The error class and field codec.py's docstring promises for the first ``k`` bytes
    of a vector (``k < len``), its header ``len`` left as it was: fewer bytes than the
    header is TruncatedError; a whole header whose ``len`` disagrees with the bytes
    present is LengthMismatchError on that ``len``."""
    if k < _header_size(v):
        return TruncatedError, _header_name(v)
    return LengthMismatchError, f"{_header_name(v)}.len"


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_truncated_at_every_length(v):
    data = v["data"]
    for k in range(len(data)):
        # As cut (header len now lies): exactly the documented error, per length.
        cls, path = documented_cut_error(v, k)
        err = _decode_error(v, data[:k])
        assert (type(err), err.path) == (cls, path), (k, repr(err))
        # Re-stamped len: shorter than a header stays TruncatedError; past it, an error
        # in the body (never the header's len, which is now true), or a shorter body that
        # decodes and re-encodes exactly (legal for READ data, dirent lists at a record
        # boundary, names ...).
        cut = restamp_request(data[:k]) if v["kind"] == "request" else restamp(data[:k])
        if k < _header_size(v):
            err = _decode_error(v, cut)
            assert (type(err), err.path) == (TruncatedError, _header_name(v)), (k, repr(err))
            continue
        try:
            msg = decode_vector(v, cut)
        except DecodeError as e:
            assert e.__cause__ is None, (k, f"a translated bug: {e!r}")
            assert e.path != f"{_header_name(v)}.len", (k, repr(e))
            continue
        assert msg.header.len == k
        assert encode_message(v, msg) == cut


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
@pytest.mark.parametrize("extra", [b"\0", b"\xff" * 3, b"\0" * 8, b"x\0" * 9])
def test_trailing_bytes(v, extra):
    data = v["data"] + extra
    err = _decode_error(v, data)
    assert (type(err), err.path) == (LengthMismatchError, f"{_header_name(v)}.len"), repr(err)
    fixed = restamp(data)
    try:
        msg = decode_vector(v, fixed)
    except DecodeError:
        return
    # Formats with a greedy tail (READ data, xattr values, unknown opcodes, extension
    # areas...) take the bytes; they must then roundtrip.
    assert encode_message(v, msg) == fixed


def test_byte_by_byte_prefixes_never_escape():
    """Every prefix of every vector, the whole one included, is decoded or refused on
    purpose: the whole message gives its body, each shorter prefix the documented error,
    and no prefix reaches the codec's catch-all (an escape translated into a DecodeError
    with the original exception as its ``__cause__``)."""
    seen: dict[type, int] = {}
    for v in VECTORS:
        data = v["data"]
        assert decode_vector(v, data).body == v["body"], v["name"]
        for k in range(len(data)):
            try:
                decode_vector(v, data[:k])
            except DecodeError as e:
                assert e.__cause__ is None, (v["name"], k, f"a translated bug: {e!r}")
                assert type(e) is documented_cut_error(v, k)[0], (v["name"], k, repr(e))
                seen[type(e)] = seen.get(type(e), 0) + 1
            else:
                raise AssertionError(f"{v['name']}: the first {k} bytes decoded")
    # Both sides of the header boundary were exercised, for every vector.
    assert seen[TruncatedError] == sum(min(len(v["data"]), _header_size(v)) for v in VECTORS)
    assert seen[LengthMismatchError] == sum(
        max(0, len(v["data"]) - _header_size(v)) for v in VECTORS
    )
