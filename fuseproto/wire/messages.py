"""Per-opcode request and reply bodies of the FUSE protocol (7.46, peers at 7.22..7.46).

Every body is declared once, as a tuple of *parts* (:class:`Fixed`, :class:`Name`,
:class:`Sized`, :class:`Rest`, :class:`Counted`, :class:`Dirents`, ...). Each part has three
interpretations derived from that one declaration:

* ``subcons()``: a fragment of a construct ``Struct``. :func:`request_body`,
  :func:`reply_body` and :func:`notification_body` join the fragments into one declarative
  construct per opcode (``Struct(..., Terminated)``): the reference for the other two.
* ``parse()``: a ``struct.unpack_from`` interpretation (over :data:`structs.FAST`) that
  returns the same Container as the construct's ``parse``; the codec *decodes* with it
  (``tests/test_wire_properties.py`` checks the two agree on every vector and on
  hypothesis-generated bodies, accepting and rejecting the same bytes).
* ``build()``: the inverse, ``struct.pack`` of the fixed parts (a builder generated per
  struct from the same declaration) with names and data concatenated; the codec *builds*
  dict bodies with it and falls back to the construct for anything else
  (``tests/test_wire_encode.py`` checks the same bytes and the same failures).

Body shapes (the contract)
--------------------------
A body is a ``construct.Container``. The fields of the opcode's fixed struct(s) come first,
under the header's names (nested structs stay nested: ``body.attr.ino``); extra parts are
added as fields:

* ``name`` -- bytes without the terminating NUL. ``newname`` -- the second name of
  RENAME/RENAME2. ``link`` -- SYMLINK's target (the kernel sends the new entry's ``name``
  first, then the target) and the READLINK reply (no NUL on the wire).
* ``data`` -- bytes: WRITE payload (exactly ``size``), READ reply, IOCTL in data
  (exactly ``in_size``) and non-retry IOCTL reply data, NOTIFY_REPLY data (exactly
  ``size``), NOTIFY_STORE data (exactly ``size``).
* ``value`` -- SETXATTR value (exactly ``size``), GETXATTR/LISTXATTR reply value (raw bytes,
  for LISTXATTR the NUL-separated names) when the request's ``size`` != 0.
* ``entries`` -- a list: REMOVEMAPPING ``[Container(moffset=, len=)]``, BATCH_FORGET
  ``[Container(nodeid=, nlookup=)]``, NOTIFY_PRUNE ``[nodeid, ...]`` (ints), READDIR
  ``[Container(ino=, off=, namelen=, type=, name=, pad=)]``, READDIRPLUS
  ``[Container(entry_out=Container(...), dirent=Container(ino=, off=, namelen=, type=,
  name=), pad=)]``. ``pad`` is the bytes up to the next 8-byte boundary (kept, so a
  non-zero pad roundtrips).
* ``in_iov``/``out_iov``/``data`` -- the IOCTL reply: with FUSE_IOCTL_RETRY in ``flags``
  the two iovec lists (``[Container(base=, len=)]``) and ``data == b""``; without it two
  empty lists and the out data.
* ``info`` -- CUSE_INIT reply: the NUL-separated device info strings (raw bytes).

Per opcode, request / reply (``fixed+fixed`` are merged flat: CREATE's reply has
``nodeid ... attr`` then ``fh, open_flags, backing_id``; ``-`` is an empty Container)::

    LOOKUP        name                                 / fuse_entry_out
    FORGET        fuse_forget_in                       / - (no reply is sent)
    GETATTR       fuse_getattr_in                      / fuse_attr_out
    SETATTR       fuse_setattr_in                      / fuse_attr_out
    READLINK      -                                    / link
    SYMLINK       name, link                           / fuse_entry_out
    MKNOD         fuse_mknod_in, name                  / fuse_entry_out
    MKDIR         fuse_mkdir_in, name                  / fuse_entry_out
    UNLINK RMDIR  name                                 / -
    RENAME        fuse_rename_in, name, newname        / -
    LINK          fuse_link_in, name                   / fuse_entry_out
    OPEN OPENDIR  fuse_open_in                         / fuse_open_out
    READ          fuse_read_in                         / data (<= size)
    WRITE         fuse_write_in, data                  / fuse_write_out
    STATFS        -                                    / fuse_statfs_out
    RELEASE RELEASEDIR  fuse_release_in                / -
    FSYNC FSYNCDIR      fuse_fsync_in                  / -
    SETXATTR      fuse_setxattr_in, name, value        / -
    GETXATTR      fuse_getxattr_in, name               / fuse_getxattr_out if size==0 else value
    LISTXATTR     fuse_getxattr_in                     / fuse_getxattr_out if size==0 else value
    REMOVEXATTR   name                                 / -
    FLUSH         fuse_flush_in                        / -
    INIT          fuse_init_in                         / fuse_init_out
    READDIR       fuse_read_in                         / entries (fuse_dirent records)
    GETLK         fuse_lk_in                           / fuse_lk_out
    SETLK SETLKW  fuse_lk_in                           / -
    ACCESS        fuse_access_in                       / -
    CREATE TMPFILE  fuse_create_in, name               / fuse_entry_out+fuse_open_out
    INTERRUPT     fuse_interrupt_in                    / -
    BMAP          fuse_bmap_in                         / fuse_bmap_out
    DESTROY       -                                    / -
    IOCTL         fuse_ioctl_in, data                  / fuse_ioctl_out, in_iov, out_iov, data
    POLL          fuse_poll_in                         / fuse_poll_out
    NOTIFY_REPLY  fuse_notify_retrieve_in, data        / - (no reply is sent)
    BATCH_FORGET  fuse_batch_forget_in, entries        / - (no reply is sent)
    FALLOCATE     fuse_fallocate_in                    / -
    READDIRPLUS   fuse_read_in                         / entries (fuse_direntplus records)
    RENAME2       fuse_rename2_in, name, newname       / -
    LSEEK         fuse_lseek_in                        / fuse_lseek_out
    COPY_FILE_RANGE     fuse_copy_file_range_in        / fuse_write_out
    SETUPMAPPING  fuse_setupmapping_in                 / -
    REMOVEMAPPING fuse_removemapping_in, entries       / -
    SYNCFS        fuse_syncfs_in                       / -
    STATX         fuse_statx_in                        / fuse_statx_out
    COPY_FILE_RANGE_64  fuse_copy_file_range_in        / fuse_copy_file_range_out
    CUSE_INIT     cuse_init_in                         / cuse_init_out, info

Notifications (``fuse_out_header.unique == 0``, ``error`` = the code)::

    POLL fuse_notify_poll_wakeup_out       INVAL_INODE fuse_notify_inval_inode_out
    INVAL_ENTRY fuse_notify_inval_entry_out, name (namelen bytes + NUL)
    STORE fuse_notify_store_out, data      RETRIEVE fuse_notify_retrieve_out
    DELETE fuse_notify_delete_out, name    RESEND -     INC_EPOCH -
    PRUNE fuse_notify_prune_out, entries (count node ids, u64 each)

Unknown opcodes and notify codes: the body is the raw ``bytes``.

Rules
-----
* Lengths are checked before anything is allocated from them: a ``count``/``size`` field
  must match the bytes present (:class:`~fuseproto.errors.LengthMismatchError`), a body
  shorter than its fixed part is :class:`~fuseproto.errors.TruncatedError`, bytes after a
  fully determined body are :class:`~fuseproto.errors.TrailingDataError`, and protocol
  maxima (REMOVEMAPPING's 256 entries, IOCTL's 256 iovecs, CUSE's 4096 info bytes) are
  :class:`~fuseproto.errors.LimitExceededError`. A name without its NUL is truncated.
* Building derives every length/count field (``size``, ``in_size``, ``count``,
  ``namelen``, ``in_iovs``/``out_iovs``, ``nr_groups``, ext ``size``) when it is absent or
  ``None``; a value that is present is written as given (fuzzers must be able to lie).
  Other integer fields that are absent or ``None`` are built as 0, absent ``pad`` bytes as
  zeros.
* Version awareness (``minor`` is the negotiated protocol minor): ``fuse_entry_out`` is 120
  bytes and ``fuse_attr_out`` 96 below 7.9, ``fuse_write_in`` 24 below 7.9,
  ``fuse_mknod_in`` 8 below 7.12, ``fuse_statfs_out`` 48 below 7.4; ``fuse_setxattr_in`` is
  16 bytes only when FUSE_SETXATTR_EXT was negotiated (the ``flags`` argument: the 64-bit
  INIT flags), else 8. INIT is self-describing because it *is* the negotiation: the
  ``fuse_init_in`` body may be 8, 16 (before 7.36) or 64 bytes and ``fuse_init_out`` 8,
  24 (before 7.23) or 64 bytes, and the Container holds exactly the fields present;
  building picks the shortest form that holds every field given (give ``flags2`` for the
  full one). A compat-size body holds only the fields of its prefix (``fuse_entry_out`` at
  120 bytes has ``attr`` up to ``rdev``).
* The request extension area (``total_extlen`` 8-byte units at the end of a request) is a
  list of records, see :func:`parse_ext`.
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any

from construct import (
    Array,
    Bytes,
    Computed,
    Const,
    Construct,
    ConstructError,
    Container,
    FormatField,
    GreedyBytes,
    Int64ul,
    ListContainer,
    Renamed,
    Struct,
    Subconstruct,
    Terminated,
    stream_tell,
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

__all__ = [
    "Part",
    "Fixed",
    "Name",
    "Sized",
    "Rest",
    "Counted",
    "Dirents",
    "request_parts",
    "reply_parts",
    "notification_parts",
    "request_body",
    "reply_body",
    "notification_body",
    "parse_parts",
    "build_parts",
    "always_parses",
    "NotFast",
    "parse_ext",
    "build_ext",
    "ext_area",
]

_OP = C.fuse_opcode
_NC = C.fuse_notify_code
FUSE_SETXATTR_EXT = int(C.InitFlags.FUSE_SETXATTR_EXT)
FUSE_IOCTL_RETRY = int(C.IoctlFlags.FUSE_IOCTL_RETRY)
FUSE_EXT_GROUPS = int(C.fuse_ext_type.FUSE_EXT_GROUPS)
FUSE_MAX_NR_SECCTX = int(C.fuse_ext_type.FUSE_MAX_NR_SECCTX)


def _align8(n: int) -> int:
    return (n + 7) & ~7


# --- construct helpers ------------------------------------------------------------------


class SchemaError(ConstructError):
    """A construct-side check failed; ``kind`` names the DecodeError subclass to raise."""

    def __init__(self, message: str, kind: type[DecodeError], path: str | None = None):
        super().__init__(message, path=path)
        self.kind = kind


class _Derived(Subconstruct):
    """Parse as ``subcon``; build ``func(context)`` when the value is absent or None."""

    def __init__(self, subcon: Construct, func: Callable[[Any], Any]):
        super().__init__(subcon)
        self.func = func
        self.flagbuildnone = True

    def _build(self, obj, stream, context, path):
        if obj is None:
            obj = self.func(context)
        return self.subcon._build(obj, stream, context, path)


def _octets(obj: Any) -> bytes:
    """``bytes(obj)`` for a byte-string field, refusing an int: ``bytes(n)`` would allocate
    n zero bytes, and a mutated or forced value must never size an allocation."""
    if isinstance(obj, int):
        raise TypeError(f"expected a byte string, got {type(obj).__name__}")
    return obj if type(obj) is bytes else bytes(obj)


def _zero_of(sc: Construct) -> Callable[[Any], Any]:
    if isinstance(sc, Array):
        n = sc.count
        return lambda ctx: [0] * n
    if isinstance(sc, Bytes):
        n = sc.length
        return lambda ctx: b"\0" * n
    return lambda ctx: 0


def _defaulted(con: Construct, derive: Mapping[str, Callable[[Any], Any]] | None = None) -> list:
    """The subcons of struct ``con``: absent ints build as 0, ``derive`` fields computed."""
    out = []
    for sc in con.subcons:
        assert isinstance(sc, Renamed)
        inner = sc.subcon
        if derive and sc.name in derive:
            out.append(sc.name / _Derived(inner, derive[sc.name]))
        elif isinstance(inner, Struct):
            out.append(sc.name / Struct(*_defaulted(inner)))
        elif isinstance(inner, FormatField | Array | Bytes):
            out.append(sc.name / _Derived(inner, _zero_of(inner)))
        else:  # Computed overlays and anything else as declared
            out.append(sc)
    return out


class _CName(Construct):
    """A NUL-terminated name as bytes (without the NUL); linear time, unlike NullTerminated."""

    def _parse(self, stream, context, path):
        start = stream_tell(stream, path)
        rest = stream.read()
        i = rest.find(b"\0")
        if i < 0:
            stream.seek(start)
            raise SchemaError("name without terminating NUL", TruncatedError, path)
        stream.seek(start + i + 1)
        return rest[:i]

    def _build(self, obj, stream, context, path):
        obj = _octets(obj)
        if b"\0" in obj:
            raise SchemaError("name contains NUL", DecodeError, path)
        stream.write(obj + b"\0")
        return obj


class _Check(Construct):
    """Raise ``kind`` when ``pred(context, remaining_bytes)`` is false (on parse only)."""

    def __init__(self, pred: Callable[[Any, int], bool], message: str, kind: type[DecodeError]):
        super().__init__()
        self.pred = pred
        self.message = message
        self.kind = kind
        self.flagbuildnone = True

    def _parse(self, stream, context, path):
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(here)
        if not self.pred(context, end - here):
            raise SchemaError(self.message, self.kind, path)
        return None

    def _build(self, obj, stream, context, path):
        return None

    def _sizeof(self, context, path):
        return 0


class _UntilEnd(Subconstruct):
    """Records until the stream ends; any error inside propagates (not GreedyRange)."""

    def _parse(self, stream, context, path):
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(here)
        out = ListContainer()
        while stream.tell() < end:
            out.append(self.subcon._parsereport(stream, context, path))
        return out

    def _build(self, obj, stream, context, path):
        for i, item in enumerate(obj):
            context._index = i
            self.subcon._build(item, stream, context, path)
        return obj


class _ParseAs(Construct):
    """Parse with ``parse_con`` (checked, sized by a field); build whatever is given.

    A forced length/count field may disagree with the data: fuzzers must be able to lie.
    """

    def __init__(self, parse_con: Construct, build_con: Construct):
        super().__init__()
        self.parse_con = parse_con
        self.build_con = build_con
        self.flagbuildnone = build_con.flagbuildnone

    def _parse(self, stream, context, path):
        return self.parse_con._parsereport(stream, context, path)

    def _build(self, obj, stream, context, path):
        return self.build_con._build(obj, stream, context, path)


class _Items(Subconstruct):
    """Build each element of a list (any length); used as the build side of counted arrays."""

    def _build(self, obj, stream, context, path):
        for i, item in enumerate(obj or ()):
            context._index = i
            self.subcon._build(item, stream, context, path)
        return obj


def _bytes_default(length: Callable[[Any], int]) -> Construct:
    return _Derived(Bytes(length), lambda ctx: b"\0" * length(ctx))


def _get(ctx: Any, key: str) -> Any:
    v = ctx.get(key)
    return v if v is not None else b""


# --- the fast build path ----------------------------------------------------------------
#
# Each part's ``build(body) -> bytes`` is the inverse of its ``parse()``, derived from the
# same declaration, and gives exactly the bytes of its ``subcons()`` construct for the
# same value (absent/None integers as 0, derived length/count fields, construct's own
# acceptance rules for arrays, char arrays and names). ``body`` is a dict. Where a value is
# of a kind the fast builder does not mirror (a nested struct or list item that is not a
# dict ...) it raises NotFast; the codec then builds with the construct, which stays the
# reference (tests/test_wire_encode.py checks the two byte for byte and error for error).


class NotFast(Exception):
    """The fast builder does not mirror the construct for this value: build with that."""


_NO_FIELDS: dict = {}  # an absent nested struct: every field absent, built as 0


def _nested(v: Any) -> Mapping[str, Any]:
    if v is None:
        return _NO_FIELDS
    if isinstance(v, dict):
        return v
    raise NotFast


def _ints(v: Any, n: int) -> Any:
    """An integer array field as construct's Array(n) builds it (absent: n zeros)."""
    if v is None:
        return (0,) * n
    if len(v) != n:
        raise ValueError(f"expected {n} elements, found {len(v)}")
    return v


def _chars(v: Any, n: int) -> bytes:
    """A char[n] (or pad) field as construct's Bytes(n) builds it (absent: n NULs)."""
    if v is None:
        return b"\0" * n
    if isinstance(v, int):  # Bytes builds an int big-endian in n bytes
        if n < 1:
            raise ValueError("an integer needs at least one byte")
        v = v.to_bytes(n, "big")
    elif type(v) is bytearray:
        v = bytes(v)
    if not isinstance(v, bytes):
        raise TypeError(f"expected bytes, got {type(v).__name__}")
    if len(v) != n:
        raise ValueError(f"expected {n} bytes, found {len(v)}")
    return v


def _builder_args(
    con: Struct, getter: str, prefix: str, out: dict[str, list], derive: Mapping[str, Any]
) -> list[str]:
    """Argument expressions packing ``con``'s leaves (in FastLayout order) from ``getter``."""
    args: list[str] = []
    for sc in con.subcons:
        name, inner = sc.name, sc.subcon
        get = f"{getter}({name!r})"
        if isinstance(inner, Computed):  # a union overlay: not built (structs.UNIONS)
            continue
        if isinstance(inner, FormatField):
            if name in derive:
                fn = f"_derive_{name}"
                out["ns"].append((fn, derive[name]))
                args.append(f"({fn}(b) if (v := {get}) is None else v)")
            else:
                args.append(f"(0 if (v := {get}) is None else v)")
            out["fmt"].append(inner.fmtstr[1:])
            out["leaves"].append(prefix + name)
        elif isinstance(inner, Array):
            args.append(f"*_ints({get}, {inner.count})")
            out["fmt"].append(f"{inner.count}{inner.subcon.fmtstr[1:]}")
            out["leaves"].extend(f"{prefix}{name}[{i}]" for i in range(inner.count))
        elif isinstance(inner, Bytes):
            args.append(f"_chars({get}, {inner.length})")
            out["fmt"].append(f"{inner.length}s")
            out["leaves"].append(prefix + name)
        elif isinstance(inner, Struct):
            var = f"g{len(out['lines'])}"
            out["lines"].append(f"{var} = _nested({get}).get")
            args.extend(_builder_args(inner, var, f"{prefix}{name}.", out, {}))
        else:
            raise TypeError(f"{prefix}{name}: no fast build for {type(inner).__name__}")
    return args


def _compile_builder(
    con: Struct, fl: structs.FastLayout, derive: Mapping[str, Callable[[Any], Any]], label: str
) -> Callable[[Mapping[str, Any]], bytes]:
    """``build(body) -> bytes`` for struct ``con`` packed with ``fl.struct``.

    ``derive`` maps length/count fields to functions of the body used when the field is
    absent or None (the ``_Derived`` of :func:`_defaulted`).
    """
    out: dict[str, list] = {"fmt": [], "leaves": [], "lines": [], "ns": []}
    args = _builder_args(con, "g", "", out, derive)
    # The leaves must be the FastLayout's, in its order: one declaration, two views
    # (construct spells u32 "L" where structs spells it "I": the same 4 bytes under "<").
    fmt = "<" + "".join(out["fmt"]).replace("L", "I").replace("l", "i")
    if fmt != fl.struct.format or tuple(out["leaves"]) != fl.fields:
        raise AssertionError(f"{label}: fast build layout disagrees with structs.FAST")
    src = (
        "def build(b):\n    g = b.get\n"
        + "".join(f"    {line}\n" for line in out["lines"])
        + f"    return _pack({', '.join(args)})\n"
    )
    ns: dict[str, Any] = {"_pack": fl.struct.pack, "_nested": _nested, "_ints": _ints}
    ns["_chars"] = _chars
    ns.update(out["ns"])
    exec(compile(src, f"<fuseproto.wire.messages build {label}>", "exec"), ns)  # noqa: S102 -- source generated from the declarations only
    return ns["build"]


@cache
def _struct_builder(name: str, size: int | None = None) -> Callable[[Mapping[str, Any]], bytes]:
    """The fast builder of struct ``name`` (or its ``size``-byte prefix), nothing derived."""
    fl = structs.fast(name, size)
    return _compile_builder(structs.compat(name, fl.size), fl, {}, f"{name}@{fl.size}")


def _z(v: Any) -> Any:
    return 0 if v is None else v


# --- parts ------------------------------------------------------------------------------


class Part:
    """One piece of a body: ``parse``/``build`` (fast) and ``subcons`` (construct)."""

    fields: tuple[str, ...] = ()

    def parse(
        self, buf: bytes, off: int, end: int, body: Container | None
    ) -> tuple[int, Container]:
        raise NotImplementedError

    def build(self, body: Mapping[str, Any]) -> bytes:
        """This part's bytes from the whole ``body`` (a dict); see "the fast build path"."""
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
            self.build = _compile_builder(self.con, self.fl, self.derive, label)
        else:
            self.build = _struct_builder(struct_name, self.size)

    def parse(self, buf, off, end, body):
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

    def subcons(self):
        return _defaulted(self.con, self.derive)


class AnySize(Part):
    """INIT's self-describing struct: the body is one of ``sizes`` (compat prefixes)."""

    def __init__(self, struct_name: str, sizes: tuple[int, ...]):
        self.struct_name = struct_name
        self.variants = {n: Fixed(struct_name, n) for n in sizes}
        self.sizes = tuple(sorted(sizes))
        self.variant_fields = {n: frozenset(v.fields) for n, v in self.variants.items()}
        self.all_fields = self.variant_fields[self.sizes[-1]]

    def parse(self, buf, off, end, body):
        v = self.variants.get(end - off)
        if v is None:
            raise LengthMismatchError(
                f"{self.struct_name} is {end - off} bytes, not one of {self.sizes}",
                offset=off,
                path=self.struct_name,
            )
        return v.parse(buf, off, end, body)

    def build(self, body):
        # As _BySize: the shortest form holding every field given (not None).
        keys = {k for k, v in body.items() if v is not None} & self.all_fields
        for n in self.sizes:
            if keys <= self.variant_fields[n]:
                break
        return self.variants[n].build(body)

    def subcons(self):
        raise TypeError("AnySize is a whole body: use _schema()")


class _BySize(Construct):
    """INIT's body construct: parse picks the prefix by length, build by the keys present."""

    def __init__(self, part: AnySize):
        super().__init__()
        self.part = part
        self.cons = {n: Struct(*v.subcons(), Terminated) for n, v in part.variants.items()}
        self.all_fields = set(part.variants[max(part.sizes)].fields)

    def _parse(self, stream, context, path):
        here = stream.tell()
        n = stream.seek(0, 2) - here
        stream.seek(here)
        if n not in self.cons:
            raise SchemaError(f"{self.part.struct_name}: bad size {n}", LengthMismatchError, path)
        return self.cons[n]._parsereport(stream, context, path)

    def _build(self, obj, stream, context, path):
        keys = {k for k, v in obj.items() if v is not None}
        for n in self.part.sizes:  # ascending: the shortest form holding every given field
            if keys & self.all_fields <= set(self.part.variants[n].fields):
                break
        return self.cons[n]._build(obj, stream, context, path)


class Name(Part):
    """A NUL-terminated name, kept as bytes without the NUL."""

    def __init__(self, field: str = "name"):
        self.field = field
        self.fields = (field,)

    def parse(self, buf, off, end, body):
        i = buf.find(b"\0", off, end)
        if i < 0:
            raise TruncatedError("name without terminating NUL", offset=end, path=self.field)
        if body is None:
            body = Container()
        body[self.field] = buf[off:i]
        return i + 1, body

    def build(self, body):
        name = _octets(body[self.field])
        if b"\0" in name:
            raise ValueError(f"{self.field} contains NUL")
        return name + b"\0"

    def subcons(self):
        return [self.field / _CName()]


class NameN(Part):
    """``namelen`` bytes of name then a NUL (INVAL_ENTRY, DELETE); ends the body."""

    def __init__(self, field: str, len_field: str):
        self.field = field
        self.len_field = len_field
        self.fields = (field,)

    def parse(self, buf, off, end, body):
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

    def build(self, body):
        return _octets(body[self.field]) + b"\0"  # namelen (derived or forced) is not checked

    def subcons(self):
        lf = self.len_field
        return [
            _Check(lambda c, rem: rem == c[lf] + 1, "name length mismatch", LengthMismatchError),
            self.field / _ParseAs(Bytes(this[lf]), _Greedy()),
            Const(b"\0"),
        ]


class Sized(Part):
    """Exactly ``body[size_field]`` bytes, which end the body (WRITE data, xattr value...)."""

    def __init__(self, field: str, size_field: str):
        self.field = field
        self.size_field = size_field
        self.fields = (field,)

    def parse(self, buf, off, end, body):
        n = body[self.size_field]
        if end - off != n:
            raise LengthMismatchError(
                f"{self.size_field}={n} but {end - off} bytes present",
                offset=off,
                path=self.size_field,
            )
        body[self.field] = buf[off:end]
        return end, body

    def build(self, body):
        return _octets(body[self.field])  # the size field (derived or forced) is not checked

    def subcons(self):
        sf = self.size_field
        return [
            _Check(lambda c, rem: rem == c[sf], "size mismatch", LengthMismatchError),
            self.field / _ParseAs(Bytes(this[sf]), _Greedy()),
        ]


class Rest(Part):
    """All remaining bytes (READ reply, READLINK reply ...); ``limit`` caps the length."""

    def __init__(self, field: str, limit: int | None = None):
        self.field = field
        self.limit = limit
        self.fields = (field,)

    def parse(self, buf, off, end, body):
        if self.limit is not None and end - off > self.limit:
            raise LimitExceededError(
                f"{end - off} bytes above the maximum {self.limit}", offset=off, path=self.field
            )
        if body is None:
            body = Container()
        body[self.field] = buf[off:end]
        return end, body

    def build(self, body):
        # As GreedyBytes: bytes or bytearray only; the limit is not checked on build.
        data = body[self.field]
        if type(data) is bytearray:
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"{self.field}: expected bytes, got {type(data).__name__}")
        return data

    def subcons(self):
        out = []
        if self.limit is not None:
            lim = self.limit
            out.append(_Check(lambda c, rem: rem <= lim, "above maximum", LimitExceededError))
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
            self._item_build = _struct_builder(item)

    def parse(self, buf, off, end, body):
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

    def build(self, body):
        # The count field (derived or forced) and the limit are not checked on build.
        if self.fl is None:  # u64 items: the list must be present (it may be None)
            items = tuple(body[self.field] or ())
            return _struct.pack(f"<{len(items)}Q", *items)
        build = self._item_build
        return b"".join([build(_nested(x)) for x in body.get(self.field) or ()])

    def subcons(self):
        cf, isz, lim = self.count_field, self.isize, self.limit
        out = []
        if lim is not None:
            out.append(
                _Check(lambda c, rem: c[cf] <= lim, "count above maximum", LimitExceededError)
            )
        out.append(_Check(lambda c, rem: rem == c[cf] * isz, "count mismatch", LengthMismatchError))
        item = Int64ul if self.item == "u64" else Struct(*_defaulted(structs.ALL[self.item]))
        out.append(self.field / _ParseAs(Array(this[cf], item), _Items(item)))
        return out


_DIRENT = structs.FAST["fuse_dirent"]
_DIRENTPLUS = structs.FAST["fuse_direntplus"]
_DIRENT_SIZE = _DIRENT.size  # FUSE_NAME_OFFSET, 24
_DIRENTPLUS_SIZE = _DIRENTPLUS.size  # FUSE_NAME_OFFSET_DIRENTPLUS, 152
_ENTRY_OUT_BUILD = _struct_builder("fuse_entry_out")


class Dirents(Part):
    """READDIR (``plus=False``) or READDIRPLUS records to the end, 8-byte aligned, pad kept."""

    def __init__(self, plus: bool):
        self.plus = plus
        self.fields = ("entries",)

    def parse(self, buf, off, end, body):
        items = ListContainer()
        hsize = _DIRENTPLUS_SIZE if self.plus else _DIRENT_SIZE
        parse = _DIRENTPLUS.parse if self.plus else _DIRENT.parse
        while off < end:
            if end - off < hsize:
                raise TruncatedError("partial dirent header", offset=end, path="entries")
            rec = parse(buf, off)
            d = rec["dirent"] if self.plus else rec
            namelen = d["namelen"]
            name_end = off + hsize + namelen
            rec_end = off + _align8(hsize + namelen)
            if rec_end > end:
                raise TruncatedError(
                    f"dirent namelen={namelen} runs past the reply",
                    offset=end,
                    path="entries.namelen",
                )
            d["name"] = buf[off + hsize : name_end]
            rec["pad"] = buf[name_end:rec_end]
            items.append(rec)
            off = rec_end
        if body is None:
            body = Container()
        body["entries"] = items
        return off, body

    def build(self, body):
        out = []
        plus = self.plus
        head = _DIRENTPLUS_SIZE if plus else _DIRENT_SIZE
        pack = _DIRENT.struct.pack
        for rec in body["entries"]:
            if not isinstance(rec, dict):
                raise NotFast
            if plus:
                out.append(_ENTRY_OUT_BUILD(_nested(rec.get("entry_out"))))
                d = rec["dirent"]
                if not isinstance(d, dict):
                    raise NotFast
            else:
                d = rec
            namelen = d.get("namelen")
            if namelen is None:
                namelen = len(d["name"])
            out.append(pack(_z(d.get("ino")), _z(d.get("off")), namelen, _z(d.get("type"))))
            out.append(_octets(d["name"]))
            pad = rec.get("pad")
            n = -(head + namelen) % 8
            out.append(b"\0" * n if pad is None else _chars(pad, n))
        return b"".join(out)

    def subcons(self):
        if self.plus:
            dirent = Struct(
                *_defaulted(structs.fuse_dirent, {"namelen": lambda c: len(c.name)}),
                "name" / _ParseAs(Bytes(this.namelen), _Greedy()),
            )
            rec = Struct(
                "entry_out" / Struct(*_defaulted(structs.fuse_entry_out)),
                "dirent" / dirent,
                "pad" / _bytes_default(lambda c: -(_DIRENTPLUS_SIZE + c.dirent.namelen) % 8),
            )
        else:
            rec = Struct(
                *_defaulted(structs.fuse_dirent, {"namelen": lambda c: len(c.name)}),
                "name" / _ParseAs(Bytes(this.namelen), _Greedy()),
                "pad" / _bytes_default(lambda c: -(_DIRENT_SIZE + c.namelen) % 8),
            )
        return ["entries" / _UntilEnd(rec)]


_IOVEC = structs.FAST["fuse_ioctl_iovec"]
_IOVEC_BUILD = _struct_builder("fuse_ioctl_iovec")


class IoctlOut(Part):
    """After fuse_ioctl_out: iovecs when FUSE_IOCTL_RETRY is set, else the out data."""

    fields = ("in_iov", "out_iov", "data")

    def parse(self, buf, off, end, body):
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

    def build(self, body):
        # Both iovec lists and the data are built whatever FUSE_IOCTL_RETRY says.
        out = [_IOVEC_BUILD(_nested(x)) for x in body.get("in_iov") or ()]
        out += [_IOVEC_BUILD(_nested(x)) for x in body.get("out_iov") or ()]
        data = body.get("data")
        if data is not None:
            out.append(_octets(data))
        return b"".join(out)

    def subcons(self):
        retry = lambda c: bool(c.flags & FUSE_IOCTL_RETRY)  # noqa: E731
        iovec = Struct(*_defaulted(structs.fuse_ioctl_iovec))
        return [
            _Check(
                lambda c, rem: not retry(c) or c.in_iovs + c.out_iovs <= C.FUSE_IOCTL_MAX_IOV,
                "too many iovecs",
                LimitExceededError,
            ),
            _Check(
                lambda c, rem: not retry(c) or rem == 16 * (c.in_iovs + c.out_iovs),
                "iovec count mismatch",
                LengthMismatchError,
            ),
            "in_iov"
            / _Derived(
                _ParseAs(Array(lambda c: c.in_iovs if retry(c) else 0, iovec), _Items(iovec)),
                lambda c: [],
            ),
            "out_iov"
            / _Derived(
                _ParseAs(Array(lambda c: c.out_iovs if retry(c) else 0, iovec), _Items(iovec)),
                lambda c: [],
            ),
            "data" / _Derived(_Greedy(), lambda c: b""),
        ]


class _Greedy(Construct):
    """GreedyBytes that builds whatever bytes it is given (IOCTL's data, empty on retry)."""

    def _parse(self, stream, context, path):
        return stream.read()

    def _build(self, obj, stream, context, path):
        stream.write(_octets(obj))
        return obj


# --- per-opcode tables ----------------------------------------------------------------


def _len_of(field: str) -> Callable[[Any], int]:
    return lambda ctx: len(_get(ctx, field))


def _count_of(field: str) -> Callable[[Any], int]:
    return lambda ctx: len(ctx.get(field) or ())


def _entry_out_size(minor: int) -> int:
    return C.FUSE_COMPAT_ENTRY_OUT_SIZE if minor < 9 else structs.fuse_entry_out.sizeof()


_INIT_IN_SIZES = (*structs.COMPAT_SIZES["fuse_init_in"], structs.fuse_init_in.sizeof())
_INIT_OUT_SIZES = (*structs.COMPAT_SIZES["fuse_init_out"], structs.fuse_init_out.sizeof())


@lru_cache(maxsize=4096)
def _request_parts(opcode: int, minor: int, setxattr_ext: bool) -> tuple[Part, ...] | None:
    F = Fixed  # noqa: N806
    if opcode in (_OP.FUSE_LOOKUP, _OP.FUSE_UNLINK, _OP.FUSE_RMDIR, _OP.FUSE_REMOVEXATTR):
        return (Name(),)
    if opcode in (_OP.FUSE_READLINK, _OP.FUSE_STATFS, _OP.FUSE_DESTROY):
        return ()
    simple = {
        _OP.FUSE_FORGET: "fuse_forget_in",
        _OP.FUSE_GETATTR: "fuse_getattr_in",
        _OP.FUSE_SETATTR: "fuse_setattr_in",
        _OP.FUSE_OPEN: "fuse_open_in",
        _OP.FUSE_OPENDIR: "fuse_open_in",
        _OP.FUSE_READ: "fuse_read_in",
        _OP.FUSE_READDIR: "fuse_read_in",
        _OP.FUSE_READDIRPLUS: "fuse_read_in",
        _OP.FUSE_RELEASE: "fuse_release_in",
        _OP.FUSE_RELEASEDIR: "fuse_release_in",
        _OP.FUSE_FSYNC: "fuse_fsync_in",
        _OP.FUSE_FSYNCDIR: "fuse_fsync_in",
        _OP.FUSE_LISTXATTR: "fuse_getxattr_in",
        _OP.FUSE_FLUSH: "fuse_flush_in",
        _OP.FUSE_GETLK: "fuse_lk_in",
        _OP.FUSE_SETLK: "fuse_lk_in",
        _OP.FUSE_SETLKW: "fuse_lk_in",
        _OP.FUSE_ACCESS: "fuse_access_in",
        _OP.FUSE_INTERRUPT: "fuse_interrupt_in",
        _OP.FUSE_BMAP: "fuse_bmap_in",
        _OP.FUSE_POLL: "fuse_poll_in",
        _OP.FUSE_FALLOCATE: "fuse_fallocate_in",
        _OP.FUSE_LSEEK: "fuse_lseek_in",
        _OP.FUSE_COPY_FILE_RANGE: "fuse_copy_file_range_in",
        _OP.FUSE_COPY_FILE_RANGE_64: "fuse_copy_file_range_in",
        _OP.FUSE_SETUPMAPPING: "fuse_setupmapping_in",
        _OP.FUSE_SYNCFS: "fuse_syncfs_in",
        _OP.FUSE_STATX: "fuse_statx_in",
        _OP.CUSE_INIT: "cuse_init_in",
    }
    if opcode in simple:
        return (F(simple[opcode]),)
    if opcode == _OP.FUSE_SYMLINK:
        return (Name(), Name("link"))
    if opcode == _OP.FUSE_MKNOD:
        size = C.FUSE_COMPAT_MKNOD_IN_SIZE if minor < 12 else None
        return (F("fuse_mknod_in", size), Name())
    if opcode == _OP.FUSE_MKDIR:
        return (F("fuse_mkdir_in"), Name())
    if opcode == _OP.FUSE_RENAME:
        return (F("fuse_rename_in"), Name(), Name("newname"))
    if opcode == _OP.FUSE_RENAME2:
        return (F("fuse_rename2_in"), Name(), Name("newname"))
    if opcode == _OP.FUSE_LINK:
        return (F("fuse_link_in"), Name())
    if opcode == _OP.FUSE_WRITE:
        size = C.FUSE_COMPAT_WRITE_IN_SIZE if minor < 9 else None
        return (F("fuse_write_in", size, {"size": _len_of("data")}), Sized("data", "size"))
    if opcode == _OP.FUSE_SETXATTR:
        size = None if setxattr_ext else C.FUSE_COMPAT_SETXATTR_IN_SIZE
        return (
            F("fuse_setxattr_in", size, {"size": _len_of("value")}),
            Name(),
            Sized("value", "size"),
        )
    if opcode == _OP.FUSE_GETXATTR:
        return (F("fuse_getxattr_in"), Name())
    if opcode == _OP.FUSE_INIT:
        return (AnySize("fuse_init_in", _INIT_IN_SIZES),)
    if opcode in (_OP.FUSE_CREATE, _OP.FUSE_TMPFILE):
        return (F("fuse_create_in"), Name())
    if opcode == _OP.FUSE_IOCTL:
        return (F("fuse_ioctl_in", None, {"in_size": _len_of("data")}), Sized("data", "in_size"))
    if opcode == _OP.FUSE_NOTIFY_REPLY:
        return (
            F("fuse_notify_retrieve_in", None, {"size": _len_of("data")}),
            Sized("data", "size"),
        )
    if opcode == _OP.FUSE_BATCH_FORGET:
        return (
            F("fuse_batch_forget_in", None, {"count": _count_of("entries")}),
            Counted("entries", "count", "fuse_forget_one", back=8),
        )
    if opcode == _OP.FUSE_REMOVEMAPPING:
        return (
            F("fuse_removemapping_in", None, {"count": _count_of("entries")}),
            Counted(
                "entries",
                "count",
                "fuse_removemapping_one",
                limit=C.FUSE_REMOVEMAPPING_MAX_ENTRY,
                back=4,
            ),
        )
    return None


def request_parts(opcode: int, minor: int = 46, flags: int = 0) -> tuple[Part, ...] | None:
    """The parts of ``opcode``'s request body at ``minor`` (None: unknown opcode, raw bytes).

    ``flags`` is the negotiated 64-bit INIT flags (only FUSE_SETXATTR_EXT matters here).
    """
    return _request_parts(int(opcode), int(minor), bool(flags & FUSE_SETXATTR_EXT))


_ENTRY_REPLY = (_OP.FUSE_LOOKUP, _OP.FUSE_SYMLINK, _OP.FUSE_MKNOD, _OP.FUSE_MKDIR, _OP.FUSE_LINK)
_EMPTY_REPLY = (
    _OP.FUSE_FORGET,
    _OP.FUSE_UNLINK,
    _OP.FUSE_RMDIR,
    _OP.FUSE_RENAME,
    _OP.FUSE_RELEASE,
    _OP.FUSE_FSYNC,
    _OP.FUSE_SETXATTR,
    _OP.FUSE_REMOVEXATTR,
    _OP.FUSE_FLUSH,
    _OP.FUSE_RELEASEDIR,
    _OP.FUSE_FSYNCDIR,
    _OP.FUSE_SETLK,
    _OP.FUSE_SETLKW,
    _OP.FUSE_ACCESS,
    _OP.FUSE_INTERRUPT,
    _OP.FUSE_DESTROY,
    _OP.FUSE_NOTIFY_REPLY,
    _OP.FUSE_BATCH_FORGET,
    _OP.FUSE_FALLOCATE,
    _OP.FUSE_RENAME2,
    _OP.FUSE_SETUPMAPPING,
    _OP.FUSE_REMOVEMAPPING,
    _OP.FUSE_SYNCFS,
)


@lru_cache(maxsize=4096)
def _reply_parts(opcode: int, minor: int, xattr_size: int | None) -> tuple[Part, ...] | None:
    F = Fixed  # noqa: N806
    if opcode in _ENTRY_REPLY:
        return (F("fuse_entry_out", _entry_out_size(minor)),)
    if opcode in _EMPTY_REPLY:
        return ()
    if opcode in (_OP.FUSE_GETATTR, _OP.FUSE_SETATTR):
        return (F("fuse_attr_out", C.FUSE_COMPAT_ATTR_OUT_SIZE if minor < 9 else None),)
    if opcode == _OP.FUSE_READLINK:
        return (Rest("link"),)
    if opcode in (_OP.FUSE_OPEN, _OP.FUSE_OPENDIR):
        return (F("fuse_open_out"),)
    if opcode == _OP.FUSE_READ:
        return (Rest("data"),)
    if opcode in (_OP.FUSE_WRITE, _OP.FUSE_COPY_FILE_RANGE):
        return (F("fuse_write_out"),)
    if opcode == _OP.FUSE_STATFS:
        return (F("fuse_statfs_out", C.FUSE_COMPAT_STATFS_SIZE if minor < 4 else None),)
    if opcode in (_OP.FUSE_GETXATTR, _OP.FUSE_LISTXATTR):
        if xattr_size == 0:
            return (F("fuse_getxattr_out"),)
        return (Rest("value"),)
    if opcode == _OP.FUSE_INIT:
        return (AnySize("fuse_init_out", _INIT_OUT_SIZES),)
    if opcode == _OP.FUSE_READDIR:
        return (Dirents(plus=False),)
    if opcode == _OP.FUSE_READDIRPLUS:
        return (Dirents(plus=True),)
    if opcode == _OP.FUSE_GETLK:
        return (F("fuse_lk_out"),)
    if opcode in (_OP.FUSE_CREATE, _OP.FUSE_TMPFILE):
        return (F("fuse_entry_out"), F("fuse_open_out"))
    if opcode == _OP.FUSE_BMAP:
        return (F("fuse_bmap_out"),)
    if opcode == _OP.FUSE_IOCTL:
        derive = {
            "in_iovs": _count_of("in_iov"),
            "out_iovs": _count_of("out_iov"),
        }
        return (F("fuse_ioctl_out", None, derive), IoctlOut())
    if opcode == _OP.FUSE_POLL:
        return (F("fuse_poll_out"),)
    if opcode == _OP.FUSE_LSEEK:
        return (F("fuse_lseek_out"),)
    if opcode == _OP.FUSE_STATX:
        return (F("fuse_statx_out"),)
    if opcode == _OP.FUSE_COPY_FILE_RANGE_64:
        return (F("fuse_copy_file_range_out"),)
    if opcode == _OP.CUSE_INIT:
        return (F("cuse_init_out"), Rest("info", limit=C.CUSE_INIT_INFO_MAX))
    return None


def reply_parts(
    opcode: int, minor: int = 46, xattr_size: int | None = None
) -> tuple[Part, ...] | None:
    """The parts of ``opcode``'s reply body (None: unknown opcode, raw bytes).

    ``xattr_size`` is the GETXATTR/LISTXATTR request's ``size``: 0 selects
    ``fuse_getxattr_out``, anything else (or None, unknown) the raw ``value``.
    """
    if xattr_size is not None:
        xattr_size = 0 if xattr_size == 0 else 1
    return _reply_parts(int(opcode), int(minor), xattr_size)


@lru_cache(maxsize=4096)
def _notification_parts(code: int) -> tuple[Part, ...] | None:
    N = _NC  # noqa: N806
    F = Fixed  # noqa: N806
    if code == N.FUSE_NOTIFY_POLL:
        return (F("fuse_notify_poll_wakeup_out"),)
    if code == N.FUSE_NOTIFY_INVAL_INODE:
        return (F("fuse_notify_inval_inode_out"),)
    if code == N.FUSE_NOTIFY_INVAL_ENTRY:
        return (
            F("fuse_notify_inval_entry_out", None, {"namelen": _len_of("name")}),
            NameN("name", "namelen"),
        )
    if code == N.FUSE_NOTIFY_STORE:
        return (F("fuse_notify_store_out", None, {"size": _len_of("data")}), Sized("data", "size"))
    if code == N.FUSE_NOTIFY_RETRIEVE:
        return (F("fuse_notify_retrieve_out"),)
    if code == N.FUSE_NOTIFY_DELETE:
        return (
            F("fuse_notify_delete_out", None, {"namelen": _len_of("name")}),
            NameN("name", "namelen"),
        )
    if code in (N.FUSE_NOTIFY_RESEND, N.FUSE_NOTIFY_INC_EPOCH):
        return ()
    if code == N.FUSE_NOTIFY_PRUNE:
        return (
            F("fuse_notify_prune_out", None, {"count": _count_of("entries")}),
            Counted("entries", "count", "u64", back=16),
        )
    return None


def notification_parts(code: int) -> tuple[Part, ...] | None:
    """The parts of notification ``code``'s body (None: unknown code, raw bytes)."""
    return _notification_parts(int(code))


# --- whole bodies -----------------------------------------------------------------------


@cache
def _schema(parts: tuple[Part, ...] | None) -> Construct:
    if parts is None:
        return GreedyBytes
    if len(parts) == 1 and isinstance(parts[0], AnySize):
        return _BySize(parts[0])
    subcons = [sc for p in parts for sc in p.subcons()]
    return Struct(*subcons, Terminated)


def request_body(opcode: int, minor: int = 46, flags: int = 0) -> Construct:
    """The construct of ``opcode``'s request body (``GreedyBytes`` for an unknown opcode)."""
    return _schema(request_parts(opcode, minor, flags))


def reply_body(opcode: int, minor: int = 46, xattr_size: int | None = None) -> Construct:
    """The construct of ``opcode``'s reply body (``GreedyBytes`` for an unknown opcode)."""
    return _schema(reply_parts(opcode, minor, xattr_size))


def notification_body(code: int) -> Construct:
    """The construct of notification ``code``'s body (``GreedyBytes`` if unknown)."""
    return _schema(notification_parts(code))


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
def always_parses(parts: tuple[Part, ...]) -> bool:
    """Whether what :func:`build_parts` makes of ``parts`` always parses back (to the end):
    fixed structs and NUL-free names, no length or count that could lie."""
    return all((type(p) is Fixed and not p.derive) or type(p) is Name for p in parts)


@lru_cache(maxsize=1024)
def prefixed_builder(
    parts: tuple[Part, ...], head: str, params: tuple[str, ...]
) -> Callable[..., bytes] | None:
    """``build(body, *params) -> bytes``: struct ``head`` (its fields from ``params``, in
    order) followed by the body of ``parts``, in ONE ``struct.pack`` (the two FastLayout
    formats joined); None unless ``parts`` is at most one underived :class:`Fixed` (a
    fixed-size body). Same bytes and same failures as ``head``'s pack plus
    :func:`build_parts`; the caller falls back to those on any exception."""
    hl = structs.FAST[head]
    if not hl.flat or len(params) != len(hl.fields):
        raise ValueError(f"{head}: a flat struct with one parameter per field")
    out: dict[str, list] = {"fmt": [], "leaves": [], "lines": [], "ns": []}
    fmt = hl.struct.format
    if parts:
        if len(parts) != 1 or type(parts[0]) is not Fixed or parts[0].derive:
            return None
        part = parts[0]
        args = _builder_args(part.con, "g", "", out, {})
        fmt += part.fl.struct.format[1:]
    else:
        args = []
    src = (
        f"def build(b, {', '.join(params)}):\n    g = b.get\n"
        + "".join(f"    {line}\n" for line in out["lines"])
        + f"    return _pack({', '.join((*params, *args))})\n"
    )
    ns: dict[str, Any] = {"_pack": _struct.Struct(fmt).pack, "_nested": _nested, "_ints": _ints}
    ns["_chars"] = _chars
    exec(compile(src, f"<fuseproto.wire.messages build {head}+body>", "exec"), ns)  # noqa: S102 -- source generated from the declarations only
    return ns["build"]


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


# --- the request extension area (fuse_ext_header records) --------------------------------
#
# Each record starts with fuse_ext_header {size, type}; size includes the header and is a
# multiple of 8 (FUSE_REC_ALIGN). type 0..FUSE_MAX_NR_SECCTX is a fuse_secctx_header whose
# nr_secctx is the type; FUSE_EXT_GROUPS is fuse_supp_groups.
#
# Shapes:
#   Container(size=, type=32, nr_groups=, groups=[gid, ...], pad=b"")
#   Container(size=, type=nr, secctx=[Container(size=, padding=, name=, ctx=, pad=)])
#   Container(size=, type=, data=b"...")                       (any other type)

_U32 = _struct.Struct("<I")
_EXT_HDR = _struct.Struct("<II")


def parse_ext(buf: bytes, off: int, end: int) -> list[Container]:
    """The extension records in ``buf[off:end]`` (raises DecodeError on any inconsistency)."""
    out: list[Container] = []
    while off < end:
        if end - off < 8:
            raise TruncatedError("partial fuse_ext_header", offset=off, path="ext.size")
        size, typ = _EXT_HDR.unpack_from(buf, off)
        if size < 8 or size % 8 or size > end - off:
            raise LengthMismatchError(
                f"extension size {size} (must be 8..{end - off}, a multiple of 8)",
                offset=off,
                path="ext.size",
            )
        rend = off + size
        p = off + 8
        rec = Container(size=size, type=typ)
        if typ == FUSE_EXT_GROUPS:
            if rend - p < 4:
                raise TruncatedError(
                    "fuse_supp_groups without nr_groups", offset=p, path="ext.nr_groups"
                )
            (n,) = _U32.unpack_from(buf, p)
            p += 4
            if not 0 <= rend - p - 4 * n < 8:
                raise LengthMismatchError(
                    f"nr_groups={n} does not fit extension size {size}",
                    offset=p,
                    path="ext.nr_groups",
                )
            rec["nr_groups"] = n
            rec["groups"] = ListContainer(_struct.unpack_from(f"<{n}I", buf, p))
            rec["pad"] = buf[p + 4 * n : rend]
        elif typ <= FUSE_MAX_NR_SECCTX:
            ctxs = ListContainer()
            for _ in range(typ):
                if rend - p < 8:
                    raise TruncatedError("partial fuse_secctx", offset=p, path="ext.secctx")
                csize, cpad = _EXT_HDR.unpack_from(buf, p)
                q = p + 8
                i = buf.find(b"\0", q, rend)
                if i < 0:
                    raise TruncatedError(
                        "secctx name without NUL", offset=rend, path="ext.secctx.name"
                    )
                name = buf[q:i]
                q = i + 1
                cend = q + csize
                pend = p + _align8(cend - p)
                if pend > rend:
                    raise LengthMismatchError(
                        f"secctx size {csize} runs past the extension",
                        offset=q,
                        path="ext.secctx.size",
                    )
                ctxs.append(
                    Container(
                        size=csize, padding=cpad, name=name, ctx=buf[q:cend], pad=buf[cend:pend]
                    )
                )
                p = pend
            if p != rend:
                raise LengthMismatchError(
                    f"{rend - p} bytes after {typ} security contexts",
                    offset=p,
                    path="ext.size",
                )
            rec["secctx"] = ctxs
        else:
            rec["data"] = buf[p:rend]
        out.append(rec)
        off = rend
    return out


def _need(rec: Mapping[str, Any], key: str, default: Any) -> Any:
    v = rec.get(key)
    return default if v is None else v


def build_ext(records: list[Mapping[str, Any]]) -> bytes:
    """The bytes of extension ``records`` (sizes, counts and pads derived when absent)."""
    out = bytearray()
    for rec in records:
        typ = rec.get("type")
        if typ is None:
            if "groups" in rec:
                typ = FUSE_EXT_GROUPS
            elif "secctx" in rec:
                typ = len(rec["secctx"])
            else:
                raise ValueError("extension record without type")
        if typ == FUSE_EXT_GROUPS:
            groups = list(_need(rec, "groups", []))
            n = _need(rec, "nr_groups", len(groups))
            body = _U32.pack(n) + _struct.pack(f"<{len(groups)}I", *groups)
            body += _need(rec, "pad", b"\0" * (-(8 + len(body)) % 8))
        elif typ <= FUSE_MAX_NR_SECCTX and "secctx" in rec:
            body = b""
            for c in rec["secctx"]:
                ctx = bytes(_need(c, "ctx", b""))
                name = _octets(c["name"])
                if b"\0" in name:
                    raise ValueError("secctx name contains NUL")
                ent = _EXT_HDR.pack(_need(c, "size", len(ctx)), _need(c, "padding", 0))
                ent += name + b"\0" + ctx
                ent += _need(c, "pad", b"\0" * (-len(ent) % 8))
                body += ent
        else:
            body = bytes(_need(rec, "data", b""))
        size = _need(rec, "size", 8 + len(body))
        out += _EXT_HDR.pack(size, typ) + body
    return bytes(out)


class _ExtArea(Construct):
    """The extension area as a construct (parse to the end of the stream; see parse_ext)."""

    def _parse(self, stream, context, path):
        rest = stream.read()
        try:
            return parse_ext(rest, 0, len(rest))
        except DecodeError as e:
            raise SchemaError(e.reason, type(e), path) from None

    def _build(self, obj, stream, context, path):
        stream.write(build_ext(obj or []))
        return obj


ext_area: Construct = _ExtArea()


def schema(parts: tuple[Part, ...] | None) -> Construct:
    """The declarative construct of a body made of ``parts`` (``GreedyBytes`` for None)."""
    return _schema(parts)
