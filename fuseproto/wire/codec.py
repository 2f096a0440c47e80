"""Encode and decode whole FUSE messages (see docs/CONTRACTS.md and ``messages``).

Decoding is eager and uses the fast path: ``struct.unpack_from`` for ``fuse_in_header`` /
``fuse_out_header`` and for every fixed part of a body (``structs.FAST``), slicing for names
and data, and the per-part checks of :mod:`.messages`. Everything is validated before the
message is returned, so a decoder returns a complete message or raises
:class:`~fuseproto.errors.DecodeError` (a subclass where one fits), never anything else:
any other exception escaping is translated at this boundary and counts as a bug (the
fuzzers look for the translation's ``__cause__``).

Encoding builds a dict body with the fast path of :mod:`.messages` (each part's
``build()``: ``struct.pack`` of the fixed parts, names and data concatenated) and anything
else -- or any value the fast path fails on -- with the declarative construct, which stays
the reference: the two give the same bytes and the same EncodeError
(``tests/test_wire_encode.py``). ``len``, ``total_extlen`` and every count/size field are
derived unless given (``length=``, ``total_extlen=``, or the field present in the body), so
a fuzzer can lie.

Checks made on decode
---------------------
* ``fuse_in_header.len`` / ``fuse_out_header.len`` must equal ``len(data)``
  (LengthMismatchError); fewer bytes than a header is TruncatedError.
* Requests: ``total_extlen * 8`` bytes at the end are the extension area and must fit after
  the header; the body is what lies between.
* Replies: ``error != 0`` means the reply is the header alone (TrailingDataError otherwise)
  and ``body`` is None. With a decoded :class:`Request`, a READ/READDIR/READDIRPLUS reply,
  GETXATTR/LISTXATTR value and IOCTL out data longer than the request's ``size`` /
  ``out_size`` is LimitExceededError (the kernel rejects those too).
* Notifications: ``unique`` must be 0 and ``error`` (the code) positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from construct import ConstructError, Container

from ..errors import (
    DecodeError,
    EncodeError,
    LengthMismatchError,
    LimitExceededError,
    TrailingDataError,
    TruncatedError,
)
from . import constants as C
from . import messages, structs

__all__ = [
    "Request",
    "Reply",
    "Notification",
    "decode_request",
    "decode_reply",
    "decode_notification",
    "encode_request",
    "encode_reply",
    "encode_notification",
    "reply_area",
    "DEFAULT_REPLY_AREA",
]

_IN = structs.FAST["fuse_in_header"]
_OUT = structs.FAST["fuse_out_header"]
_IN_SIZE = _IN.size
_IOVEC_SIZE = structs.FAST["fuse_ioctl_iovec"].size
_OUT_SIZE = _OUT.size
_in_unpack = _IN.struct.unpack_from
_out_unpack = _OUT.struct.unpack_from
_IN_FIELDS = _IN.fields
_OUT_FIELDS = _OUT.fields

_OPCODES: dict[int, C.fuse_opcode] = {int(m): m for m in C.fuse_opcode}
_CODES: dict[int, C.fuse_notify_code] = {int(m): m for m in C.fuse_notify_code}
_OP = C.fuse_opcode
# Replies whose data may not exceed the request's fuse_read_in.size (the kernel's limit).
_SIZE_LIMITED = (_OP.FUSE_READ, _OP.FUSE_READDIR, _OP.FUSE_READDIRPLUS)
_XATTR = (_OP.FUSE_GETXATTR, _OP.FUSE_LISTXATTR)
# Replies decode_reply checks against (or shapes by) the request's body.
_XATTR_OPS = frozenset(int(op) for op in _XATTR)
_NEEDS_REQUEST_BODY = frozenset(int(op) for op in (*_SIZE_LIMITED, *_XATTR, _OP.FUSE_IOCTL))


_LAZY = object()  # Request body not decoded yet (see encode_request(return_request=True))


class _LazyHeader:
    """``header`` as a Container built on first access from ``_values`` (the unpacked
    header tuple) when the codec made the message without one; ``_FIELDS`` names them."""

    __slots__ = ()
    _FIELDS: tuple[str, ...] = ()

    @property
    def header(self) -> Container:
        h = self._header
        if h is None:
            h = self._header = Container(zip(self._FIELDS, self._values, strict=True))
        return h

    @header.setter
    def header(self, value: Container) -> None:
        self._header = value

    @property
    def unique(self) -> int:
        # Third field of both fuse_in_header (len, opcode, unique) and fuse_out_header
        # (len, error, unique).
        h = self._header
        return self._values[2] if h is None else h["unique"]


class Request(_LazyHeader):
    """A decoded request: ``header`` (fuse_in_header Container), ``opcode``, ``body``, ``ext``.

    Made lazily, from what the codec already has: ``header`` None with ``values`` (the
    unpacked fuse_in_header) builds the Container on first access; ``body`` _LAZY with
    ``parts`` decodes the body from ``raw`` on first access (only :func:`encode_request`
    does that, for bodies that cannot fail to decode).
    """

    __slots__ = ("_header", "_values", "opcode", "_body", "ext", "raw", "_parts")
    _FIELDS = _IN_FIELDS

    def __init__(
        self,
        header: Container | None,
        opcode: Any,
        body: Any,
        ext: list,
        raw: bytes,
        parts: Any = None,
        values: tuple | None = None,
    ):
        self._header = header
        self._values = values
        self.opcode = opcode
        self._body = body
        self.ext = ext
        self.raw = raw
        self._parts = parts

    @property
    def body(self) -> Any:
        if self._body is _LAZY:
            self._body = messages.parse_parts(self._parts, self.raw, _IN_SIZE, len(self.raw))
            self._parts = None
        return self._body

    @body.setter
    def body(self, value: Any) -> None:
        self._body = value
        self._parts = None

    @property
    def nodeid(self) -> int:
        h = self._header
        return self._values[3] if h is None else h["nodeid"]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.header, self.opcode, self.body, self.ext) == (
            other.header,
            other.opcode,
            other.body,
            other.ext,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        name = getattr(self.opcode, "name", self.opcode)
        return f"Request({name}, unique={self.unique}, nodeid={self.nodeid}, body={self.body!r})"


class Reply(_LazyHeader):
    """A decoded reply: ``header`` (fuse_out_header), ``error``, ``body`` (None on error).

    ``header`` None with ``values`` (the unpacked fuse_out_header) builds the Container on
    first access.
    """

    __slots__ = ("_header", "_values", "opcode", "body", "raw", "request")
    _FIELDS = _OUT_FIELDS

    def __init__(
        self,
        header: Container | None,
        opcode: Any,
        body: Any,
        raw: bytes,
        request: Any,
        values: tuple | None = None,
    ):
        self._header = header
        self._values = values
        self.opcode = opcode
        self.body = body
        self.raw = raw
        self.request = request

    @property
    def error(self) -> int:
        h = self._header
        return self._values[1] if h is None else h["error"]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.header, self.opcode, self.body) == (other.header, other.opcode, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        name = getattr(self.opcode, "name", self.opcode)
        return f"Reply({name}, unique={self.unique}, error={self.error}, body={self.body!r})"


class Notification:
    """A decoded notification: ``code`` (fuse_notify_code or int), ``header``, ``body``."""

    __slots__ = ("header", "code", "body", "raw")

    def __init__(self, header: Container, code: Any, body: Any, raw: bytes):
        self.header = header
        self.code = code
        self.body = body
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Notification):
            return NotImplemented
        return (self.header, self.code, self.body) == (other.header, other.code, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        name = getattr(self.code, "name", self.code)
        return f"Notification({name}, body={self.body!r})"


def _as_bytes(data: Any) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"expected bytes, got {type(data).__name__}")


def _bug(e: Exception, where: str) -> DecodeError:
    # Only reached if a check above missed a case: still honour the contract, keep the cause.
    err = DecodeError(f"{type(e).__name__}: {e}", path=where)
    err.__cause__ = e
    return err


# --- decoding ---------------------------------------------------------------------------


def decode_request(data: bytes, minor: int = 46, *, flags: int = 0) -> Request:
    """Decode one request (a fuse_in_header and what follows) sent at protocol ``minor``.

    ``flags`` is the negotiated 64-bit INIT flags (``flags | flags2 << 32``); only
    FUSE_SETXATTR_EXT changes a layout (fuse_setxattr_in is 16 bytes, else 8).
    """
    data = _as_bytes(data)
    n = len(data)
    if n < _IN_SIZE:
        raise TruncatedError(
            f"{n} bytes, fuse_in_header needs {_IN_SIZE}", offset=n, path="fuse_in_header"
        )
    try:
        v = _in_unpack(data, 0)
        if v[0] != n:
            raise LengthMismatchError(
                f"len={v[0]} but the message is {n} bytes", offset=0, path="fuse_in_header.len"
            )
        end = n - 8 * v[7]
        if end < _IN_SIZE:
            raise LengthMismatchError(
                f"total_extlen={v[7]} ({8 * v[7]} bytes) exceeds the {n - _IN_SIZE} after the header",
                offset=34,
                path="fuse_in_header.total_extlen",
            )
        op = v[1]
        parts = messages._request_parts(op, minor, bool(flags & messages.FUSE_SETXATTR_EXT))
        if parts is None:
            body: Any = data[_IN_SIZE:end]
        else:
            body = messages.parse_parts(parts, data, _IN_SIZE, end)
        ext = messages.parse_ext(data, end, n) if end != n else []
        return Request(None, _OPCODES.get(op, op), body, ext, data, None, v)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 -- the contract: DecodeError only
        raise _bug(e, "request") from e


_MISSING = object()
# (opcode, minor) -> (message size, parse) for replies whose body is one fixed-size struct
# (e.g. fuse_attr_out): fuse_out_header and the body in one unpack_from; None otherwise.
_FIXED_REPLY: dict[tuple[int, int], Any] = {}


def _fixed_reply(op: int, minor: int) -> Any:
    try:
        parts = messages._reply_parts(op, int(minor), None)
    except Exception:  # noqa: BLE001 -- a bad minor: the general path decides
        return None
    fixed = None
    # (No such reply is shaped or limited by the request's body: _NEEDS_REQUEST_BODY.)
    if (
        op not in _NEEDS_REQUEST_BODY
        and parts
        and len(parts) == 1
        and type(parts[0]) is messages.Fixed
        and not parts[0].derive
    ):
        st, parse = structs.fast_pair("fuse_out_header", parts[0].struct_name, parts[0].size)
        fixed = (st.size, parse)
    _FIXED_REPLY[op, minor] = fixed
    return fixed


def _fixed_reply_cached(op: int, minor: int) -> Any:
    try:
        return _FIXED_REPLY[op, minor]
    except KeyError:
        return _fixed_reply(op, minor)


def decode_reply(data: bytes, request: Any, minor: int = 46) -> Reply:
    """Decode one reply to ``request`` (a :class:`Request`, or an opcode).

    With only an opcode, GETXATTR/LISTXATTR replies decode as a raw ``value`` (their shape
    depends on the request's ``size``) and reply sizes are not checked against the request.
    """
    if type(data) is not bytes:
        data = _as_bytes(data)
    is_request = isinstance(request, Request)
    op = int(request.opcode) if is_request else int(request)
    n = len(data)
    # A fixed-size body of exactly the size it must have, no error: every check below
    # passes but len == n and error == 0, checked here on the one unpack. (Such opcodes
    # never need the request's body.)
    try:
        fixed = _FIXED_REPLY[op, minor]
    except KeyError:
        fixed = _fixed_reply(op, minor)
    except TypeError:  # an unhashable minor: the general path decides
        fixed = None
    if fixed is not None and n == fixed[0]:
        values, body = fixed[1](data, 0)
        if values[0] == n and values[1] == 0:
            return Reply(None, _OPCODES.get(op, op), body, data, request, values)
    rbody = request.body if is_request and op in _NEEDS_REQUEST_BODY else None
    if n < _OUT_SIZE:
        raise TruncatedError(
            f"{n} bytes, fuse_out_header needs {_OUT_SIZE}", offset=n, path="fuse_out_header"
        )
    try:
        v = _out_unpack(data, 0)
        if v[0] != n:
            raise LengthMismatchError(
                f"len={v[0]} but the message is {n} bytes", offset=0, path="fuse_out_header.len"
            )
        opcode = _OPCODES.get(op, op)
        if v[1] != 0:
            if n != _OUT_SIZE:
                raise TrailingDataError(
                    f"error reply carries {n - _OUT_SIZE} body bytes",
                    offset=_OUT_SIZE,
                    path="body",
                )
            return Reply(None, opcode, None, data, request, v)
        if rbody is None:
            parts = messages._reply_parts(op, int(minor), None)
        else:
            xsize = None
            if op in _XATTR and isinstance(rbody, Mapping):
                xsize = rbody.get("size")
            parts = messages.reply_parts(op, minor, xsize)
        body = messages.parse_parts(parts, data, _OUT_SIZE, n)
        if rbody is not None and isinstance(rbody, Mapping):
            _check_reply_size(op, rbody, n - _OUT_SIZE, body)
        return Reply(None, opcode, body, data, request, v)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _bug(e, "reply") from e


def _check_reply_size(op: int, rbody: Mapping, nbody: int, body: Any) -> None:
    limit = None
    if op in _SIZE_LIMITED or (op in _XATTR and rbody.get("size")):
        limit = rbody.get("size")
    elif op == _OP.FUSE_IOCTL and isinstance(body, Mapping) and body.get("data"):
        limit = rbody.get("out_size")
        nbody = len(body["data"])
    if limit is not None and nbody > limit:
        raise LimitExceededError(
            f"{nbody} bytes of reply data, the request asked for at most {limit}",
            offset=_OUT_SIZE,
            path="body",
        )


def decode_notification(data: bytes) -> Notification:
    """Decode one notification (fuse_out_header with ``unique`` 0 and ``error`` = code)."""
    data = _as_bytes(data)
    n = len(data)
    if n < _OUT_SIZE:
        raise TruncatedError(
            f"{n} bytes, fuse_out_header needs {_OUT_SIZE}", offset=n, path="fuse_out_header"
        )
    try:
        v = _out_unpack(data, 0)
        if v[0] != n:
            raise LengthMismatchError(
                f"len={v[0]} but the message is {n} bytes", offset=0, path="fuse_out_header.len"
            )
        if v[2] != 0:
            raise DecodeError(
                "a notification has unique 0", offset=8, path="fuse_out_header.unique"
            )
        if v[1] <= 0:
            raise DecodeError(
                f"error={v[1]} is not a notify code", offset=4, path="fuse_out_header.error"
            )
        header = Container(zip(_OUT_FIELDS, v, strict=True))
        code = v[1]
        body = messages.parse_parts(messages._notification_parts(code), data, _OUT_SIZE, n)
        return Notification(header, _CODES.get(code, code), body, data)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _bug(e, "notification") from e


# --- encoding ---------------------------------------------------------------------------

_in_pack = _IN.struct.pack
_out_pack = _OUT.struct.pack
_RAW = (bytes, bytearray, memoryview)
_NO_BODY: dict = {}  # body None: every field absent


def _build_reference(parts: Any, body: Any, what: Any) -> bytes:
    """Build ``body`` with the declarative construct of ``parts`` (the reference)."""
    if body is None:
        body = Container()
    try:
        return messages._schema(parts).build(body)
    except (ConstructError, KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise EncodeError(f"cannot build {what[0]} {what[1]}: {type(e).__name__}: {e}") from e


def _build_body(parts: Any, body: Any, what: Any) -> bytes:
    """The body's bytes: the fast builder for a dict body, else (or on any failure) the
    construct, so every bad value gets the reference's EncodeError."""
    if parts is not None:
        if body is None:
            body = _NO_BODY
        if isinstance(body, dict):
            try:
                return messages.build_parts(parts, body)
            except Exception:  # noqa: BLE001,S110 -- NotFast or a bad value: the reference decides
                pass
    if isinstance(body, _RAW):
        return bytes(body)  # raw bytes for any opcode: fuzzers may send anything
    return _build_reference(parts, body, what)


def _ext_bytes(ext: Any) -> bytes:
    if ext is None:
        return b""
    if isinstance(ext, _RAW):
        return bytes(ext)
    try:
        return messages.build_ext(ext)
    except Exception as e:
        raise EncodeError(f"cannot build extensions: {e}") from e


_IN_PARAMS = ("n", "opcode", "unique", "nodeid", "uid", "gid", "pid", "total_extlen", "padding")


def _fixed_request(op: int, minor: int, xext: bool) -> Any:
    """(parts, message size, build) for a request whose body is at most one fixed-size
    struct (fuse_in_header and the body in one struct.pack), else None. Cached through
    request_encoder."""
    fixed = None
    try:
        parts = messages._request_parts(op, int(minor), xext)
        build = None
        if parts is not None and messages.always_parses(parts):
            build = messages.prefixed_builder(parts, "fuse_in_header", _IN_PARAMS)
        if build is not None:
            size = parts[0].size if parts else 0
            fixed = (parts, _IN_SIZE + size, build)
    except Exception:  # noqa: BLE001 -- a bad minor/opcode: the general path decides
        return None
    return fixed


def request_encoder(opcode: int, minor: int = 46, flags: int = 0) -> Any:
    """A fast encoder for one request kind, or None when it has none.

    For an opcode whose body is at most one fixed-size struct, returns ``enc(body, unique,
    nodeid, uid, gid, pid, padding=0, request=True) -> (bytes, Request) | bytes | None``:
    what ``encode_request(opcode, body, unique=..., nodeid=..., uid=..., gid=..., pid=...,
    padding=..., minor=minor, flags=flags, return_request=request)`` returns, or None
    where that call must decide (a body that is not a dict, a value that does not pack: its
    error is the general path's). encode_request itself takes this path; callers that send
    many requests of a few kinds keep one per opcode (the Session does)."""
    op = int(opcode)
    xext = bool(flags & messages.FUSE_SETXATTR_EXT)
    enc = _ENCODERS.get((op, minor, xext), _MISSING)
    if enc is _MISSING:
        enc = _ENCODERS[op, minor, xext] = _make_request_encoder(op, minor, xext)
    return enc


# (opcode, minor, setxattr_ext) -> request_encoder's enc, or None.
_ENCODERS: dict[tuple[int, int, bool], Any] = {}


def _make_request_encoder(op: int, minor: int, xext: bool) -> Any:
    fixed = _fixed_request(op, minor, xext)
    if fixed is None:
        return None
    fparts, n, build = fixed
    name = _OPCODES.get(op, op)

    def enc(body: Any, unique: int, nodeid: int, uid: int, gid: int, pid: int,
            padding: int = 0, request: bool = True) -> Any:
        if body is None:
            body = _NO_BODY
        elif not isinstance(body, dict):
            return None
        try:
            data = build(body, n, op, unique, nodeid, uid, gid, pid, 0, padding)
        except Exception:  # noqa: BLE001 -- the general path decides the error
            return None
        if not request:
            return data
        # struct.pack range-checked the ints, so they are what unpack gives.
        if int is type(unique) is type(nodeid) is type(uid) is type(gid) is type(pid) \
                is type(padding):
            values = (n, op, unique, nodeid, uid, gid, pid, 0, padding)
        else:
            values = _in_unpack(data, 0)
        return data, Request(None, name, _LAZY, [], data, fparts, values)

    return enc


def fixed_reply_size(opcode: int, minor: int = 46) -> int | None:
    """The whole size (fuse_out_header included) of a successful reply to ``opcode`` when
    its body is one fixed-size struct (GETATTR: 16 + sizeof(fuse_attr_out)), else None."""
    fixed = _fixed_reply_cached(int(opcode), minor)
    return None if fixed is None else fixed[0]


def reply_decoder(opcode: int, minor: int = 46) -> Any:
    """A fast decoder for replies to one request kind, or None when it has none.

    For an opcode whose reply body is one fixed-size struct, returns ``dec(data, request)
    -> Reply``, equal to ``decode_reply(data, request, minor)`` (which it calls for anything
    but a well-formed success reply of exactly that size, so errors are the same)."""
    op = int(opcode)
    fixed = _fixed_reply_cached(op, minor)
    if fixed is None:
        return None
    size, parse = fixed
    name = _OPCODES.get(op, op)

    def dec(data: Any, request: Any) -> Reply:
        if type(data) is bytes and len(data) == size:
            values, body = parse(data, 0)
            if values[0] == size and values[1] == 0:
                return Reply(None, name, body, data, request, values)
        return decode_reply(data, request, minor)

    return dec


def encode_request(
    opcode: int,
    body: Any,
    *,
    unique: int,
    nodeid: int = 0,
    uid: int = 0,
    gid: int = 0,
    pid: int = 0,
    minor: int = 46,
    flags: int = 0,
    ext: Any = None,
    length: int | None = None,
    total_extlen: int | None = None,
    padding: int = 0,
    return_request: bool = False,
) -> Any:
    """The bytes of a request; ``len`` and ``total_extlen`` derived unless forced.

    ``body`` is a mapping (see :mod:`.messages` for the shapes) or raw ``bytes``; ``ext`` is a
    list of extension records (see :func:`.messages.parse_ext`) or raw bytes.

    ``return_request=True`` returns ``(bytes, Request)``: the Request equals
    ``decode_request(bytes, minor, flags=flags)`` and DecodeError is raised exactly when
    that would raise. When the message cannot fail to decode (a dict body of fixed structs
    and names, nothing forced, no extensions) the body is decoded on first use instead.
    """
    op = int(opcode)
    xext = bool(flags & messages.FUSE_SETXATTR_EXT)
    if ext is None and length is None and total_extlen is None:
        try:
            enc = request_encoder(op, minor, flags)
        except TypeError:  # an unhashable minor: the general path decides
            enc = None
        if enc is not None:
            out = enc(body, unique, nodeid, uid, gid, pid, padding, return_request)
            if out is not None:
                return out
    parts = messages._request_parts(op, int(minor), xext)
    payload = _build_body(parts, body, ("request", opcode))
    extb = b"" if ext is None else _ext_bytes(ext)
    n = _IN_SIZE + len(payload) + len(extb)
    try:
        hdr = _in_pack(
            n if length is None else length,
            op,
            unique,
            nodeid,
            uid,
            gid,
            pid,
            (len(extb) + 7) // 8 if total_extlen is None else total_extlen,
            padding,
        )
    except Exception as e:  # struct.error, OverflowError ...
        raise EncodeError(f"cannot build fuse_in_header: {e}") from e
    data = hdr + payload + extb if extb else hdr + payload
    if not return_request:
        return data
    if (
        length is None
        and total_extlen is None
        and not extb
        and parts is not None
        and messages.always_parses(parts)
        and not isinstance(body, _RAW)
    ):
        values = _in_unpack(hdr, 0)
        return data, Request(None, _OPCODES.get(op, op), _LAZY, [], data, parts, values)
    return data, decode_request(data, minor, flags=flags)


def encode_reply(
    request_or_opcode: Any,
    body: Any,
    *,
    unique: int,
    error: int = 0,
    minor: int = 46,
    length: int | None = None,
) -> bytes:
    """The bytes of a reply. With ``error`` != 0 and ``body`` None, the header alone."""
    if isinstance(request_or_opcode, Request):
        op = int(request_or_opcode.opcode)
    else:
        op = int(request_or_opcode)
    if error != 0 and body is None:
        payload = b""
    else:
        if op in _XATTR_OPS:
            # The shape depends on the request's size (0: fuse_getxattr_out), else the body.
            xsize = None
            rbody = request_or_opcode.body if isinstance(request_or_opcode, Request) else None
            if isinstance(rbody, Mapping):
                xsize = rbody.get("size")
            elif isinstance(body, Mapping) and "value" not in body:
                xsize = 0
            parts = messages.reply_parts(op, minor, xsize)
        else:
            parts = messages._reply_parts(op, int(minor), None)
        payload = _build_body(parts, body, ("reply to", op))
    try:
        hdr = _out_pack(_OUT_SIZE + len(payload) if length is None else length, error, unique)
    except Exception as e:
        raise EncodeError(f"cannot build fuse_out_header: {e}") from e
    return hdr + payload


def encode_notification(code: int, body: Any, *, length: int | None = None) -> bytes:
    """The bytes of a notification (``unique`` 0, ``error`` = ``code``)."""
    parts = messages.notification_parts(code)
    payload = _build_body(parts, body, ("notification", code))
    try:
        hdr = _out_pack(_OUT_SIZE + len(payload) if length is None else length, int(code), 0)
    except Exception as e:
        raise EncodeError(f"cannot build fuse_out_header: {e}") from e
    return hdr + payload


# --- the one reply-area policy ----------------------------------------------------------

# A reply area for requests whose reply has no fixed size and no size field: a page, which
# holds every fixed reply and a READLINK target of PATH_MAX.
DEFAULT_REPLY_AREA = _OUT_SIZE + 4096
# fuse_ioctl_out and the two iovec lists of an IOCTL retry (FUSE_IOCTL_MAX_IOV each).
_IOCTL_ROOM = structs.FAST["fuse_ioctl_out"].size + 2 * C.FUSE_IOCTL_MAX_IOV * _IOVEC_SIZE


def reply_area(opcode: int, body: Any = None, minor: int = 46) -> int:
    """The device-writable area for the reply to a request (``body``: its decoded body or
    the mapping it is built from), sized as Linux's virtio_fs sizes its out arguments:

    * a reply body of one fixed-size struct at ``minor``: exactly header + struct
      (GETATTR: 16 + sizeof(fuse_attr_out));
    * READ / READDIR / READDIRPLUS: header + the request's ``size``;
    * GETXATTR / LISTXATTR: header + ``size``, or header + fuse_getxattr_out for size 0;
    * IOCTL: header + ``out_size`` + room for fuse_ioctl_out and a retry's iovecs;
    * anything else: header + 4096 (``DEFAULT_REPLY_AREA``).

    The client, the /dev/fuse bridge and the fuzz harness all ask this one function."""
    op = int(opcode)
    size = None
    if op in _NEEDS_REQUEST_BODY and body is not None:
        try:
            size = body.get("out_size" if op == _OP.FUSE_IOCTL else "size")
        except AttributeError:
            size = getattr(body, "out_size" if op == _OP.FUSE_IOCTL else "size", None)
    if isinstance(size, int) and size >= 0:
        if op == _OP.FUSE_IOCTL:
            return _OUT_SIZE + size + _IOCTL_ROOM
        if op in _XATTR_OPS and size == 0:
            return _OUT_SIZE + structs.FAST["fuse_getxattr_out"].size
        return _OUT_SIZE + size
    fixed = fixed_reply_size(op, minor)
    return DEFAULT_REPLY_AREA if fixed is None else fixed
