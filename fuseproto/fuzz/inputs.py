"""The byte layouts of fuzz inputs: how one libFuzzer input names what it feeds.

A FUSE message alone does not say how to decode it (a reply needs its request's opcode,
a request the negotiated minor), so each target wraps messages in a small envelope of its
own. The envelopes are construct schemas like everything else on the wire; the fuzz loop
itself reads and builds them by slicing and joining (it runs millions of times; the
tests compare both ways with the schemas).

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

from typing import NamedTuple

from construct import GreedyBytes, GreedyRange, Int8ul, Int16ul, Prefixed, Struct

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
        message = len(request).to_bytes(2, "little") + request + message
    op = (opcode & ~SETXATTR_EXT_BIT & 0xFFFF) | (SETXATTR_EXT_BIT if setxattr_ext else 0)
    # The schema's bytes (wire_input_schema, wire_pair_schema; tests/test_fuzz_targets.py
    # compares them), joined by hand: the mutators build one per input.
    return bytes((kind, minor)) + op.to_bytes(2, "little") + message


def parse_wire_input(data: bytes) -> WireInput | None:
    """The envelope of ``data`` (None if it is shorter than the 4-byte envelope header).

    A pair whose request length runs past the end takes what is there."""
    if len(data) < 4:
        return None
    kind = data[0] % 4
    op = data[2] | data[3] << 8
    msg = data[4:]
    if kind == WIRE_PAIR:
        if len(msg) < 2:
            return None
        n = msg[0] | msg[1] << 8
        return WireInput(kind, data[1], op & ~SETXATTR_EXT_BIT, bool(op & SETXATTR_EXT_BIT),
                         msg[2 + n:], msg[2:2 + n])
    return WireInput(kind, data[1], op & ~SETXATTR_EXT_BIT, bool(op & SETXATTR_EXT_BIT), msg)


class SessionRecord(NamedTuple):  # a tuple: parsing makes one per record
    is_reply: bool
    data: bytes


def build_session_input(records: list[SessionRecord]) -> bytes:
    """The records as :data:`session_record_schema` builds them, one after another (joined
    by hand: the mutator builds one per input; tests/test_fuzz_targets.py compares)."""
    out = []
    for r in records:
        if len(r.data) > 0xFFFF:
            raise ValueError(f"a session record is {len(r.data)} bytes, more than u16")
        out.append(bytes((int(r.is_reply),)) + len(r.data).to_bytes(2, "little") + r.data)
    return b"".join(out)


def parse_session_input(data: bytes, limit: int = 256) -> list[SessionRecord]:
    """Records of a session input; a truncated last record takes what is there."""
    out: list[SessionRecord] = []
    i, n = 0, len(data)
    while i + 3 <= n and len(out) < limit:
        direction = data[i]
        ln = data[i + 1] | data[i + 2] << 8
        out.append(SessionRecord(bool(direction & 1), data[i + 3:i + 3 + ln]))
        i += 3 + ln
    return out
