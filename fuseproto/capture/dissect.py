"""Decode a FUSE capture: every record through the codec, replies paired by the Session.

:func:`decode_capture` yields one :class:`CapturedMessage` per packet of the file, in
order. Nothing is dropped silently: a record that is not ours (another link type), whose
pseudo-header is bad, whose FUSE message does not decode, or that breaks the protocol in
its session (a reply nobody waits for) is yielded with ``error`` set (and whatever could
still be decoded); if the file itself is corrupt, a final entry with ``kind ==
"capture-error"`` carries the :class:`~fuseproto.capture.pcap.PcapError` and iteration
ends. :class:`CaptureSummary` counts what went by.

A record cut by the capture's snaplen is not an error (tshark's "[Packet size limited
during capture]"): every field that lies in the captured bytes is decoded, a field the cut
reaches is shown as far as it was captured (bytes: the captured prefix) or as
:data:`TRUNCATED`, the record still pairs, and ``captured_len`` / ``orig_len`` say how
much was kept. The missing bytes are stood in for twice, by zeros and by 0xff: a field
whose value is the same both ways was captured, one that differs was cut (and a message
that decodes only one way keeps its header alone). Messages longer than
``MAX_TRUNCATED_LEN`` keep their header alone (no allocation sized by a record's claimed
length).

With ``pair=True`` (the default) requests go through ``Session.feed_request`` and
replies/notifications through ``Session.feed_reply``, so a reply decodes by its
request's opcode (and request ``size``) at the minor INIT negotiated. With
``pair=False`` each message decodes alone at ``minor``: a reply uses the capture's
opcode hint when the recorder wrote one, else only its header is shown.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..errors import DecodeError, LengthMismatchError, ProtocolError
from ..session import Session
from ..wire import codec, structs
from ..wire.constants import (
    FUSE_KERNEL_MINOR_VERSION,
    fuse_notify_code,
    fuse_opcode,
    opcode_name,
)
from .frames import FRAME_HEADER, LINKTYPE_FUSE, Direction, FrameError, unpack_frame
from .pcap import DEFAULT_MAX_CAPLEN, PcapError, PcapRecord, read_records

__all__ = ["CapturedMessage", "CaptureSummary", "decode_capture", "decode_message",
           "TRUNCATED", "MAX_TRUNCATED_LEN"]

# The longest cut message whose missing bytes are stood in for (a FUSE message is at most
# max_pages (<= 65535) pages of data plus headers in theory; real ones are <= 1 MiB + 4 KiB).
MAX_TRUNCATED_LEN = 16 << 20


class _Truncated:
    """A field the snaplen cut (its value was not captured)."""

    def __repr__(self) -> str:
        return "[truncated]"


TRUNCATED: Any = _Truncated()

_OUT = structs.FAST["fuse_out_header"]
_IN = structs.FAST["fuse_in_header"]

# Kinds of CapturedMessage.
REQUEST = "request"
REPLY = "reply"
NOTIFICATION = "notification"
SKIPPED = "skipped"  # a record of another link type
BAD_FRAME = "bad-frame"  # our link type, unreadable pseudo-header
ANNOTATION = "annotation"  # a recorder's note (Direction.ANNOTATION): UTF-8 text in raw
CAPTURE_ERROR = "capture-error"  # the file is corrupt; iteration ends
# The kind a record's pseudo-header direction announces (decoding may refine it).
_KIND_OF_DIRECTION: dict[int, str] = {Direction.REQUEST: REQUEST, Direction.REPLY: REPLY}


@dataclass
class CapturedMessage:
    """One record of a capture and what decoding made of it."""

    index: int  # record number in the file
    file_offset: int  # where the record starts in the file
    ts_ns: int
    kind: str  # request / reply / notification / annotation / skipped / bad-frame /
    # capture-error
    direction: int | None = None
    queue: int | None = None
    message: Any = None  # codec Request / Reply / Notification, or None
    header: Any = None  # fuse_in_header / fuse_out_header Container when at least that decoded
    opcode: Any = None  # fuse_opcode (a reply's: its request's), notify code, int, or None
    error: Exception | None = None  # DecodeError / ProtocolError / PcapError
    raw: bytes = b""  # the FUSE message (without the pseudo-header), as captured
    paired: bool = False  # a reply matched to its request
    orig_len: int | None = None  # the message's length on the wire when the snaplen cut it

    @property
    def truncated(self) -> bool:
        return self.orig_len is not None

    @property
    def captured_len(self) -> int:
        return len(self.raw)

    @property
    def unique(self) -> int | None:
        return None if self.header is None else self.header["unique"]

    @property
    def opcode_name(self) -> str | None:
        """fuse.h's name of :attr:`opcode` (``opcode_name()``: ``FUSE_LOOKUP`` or
        ``opcode_N``; a notification's code: ``FUSE_NOTIFY_...`` or ``notify_N``), or None
        when the opcode is unknown."""
        op = self.opcode
        if op is None:
            return None
        if self.kind == NOTIFICATION:
            return op.name if isinstance(op, fuse_notify_code) else f"notify_{op}"
        return opcode_name(op)


@dataclass
class CaptureSummary:
    """Counts over a whole capture."""

    records: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_opcode: Counter[str] = field(default_factory=Counter)  # "FUSE_LOOKUP request" ...
    decode_errors: int = 0
    protocol_errors: int = 0
    truncated: int = 0  # records the snaplen cut (decoded as far as captured)
    unpaired_requests: list[tuple[int, str]] = field(default_factory=list)  # (unique, opcode)
    capture_error: str | None = None
    minor: int | None = None

    def add(self, m: CapturedMessage) -> None:
        self.records += m.kind != CAPTURE_ERROR
        self.by_kind[m.kind] += 1
        if m.kind in (REQUEST, REPLY, NOTIFICATION) and m.opcode is not None:
            self.by_opcode[f"{m.opcode_name} {m.kind}"] += 1
        self.truncated += m.truncated
        if isinstance(m.error, DecodeError):
            self.decode_errors += 1
        elif isinstance(m.error, ProtocolError):
            self.protocol_errors += 1
        if m.kind == CAPTURE_ERROR:
            self.capture_error = str(m.error)

    @property
    def failed(self) -> bool:
        return bool(self.decode_errors or self.capture_error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "kinds": dict(self.by_kind),
            "opcodes": dict(sorted(self.by_opcode.items())),
            "decode_errors": self.decode_errors,
            "protocol_errors": self.protocol_errors,
            "truncated": self.truncated,
            "unpaired": [{"unique": u, "opcode": o} for u, o in self.unpaired_requests],
            "capture_error": self.capture_error,
            "minor": self.minor,
        }


def decode_capture(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    pair: bool = True,
    minor: int | None = None,
    linktype: int = LINKTYPE_FUSE,
    max_caplen: int = DEFAULT_MAX_CAPLEN,
    summary: CaptureSummary | None = None,
    max_pending: int = 65536,
) -> Iterator[CapturedMessage]:
    """Yield every record of a capture, decoded (see the module docstring).

    ``minor`` is the protocol minor before (or without) an INIT in the capture; INIT in
    the capture renegotiates it, capped at ``minor``. ``summary``, if given, is updated as
    records go by and gets the unpaired requests at the end.
    """
    start_minor = FUSE_KERNEL_MINOR_VERSION if minor is None else minor
    session = Session(minor=start_minor, max_pending=max_pending) if pair else None
    records = read_records(source, max_caplen=max_caplen)
    index = 0
    while True:
        try:
            rec = next(records)
        except StopIteration:
            break
        except PcapError as e:
            m = CapturedMessage(index, e.offset or 0, 0, CAPTURE_ERROR, error=e)
            if summary is not None:
                summary.add(m)
            yield m
            break
        index = rec.index + 1
        m = _decode_record(rec, session, start_minor, linktype)
        if summary is not None:
            summary.add(m)
        yield m
    if summary is not None:
        summary.minor = session.minor if session is not None else start_minor
        if session is not None:
            summary.unpaired_requests = [
                (u, opcode_name(r.opcode)) for u, r in sorted(session.pending.items())
            ]


def _decode_record(
    rec: PcapRecord, session: Session | None, minor: int, linktype: int
) -> CapturedMessage:
    m = CapturedMessage(rec.index, rec.offset, rec.ts_ns, SKIPPED)
    if rec.linktype != linktype:
        m.error = None
        m.raw = rec.data
        return m
    try:
        frame = unpack_frame(rec.data)
    except FrameError as e:
        m.kind = BAD_FRAME
        m.error = e
        m.raw = rec.data
        return m
    m.direction = frame.direction
    m.queue = frame.queue
    m.raw = frame.data
    if frame.direction == Direction.ANNOTATION:
        m.kind = ANNOTATION  # not a FUSE message: nothing to decode, not an error
        return m
    # What the recorder said it is; decoding refines it (a reply with unique 0 is a
    # notification) but even bytes too short for a header keep a kind.
    m.kind = _KIND_OF_DIRECTION.get(frame.direction, NOTIFICATION)
    if rec.truncated:
        _decode_truncated(m, rec.orig_len - FRAME_HEADER.size, session, frame.opcode_hint,
                          minor if frame.minor_hint is None else frame.minor_hint)
        return m
    if session is not None:
        _decode_paired(m, session, frame.opcode_hint)
    else:
        hint_minor = frame.minor_hint
        _decode_alone(m, frame.opcode_hint, minor if hint_minor is None else hint_minor)
    return m


def _decode_truncated(m: CapturedMessage, orig_len: int, session: Session | None,
                      hint: int | None, minor: int) -> None:
    """Decode a snaplen-cut message as far as it was captured (see the module docstring)."""
    captured = m.raw
    m.orig_len = orig_len
    head = _IN.size if m.direction == Direction.REQUEST else _OUT.size
    if orig_len > MAX_TRUNCATED_LEN or len(captured) < head:
        _peek_header(m)
        _name_cut_reply(m, session, hint)
        return
    missing = orig_len - len(captured)
    zeros, ones = captured + bytes(missing), captured + b"\xff" * missing
    m.raw = zeros
    if session is not None:
        _decode_paired(m, session, hint)
    else:
        _decode_alone(m, hint, minor)
    m.raw = captured
    msg = m.message
    if m.error is not None or msg is None:
        # The stand-in bytes did not decode: the header is what was captured for sure.
        m.error, m.message = None, None
        _peek_header(m)
        _name_cut_reply(m, session, hint)
        return
    # The second decode at what the first used: the session's minor and flags, if any.
    dminor = session.minor if session is not None else minor
    try:
        if isinstance(msg, codec.Request):
            flags = int(session.flags) if session is not None else 0
            other: Any = codec.decode_request(ones, minor=dminor, flags=flags)
        elif isinstance(msg, codec.Reply):
            other = codec.decode_reply(ones, msg.request if msg.request is not None
                                       else msg.opcode, minor=dminor)
        else:
            other = codec.decode_notification(ones)
    except DecodeError:
        other = None
    # A new object for what is shown: the session still holds the request decoded with
    # zeros for the missing bytes (its size checks and pairing need whole values).
    body = TRUNCATED if other is None else _captured_part(msg.body, other.body)
    if isinstance(msg, codec.Request):
        m.message = codec.Request(msg.header, msg.opcode, body, msg.ext, msg.raw)
    elif isinstance(msg, codec.Reply):
        m.message = codec.Reply(msg.header, msg.opcode, body, msg.raw, msg.request)
    else:
        m.message = codec.Notification(msg.header, msg.code, body, msg.raw)


def _captured_part(a: Any, b: Any) -> Any:
    """What two decodes of one cut message (missing bytes as zeros, as 0xff) agree on:
    equal values are captured; bytes keep their common prefix; anything else that
    differs was cut."""
    if a == b:
        return a
    if isinstance(a, bytes | bytearray) and isinstance(b, bytes | bytearray):
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return bytes(a[:n])
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        out = type(a)()
        for k in a:
            out[k] = _captured_part(a[k], b[k])
        return out
    if isinstance(a, list) and isinstance(b, list):
        same = []
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            same.append(x)
        return same
    return TRUNCATED


def _name_cut_reply(m: CapturedMessage, session: Session | None, hint: int | None) -> None:
    """A cut reply shown by its header alone still names its request's opcode (from the
    session, which keeps the request pending, or the recorder's hint)."""
    if m.kind == REPLY and m.header is not None:
        req = session.pending.get(m.header["unique"]) if session is not None else None
        op = req.opcode if req is not None else hint
        if op is not None:
            m.opcode = fuse_opcode(op) if op in _OPCODES else op


def _decode_paired(m: CapturedMessage, session: Session, hint: int | None) -> None:
    data = m.raw
    if m.direction == Direction.REQUEST:
        m.kind = REQUEST
        try:
            msg = session.feed_request(data)
        except DecodeError as e:
            m.error = e
            _peek_header(m)
            return
        except ProtocolError as e:
            # Well formed, wrong in context (e.g. a unique reused): show it anyway.
            m.error = e
            _decode_alone(m, None, session.minor)
            return
        _set(m, msg)
        return
    try:
        msg = session.feed_reply(data)
    except DecodeError as e:
        m.error = e
        _peek_header(m)
        req = getattr(e, "request", None)
        if req is not None:
            m.opcode = req.opcode
            m.paired = True
        return
    except ProtocolError as e:
        m.error = e
        _decode_alone(m, hint, session.minor)  # keeps e as the error
        return
    _set(m, msg)
    m.paired = m.kind == REPLY


def _decode_alone(m: CapturedMessage, hint: int | None, minor: int) -> None:
    data = m.raw
    try:
        if m.direction == Direction.REQUEST:
            m.kind = REQUEST
            _set(m, codec.decode_request(data, minor=minor))
            return
        if len(data) >= _OUT.size and _OUT.parse(data)["unique"] == 0:
            _set(m, codec.decode_notification(data))
            return
        m.kind = REPLY
        if hint is None:
            _peek_header(m)
            if m.header is not None and m.header["len"] != len(data):
                raise LengthMismatchError(
                    f"len={m.header['len']} but the message is {len(data)} bytes",
                    offset=0,
                    path="fuse_out_header.len",
                )
            return
        _set(m, codec.decode_reply(data, hint, minor=minor))
    except DecodeError as e:
        if m.error is None:
            m.error = e
        _peek_header(m)
        if hint is not None and m.kind == REPLY:
            m.opcode = fuse_opcode(hint) if hint in _OPCODES else hint


_OPCODES = {int(o) for o in fuse_opcode}
_CODES = {int(c) for c in fuse_notify_code}


def _set(m: CapturedMessage, msg: Any) -> None:
    m.message = msg
    m.header = msg.header
    if isinstance(msg, codec.Notification):
        m.kind = NOTIFICATION
        m.opcode = msg.code
    elif isinstance(msg, codec.Reply):
        m.kind = REPLY
        m.opcode = msg.opcode
    else:
        m.kind = REQUEST
        m.opcode = msg.opcode


def _peek_header(m: CapturedMessage) -> None:
    """Fill ``header`` (and a request's opcode) from the fixed header, if it is there."""
    data = m.raw
    if m.direction == Direction.REQUEST:
        if len(data) >= _IN.size:
            m.header = _IN.parse(data)
            op = m.header["opcode"]
            m.opcode = fuse_opcode(op) if op in _OPCODES else op
    elif len(data) >= _OUT.size:
        m.header = _OUT.parse(data)
        if m.header["unique"] == 0:
            m.kind = NOTIFICATION
            code = m.header["error"]
            m.opcode = fuse_notify_code(code) if code in _CODES else code


def decode_message(
    data: bytes, *, kind: str = "auto", opcode: int | None = None, minor: int = 46
) -> CapturedMessage:
    """Decode one FUSE message given as bytes (the CLI's ``--hex``).

    ``kind`` is "request", "reply", "notification" or "auto": with ``opcode`` a reply,
    otherwise a request if it decodes as one with a known opcode, otherwise a
    notification if its unique is 0, otherwise a reply shown by its header.
    """
    m = CapturedMessage(0, 0, 0, REQUEST, queue=0, raw=bytes(data))
    if kind == "auto":
        if opcode is not None:
            kind = "reply"
        else:
            try:
                req = codec.decode_request(data, minor=minor)
            except DecodeError:
                req = None
            if req is not None and isinstance(req.opcode, fuse_opcode):
                m.direction = Direction.REQUEST
                _set(m, req)
                return m
            kind = "reply"
    m.direction = Direction.REQUEST if kind == "request" else Direction.REPLY
    if kind == "notification":
        try:
            _set(m, codec.decode_notification(data))
        except DecodeError as e:
            m.error = e
            m.kind = NOTIFICATION
            _peek_header(m)
        return m
    _decode_alone(m, opcode, minor)
    return m
