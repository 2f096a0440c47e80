"""The protocol oracle on one completed request of a live daemon, and the reply areas the
live targets hand out: what a guest kernel would give (:func:`expected_area`) and the
deviations of :func:`variant_area`. Used by the harness (:mod:`.harness`, which re-exports
these names), the raw frontend (:mod:`.rawfront`) and the chain target (:mod:`.chains`).

:func:`judge_reply` finds a reply that breaks FUSE: the device wrote more than the area
it was given (used.len > area), fewer bytes than a header, ``fuse_out_header.len`` != the
bytes written, a ``unique`` that is not the request's, an errno outside (-512, 0], or a
body that does not decode for the request (e.g. READ data longer than ``size``: the
codec's LimitExceededError). A clean reply gets an outcome class (opcode x errno x reply
size bucket).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from construct import Container

from ..errors import DecodeError
from ..wire import codec, structs
from ..wire.constants import fuse_opcode
from .forensics import Outcome

__all__ = ["MAX_AREA", "OUT_SIZE", "as_served", "expected_area", "variant_area", "judge_reply"]

_OP = fuse_opcode
_OUT = structs.FAST["fuse_out_header"]
OUT_SIZE = _OUT.size
# The largest device-writable area we hand out (guest memory is 32 MiB).
MAX_AREA = OUT_SIZE + (1 << 20)


def _bucket(n: int) -> str:
    if n <= OUT_SIZE:
        return "hdr"
    n -= OUT_SIZE
    b = 1
    while b < n:
        b <<= 2
    return f"<={b}"


_IN = structs.FAST["fuse_in_header"]
_IN_LEN = struct.Struct("<I")  # fuse_in_header.len, its first field


def as_served(data: bytes, decoded: Any, minor: int, flags: int) -> Any:
    """The request the daemons serve: ``decoded`` (``data`` decoded), or when only its
    ``fuse_in_header.len`` kept it from decoding (a forced length), ``data`` decoded with
    the length of its bytes: both daemons go by the descriptors, not the header's length,
    for bodies of fixed layout (None: it does not decode either way). Its fields give the
    area a kernel would give and bound the reply (a READ's data no longer than ``size``),
    as for an honest request."""
    if decoded is not None or len(data) < _IN.size or _IN.parse(data, 0)["len"] == len(data):
        return decoded
    try:
        return codec.decode_request(_IN_LEN.pack(len(data)) + data[4:], minor, flags=flags)
    except DecodeError:
        return None


def expected_area(op: int, body: Any, minor: int) -> int:
    """The area a guest kernel would give the reply (:func:`fuseproto.wire.codec.
    reply_area`), capped at :data:`MAX_AREA`."""
    return min(codec.reply_area(op, body, minor), MAX_AREA)


def variant_area(variant: int, expected: int) -> int:
    """The area for reply-size ``variant`` given the ``expected`` one (0: as the kernel
    gives; 1: 4 KiB more; 2: a header only; 3: 64 KiB more; 4: one byte short)."""
    v = variant % 5
    if v == 1:
        return min(expected + 4096, MAX_AREA)
    if v == 2:
        return OUT_SIZE
    if v == 3:
        return min(expected + 65536, MAX_AREA)
    if v == 4:
        return max(expected - 1, 1)
    return expected


def judge_reply(name: str, op: int, unique: int | None, req: Any, area: int, expected: int,
                reply: bytes, used_len: int, minor: int,
                previous: Callable[[], list[str]] = list) -> Outcome:
    """The protocol oracle on one completed request (see the module docstring): ``req``
    the decoded request (None if it does not decode), ``area`` the device-writable bytes
    it was given (``expected``: what a kernel would give), ``reply`` the bytes written,
    ``used_len`` the used ring's length; ``previous`` names the requests before it."""
    ev: dict[str, Any] = {"opcode": name, "area": area, "used_len": used_len,
                          "reply_head": reply[:64].hex()}
    if req is not None and isinstance(req.body, dict | Container) and "size" in req.body:
        ev["requested_size"] = req.body["size"]
    if used_len > area:
        return Outcome(f"{name}:used-overflow", "protocol",
                       f"used.len {used_len} > device-writable area {area}", ev)
    if len(reply) < OUT_SIZE:
        if op == _OP.FUSE_INTERRUPT and not reply:
            return Outcome(f"{name}:noreply")  # completed without an answer: allowed
        if used_len == 0 and area < expected:
            # We gave less room than the reply needs; nothing written is defensible.
            return Outcome(f"{name}:noreply-small-area")
        ev["previous"] = previous()
        return Outcome(f"{name}:no-reply-written" if not reply else f"{name}:short",
                       "protocol",
                       f"request completed with {len(reply)} reply bytes (area {area})", ev)
    h = _OUT.parse(reply, 0)
    ev["header"] = dict(h)
    err = h["error"]
    if h["len"] != len(reply):
        return Outcome(f"{name}:len-mismatch", "protocol",
                       f"fuse_out_header.len {h['len']} != {len(reply)} bytes written", ev)
    if unique is not None and h["unique"] != unique:
        ev["previous"] = previous()
        return Outcome(f"{name}:wrong-unique", "protocol",
                       f"reply unique {h['unique']} to request unique {unique}", ev)
    if not -511 <= err <= 0:
        return Outcome(f"{name}:bad-errno", "protocol", f"error {err} outside (-512, 0]", ev)
    try:
        codec.decode_reply(reply, req if req is not None else op, minor)
    except DecodeError as e:
        return Outcome(f"{name}:undecodable:{type(e).__name__}", "protocol",
                       f"reply does not decode: {type(e).__name__}: {e}", ev, reply)
    return Outcome(f"{name}:{err}:{_bucket(len(reply))}" if err == 0 else f"{name}:{err}",
                   reply=reply)
