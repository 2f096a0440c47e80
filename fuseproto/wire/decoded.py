"""The decoded messages the codec gives: :class:`Request`, :class:`Reply`,
:class:`Notification` (h11's ``_events`` in spirit: plain objects, no I/O, no state).

They are made cheaply from what the codec already has: a header the codec unpacked into a
tuple becomes a ``construct.Container`` only on first access, and a request body the codec
built itself (one that cannot fail to decode) is decoded from ``raw`` only on first access.
"""

from __future__ import annotations

from typing import Any

from construct import Container

from . import messages, structs

__all__ = ["Request", "Reply", "Notification", "LAZY"]

_IN_FIELDS: tuple[str, ...] = tuple(structs.FAST["fuse_in_header"].fields)
_OUT_FIELDS: tuple[str, ...] = tuple(structs.FAST["fuse_out_header"].fields)
_IN_SIZE: int = structs.FAST["fuse_in_header"].size


class _Lazy:
    """The marker of a request body not decoded yet."""

    def __repr__(self) -> str:
        return "LAZY"


LAZY: Any = _Lazy()


class _LazyHeader:
    """``header`` as a Container built on first access from ``_values`` (the unpacked
    header tuple) when the codec made the message without one; ``_FIELDS`` names them.

    ``unique`` is a plain attribute, set with the header (the session reads it for every
    request in flight after every message: no property call per read)."""

    __slots__ = ("_header", "_values", "unique")
    _FIELDS: tuple[str, ...] = ()
    _header: Container | None
    _values: tuple[int, ...]
    unique: int

    def _set_header(self, header: Container | None, values: tuple[int, ...]) -> None:
        self._header = header
        self._values = values
        # Third field of both fuse_in_header (len, opcode, unique) and fuse_out_header
        # (len, error, unique).
        self.unique = values[2] if header is None else int(header["unique"])

    @property
    def header(self) -> Container:
        h = self._header
        if h is None:
            h = self._header = Container(zip(self._FIELDS, self._values, strict=True))
        return h

    @header.setter
    def header(self, value: Container) -> None:
        self._set_header(value, self._values)

    @property
    def header_values(self) -> tuple[int, ...]:
        """The header's fields in the struct's order (``_FIELDS``), without making the
        Container."""
        h = self._header
        return self._values if h is None else tuple(int(h[f]) for f in self._FIELDS)


class Request(_LazyHeader):
    """A decoded request: ``header`` (fuse_in_header Container), ``opcode``, ``body``,
    ``ext`` (extension records) and ``raw`` (its bytes).

    ``header`` None with ``values`` (the unpacked fuse_in_header) builds the Container on
    first access; ``body`` :data:`LAZY` with ``parts`` decodes the body from ``raw`` on
    first access (the codec does that only for bodies it built and that cannot fail).
    """

    __slots__ = ("opcode", "_body", "ext", "raw", "_parts")
    _FIELDS = _IN_FIELDS

    def __init__(
        self,
        header: Container | None,
        opcode: Any,
        body: Any,
        ext: list[Any],
        raw: bytes,
        parts: Any = None,
        values: tuple[int, ...] = (),
    ):
        self._header = header  # as _set_header, inline: one of these per message
        self._values = values
        self.unique = values[2] if header is None else int(header["unique"])
        self.opcode = opcode
        self._body = body
        self.ext = ext
        self.raw = raw
        self._parts = parts

    @property
    def body(self) -> Any:
        if self._body is LAZY:
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
        return self._values[3] if h is None else int(h["nodeid"])

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
    """A decoded reply: ``header`` (fuse_out_header), ``error``, ``body`` (None on error),
    ``raw`` and ``request`` (the Request it answers, or the opcode it was decoded for).

    ``header`` None with ``values`` (the unpacked fuse_out_header) builds the Container on
    first access.
    """

    __slots__ = ("opcode", "body", "raw", "request")
    _FIELDS = _OUT_FIELDS

    def __init__(
        self,
        header: Container | None,
        opcode: Any,
        body: Any,
        raw: bytes,
        request: Any,
        values: tuple[int, ...] = (),
    ):
        self._header = header  # as _set_header, inline: one of these per message
        self._values = values
        self.unique = values[2] if header is None else int(header["unique"])
        self.opcode = opcode
        self.body = body
        self.raw = raw
        self.request = request

    @property
    def error(self) -> int:
        h = self._header
        return self._values[1] if h is None else int(h["error"])

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
