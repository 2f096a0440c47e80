"""What each in-process fuzz target checks on one input: the oracles.

Each ``check_*`` takes the raw fuzz input and returns normally when fuseproto behaved, or
raises: either the unexpected exception itself (re-raised from a DecodeError's
``__cause__`` when the codec's safety net translated it) or a :class:`Bug` naming the
broken property. The atheris harnesses in ``fuzz/``, the campaign, ``fuseproto fuzz
replay`` and the tests all call these same functions.

Properties
----------
wire (docs/CONTRACTS.md, ``fuseproto.wire.codec``):
  * decoders raise only :class:`~fuseproto.errors.DecodeError`, and never one the codec
    made out of another exception (``_bug``'s ``__cause__``): that is a missed check;
  * roundtrip: a decoded message re-encodes to exactly its bytes (every count, size and
    ``total_extlen`` passed as decoded, so even a lying-but-accepted message must come
    back byte-exact; the header's ``len`` derived, as the decoder accepts only the
    message's own);
  * differential: the body's fast path (``messages.parse_parts``) and its declarative
    construct (``messages.*_body(...).parse``) accept the same bodies and agree on them.
    The construct parse is ~10x the rest of the oracle, so it runs on every body of a
    *shape* not seen before in this process (the parts, the body's length, the fast
    path's verdict -- the error's class and field, or the length of every bytes / list
    field and the value of every count / size field it accepted) and otherwise on one
    message in :data:`DIFF_EVERY` by a CRC32 of its bytes. Both rules are functions
    of the input (a replay in a fresh process always runs it: its shape is new);
    ``FUSEPROTO_FUZZ_DIFF_EVERY=1`` runs it on every body (:func:`set_diff_every`).
    The fast-path side is the body the decoder returned or the error it refused it with
    (parsed again only when something besides the body's parse may have refused it), and a message already compared in this process (same
    bytes, body range, construct, opcode and minor) is not parsed by the construct
    again when the fast path gives the verdict that agreed then (the construct's side is
    a function of those).
  The oracle notes what it decoded (:func:`.memo.remember`): the mutators decode the
  input just checked again when libFuzzer mutates it, and take the note instead.
session (``fuseproto.session`` docstring):
  * ``feed_request``/``feed_reply`` raise only DecodeError or ProtocolError;
  * a reply is paired with the request of its own unique (``reply.request.unique``);
  * a raising call leaves the session unchanged, except that a reply naming a request in
    flight whose body does not decode completes that request (the error carries it);
  * ``Session.check_valid()`` holds after every call and the pending table stays within
    ``max_pending``.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

from construct import ConstructError

from ..errors import DecodeError, ProtocolError
from ..session import Session
from ..wire import codec, messages, structs
from ..wire.constants import InitFlags, opcode_name
from .inputs import (
    WIRE_NOTIFICATION,
    WIRE_PAIR,
    WIRE_REPLY,
    WIRE_REQUEST,
    parse_session_input,
)
from .memo import envelope, forget, remember
from .mutate import deciding_fields

__all__ = ["Bug", "check_wire", "check_session", "SESSION_MAX_PENDING", "DIFF_EVERY",
           "set_diff_every", "diff_stats"]

SETXATTR_EXT = int(InitFlags.FUSE_SETXATTR_EXT)
# Small, so the fuzzer reaches the bound with short inputs.
SESSION_MAX_PENDING = 8


class Bug(AssertionError):
    """A property of the code under test does not hold. ``kind`` groups findings
    (``roundtrip``, ``differential``, ``invariant``, ``state``); ``where`` says what."""

    def __init__(self, kind: str, where: str, detail: str = ""):
        self.kind = kind
        self.where = where
        self.detail = detail
        super().__init__(f"{kind} in {where}: {detail}" if detail else f"{kind} in {where}")


def _translated(e: DecodeError) -> BaseException | None:
    """The non-DecodeError exception the codec's safety net wrapped, if any."""
    cause = e.__cause__
    if cause is not None and not isinstance(cause, DecodeError | ConstructError):
        return cause
    return None


def _decode(fn: Any, *args: Any, **kw: Any) -> tuple[Any, DecodeError | None]:
    """``(message, None)``, or ``(None, the DecodeError)`` when the decoder refused."""
    try:
        return fn(*args, **kw), None
    except DecodeError as e:
        cause = _translated(e)
        if cause is not None:
            raise cause  # the original exception and traceback: the finding's signature
        return None, e


_IN = structs.FAST["fuse_in_header"]
_OUT = structs.FAST["fuse_out_header"]
_IN_SIZE, _OUT_SIZE = _IN.size, _OUT.size
_in_unpack, _out_unpack = _IN.struct.unpack_from, _OUT.struct.unpack_from
_IN_LEN, _IN_OPCODE, _IN_EXTLEN = (_IN.fields.index(f) for f in ("len", "opcode", "total_extlen"))
_IN_UNIQUE, _IN_NODEID, _IN_UID, _IN_GID, _IN_PID, _IN_PADDING = (
    _IN.fields.index(f) for f in ("unique", "nodeid", "uid", "gid", "pid", "padding"))
_OUT_LEN, _OUT_ERROR, _OUT_UNIQUE = (_OUT.fields.index(f) for f in ("len", "error", "unique"))


def _notify_name(code: Any) -> str:
    """fuse.h's name of a notification code (``FUSE_NOTIFY_POLL``), else ``notify_N``."""
    return getattr(code, "name", None) or f"notify_{int(code)}"


#: The differential's sampling of already-seen shapes: one body in DIFF_EVERY (by CRC32).
DIFF_EVERY = max(1, int(os.environ.get("FUSEPROTO_FUZZ_DIFF_EVERY", "8")))
_SHAPES: set[tuple[Any, ...]] = set()
_SHAPES_MAX = 1 << 16
# What the differential did in this process: bodies seen, construct parses run, and
# compares skipped because the same message was compared before (and agreed).
_STATS = {"bodies": 0, "compared": 0, "repeats": 0}
# Messages compared and agreed on: (construct, what, body range, bytes) -> the fast
# path's verdict then (its body, or None for a refusal). The construct side is a function
# of the key; the fast side is compared with what agreed, so a fast path changed since
# (a planted bug) is compared again.
_AGREED: dict[tuple[Any, ...], Any] = {}
_AGREED_MAX = 1 << 12
_NOT_SEEN = object()
_BODIES: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_BODIES_MAX = 4096


def set_diff_every(n: int) -> None:
    """Run the construct reference on one body in ``n`` of a shape already seen (1:
    every body) and forget the shapes seen, so the next run starts as a fresh process."""
    global DIFF_EVERY
    DIFF_EVERY = max(1, int(n))
    _SHAPES.clear()
    _AGREED.clear()


def diff_stats() -> dict[str, int]:
    """Bodies the differential saw and how many it compared with the construct."""
    return dict(_STATS)


_LAYOUTS: dict[Any, tuple[Any, ...]] = {}


def _layout(parts: Any) -> tuple[Any, ...]:
    """The parts' declaration as plain values (class, struct, size, fields, limits ...):
    equal for the equal tuples the cached lookups make per minor, so one shape is one
    shape whatever minor asked for it."""
    out = _LAYOUTS.get(parts)
    if out is None:
        out = _LAYOUTS[parts] = tuple(
            (type(p).__name__, *sorted((k, v) for k, v in vars(p).items()
                                       if isinstance(v, int | str | tuple | type(None))))
            for p in parts)
    return out


def _shape(parts: Any, data: bytes, off: int, end: int, fast: Any,
           err: Exception | None) -> tuple[Any, ...]:
    """What decides the fast path's control flow on ``data[off:end]``: its verdict (the
    error's class and field, or the length of each variable part it accepted) and the
    value of each field a part decides by (read from the leading fixed struct when the
    body was refused)."""
    deciding = deciding_fields(parts)
    if err is not None:
        out: list[Any] = [_layout(parts), end - off, type(err), getattr(err, "path", None)]
        head = parts[0] if deciding else None
        if isinstance(head, messages.Fixed) and end - off >= head.size:
            fast = head.fl.parse(data, off)
        else:
            return tuple(out)
    else:
        out = [_layout(parts), end - off]
        for k, v in fast.items():
            if isinstance(v, bytes | list):
                out += (k, len(v))
    for k in deciding:
        out.append(fast.get(k))
    return tuple(out)


def _public(k: Any) -> bool:
    return not (isinstance(k, str) and k.startswith("_"))


def _same(a: Any, b: Any) -> bool:
    """``a == b`` as construct compares parsed values (a Container ignores the keys that
    start with ``_`` on either side: construct's ``_io``, fuse.h's ``__reserved``), with
    one walk that skips what is the same object: a long list's records are compared
    without Container.__eq__'s per-key overhead on each."""
    if a is b:
        return True
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return False
        n = 0
        for k, v in a.items():
            if not _public(k):
                continue
            w = b.get(k, _NOT_SEEN)
            if w is _NOT_SEEN or not _same(v, w):
                return False
            n += 1
        return n == len(b) or n == sum(map(_public, b))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _where(what: tuple[Any, ...]) -> str:
    """A differential finding's ``where`` from ``(kind, opcode or code, minor)`` (formatted
    only when there is a finding)."""
    kind, op, minor = what
    if kind == "notification":
        return f"notification {op}"
    return f"{kind} {opcode_name(op)} (minor {minor})"


def _differential(what: tuple[Any, ...], parts: Any, con: Any, data: bytes, off: int,
                  end: int, decoded: Any = None, refused: DecodeError | None = None) -> None:
    """Fast path vs construct on ``data[off:end]``: same acceptance, same Container (on the
    bodies the sampling in the module docstring picks).

    ``decoded`` is the body the codec's decoder returned for this message (it parsed
    ``data[off:end]`` with parts of this layout): then that body is the fast path's
    verdict, so what is compared is what the decoder gives, and the fast path does not
    run twice. ``refused`` is the decoder's DecodeError when nothing but that body's
    parse can have raised it (the caller knows: a sound header, no extension area, no
    request to check sizes against): the fast path's verdict too. Without either the
    fast path runs here.

    A message compared before (the same bytes, body range, construct and ``what``) whose
    fast-path verdict is the one that agreed then is not parsed by the construct again
    (its side is a function of those)."""
    fast_err: Exception | None = None
    if decoded is not None:
        fast = decoded
    elif refused is not None:
        fast, fast_err = None, refused
    else:
        try:
            fast = messages.parse_parts(parts, data, off, end)
        except DecodeError as e:
            cause = _translated(e)
            if cause is not None:
                raise cause
            fast, fast_err = None, e
    _STATS["bodies"] += 1
    shape = _shape(parts, data, off, end, fast, fast_err)
    if shape in _SHAPES:
        if DIFF_EVERY > 1 and zlib.crc32(data) % DIFF_EVERY:
            return
    else:
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES.add(shape)
    key = (con, what, off, end, data)
    seen = _AGREED.get(key, _NOT_SEEN)
    if seen is not _NOT_SEEN and (seen is None if fast_err else seen == fast):
        # The construct agreed with this very verdict on these very bytes before.
        _STATS["repeats"] += 1
        return
    _STATS["compared"] += 1
    try:
        slow = con.parse(data[off:end])
        slow_err: Exception | None = None
    except ConstructError as e:
        slow, slow_err = None, e
    if (fast_err is None) != (slow_err is None):
        raise Bug("differential", _where(what),
                  f"fast path {'rejects' if fast_err else 'accepts'} ({fast_err}), construct "
                  f"{'rejects' if slow_err else 'accepts'} ({slow_err})")
    if fast_err is None and not _same(fast, slow):
        raise Bug("differential", _where(what), f"fast path {fast!r} != construct {slow!r}")
    if len(_AGREED) >= _AGREED_MAX:
        _AGREED.clear()
    _AGREED[key] = None if fast_err else fast


def check_wire(data: bytes) -> None:
    """The wire target's oracle (see the module docstring)."""
    forget()
    w = envelope(data)
    if w is None:
        return
    minor = w.minor
    flags = SETXATTR_EXT if w.setxattr_ext else 0
    if w.kind == WIRE_REQUEST:
        _check_request(w.message, minor, flags)
    elif w.kind == WIRE_REPLY:
        _check_reply(w.message, w.opcode, minor)
    elif w.kind == WIRE_NOTIFICATION:
        _check_notification(w.message)
    elif w.kind == WIRE_PAIR:
        req = _check_request(w.request, minor, flags)
        _check_reply(w.message, req if req is not None else w.opcode, minor)


def _body(key: tuple[Any, ...], parts_of: Any, *args: Any) -> tuple[Any, Any]:
    """(parts, construct) of a body from messages' lookup ``parts_of(*args)`` and the
    construct of those parts, asked once per ``key`` (the lookups are code under test:
    instrumented under atheris, several calls deep)."""
    out = _BODIES.get(key)
    if out is None:
        if len(_BODIES) >= _BODIES_MAX:
            _BODIES.clear()
        parts = parts_of(*args)
        out = _BODIES[key] = (parts, None if parts is None else messages.schema(parts))
    return out


def _check_request(msg: bytes, minor: int, flags: int) -> Any:
    req, err = _decode(codec.decode_request, msg, minor, flags=flags)
    remember("request", msg, (minor, flags), req)
    n = len(msg)
    if n >= _IN_SIZE:
        v = _in_unpack(msg, 0)
        end = n - 8 * v[_IN_EXTLEN]
        if v[_IN_LEN] == n and end >= _IN_SIZE:  # the header itself is sound
            op = v[_IN_OPCODE]
            parts, con = _body((0, op, minor, flags), messages.request_parts, op, minor, flags)
            if parts is not None:
                # Refused with no extension area: the body's parse refused it.
                _differential(("request", op, minor), parts, con, msg, _IN_SIZE, end,
                              None if req is None else req.body, err if end == n else None)
    if req is None:
        return None
    h = req.header_values
    ext, extlen = req.ext, h[_IN_EXTLEN]
    try:
        # len is derived (the decoder accepted only len == len(msg)), and total_extlen
        # too when there is no extension area: the bytes a caller's encode gives.
        again = codec.encode_request(
            h[_IN_OPCODE], req.body, unique=h[_IN_UNIQUE], nodeid=h[_IN_NODEID],
            uid=h[_IN_UID], gid=h[_IN_GID], pid=h[_IN_PID], minor=minor, flags=flags,
            ext=ext or None, total_extlen=extlen if ext or extlen else None,
            padding=h[_IN_PADDING])
    except Exception as e:
        raise Bug("roundtrip", f"request {opcode_name(req.opcode)}",
                  f"decoded but does not re-encode: {type(e).__name__}: {e}") from e
    if again != msg:
        raise Bug("roundtrip", f"request {opcode_name(req.opcode)}",
                  f"{len(msg)} bytes in, {len(again)} out: {msg.hex()} -> {again.hex()}")
    return req


def _check_reply(msg: bytes, request: Any, minor: int) -> None:
    rep, err = _decode(codec.decode_reply, msg, request, minor)
    remember("reply", msg, (request, minor), rep)
    op = int(getattr(request, "opcode", request))
    n = len(msg)
    if n >= _OUT_SIZE:
        v = _out_unpack(msg, 0)
        if v[_OUT_LEN] == n and v[_OUT_ERROR] == 0:
            xsize = None
            rbody = getattr(request, "body", None)
            if rbody is not None and hasattr(rbody, "get"):
                xsize = rbody.get("size")
            parts, con = _body((1, op, minor, xsize), messages.reply_parts, op, minor, xsize)
            if parts is not None:
                # Refused, and no request to check the reply's size against: the body's
                # parse refused it (codec.decode_reply).
                _differential(("reply to", op, minor), parts, con, msg, _OUT_SIZE, n,
                              None if rep is None else rep.body,
                              None if isinstance(request, codec.Request) else err)
    if rep is None:
        return
    try:
        # len derived: the decoder accepted only len == len(msg).
        again = codec.encode_reply(request, rep.body, unique=rep.unique, error=rep.error,
                                   minor=minor)
    except Exception as e:
        raise Bug("roundtrip", f"reply to {opcode_name(rep.opcode)}",
                  f"decoded but does not re-encode: {type(e).__name__}: {e}") from e
    if again != msg:
        raise Bug("roundtrip", f"reply to {opcode_name(rep.opcode)}",
                  f"{len(msg)} bytes in, {len(again)} out: {msg.hex()} -> {again.hex()}")


def _check_notification(msg: bytes) -> None:
    note, err = _decode(codec.decode_notification, msg)
    remember("notification", msg, (), note)
    n = len(msg)
    if n >= _OUT_SIZE:
        v = _out_unpack(msg, 0)
        code = v[_OUT_ERROR]
        if v[_OUT_LEN] == n and v[_OUT_UNIQUE] == 0 and code > 0:
            parts, con = _body((2, code), messages.notification_parts, code)
            if parts is not None:
                # Refused with a sound header (len, unique 0, a code): by the body's parse.
                _differential(("notification", code, None), parts, con, msg, _OUT_SIZE, n,
                              None if note is None else note.body, err)
    if note is None:
        return
    try:
        # len derived: the decoder accepted only len == len(msg).
        again = codec.encode_notification(note.code, note.body)
    except Exception as e:
        raise Bug("roundtrip", f"notification {_notify_name(note.code)}",
                  f"decoded but does not re-encode: {type(e).__name__}: {e}") from e
    if again != msg:
        raise Bug("roundtrip", f"notification {_notify_name(note.code)}",
                  f"{msg.hex()} -> {again.hex()}")


# -- session --------------------------------------------------------------------------------


def _snapshot(s: Session) -> tuple[Any, ...]:
    """What a raising call must leave alone: the uniques in flight, the interrupt records,
    minor, flags (InitFlags compare by value) and whether INIT completed. Tuples in the
    session's order (cheaper than sets, taken after every record); :func:`_same_state`
    compares them as sets."""
    return (tuple(s.pending), tuple(s.interrupts.items()), s.minor, s.flags, s.initialized)


def _same_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a == b or (set(a[0]) == set(b[0]) and dict(a[1]) == dict(b[1]) and a[2:] == b[2:])


def check_session(data: bytes, max_pending: int = SESSION_MAX_PENDING) -> Session:
    """The session target's oracle; returns the session (for tests)."""
    s = Session(max_pending=max_pending)
    state = _snapshot(s)
    for rec in parse_session_input(data):
        before = state  # the state after the previous record: the session's now
        what = "feed_reply" if rec.is_reply else "feed_request"
        try:
            if rec.is_reply:
                rep = s.feed_reply(rec.data)
                paired = getattr(rep, "request", None)
                # Paired by unique: the request a reply answers carries the reply's unique.
                if paired is not None and paired.unique != rep.unique:
                    raise Bug("state", what, f"reply to unique {rep.unique} paired with "
                              f"request {paired.unique}")
            else:
                s.feed_request(rec.data)
        except (DecodeError, ProtocolError) as e:
            if isinstance(e, DecodeError):
                cause = _translated(e)
                if cause is not None:
                    raise cause
            state = _snapshot(s)
            if not _same_state(state, before):
                completed = getattr(e, "request", None)
                allowed = completed is not None and set(state[0]) == set(before[0]) - {
                    completed.unique}
                if not allowed:
                    raise Bug("state", what,
                              f"{type(e).__name__} ({e}) changed the session: {before} -> "
                              f"{state}") from e
        try:
            s.check_valid()
        except AssertionError as e:
            raise Bug("invariant", what, f"Session.check_valid failed: {e!r}") from e
        if state is before:  # the call returned: it may have changed anything
            state = _snapshot(s)
        if len(state[0]) > max_pending:
            raise Bug("invariant", what, f"{len(state[0])} pending > max_pending {max_pending}")
    return s
