"""Helpers shared by tests/test_wire_*.py: decode/encode a golden vector generically."""

from __future__ import annotations

import functools
import struct
from typing import Any

from construct import Terminated
from vectors.fuse_vectors import BY_NAME

from fuseproto.wire import codec, messages, structs
from fuseproto.wire.codegen import NotFast


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


@functools.cache
def _compiled(name: str) -> Any:
    return structs.ALL[name].compile()


def common(subject: str | tuple | None, data: bytes, obj: Any, size: int | None = None) -> None:
    """One test shape per layer, as construct's ``common()``: fast path == reference.

    ``subject`` is a struct name (the reference ``structs.ALL[name]``, its compiled form,
    and the fast path ``structs.FAST[name]``) or a message body's parts tuple (the
    reference ``messages.schema(parts)``, the fast path ``messages.parse_parts`` /
    ``build_parts``). Every form must parse ``data`` to ``obj`` and build ``obj`` back to
    ``data``; ``size`` (a fixed-size subject) must be the reference's ``sizeof()``.
    """
    if isinstance(subject, str):
        con = structs.ALL[subject]
        fl = structs.FAST[subject]
        forms = [
            ("fast", lambda: fl.parse(data), lambda: fl.build(obj)),
            ("compiled", lambda: _compiled(subject).parse(data), lambda: _compiled(subject).build(obj)),
        ]
    else:
        con = messages.schema(subject)
        forms = [("fast", lambda: messages.parse_parts(subject, data, 0, len(data)), None)]
        if subject is not None and isinstance(obj, dict):
            forms[0] = (forms[0][0], forms[0][1], lambda: messages.build_parts(subject, obj))
    assert con.parse(data) == obj, "reference parse"
    assert con.build(obj) == data, "reference build"
    if size is not None:
        # A body's Struct ends in Terminated, which has no size: the fields before it.
        subcons = getattr(con, "subcons", [])
        fixed = subcons[:-1] if subcons and subcons[-1] is Terminated else None
        sizeof = con.sizeof() if fixed is None else sum(sc.sizeof() for sc in fixed)
        assert sizeof == size == len(data), "sizeof"
    for label, parse, build in forms:
        assert parse() == obj, f"{label} parse"
        if build is not None:
            try:
                built = build()
            except NotFast:  # a value the fast builder does not mirror: the reference builds
                continue
            assert built == data, f"{label} build"
