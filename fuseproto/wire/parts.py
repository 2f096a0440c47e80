"""The parts a message body is declared with, and what they make of a body.

A body is a tuple of parts (:class:`Fixed`, :class:`Name`, :class:`Sized`, :class:`Rest`,
:class:`Counted`, :class:`Dirents`, ...; the per-opcode tables are in :mod:`.messages`,
which documents the body shapes). Each part has three interpretations of one
declaration:

* ``subcons()``: a fragment of a construct ``Struct`` (made of :mod:`.constructs`);
  :func:`schema` joins them into the body's construct, the reference;
* ``parse()``: ``struct.unpack_from`` over ``structs.FAST`` (:func:`parse_parts`), the
  same Container as the construct, accepting and rejecting the same bytes;
* ``build()``: the inverse (:func:`build_parts`), fixed structs packed by the builders
  :mod:`.codegen` generates from ``structs.FAST[...].tree``, names and data concatenated.
  Where a value is of a kind the fast builder does not mirror (a nested struct or list
  item that is not a dict ...) it raises :class:`~.codegen.NotFast`; the codec then builds
  with the construct (tests/test_wire_encode.py checks the two byte for byte and error
  for error).
"""

from __future__ import annotations

import struct as _struct
from collections import deque
from collections.abc import Callable, Mapping
from functools import cache, lru_cache, partial
from itertools import chain, islice, repeat
from operator import add, itemgetter, methodcaller, mod, setitem, sub
from typing import Any

from construct import (
    Array,
    Bytes,
    Const,
    Construct,
    Container,
    GreedyBytes,
    Int64ul,
    ListContainer,
    Struct,
    Terminated,
    this,
)

from ..errors import (
    DecodeError,
    LengthMismatchError,
    LimitExceededError,
    TrailingDataError,
    TruncatedError,
)
from . import constants as C
from . import structs
from .codegen import NotFast, align8, chars, compile_builder, nested, octets
from .constructs import (
    BySize,
    Check,
    CName,
    Derived,
    Greedy,
    Items,
    ParseAs,
    UntilEnd,
    bytes_default,
    defaulted,
)

__all__ = [
    "FUSE_IOCTL_RETRY",
    "AnySize",
    "Counted",
    "Dirents",
    "Fixed",
    "IoctlOut",
    "Name",
    "NameN",
    "Part",
    "Rest",
    "Sized",
    "always_parses",
    "body_parser",
    "build_parts",
    "parse_parts",
    "prefixed_builder",
    "schema",
]

FUSE_IOCTL_RETRY = int(C.IoctlFlags.FUSE_IOCTL_RETRY)


class Part:
    """One piece of a body: ``parse``/``build`` (fast) and ``subcons`` (construct).

    ``parse(buf, off, end, body) -> (new offset, body)`` reads the part at ``off`` (the
    body's bytes end at ``end``) into ``body`` (None before the first part: a part may
    return its own Container). ``build(body) -> bytes`` is the inverse for a dict body, the
    bytes ``subcons()`` build for the same value (it raises where they raise, or NotFast).
    """

    fields: tuple[str, ...] = ()
    build: Callable[[Mapping[str, Any]], bytes]

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def subcons(self) -> list[Construct]:
        raise NotImplementedError


class Fixed(Part):
    """A struct of fuse.h (or its ``size``-byte compat prefix); fields merged into the body."""

    def __init__(
        self,
        struct_name: str,
        size: int | None = None,
        derive: Mapping[str, Callable[[Any], Any]] | None = None,
    ):
        self.struct_name = struct_name
        self.fl = structs.fast(struct_name, size)
        self.size = self.fl.size
        self.con = structs.compat(struct_name, self.size)
        self.derive = dict(derive or {})
        self.fields = tuple(sc.name for sc in self.con.subcons)
        self._parse = self.fl.parse
        if self.derive:
            label = f"{struct_name}@{self.size} derived"
            self.build = compile_builder(self.fl.tree, derive=self.derive, label=label)
        else:
            self.build = self.fl.build

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        if end - off < self.size:
            raise TruncatedError(
                f"{self.struct_name} needs {self.size} bytes, {end - off} present",
                offset=end,
                path=self.struct_name,
            )
        c = self._parse(buf, off)
        if body is None:
            return off + self.size, c
        for k, v in c.items():
            body[k] = v
        return off + self.size, body

    def subcons(self) -> list[Construct]:
        return defaulted(self.con, self.derive)


class AnySize(Part):
    """INIT's self-describing struct: the body is one of ``sizes`` (compat prefixes)."""

    def __init__(self, struct_name: str, sizes: tuple[int, ...]):
        self.struct_name = struct_name
        self.variants = {n: Fixed(struct_name, n) for n in sizes}
        self.sizes = tuple(sorted(sizes))
        self.variant_fields = {n: frozenset(v.fields) for n, v in self.variants.items()}
        self.all_fields = self.variant_fields[self.sizes[-1]]

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        v = self.variants.get(end - off)
        if v is None:
            raise LengthMismatchError(
                f"{self.struct_name} is {end - off} bytes, not one of {self.sizes}",
                offset=off,
                path=self.struct_name,
            )
        return v.parse(buf, off, end, body)

    def build(self, body: Mapping[str, Any]) -> bytes:
        # As constructs.BySize: the shortest form holding every field given (not None).
        keys = {k for k, v in body.items() if v is not None} & self.all_fields
        for n in self.sizes:
            if keys <= self.variant_fields[n]:
                break
        return self.variants[n].build(body)

    def subcons(self) -> list[Construct]:
        raise TypeError("AnySize is a whole body: use schema()")


class Name(Part):
    """A NUL-terminated name, kept as bytes without the NUL."""

    def __init__(self, field: str = "name"):
        self.field = field
        self.fields = (field,)

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        i = buf.find(b"\0", off, end)
        if i < 0:
            raise TruncatedError("name without terminating NUL", offset=end, path=self.field)
        if body is None:
            body = Container()
        body[self.field] = buf[off:i]
        return i + 1, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        name = octets(body[self.field])
        if b"\0" in name:
            raise ValueError(f"{self.field} contains NUL")
        return name + b"\0"

    def subcons(self) -> list[Construct]:
        return [self.field / CName()]


class NameN(Part):
    """``namelen`` bytes of name then a NUL (INVAL_ENTRY, DELETE); ends the body."""

    def __init__(self, field: str, len_field: str):
        self.field = field
        self.len_field = len_field
        self.fields = (field,)

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        n = body[self.len_field]
        if end - off != n + 1:
            raise LengthMismatchError(
                f"{self.len_field}={n} but {end - off} bytes follow (name + NUL)",
                offset=off,
                path=self.len_field,
            )
        if buf[off + n] != 0:
            raise DecodeError("name not NUL-terminated", offset=off + n, path=self.field)
        body[self.field] = buf[off : off + n]
        return end, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        return octets(body[self.field]) + b"\0"  # namelen (derived or forced) is not checked

    def subcons(self) -> list[Construct]:
        lf = self.len_field
        return [
            Check(lambda c, rem: rem == c[lf] + 1, "name length mismatch", LengthMismatchError),
            self.field / ParseAs(Bytes(this[lf]), Greedy()),
            Const(b"\0"),
        ]


class Sized(Part):
    """Exactly ``body[size_field]`` bytes, which end the body (WRITE data, xattr value...)."""

    def __init__(self, field: str, size_field: str):
        self.field = field
        self.size_field = size_field
        self.fields = (field,)

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        n = body[self.size_field]
        if end - off != n:
            raise LengthMismatchError(
                f"{self.size_field}={n} but {end - off} bytes present",
                offset=off,
                path=self.size_field,
            )
        body[self.field] = buf[off:end]
        return end, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        return octets(body[self.field])  # the size field (derived or forced) is not checked

    def subcons(self) -> list[Construct]:
        sf = self.size_field
        return [
            Check(lambda c, rem: rem == c[sf], "size mismatch", LengthMismatchError),
            self.field / ParseAs(Bytes(this[sf]), Greedy()),
        ]


class Rest(Part):
    """All remaining bytes (READ reply, READLINK reply ...); ``limit`` caps the length."""

    def __init__(self, field: str, limit: int | None = None):
        self.field = field
        self.limit = limit
        self.fields = (field,)

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        if self.limit is not None and end - off > self.limit:
            raise LimitExceededError(
                f"{end - off} bytes above the maximum {self.limit}", offset=off, path=self.field
            )
        if body is None:
            body = Container()
        body[self.field] = buf[off:end]
        return end, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        # As GreedyBytes: bytes or bytearray only; the limit is not checked on build.
        data = body[self.field]
        if type(data) is bytearray:
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"{self.field}: expected bytes, got {type(data).__name__}")
        return data

    def subcons(self) -> list[Construct]:
        out = []
        if self.limit is not None:
            lim = self.limit
            out.append(Check(lambda c, rem: rem <= lim, "above maximum", LimitExceededError))
        out.append(self.field / GreedyBytes)
        return out


class Counted(Part):
    """Exactly ``body[count_field]`` items of ``item`` (a struct name or "u64") to the end."""

    def __init__(
        self, field: str, count_field: str, item: str, limit: int | None = None, back: int = 0
    ):
        self.back = back  # bytes from the count field to the first item, for error offsets
        self.field = field
        self.count_field = count_field
        self.item = item
        self.limit = limit
        self.fields = (field,)
        if item == "u64":
            self.isize = 8
            self.fl = None
        else:
            self.fl = structs.FAST[item]
            self.isize = self.fl.size
            self._item_build = self.fl.build

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        n = body[self.count_field]
        if self.limit is not None and n > self.limit:
            raise LimitExceededError(
                f"{self.count_field}={n} above the maximum {self.limit}",
                offset=off - self.back,
                path=self.count_field,
            )
        if end - off != n * self.isize:
            raise LengthMismatchError(
                f"{self.count_field}={n} needs {n * self.isize} bytes, {end - off} present",
                offset=off - self.back,
                path=self.count_field,
            )
        if self.fl is None:
            items = ListContainer(_struct.unpack_from(f"<{n}Q", buf, off))
        else:
            p = self.fl.parse
            items = ListContainer([p(buf, o) for o in range(off, end, self.isize)])
        body[self.field] = items
        return end, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        # The count field (derived or forced) and the limit are not checked on build.
        if self.fl is None:  # u64 items: the list must be present (it may be None)
            items = tuple(body[self.field] or ())
            return _struct.pack(f"<{len(items)}Q", *items)
        build = self._item_build
        return b"".join([build(nested(x)) for x in body.get(self.field) or ()])

    def subcons(self) -> list[Construct]:
        cf, isz, lim = self.count_field, self.isize, self.limit
        out = []
        if lim is not None:
            out.append(
                Check(lambda c, rem: c[cf] <= lim, "count above maximum", LimitExceededError)
            )
        out.append(Check(lambda c, rem: rem == c[cf] * isz, "count mismatch", LengthMismatchError))
        item = Int64ul if self.item == "u64" else Struct(*defaulted(structs.ALL[self.item]))
        out.append(self.field / ParseAs(Array(this[cf], item), Items(item)))
        return out


_DIRENT = structs.FAST["fuse_dirent"]
_DIRENTPLUS = structs.FAST["fuse_direntplus"]
_DIRENT_SIZE = _DIRENT.size  # FUSE_NAME_OFFSET, 24
_DIRENTPLUS_SIZE = _DIRENTPLUS.size  # FUSE_NAME_OFFSET_DIRENTPLUS, 152
_ENTRY_OUT_BUILD = structs.FAST["fuse_entry_out"].build
# A record's fuse_dirent (namelen derived from the name when absent or None), generated,
# and where its namelen lies in the bytes it packs (the schema's layout).
_DIRENT_BUILD = compile_builder(_DIRENT.tree, derive={"namelen": lambda d: len(d["name"])},
                                label="fuse_dirent derived")
_NAMELEN_AT = next(slice(off, off + size) for name, off, size in structs.layout("fuse_dirent")
                   if name == "namelen")
_DIRENT_OF = itemgetter("dirent")
_NAME_OF = itemgetter("name")
_PAD_OF = methodcaller("get", "pad")
_ENTRY_OUT_OF = methodcaller("get", "entry_out")
_le_int = partial(int.from_bytes, byteorder="little")
# Where a record's namelen lies: in a fuse_dirent, and in a fuse_direntplus (its nested
# fuse_dirent's); what Dirents.parse walks the chain of records by.
_DIRENT_NAMELEN = _NAMELEN_AT.start
_DIRENTPLUS_NAMELEN = _DIRENT_NAMELEN + next(
    off for name, off, _size in structs.layout("fuse_direntplus") if name == "dirent")
_namelen_at = _struct.Struct("<I").unpack_from  # namelen is a u32 (checked below)
if _NAMELEN_AT.stop - _NAMELEN_AT.start != 4:
    raise ValueError("fuse_dirent.namelen is not a u32")


class Dirents(Part):
    """READDIR (``plus=False``) or READDIRPLUS records to the end, 8-byte aligned, pad kept."""

    def __init__(self, plus: bool):
        self.plus = plus
        self.fields = ("entries",)

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        hsize = _DIRENTPLUS_SIZE if self.plus else _DIRENT_SIZE
        # The records' chain first, from their namelen fields alone: a fuzzer's replies
        # mostly fail at the end of a long chain (the last record runs past the reply, or
        # a partial header is left), and are refused here without a Container made. A
        # header fits while off <= last (one comparison per record: under atheris each
        # is a traced call); a record that runs past the reply ends the walk (off > end),
        # so only the last can, and it is refused after the walk, before what is left
        # after the last whole record (a partial header).
        last = end - hsize
        at = off + (_DIRENTPLUS_NAMELEN if self.plus else _DIRENT_NAMELEN)
        namelen = 0
        offs: list[int] = []  # each record's offset, then the end
        name_ends: list[int] = []  # where each record's name ends
        while off <= last:
            (namelen,) = _namelen_at(buf, at)
            offs.append(off)
            name_ends.append(off + hsize + namelen)
            step = align8(hsize + namelen)
            off += step
            at += step
        if off != end:
            if off > end:
                raise TruncatedError(
                    f"dirent namelen={namelen} runs past the reply",
                    offset=end,
                    path="entries.namelen",
                )
            raise TruncatedError("partial dirent header", offset=end, path="entries")
        # The records from the offsets, in C (map): no Python step per record (a
        # reply has hundreds; under atheris each step of a loop here is a traced call).
        # Each record gets its name, then its pad, as a record-by-record parse would.
        items = ListContainer(map(_DIRENTPLUS.parse if self.plus else _DIRENT.parse,
                                  repeat(buf), offs))
        dirents = list(map(_DIRENT_OF, items)) if self.plus else items
        starts = list(map(add, offs, repeat(hsize)))
        offs.append(end)  # a record's padding ends where the next begins
        deque(map(setitem, dirents, repeat("name"),
                  map(buf.__getitem__, map(slice, starts, name_ends))), 0)
        deque(map(setitem, items, repeat("pad"),
                  map(buf.__getitem__, map(slice, name_ends, islice(offs, 1, None)))), 0)
        if body is None:
            body = Container()
        body["entries"] = items
        return off, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        # No Python step per record (under atheris each step of a loop is a traced call,
        # and replies carry hundreds): the type checks run over the whole list first, the
        # headers are the generated builder's (namelen derived when absent), each pad's
        # length comes from the namelen its header packed, an absent pad is chars()'s
        # zeros, and the records' pieces are joined in order (entry_out, fuse_dirent,
        # name, pad), all by map in C.
        entries = list(body["entries"])  # walked more than once
        if not all(map(isinstance, entries, repeat(dict))):
            raise NotFast
        dirents = list(map(_DIRENT_OF, entries)) if self.plus else entries
        if self.plus and not all(map(isinstance, dirents, repeat(dict))):
            raise NotFast
        hdrs = list(map(_DIRENT_BUILD, dirents))
        namelens = map(_le_int, map(itemgetter(_NAMELEN_AT), hdrs))
        hsize = _DIRENTPLUS_SIZE if self.plus else _DIRENT_SIZE
        pads = map(chars, map(_PAD_OF, entries),
                   map(mod, map(sub, repeat(-hsize), namelens), repeat(8)))
        names = map(octets, map(_NAME_OF, dirents))
        if self.plus:
            heads = map(_ENTRY_OUT_BUILD, map(nested, map(_ENTRY_OUT_OF, entries)))
            return b"".join(chain.from_iterable(zip(heads, hdrs, names, pads, strict=True)))
        return b"".join(chain.from_iterable(zip(hdrs, names, pads, strict=True)))

    def subcons(self) -> list[Construct]:
        if self.plus:
            dirent = Struct(
                *defaulted(structs.ALL["fuse_dirent"], {"namelen": lambda c: len(c.name)}),
                "name" / ParseAs(Bytes(this.namelen), Greedy()),
            )
            rec = Struct(
                "entry_out" / Struct(*defaulted(structs.ALL["fuse_entry_out"])),
                "dirent" / dirent,
                "pad" / bytes_default(lambda c: -(_DIRENTPLUS_SIZE + c.dirent.namelen) % 8),
            )
        else:
            rec = Struct(
                *defaulted(structs.ALL["fuse_dirent"], {"namelen": lambda c: len(c.name)}),
                "name" / ParseAs(Bytes(this.namelen), Greedy()),
                "pad" / bytes_default(lambda c: -(_DIRENT_SIZE + c.namelen) % 8),
            )
        # A record's parse reads its own bytes only: repeated records are parsed once.
        return ["entries" / UntilEnd(rec, repeats=True)]


_IOVEC = structs.FAST["fuse_ioctl_iovec"]
_IOVEC_BUILD = structs.FAST["fuse_ioctl_iovec"].build


class IoctlOut(Part):
    """After fuse_ioctl_out: iovecs when FUSE_IOCTL_RETRY is set, else the out data."""

    fields = ("in_iov", "out_iov", "data")

    def parse(self, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        if body["flags"] & FUSE_IOCTL_RETRY:
            n_in, n_out = body["in_iovs"], body["out_iovs"]
            if n_in + n_out > C.FUSE_IOCTL_MAX_IOV:
                raise LimitExceededError(
                    f"{n_in}+{n_out} iovecs above FUSE_IOCTL_MAX_IOV", offset=off, path="in_iovs"
                )
            if end - off != 16 * (n_in + n_out):
                raise LengthMismatchError(
                    f"{n_in}+{n_out} iovecs need {16 * (n_in + n_out)} bytes, {end - off} present",
                    offset=off,
                    path="in_iovs",
                )
            p = _IOVEC.parse
            mid = off + 16 * n_in
            body["in_iov"] = ListContainer([p(buf, o) for o in range(off, mid, 16)])
            body["out_iov"] = ListContainer([p(buf, o) for o in range(mid, end, 16)])
            body["data"] = b""
        else:
            body["in_iov"] = ListContainer()
            body["out_iov"] = ListContainer()
            body["data"] = buf[off:end]
        return end, body

    def build(self, body: Mapping[str, Any]) -> bytes:
        # Both iovec lists and the data are built whatever FUSE_IOCTL_RETRY says.
        out = [_IOVEC_BUILD(nested(x)) for x in body.get("in_iov") or ()]
        out += [_IOVEC_BUILD(nested(x)) for x in body.get("out_iov") or ()]
        data = body.get("data")
        if data is not None:
            out.append(octets(data))
        return b"".join(out)

    def subcons(self) -> list[Construct]:
        def retry(c: Any) -> bool:
            return bool(c.flags & FUSE_IOCTL_RETRY)

        iovec = Struct(*defaulted(structs.ALL["fuse_ioctl_iovec"]))
        return [
            Check(
                lambda c, rem: not retry(c) or c.in_iovs + c.out_iovs <= C.FUSE_IOCTL_MAX_IOV,
                "too many iovecs",
                LimitExceededError,
            ),
            Check(
                lambda c, rem: not retry(c) or rem == 16 * (c.in_iovs + c.out_iovs),
                "iovec count mismatch",
                LengthMismatchError,
            ),
            "in_iov"
            / Derived(
                ParseAs(Array(lambda c: c.in_iovs if retry(c) else 0, iovec), Items(iovec)),
                lambda c: [],
            ),
            "out_iov"
            / Derived(
                ParseAs(Array(lambda c: c.out_iovs if retry(c) else 0, iovec), Items(iovec)),
                lambda c: [],
            ),
            "data" / Derived(Greedy(), lambda c: b""),
        ]


# --- whole bodies -----------------------------------------------------------------------


@cache
def schema(parts: tuple[Part, ...] | None) -> Construct:
    """The construct of a body declared as ``parts`` (``GreedyBytes`` for None: raw bytes).

    ``Struct(*subcons, Terminated)``; INIT's one :class:`AnySize` part is a
    :class:`~.constructs.BySize` over its compat prefixes. Cached per parts tuple.
    """
    if parts is None:
        return GreedyBytes
    if len(parts) == 1 and isinstance(parts[0], AnySize):
        part = parts[0]
        cons = {n: Struct(*v.subcons(), Terminated) for n, v in part.variants.items()}
        return BySize(part.struct_name, cons, part.variant_fields)
    subcons = [sc for p in parts for sc in p.subcons()]
    return Struct(*subcons, Terminated)


def parse_parts(parts: tuple[Part, ...] | None, buf: bytes, off: int, end: int) -> Any:
    """Decode ``buf[off:end]`` as ``parts`` with the fast path (raw bytes if None)."""
    if parts is None:
        return buf[off:end]
    body = None
    for p in parts:
        off, body = p.parse(buf, off, end, body)
    if body is None:
        body = Container()
    if off != end:
        raise TrailingDataError(f"{end - off} bytes after the body", offset=off, path="body")
    return body


@lru_cache(maxsize=4096)
def body_parser(parts: tuple[Part, ...] | None) -> Callable[[bytes, int, int], Any]:
    """``parse(buf, off, end)``: :func:`parse_parts` of ``parts``, made once per parts
    tuple for the codec's kinds. A body of one part (most of them: one fixed struct, a
    name, the rest) or none is read without the loop over parts; where that part does not
    end the body, :func:`parse_parts` itself runs and raises the error it always raises
    (tests/test_wire_fixed.py holds the two equal). The part's ``parse`` is looked up per
    call, as the loop does (a planted bug in a part class reaches every kind)."""
    if parts == ():

        def parse_empty(buf: bytes, off: int, end: int) -> Any:
            if off != end:
                return parse_parts(parts, buf, off, end)  # raises
            return Container()

        return parse_empty
    if parts is not None and len(parts) == 1:
        part = parts[0]

        def parse_one(buf: bytes, off: int, end: int) -> Any:
            # A first part makes its own Container (body None in, a body out).
            at, body = part.parse(buf, off, end, None)
            if at != end:
                return parse_parts(parts, buf, off, end)  # raises
            return body

        return parse_one
    return partial(parse_parts, parts)


def build_parts(parts: tuple[Part, ...], body: Mapping[str, Any]) -> bytes:
    """Encode dict ``body`` as ``parts`` with the fast path (the inverse of parse_parts).

    Gives the bytes the construct of ``parts`` builds, or raises where it raises (any
    exception: the caller translates), or :class:`NotFast` for a value it does not mirror.
    """
    if len(parts) == 1:
        return parts[0].build(body)
    if not parts:
        return b""
    return b"".join([p.build(body) for p in parts])


@lru_cache(maxsize=4096)
def always_parses(parts: tuple[Part, ...]) -> bool:
    """Whether what :func:`build_parts` makes of ``parts`` always parses back (to the end):
    fixed structs and NUL-free names, no length or count that could lie."""
    return all((type(p) is Fixed and not p.derive) or type(p) is Name for p in parts)


@lru_cache(maxsize=1024)
def prefixed_builder(
    parts: tuple[Part, ...], head: str, params: tuple[str, ...]
) -> Callable[..., bytes] | None:
    """``build(body, *params) -> bytes``: struct ``head`` (its fields from ``params``, in
    order) followed by the body of ``parts``, in ONE ``struct.pack`` (codegen over the two
    FastLayout trees); None unless ``parts`` is at most one underived :class:`Fixed` (a
    fixed-size body). Same bytes and same failures as ``head``'s pack plus
    :func:`build_parts`; the caller falls back to those on any exception."""
    hl = structs.FAST[head]
    if not hl.flat or len(params) != len(hl.fields):
        raise ValueError(f"{head}: a flat struct with one parameter per field")
    if not parts:
        return compile_builder((), hl.tree, params, label=f"{head}+empty")
    part = parts[0]
    if len(parts) != 1 or type(part) is not Fixed or part.derive:
        return None
    label = f"{head}+{part.struct_name}@{part.size}"
    return compile_builder(part.fl.tree, hl.tree, params, label=label)
