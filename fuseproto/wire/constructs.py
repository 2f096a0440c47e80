"""The custom constructs the message schemas are made of (the declarative reference).

:mod:`.parts` joins these into one ``Struct(..., Terminated)`` per message body. Each
reproduces, on the construct side, one rule of the contract in :mod:`.messages`: names
without their NUL (:class:`CName`), length/count checks that raise a typed DecodeError
(:class:`Check`, through :class:`SchemaError`), derived length fields (:class:`Derived`),
"parse checked, build whatever is given" for fields a fuzzer may force (:class:`ParseAs`),
records to the end of the body with errors propagated (:class:`UntilEnd`, never
``GreedyRange``), INIT's body picked by its size (:class:`BySize`) and a body region
handled by plain functions (:class:`Area`, the extension area).

construct's ``Subconstruct`` protocol (``subcon._parsereport``, ``subcon._build``,
``context._index``) has no public equivalent that carries the context and the path; it is
called in ONE place, :func:`delegate`.

construct is untyped: the subclasses below carry ``# type: ignore[misc]`` for mypy's
"subclass of Any" only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from construct import (
    Array,
    Bytes,
    Construct,
    ConstructError,
    Container,
    FormatField,
    ListContainer,
    Renamed,
    Struct,
    Subconstruct,
    stream_tell,
)

from ..errors import DecodeError, LengthMismatchError, TruncatedError
from .codegen import octets

__all__ = [
    "Area",
    "BySize",
    "CName",
    "Check",
    "Derived",
    "Greedy",
    "IntOrZero",
    "Items",
    "ParseAs",
    "SchemaError",
    "UntilEnd",
    "bytes_default",
    "defaulted",
    "delegate",
    "get_bytes",
]

_PARSE = object()


def delegate(
    subcon: Construct,
    stream: Any,
    context: Any,
    path: str | None,
    obj: Any = _PARSE,
    index: int | None = None,
) -> Any:
    """Parse with ``subcon`` (no ``obj``) or build ``obj`` with it, inside a construct.

    The one call site of construct's extension protocol: ``_parsereport``/``_build`` keep
    the caller's stream, context and path (``parse_stream`` would start a new context and
    lose the path), and ``context._index`` is how construct's own ``Array`` tells the
    element being built its position.
    """
    if index is not None:
        context._index = index  # noqa: SLF001 -- construct's Array protocol, see above
    if obj is _PARSE:
        return subcon._parsereport(stream, context, path)  # noqa: SLF001 -- see above
    return subcon._build(obj, stream, context, path)  # noqa: SLF001 -- see above


class SchemaError(ConstructError):  # type: ignore[misc]
    """A construct-side check failed; ``kind`` names the DecodeError subclass to raise."""

    def __init__(self, message: str, kind: type[DecodeError], path: str | None = None):
        super().__init__(message, path=path)
        self.kind = kind


def _remaining(stream: Any) -> int:
    here: int = stream.tell()
    end: int = stream.seek(0, 2)
    stream.seek(here)
    return end - here


class Derived(Subconstruct):  # type: ignore[misc]
    """Parse as ``subcon``; build ``func(context)`` when the value is absent or None."""

    def __init__(self, subcon: Construct, func: Callable[[Any], Any]):
        super().__init__(subcon)
        self.func = func
        self.flagbuildnone = True

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        if obj is None:
            obj = self.func(context)
        return delegate(self.subcon, stream, context, path, obj)


class IntOrZero(FormatField):  # type: ignore[misc]
    """An integer field (a ``FormatField``'s format) that builds 0 when its value is absent
    or None: ``Derived(field, lambda ctx: 0)`` in one construct. Every fixed-struct field of
    every body schema is one, and parsing goes straight to ``FormatField`` (the
    differential parses these schemas for every new body shape: two calls fewer per
    field)."""

    def __init__(self, field: FormatField):
        super().__init__(field.fmtstr[0], field.fmtstr[1:])
        self.flagbuildnone = True

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        return super()._build(0 if obj is None else obj, stream, context, path)


def _zero_of(sc: Construct) -> Callable[[Any], Any]:
    if isinstance(sc, Array):
        n = sc.count
        return lambda ctx: [0] * n
    if isinstance(sc, Bytes):
        n = sc.length
        return lambda ctx: b"\0" * n
    return lambda ctx: 0


def defaulted(
    con: Construct, derive: Mapping[str, Callable[[Any], Any]] | None = None
) -> list[Construct]:
    """The subcons of struct ``con``: absent ints build as 0, ``derive`` fields computed."""
    out = []
    for sc in con.subcons:
        assert isinstance(sc, Renamed)
        inner = sc.subcon
        if derive and sc.name in derive:
            out.append(sc.name / Derived(inner, derive[sc.name]))
        elif isinstance(inner, Struct):
            out.append(sc.name / Struct(*defaulted(inner)))
        elif type(inner) is FormatField:
            out.append(sc.name / IntOrZero(inner))
        elif isinstance(inner, FormatField | Array | Bytes):
            out.append(sc.name / Derived(inner, _zero_of(inner)))
        else:  # Computed overlays and anything else as declared
            out.append(sc)
    return out


class CName(Construct):  # type: ignore[misc]
    """A NUL-terminated name as bytes (without the NUL); linear time, unlike NullTerminated."""

    def _parse(self, stream: Any, context: Any, path: str | None) -> bytes:
        start = stream_tell(stream, path)
        rest: bytes = stream.read()
        i = rest.find(b"\0")
        if i < 0:
            stream.seek(start)
            raise SchemaError("name without terminating NUL", TruncatedError, path)
        stream.seek(start + i + 1)
        return rest[:i]

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> bytes:
        name = octets(obj)
        if b"\0" in name:
            raise SchemaError("name contains NUL", DecodeError, path)
        stream.write(name + b"\0")
        return name


class Check(Construct):  # type: ignore[misc]
    """Raise ``kind`` when ``pred(context, remaining_bytes)`` is false (on parse only)."""

    def __init__(self, pred: Callable[[Any, int], bool], message: str, kind: type[DecodeError]):
        super().__init__()
        self.pred = pred
        self.message = message
        self.kind = kind
        self.flagbuildnone = True

    def _parse(self, stream: Any, context: Any, path: str | None) -> None:
        if not self.pred(context, _remaining(stream)):
            raise SchemaError(self.message, self.kind, path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> None:
        return None

    def _sizeof(self, context: Any, path: str | None) -> int:
        return 0


class UntilEnd(Subconstruct):  # type: ignore[misc]
    """Records until the stream ends; any error inside propagates (not GreedyRange).

    With ``repeats``, a record whose bytes are those of a record this construct parsed
    before (in this list or an earlier one) is that record again (a fresh copy, not
    parsed a second time): only for a record construct whose parse is a function of its
    own bytes (it reads no outer field and not how much of the stream remains), as a
    dirent's is. Such a parse, given the bytes of an earlier record, reads them in the
    same order and stops where it stopped, so at most one earlier record's bytes can
    start at a position. A list built by copying entries (the mutators do, to reach
    counts like 256, then shuffle), or a mutant of a list parsed before (one record
    changed), then costs one parse per new record. Up to :data:`_MEMO_MAX` records are
    kept, looked for at the :data:`_SIZES_MAX` record sizes seen last."""

    def __init__(self, subcon: Construct, repeats: bool = False):
        super().__init__(subcon)
        self.repeats = repeats
        self._memo: dict[bytes, Any] = {}  # a record's bytes -> its value
        self._sizes: dict[int, None] = {}  # record sizes, the last seen last

    def _parse(self, stream: Any, context: Any, path: str | None) -> ListContainer:
        here = stream.tell()
        end = here + _remaining(stream)
        out = ListContainer()
        memo, sizes = self._memo, self._sizes
        value: Any = None
        while here < end:
            if memo:
                chunk = stream.read(max(sizes))
                for n in reversed(sizes):
                    value = memo.get(chunk[:n]) if n <= len(chunk) else None
                    if value is not None:
                        break
                if value is not None:
                    out.append(_fresh(value))
                    here += n
                    stream.seek(here)
                    continue
                stream.seek(here)
            value = delegate(self.subcon, stream, context, path)
            out.append(value)
            after = stream.tell()
            if self.repeats and after > here:
                n = after - here
                stream.seek(here)
                if len(memo) >= _MEMO_MAX:
                    memo.clear()
                memo[stream.read(n)] = _fresh(value)
                sizes.pop(n, None)
                sizes[n] = None
                if len(sizes) > _SIZES_MAX:
                    del sizes[next(iter(sizes))]
            value = None
            here = after
        return out

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        for i, item in enumerate(obj):
            delegate(self.subcon, stream, context, path, item, index=i)
        return obj


_MEMO_MAX = 4096
_SIZES_MAX = 16


def _fresh(obj: Any) -> Any:
    """A copy of a parsed value: new Containers and lists all the way down (bytes and
    ints are immutable), without construct's ``_io`` (the stream it was parsed from)."""
    if isinstance(obj, dict):
        return Container({k: _fresh(v) for k, v in obj.items() if k != "_io"})
    if isinstance(obj, list):
        return ListContainer([_fresh(v) for v in obj])
    return obj


class ParseAs(Construct):  # type: ignore[misc]
    """Parse with ``parse_con`` (checked, sized by a field); build whatever is given.

    A forced length/count field may disagree with the data: fuzzers must be able to lie.
    """

    def __init__(self, parse_con: Construct, build_con: Construct):
        super().__init__()
        self.parse_con = parse_con
        self.build_con = build_con
        self.flagbuildnone = build_con.flagbuildnone

    def _parse(self, stream: Any, context: Any, path: str | None) -> Any:
        return delegate(self.parse_con, stream, context, path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        return delegate(self.build_con, stream, context, path, obj)


class Items(Subconstruct):  # type: ignore[misc]
    """Build each element of a list (any length); the build side of counted arrays."""

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        for i, item in enumerate(obj or ()):
            delegate(self.subcon, stream, context, path, item, index=i)
        return obj


class Greedy(Construct):  # type: ignore[misc]
    """GreedyBytes that builds whatever bytes it is given (IOCTL's data, empty on retry)."""

    def _parse(self, stream: Any, context: Any, path: str | None) -> bytes:
        data: bytes = stream.read()
        return data

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        stream.write(octets(obj))
        return obj


def bytes_default(length: Callable[[Any], int]) -> Construct:
    """``Bytes(length)`` that builds ``length`` NULs when absent (dirent pads)."""
    return Derived(Bytes(length), lambda ctx: b"\0" * length(ctx))


def get_bytes(ctx: Any, key: str) -> Any:
    """``ctx[key]``, or ``b""`` when absent or None (for lengths derived from data)."""
    v = ctx.get(key)
    return v if v is not None else b""


class BySize(Construct):  # type: ignore[misc]
    """A body that is one of several structs told apart by size (INIT's compat prefixes).

    ``cons`` maps each size to its construct, ``fields`` each size to its field names.
    Parse picks the construct by the bytes present; build picks the shortest form holding
    every field given (not None).
    """

    def __init__(self, name: str, cons: Mapping[int, Construct], fields: Mapping[int, frozenset[str]]):
        super().__init__()
        self.label = name
        self.cons = dict(cons)
        self.sizes = tuple(sorted(cons))
        self.fields = dict(fields)
        self.all_fields = self.fields[self.sizes[-1]]

    def _parse(self, stream: Any, context: Any, path: str | None) -> Any:
        n = _remaining(stream)
        if n not in self.cons:
            raise SchemaError(f"{self.label}: bad size {n}", LengthMismatchError, path)
        return delegate(self.cons[n], stream, context, path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        keys = {k for k, v in obj.items() if v is not None} & self.all_fields
        n = self.sizes[-1]
        for n in self.sizes:  # ascending: the shortest form holding every given field
            if keys <= self.fields[n]:
                break
        return delegate(self.cons[n], stream, context, path, obj)


class Area(Construct):  # type: ignore[misc]
    """The rest of the stream through plain functions: ``parse(buf, off, end)`` (raising
    DecodeError, turned into a :class:`SchemaError` of the same kind) and ``build(obj)``."""

    def __init__(self, parse: Callable[[bytes, int, int], Any], build: Callable[[Any], bytes]):
        super().__init__()
        self.parse_fn = parse
        self.build_fn = build

    def _parse(self, stream: Any, context: Any, path: str | None) -> Any:
        rest: bytes = stream.read()
        try:
            return self.parse_fn(rest, 0, len(rest))
        except DecodeError as e:
            raise SchemaError(e.reason, type(e), path) from None

    def _build(self, obj: Any, stream: Any, context: Any, path: str | None) -> Any:
        stream.write(self.build_fn(obj))
        return obj
