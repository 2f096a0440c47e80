"""The byte layouts of fuzz inputs: how one libFuzzer input names what it feeds.

A FUSE message alone does not say how to decode it (a reply needs its request's opcode,
a request the negotiated minor), so each target wraps messages in a small envelope of its
own. The envelopes are construct schemas like everything else on the wire, and the one
home of their layout: the fuzz loop (millions of inputs) reads and builds them through an
:class:`Envelope` made from each schema -- one ``struct.Struct`` of its integer fields
and length prefixes, then its byte fields -- not through construct, and not by offsets
written out by hand (tests/test_fuzz_rates.py compares both ways with the schemas).

``wire`` input (wire_decode_fuzzer)::

    kind u8 | minor u8 | opcode u16 | message...
      kind % 4 == 0  request      (decode_request at minor, flags from opcode's high bit)
      kind % 4 == 1  reply        (decode_reply to ``opcode`` at minor)
      kind % 4 == 2  notification (decode_notification)
      kind % 4 == 3  pair         (message = request_len u16 | request | reply: the reply
                                   is decoded against the decoded request, so the size
                                   limits of READ/GETXATTR/... apply)

``session`` input (session_fuzzer): records until the end::

    direction u8 | length u16 | bytes[length]
      direction % 2 == 0  feed_request(bytes)      direction % 2 == 1  feed_reply(bytes)
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from construct import (
    FormatField,
    GreedyBytes,
    GreedyRange,
    Int8ul,
    Int16ul,
    Prefixed,
    Renamed,
    Struct,
)

__all__ = [
    "WIRE_REQUEST",
    "WIRE_REPLY",
    "WIRE_NOTIFICATION",
    "WIRE_PAIR",
    "WireInput",
    "SessionRecord",
    "wire_input_schema",
    "session_record_schema",
    "session_input_schema",
    "wire_pair_schema",
    "build_wire_input",
    "parse_wire_input",
    "build_session_input",
    "parse_session_input",
    "SETXATTR_EXT_BIT",
    "Envelope",
]

WIRE_REQUEST, WIRE_REPLY, WIRE_NOTIFICATION, WIRE_PAIR = 0, 1, 2, 3
# The opcode field's bit 15 (no opcode reaches it; CUSE_INIT is 4096) asks for the
# FUSE_SETXATTR_EXT layout when decoding a request.
SETXATTR_EXT_BIT = 0x8000

wire_input_schema = Struct(
    "kind" / Int8ul,
    "minor" / Int8ul,
    "opcode" / Int16ul,
    "message" / GreedyBytes,
)
wire_pair_schema = Struct(
    "request" / Prefixed(Int16ul, GreedyBytes),
    "reply" / GreedyBytes,
)
session_record_schema = Struct(
    "direction" / Int8ul,
    "data" / Prefixed(Int16ul, GreedyBytes),
)
# The reference for build_session_input (tests compare); never for parsing: GreedyRange
# swallows errors, so parsing goes through parse_session_input.
session_input_schema = GreedyRange(session_record_schema)


class Envelope:
    """The fast packer and header reader of an envelope schema: a ``Struct`` of integer
    fields (``FormatField``), then byte fields -- the first may be ``Prefixed`` by an
    integer length, the last ``GreedyBytes``. ``head`` is one ``struct.Struct`` of the
    integers and the first byte field's length prefix, in the schema's order (it reads an
    envelope's header: ``head.unpack_from(data, offset)``); :meth:`pack` builds what
    ``schema.build`` builds. Any other schema shape is a ValueError here, at import."""

    def __init__(self, schema: Struct):
        fmt, ints, blobs, prefixed = "<", 0, 0, False
        for sc in schema.subcons:
            inner = sc.subcon if isinstance(sc, Renamed) else sc
            if type(inner) is FormatField and not blobs and inner.fmtstr[0] == "<":
                fmt += inner.fmtstr[1:]
                ints += 1
            elif (isinstance(inner, Prefixed) and not blobs and inner.subcon is GreedyBytes
                  and type(inner.lengthfield) is FormatField
                  and inner.lengthfield.fmtstr[0] == "<"):
                fmt += inner.lengthfield.fmtstr[1:]
                blobs, prefixed = 1, True
            elif inner is GreedyBytes and blobs < 2 and sc is schema.subcons[-1]:
                blobs += 1
            else:
                raise ValueError(f"{sc!r}: not an envelope field the packer knows")
        self.head = struct.Struct(fmt)
        self.fields = tuple(sc.name for sc in schema.subcons)
        self._ints, self._blobs, self._prefixed = ints, blobs, prefixed

    def pack(self, *values: Any) -> bytes:
        """``schema.build(dict(zip(fields, values)))``, without construct."""
        n = self._ints
        ints = values[:n]
        if self._prefixed:  # the first byte field's length follows the integers
            ints = (*ints, len(values[n]))
        return self.head.pack(*ints) + b"".join(values[n:])


_WIRE = Envelope(wire_input_schema)  # head: kind, minor, opcode
_PAIR = Envelope(wire_pair_schema)  # head: the request's length
_RECORD = Envelope(session_record_schema)  # head: direction, the data's length
_WIRE_HEAD, _PAIR_HEAD, _RECORD_HEAD = _WIRE.head.size, _PAIR.head.size, _RECORD.head.size
_wire_head, _pair_head, _record_head = (
    _WIRE.head.unpack_from, _PAIR.head.unpack_from, _RECORD.head.unpack_from)


class WireInput(NamedTuple):  # a tuple: made once per input (a frozen dataclass is slower)
    kind: int  # WIRE_* (kind byte % 4)
    minor: int
    opcode: int  # without SETXATTR_EXT_BIT
    setxattr_ext: bool
    message: bytes  # for WIRE_PAIR: the reply
    request: bytes = b""  # for WIRE_PAIR: the request


def build_wire_input(
    kind: int,
    message: bytes,
    *,
    minor: int = 46,
    opcode: int = 0,
    setxattr_ext: bool = False,
    request: bytes = b"",
) -> bytes:
    """One wire fuzz input (see the module docstring)."""
    if kind == WIRE_PAIR:
        if len(request) > 0xFFFF:
            raise ValueError(f"a pair's request is {len(request)} bytes, more than u16")
        message = _PAIR.pack(request, message)
    op = (opcode & ~SETXATTR_EXT_BIT & 0xFFFF) | (SETXATTR_EXT_BIT if setxattr_ext else 0)
    return _WIRE.pack(kind, minor, op, message)


def parse_wire_input(data: bytes) -> WireInput | None:
    """The envelope of ``data`` (None if it is shorter than the 4-byte envelope header).

    A pair whose request length runs past the end takes what is there."""
    if len(data) < _WIRE_HEAD:
        return None
    kind, minor, op = _wire_head(data)
    kind %= 4
    msg = data[_WIRE_HEAD:]
    if kind == WIRE_PAIR:
        if len(msg) < _PAIR_HEAD:
            return None
        (n,) = _pair_head(msg)
        end = _PAIR_HEAD + n
        return WireInput(kind, minor, op & ~SETXATTR_EXT_BIT, bool(op & SETXATTR_EXT_BIT),
                         msg[end:], msg[_PAIR_HEAD:end])
    return WireInput(kind, minor, op & ~SETXATTR_EXT_BIT, bool(op & SETXATTR_EXT_BIT), msg)


class SessionRecord(NamedTuple):  # a tuple: parsing makes one per record
    is_reply: bool
    data: bytes


def build_session_input(records: list[SessionRecord]) -> bytes:
    """The records as :data:`session_record_schema` builds them, one after another."""
    pack = _RECORD.pack
    out = []
    for r in records:
        if len(r.data) > 0xFFFF:
            raise ValueError(f"a session record is {len(r.data)} bytes, more than u16")
        out.append(pack(int(r.is_reply), r.data))
    return b"".join(out)


def parse_session_input(data: bytes, limit: int = 256) -> list[SessionRecord]:
    """Records of a session input; a truncated last record takes what is there."""
    out: list[SessionRecord] = []
    i, n, head = 0, len(data), _RECORD_HEAD
    while i + head <= n and len(out) < limit:
        direction, ln = _record_head(data, i)
        i += head
        out.append(SessionRecord(bool(direction & 1), data[i:i + ln]))
        i += ln
    return out
