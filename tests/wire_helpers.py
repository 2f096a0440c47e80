"""Helpers shared by tests/test_wire_*.py: decode/encode a golden vector generically."""

from __future__ import annotations

import struct
from typing import Any

from vectors.fuse_vectors import BY_NAME

from fuseproto.wire import codec


def decode_vector(v: dict, data: bytes | None = None) -> Any:
    data = v["data"] if data is None else data
    minor = v.get("minor", 46)
    if v["kind"] == "request":
        return codec.decode_request(data, minor, flags=v.get("flags", 0))
    if v["kind"] == "reply":
        return codec.decode_reply(data, request_of(v), minor)
    return codec.decode_notification(data)


def request_of(v: dict) -> Any:
    rv = BY_NAME[v["request"]]
    return codec.decode_request(rv["data"], rv.get("minor", 46), flags=rv.get("flags", 0))


def encode_message(v: dict, msg: Any, body: Any = None) -> bytes:
    """Re-encode a decoded message (or ``body`` in its place) with the message's header."""
    body = msg.body if body is None else body
    minor = v.get("minor", 46)
    if v["kind"] == "request":
        h = msg.header
        return codec.encode_request(
            h.opcode, body, unique=h.unique, nodeid=h.nodeid, uid=h.uid, gid=h.gid, pid=h.pid,
            minor=minor, flags=v.get("flags", 0), ext=msg.ext, padding=h.padding,
        )
    if v["kind"] == "reply":
        return codec.encode_reply(
            request_of(v), body, unique=msg.header.unique, error=msg.header.error, minor=minor
        )
    return codec.encode_notification(msg.header.error, body)


def restamp(data: bytes) -> bytes:
    """``data`` with its header ``len`` set to its actual length (both headers start so)."""
    if len(data) < 4:
        return data
    return struct.pack("<I", len(data)) + data[4:]


def restamp_request(data: bytes) -> bytes:
    """A request truncated/extended in its body: fix ``len``, drop the extension area."""
    if len(data) < 40:
        return data
    return struct.pack("<I", len(data)) + data[4:32] + b"\0\0" + data[34:]
