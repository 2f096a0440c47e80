"""One construct per struct of ``linux/fuse.h`` (protocol 7.46), little-endian.

Every struct is a module attribute named exactly as in C (``structs.fuse_in_header``,
``structs.fuse_setupmapping_in``, ...), and ``ALL`` maps each name to its construct. The
fields are the header's fields, in the header's order, with the header's names; padding,
``unused``, ``spare`` and ``reserved`` fields are ordinary named fields, so
``build(parse(b)) == b`` for every ``b`` of the struct's size. Arrays of integers are
``Array(n, Int..)`` (a list when parsed); ``char`` arrays are ``Bytes(n)``. Nested structs
(``fuse_entry_out.attr``, ``fuse_lk_in.lk``, ``fuse_statx_out.stat`` ...) are sub-structs
under the C field name. ``sizeof()`` equals C ``sizeof`` (checked against the real header
by ``tests/test_layout.py``).

All constructs are generated from the one declaration table ``DECLS`` below; the
fast path and the compat variants are derived from the same table, so the three can
never disagree.

Special cases
-------------
* Flexible array members (``fuse_dirent.name``, ``fuse_supp_groups.groups``) are *not*
  part of the construct: like C ``sizeof``, the construct covers the fixed part only
  (``fuse_direntplus`` likewise ends with the fixed part of its nested ``dirent``). The
  member is recorded in ``FLEX[struct] = (field, element_type)`` -- ``{"fuse_dirent":
  ("name", "char"), "fuse_supp_groups": ("groups", "u32")}`` -- for ``messages.py``,
  which owns variable-length bodies.
* ``fuse_uring_cmd_req`` ends in an anonymous union ``{ struct {...} bufpool;
  uint16_t ent_zero_copy_buf_index; }``. ``bufpool`` (the widest member) carries the
  bytes; ``ent_zero_copy_buf_index`` is a ``Computed`` view of its first two bytes
  (``bufpool.uaddr & 0xffff``, the overlay in little-endian), ignored when building.
  ``UNIONS[struct] = {member: offset-sharing first member}`` records this.
* A few header field names start with ``__`` (``fuse_sx_time.__reserved``,
  ``fuse_statx.__spare0``/``__spare2``). construct's ``Container.__eq__`` ignores keys
  starting with ``_``; bytes still roundtrip exactly (build reads them), but compare
  bytes, not Containers, when those fields matter.

Fast path (for ``codec.py``)
----------------------------
``FAST[name]`` is a :class:`FastLayout` for every struct in ``ALL``; ``fast(name, size)``
returns one for a compat size as well (cached). A FastLayout has:

* ``.struct`` -- a precompiled ``struct.Struct`` (``"<..."``) of the whole fixed part;
* ``.fields`` -- the leaf names in unpack order. For a *flat* struct (``.flat`` is True:
  only scalar integer fields, e.g. ``fuse_in_header``, ``fuse_out_header``,
  ``fuse_setupmapping_in``) these are the plain field names, and
  ``dict(zip(fl.fields, fl.struct.unpack_from(buf, off)))`` is the body. For nested or
  array structs the leaves are dotted paths (``"attr.ino"``), array elements
  ``"unused[3]"``, char arrays one ``bytes`` leaf;
* ``.size`` -- ``struct.size``, equal to the construct's ``sizeof()``;
* ``.parse(buf, offset=0) -> Container`` -- equal to ``ALL[name].parse(...)`` (nested
  Containers, ListContainers for arrays), at ``unpack_from`` speed;
* ``.build(obj) -> bytes`` -- the inverse; takes any mapping, with construct's build
  rules for what is absent or None (integers 0, arrays zeros, char arrays NULs);
* ``.tree`` -- the layout (a tuple of :class:`~.codegen.Node`) all of the above were
  generated from by :mod:`.codegen`; the message parts' packers come from it too.

The fast path does no checking beyond ``struct``'s own: ``parse`` raises
``struct.error`` if fewer than ``.size`` bytes are available from ``offset``, and
``build`` raises ``struct.error``/``ValueError``/``TypeError`` on a bad value
(:class:`~.codegen.NotFast` for a nested struct that is not a dict). The codec checks
lengths first and translates these at its boundary.

Compat (older protocol minors)
------------------------------
``compat(name, size) -> Construct`` is the prefix of struct ``name`` that is exactly
``size`` bytes long, cut at a field boundary (recursing into nested structs and integer
arrays, e.g. ``fuse_entry_out`` at 120 keeps ``attr`` up to ``rdev``). It raises
``ValueError`` if ``size`` does not fall on a boundary; ``compat(name, sizeof)`` is the
full construct. ``COMPAT_SIZES`` lists the prefixes the protocol uses
(``FUSE_COMPAT_*_SIZE`` of the header, plus the pre-7.36 and pre-7.6 ``fuse_init_in``);
which minor uses which is ``messages.py``'s business.
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from construct import (
    Array,
    Bytes,
    Computed,
    Construct,
    Container,
    Int8ul,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    Struct,
    this,
)

from .codegen import Node, compile_builder, compile_parser, format_of, leaves_of

__all__ = [
    "ALL",
    "COMPAT_SIZES",
    "DECLS",
    "FAST",
    "FLEX",
    "UNIONS",
    "Field",
    "FastLayout",
    "compat",
    "fast",
    "layout",
]

# --- the declaration table -------------------------------------------------------------
#
# One entry per C struct, in header order: "name:type" tokens. Types: u8 u16 u32 u64 i32
# i64 (integers), T[n] (array of integers), char[n] (bytes), T[] (flexible array member:
# recorded in FLEX, not in the construct), and the name of an earlier struct (nested).
# "a|b" joins union members: a carries the bytes, b is a Computed overlay of it.

_SCALARS: dict[str, tuple[Construct, str, int]] = {
    "u8": (Int8ul, "B", 1),
    "u16": (Int16ul, "H", 2),
    "u32": (Int32ul, "I", 4),
    "u64": (Int64ul, "Q", 8),
    "i32": (Int32sl, "i", 4),
    "i64": (Int64sl, "q", 8),
}

_RAW_DECLS: list[tuple[str, str]] = [
    ("fuse_attr", """ino:u64 size:u64 blocks:u64 atime:u64 mtime:u64 ctime:u64
        atimensec:u32 mtimensec:u32 ctimensec:u32 mode:u32 nlink:u32 uid:u32 gid:u32
        rdev:u32 blksize:u32 flags:u32"""),
    ("fuse_sx_time", "tv_sec:i64 tv_nsec:u32 __reserved:i32"),
    ("fuse_statx", """mask:u32 blksize:u32 attributes:u64 nlink:u32 uid:u32 gid:u32
        mode:u16 __spare0:u16[1] ino:u64 size:u64 blocks:u64 attributes_mask:u64
        atime:fuse_sx_time btime:fuse_sx_time ctime:fuse_sx_time mtime:fuse_sx_time
        rdev_major:u32 rdev_minor:u32 dev_major:u32 dev_minor:u32 __spare2:u64[14]"""),
    ("fuse_kstatfs", """blocks:u64 bfree:u64 bavail:u64 files:u64 ffree:u64 bsize:u32
        namelen:u32 frsize:u32 padding:u32 spare:u32[6]"""),
    ("fuse_file_lock", "start:u64 end:u64 type:u32 pid:u32"),
    ("fuse_entry_out", """nodeid:u64 generation:u64 entry_valid:u64 attr_valid:u64
        entry_valid_nsec:u32 attr_valid_nsec:u32 attr:fuse_attr"""),
    ("fuse_forget_in", "nlookup:u64"),
    ("fuse_forget_one", "nodeid:u64 nlookup:u64"),
    ("fuse_batch_forget_in", "count:u32 dummy:u32"),
    ("fuse_getattr_in", "getattr_flags:u32 dummy:u32 fh:u64"),
    ("fuse_attr_out", "attr_valid:u64 attr_valid_nsec:u32 dummy:u32 attr:fuse_attr"),
    ("fuse_statx_in", "getattr_flags:u32 reserved:u32 fh:u64 sx_flags:u32 sx_mask:u32"),
    ("fuse_statx_out", "attr_valid:u64 attr_valid_nsec:u32 flags:u32 spare:u64[2] stat:fuse_statx"),
    ("fuse_mknod_in", "mode:u32 rdev:u32 umask:u32 padding:u32"),
    ("fuse_mkdir_in", "mode:u32 umask:u32"),
    ("fuse_rename_in", "newdir:u64"),
    ("fuse_rename2_in", "newdir:u64 flags:u32 padding:u32"),
    ("fuse_link_in", "oldnodeid:u64"),
    ("fuse_setattr_in", """valid:u32 padding:u32 fh:u64 size:u64 lock_owner:u64 atime:u64
        mtime:u64 ctime:u64 atimensec:u32 mtimensec:u32 ctimensec:u32 mode:u32
        unused4:u32 uid:u32 gid:u32 unused5:u32"""),
    ("fuse_open_in", "flags:u32 open_flags:u32"),
    ("fuse_create_in", "flags:u32 mode:u32 umask:u32 open_flags:u32"),
    ("fuse_open_out", "fh:u64 open_flags:u32 backing_id:i32"),
    ("fuse_release_in", "fh:u64 flags:u32 release_flags:u32 lock_owner:u64"),
    ("fuse_flush_in", "fh:u64 unused:u32 padding:u32 lock_owner:u64"),
    ("fuse_read_in", """fh:u64 offset:u64 size:u32 read_flags:u32 lock_owner:u64
        flags:u32 padding:u32"""),
    ("fuse_write_in", """fh:u64 offset:u64 size:u32 write_flags:u32 lock_owner:u64
        flags:u32 padding:u32"""),
    ("fuse_write_out", "size:u32 padding:u32"),
    ("fuse_statfs_out", "st:fuse_kstatfs"),
    ("fuse_fsync_in", "fh:u64 fsync_flags:u32 padding:u32"),
    ("fuse_setxattr_in", "size:u32 flags:u32 setxattr_flags:u32 padding:u32"),
    ("fuse_getxattr_in", "size:u32 padding:u32"),
    ("fuse_getxattr_out", "size:u32 padding:u32"),
    ("fuse_lk_in", "fh:u64 owner:u64 lk:fuse_file_lock lk_flags:u32 padding:u32"),
    ("fuse_lk_out", "lk:fuse_file_lock"),
    ("fuse_access_in", "mask:u32 padding:u32"),
    ("fuse_init_in", "major:u32 minor:u32 max_readahead:u32 flags:u32 flags2:u32 unused:u32[11]"),
    ("fuse_init_out", """major:u32 minor:u32 max_readahead:u32 flags:u32
        max_background:u16 congestion_threshold:u16 max_write:u32 time_gran:u32
        max_pages:u16 map_alignment:u16 flags2:u32 max_stack_depth:u32
        request_timeout:u16 unused:u16[11]"""),
    ("cuse_init_in", "major:u32 minor:u32 unused:u32 flags:u32"),
    ("cuse_init_out", """major:u32 minor:u32 unused:u32 flags:u32 max_read:u32
        max_write:u32 dev_major:u32 dev_minor:u32 spare:u32[10]"""),
    ("fuse_interrupt_in", "unique:u64"),
    ("fuse_bmap_in", "block:u64 blocksize:u32 padding:u32"),
    ("fuse_bmap_out", "block:u64"),
    ("fuse_ioctl_in", "fh:u64 flags:u32 cmd:u32 arg:u64 in_size:u32 out_size:u32"),
    ("fuse_ioctl_iovec", "base:u64 len:u64"),
    ("fuse_ioctl_out", "result:i32 flags:u32 in_iovs:u32 out_iovs:u32"),
    ("fuse_poll_in", "fh:u64 kh:u64 flags:u32 events:u32"),
    ("fuse_poll_out", "revents:u32 padding:u32"),
    ("fuse_notify_poll_wakeup_out", "kh:u64"),
    ("fuse_fallocate_in", "fh:u64 offset:u64 length:u64 mode:u32 padding:u32"),
    ("fuse_in_header", """len:u32 opcode:u32 unique:u64 nodeid:u64 uid:u32 gid:u32 pid:u32
        total_extlen:u16 padding:u16"""),
    ("fuse_out_header", "len:u32 error:i32 unique:u64"),
    ("fuse_dirent", "ino:u64 off:u64 namelen:u32 type:u32 name:char[]"),
    ("fuse_direntplus", "entry_out:fuse_entry_out dirent:fuse_dirent"),
    ("fuse_notify_inval_inode_out", "ino:u64 off:i64 len:i64"),
    ("fuse_notify_inval_entry_out", "parent:u64 namelen:u32 flags:u32"),
    ("fuse_notify_delete_out", "parent:u64 child:u64 namelen:u32 padding:u32"),
    ("fuse_notify_store_out", "nodeid:u64 offset:u64 size:u32 padding:u32"),
    ("fuse_notify_retrieve_out", "notify_unique:u64 nodeid:u64 offset:u64 size:u32 padding:u32"),
    ("fuse_notify_retrieve_in", """dummy1:u64 offset:u64 size:u32 dummy2:u32 dummy3:u64
        dummy4:u64"""),
    ("fuse_notify_prune_out", "count:u32 padding:u32 spare:u64"),
    ("fuse_backing_map", "fd:i32 flags:u32 padding:u64"),
    ("fuse_lseek_in", "fh:u64 offset:u64 whence:u32 padding:u32"),
    ("fuse_lseek_out", "offset:u64"),
    ("fuse_copy_file_range_in", """fh_in:u64 off_in:u64 nodeid_out:u64 fh_out:u64
        off_out:u64 len:u64 flags:u64"""),
    ("fuse_copy_file_range_out", "bytes_copied:u64"),
    ("fuse_setupmapping_in", "fh:u64 foffset:u64 len:u64 flags:u64 moffset:u64"),
    ("fuse_removemapping_in", "count:u32"),
    ("fuse_removemapping_one", "moffset:u64 len:u64"),
    ("fuse_syncfs_in", "padding:u64"),
    ("fuse_secctx", "size:u32 padding:u32"),
    ("fuse_secctx_header", "size:u32 nr_secctx:u32"),
    ("fuse_ext_header", "size:u32 type:u32"),
    ("fuse_supp_groups", "nr_groups:u32 groups:u32[]"),
    ("fuse_uring_ent_in_out", "flags:u64 commit_id:u64 payload_sz:u32 offset:u32 reserved:u64"),
    ("fuse_uring_req_header", """in_out:char[128] op_in:char[128]
        ring_ent_in_out:fuse_uring_ent_in_out"""),
    # The anonymous struct inside fuse_uring_cmd_req's anonymous union (not a header
    # struct of its own, so it is kept out of ALL).
    ("fuse_uring_cmd_req.bufpool", "uaddr:u64 len:u32 reserved:u32"),
    ("fuse_uring_cmd_req", """flags:u64 commit_id:u64 qid:u16 padding:u8[6]
        bufpool:fuse_uring_cmd_req.bufpool|ent_zero_copy_buf_index:u16"""),
]


@dataclass(frozen=True)
class Field:
    """One declared field. ``kind`` is "int", "array" (of ints), "bytes" or "struct".

    ``type`` is the scalar code (u32 ...) for int/array, "char" for bytes, or the nested
    struct's name; ``count`` is the array length (0 for scalars and nested structs).
    ``overlay`` names the union member whose bytes this field views (None normally).
    """

    name: str
    kind: str
    type: str
    count: int = 0
    overlay: str | None = None


DECLS: dict[str, tuple[Field, ...]] = {}
FLEX: dict[str, tuple[str, str]] = {}
UNIONS: dict[str, dict[str, str]] = {}
# Truncated declarations "name@size" made by compat(); kept apart so DECLS stays the header.
_TRUNCATED: dict[str, tuple[Field, ...]] = {}


def _fields(key: str) -> tuple[Field, ...]:
    return DECLS[key] if key in DECLS else _TRUNCATED[key]


def _parse_field(token: str) -> tuple[Field | None, tuple[str, str] | None]:
    name, _, typ = token.partition(":")
    if typ.endswith("[]"):
        return None, (name, typ[:-2])
    count = 0
    if typ.endswith("]"):
        typ, _, n = typ[:-1].partition("[")
        count = int(n)
    if typ == "char":
        return Field(name, "bytes", "char", count), None
    if typ in _SCALARS:
        return Field(name, "array" if count else "int", typ, count), None
    if typ not in DECLS:
        raise ValueError(f"unknown type {typ!r} for field {name!r}")
    return Field(name, "struct", typ), None


def _decl(name: str, spec: str) -> None:
    fields: list[Field] = []
    for token in spec.split():
        members = token.split("|")
        field, flex = _parse_field(members[0])
        if flex is not None:
            FLEX[name] = flex
            continue
        assert field is not None
        fields.append(field)
        for other in members[1:]:
            alias, _ = _parse_field(other)
            assert alias is not None and alias.kind == "int"
            fields.append(Field(alias.name, "int", alias.type, overlay=field.name))
            UNIONS.setdefault(name, {})[alias.name] = field.name
    DECLS[name] = tuple(fields)


for _name, _spec in _RAW_DECLS:
    _decl(_name, _spec)


def _leaf_scalar(decl_name: str, field: Field) -> tuple[str, int]:
    """The first scalar (path, byte width) a union member's overlay reads."""
    sub = _fields(decl_name)
    for f in sub:
        if f.name == field.overlay:
            if f.kind == "int":
                return f.name, _SCALARS[f.type][2]
            if f.kind == "struct":
                first = _fields(f.type)[0]
                assert first.kind == "int"
                return f"{f.name}.{first.name}", _SCALARS[first.type][2]
    raise AssertionError(field)


# --- constructs --------------------------------------------------------------------------


def _field_size(f: Field) -> int:
    if f.overlay is not None:
        return 0
    if f.kind == "int":
        return _SCALARS[f.type][2]
    if f.kind == "array":
        return _SCALARS[f.type][2] * f.count
    if f.kind == "bytes":
        return f.count
    return sum(_field_size(g) for g in _fields(f.type))


def _truncate(fields: tuple[Field, ...], size: int, where: str) -> tuple[Field, ...]:
    """The prefix of ``fields`` that is exactly ``size`` bytes (see :func:`compat`)."""
    out: list[Field] = []
    left = size
    for f in fields:
        if left == 0:
            break
        n = _field_size(f)
        if n <= left:
            out.append(f)
            left -= n
            continue
        if f.kind == "struct":
            out.append(Field(f.name, "struct", f"{f.type}@{left}"))
            _compat_decl(f.type, left)
            left = 0
        elif f.kind in ("array", "bytes"):
            width = _SCALARS[f.type][2] if f.kind == "array" else 1
            if left % width:
                break
            out.append(Field(f.name, f.kind, f.type, left // width))
            left = 0
        break
    if left:
        raise ValueError(f"{where}: {size} bytes does not end on a field boundary")
    return tuple(out)


def _compat_decl(name: str, size: int) -> str:
    """Register the truncated declaration ``name@size`` and return its key."""
    key = f"{name}@{size}"
    if key not in _TRUNCATED:
        _TRUNCATED[key] = _truncate(_fields(name), size, name)
    return key


def _build_construct(name: str) -> Construct:
    subcons: list[Construct] = []
    for f in _fields(name):
        if f.overlay is not None:
            path, width = _leaf_scalar(name, f)
            expr = this
            for part in path.split("."):
                expr = expr[part]
            mask = (1 << (8 * _SCALARS[f.type][2])) - 1
            assert _SCALARS[f.type][2] <= width
            subcons.append(f.name / Computed(expr & mask))
        elif f.kind == "int":
            subcons.append(f.name / _SCALARS[f.type][0])
        elif f.kind == "array":
            subcons.append(f.name / Array(f.count, _SCALARS[f.type][0]))
        elif f.kind == "bytes":
            subcons.append(f.name / Bytes(f.count))
        else:
            subcons.append(f.name / _construct(f.type))
    return Struct(*subcons)


@cache
def _construct(key: str) -> Construct:
    return _build_construct(key)


ALL: dict[str, Construct] = {name: _construct(name) for name, _ in _RAW_DECLS if "." not in name}
globals().update(ALL)


def compat(name: str, size: int) -> Construct:
    """The ``size``-byte prefix of struct ``name`` for older protocol minors.

    Cut at a field boundary, recursing into nested structs and integer arrays; raises
    ``ValueError`` if ``size`` is not on a boundary or exceeds the struct.
    """
    if name not in ALL:
        raise KeyError(name)
    full = ALL[name].sizeof()
    if size == full:
        return ALL[name]
    if not 0 <= size < full:
        raise ValueError(f"{name}: compat size {size} outside 0..{full}")
    return _construct(_compat_decl(name, size))


# Prefixes the protocol uses (FUSE_COMPAT_*_SIZE in the header; fuse_init_in was 16 bytes
# before 7.36 added flags2, and 8 bytes -- major/minor only -- in the earliest minors).
COMPAT_SIZES: dict[str, tuple[int, ...]] = {
    "fuse_entry_out": (120,),
    "fuse_attr_out": (96,),
    "fuse_init_out": (8, 24),
    "fuse_init_in": (8, 16),
    "fuse_mknod_in": (8,),
    "fuse_write_in": (24,),
    "fuse_setxattr_in": (8,),
    "fuse_statfs_out": (48,),
    "fuse_kstatfs": (48,),
}


def layout(name: str) -> list[tuple[str, int, int]]:
    """``(field, offset, size)`` of struct ``name``'s fields, from its layout tree (the one
    the fast path is generated from; ``tests/test_layout.py`` checks it against gcc).

    A union overlay gets the offset of the member it views and its own width. Flexible
    array members are not listed (see ``FLEX``).
    """
    out: list[tuple[str, int, int]] = []
    offsets: dict[str, int] = {}
    off = 0
    for n in _tree(name):
        if n.kind == "overlay":
            out.append((n.name, offsets[n.view.split(".")[0]], (n.mask.bit_length() + 7) // 8))
            continue
        size = _struct.calcsize(format_of((n,)))
        offsets[n.name] = off
        out.append((n.name, off, size))
        off += size
    return out


# --- fast path ---------------------------------------------------------------------------
#
# The one layout derivation: each declaration becomes a tree of codegen.Node (scalars with
# their struct codes, arrays, char arrays, nested structs, union overlays); the format,
# the leaf names and every fast parse/build function of the wire layer are generated
# from that tree by codegen.


@dataclass(frozen=True)
class FastLayout:
    """A precompiled ``struct.Struct`` view of one struct (see the module docstring).

    ``tree`` is the layout the format and the functions were generated from (codegen
    builds the message parts' packers from it too).
    """

    name: str
    struct: _struct.Struct
    fields: tuple[str, ...]
    flat: bool
    parse: Callable[..., Container]
    build: Callable[[Mapping[str, Any]], bytes]
    tree: tuple[Node, ...]

    @property
    def size(self) -> int:
        return self.struct.size


@cache
def _tree(key: str) -> tuple[Node, ...]:
    nodes: list[Node] = []
    for f in _fields(key):
        if f.overlay is not None:
            path, _ = _leaf_scalar(key, f)
            mask = (1 << (8 * _SCALARS[f.type][2])) - 1
            nodes.append(Node(f.name, "overlay", view=path, mask=mask))
        elif f.kind == "int":
            nodes.append(Node(f.name, "int", _SCALARS[f.type][1]))
        elif f.kind == "array":
            nodes.append(Node(f.name, "array", _SCALARS[f.type][1], f.count))
        elif f.kind == "bytes":
            nodes.append(Node(f.name, "bytes", "s", f.count))
        else:
            nodes.append(Node(f.name, "struct", children=_tree(f.type)))
    return tuple(nodes)


@cache
def _fast_for_key(key: str, name: str) -> FastLayout:
    tree = _tree(key)
    return FastLayout(
        name,
        _struct.Struct(format_of(tree)),
        tuple(leaves_of(tree)),
        all(n.kind == "int" for n in tree),
        compile_parser(tree, label=key),
        compile_builder(tree, label=key),
        tree,
    )


def fast(name: str, size: int | None = None) -> FastLayout:
    """The fast-path layout of struct ``name``, or of its ``size``-byte compat prefix."""
    if name not in ALL:
        raise KeyError(name)
    if size is None or size == ALL[name].sizeof():
        return _fast_for_key(name, name)
    compat(name, size)  # validates and registers the truncated declaration
    return _fast_for_key(f"{name}@{size}", name)


@cache
def fast_pair(
    head: str, name: str, size: int | None = None
) -> tuple[_struct.Struct, Callable[..., tuple[tuple[Any, ...], Container]]]:
    """Flat struct ``head`` followed by struct ``name`` (or its ``size``-byte prefix) as
    ONE ``struct.Struct`` (the two FastLayout formats joined) and ``parse(buf, offset=0)
    -> (head values, Container)``, the Container equal to ``fast(name, size).parse(buf,
    offset + head size)``. No checks, as for FastLayout."""
    hl = fast(head)
    if not hl.flat:
        raise ValueError(f"{head} is not flat")
    fl = fast(name, size)
    st = _struct.Struct(format_of(fl.tree, hl.tree))
    return st, compile_parser(fl.tree, hl.tree, label=f"{head}+{name}@{fl.size}")


FAST: dict[str, FastLayout] = {name: fast(name) for name in ALL}

del _name, _spec
