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
        return
    assert encode_message(v, msg, body=v["body"]) == v["data"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_truncated_at_every_length(v):
    data = v["data"]
    for k in range(len(data)):
        # As cut (header len now lies): always an error.
        with pytest.raises((TruncatedError, LengthMismatchError)):
            decode_vector(v, data[:k])
        # Re-stamped len: an error, or a shorter body that decodes and re-encodes exactly
        # (legal for READ data, dirent lists at a record boundary, names ...).
        cut = restamp_request(data[:k]) if v["kind"] == "request" else restamp(data[:k])
        try:
            msg = decode_vector(v, cut)
        except DecodeError:
            continue
        assert encode_message(v, msg) == cut


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
@pytest.mark.parametrize("extra", [b"\0", b"\xff" * 3, b"\0" * 8, b"x\0" * 9])
def test_trailing_bytes(v, extra):
    data = v["data"] + extra
    with pytest.raises(LengthMismatchError):
        decode_vector(v, data)
    fixed = restamp(data)
    try:
        msg = decode_vector(v, fixed)
    except DecodeError:
        return
    # Formats with a greedy tail (READ data, xattr values, unknown opcodes, extension
    # areas...) take the bytes; they must then roundtrip.
    assert encode_message(v, msg) == fixed


def test_byte_by_byte_prefixes_never_escape():
    for v in VECTORS:
        for k in range(len(v["data"]) + 1):
            try:
                decode_vector(v, v["data"][:k])
            except DecodeError:
                pass
