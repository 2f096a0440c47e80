"""Per-opcode request and reply bodies of the FUSE protocol (7.46, peers at 7.22..7.46).

Every body is declared once, as a tuple of *parts* (:mod:`.parts`: :class:`Fixed`,
:class:`Name`, :class:`Sized`, :class:`Rest`, :class:`Counted`, :class:`Dirents`, ...),
in the tables below: :data:`REQUESTS`, :data:`REPLIES` and :data:`NOTIFICATIONS`, one
row per opcode / notify code in ``fuse.h`` order. From that one declaration come the
construct of each body (:func:`request_body`, :func:`reply_body`,
:func:`notification_body`, via :func:`schema`: the reference) and the fast paths the
codec uses (:func:`parse_parts`, :func:`build_parts`, :func:`prefixed_builder`, generated
by :mod:`.codegen` from ``structs.FAST``). ``tests/test_wire_properties.py`` checks the
fast path and the construct accept and reject the same bytes and agree;
``tests/test_wire_encode.py`` that they build the same bytes and fail alike.

The cached lookups :func:`request_parts`, :func:`reply_parts` and
:func:`notification_parts` return the parts tuple of one message kind (None: unknown,
the body is raw bytes); the same tuple object each time, so it can key further caches.

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

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from construct import Construct

from . import constants as C
from . import structs
from .codegen import NotFast
from .constructs import SchemaError, get_bytes
from .ext import FUSE_EXT_GROUPS, FUSE_MAX_NR_SECCTX, build_ext, ext_area, parse_ext
from .parts import (
    FUSE_IOCTL_RETRY,
    AnySize,
    Counted,
    Dirents,
    Fixed,
    IoctlOut,
    Name,
    NameN,
    Part,
    Rest,
    Sized,
    always_parses,
    body_parser,
    build_parts,
    parse_parts,
    prefixed_builder,
    schema,
)

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
    "body_parser",
    "build_parts",
    "always_parses",
    "NotFast",
    "parse_ext",
    "build_ext",
    "ext_area",
    "schema",
    "prefixed_builder",
    "request_parts_of",
    "reply_parts_of",
    "layout_step",
    "MINOR_STEPS",
    "REQUESTS",
    "REPLIES",
    "NOTIFICATIONS",
    # Importable from here, their homes being parts, ext and constructs:
    "AnySize",
    "NameN",
    "IoctlOut",
    "SchemaError",
    "FUSE_SETXATTR_EXT",
    "FUSE_IOCTL_RETRY",
    "FUSE_EXT_GROUPS",
    "FUSE_MAX_NR_SECCTX",
]

_OP = C.fuse_opcode
_NC = C.fuse_notify_code
FUSE_SETXATTR_EXT = int(C.InitFlags.FUSE_SETXATTR_EXT)

Parts = tuple[Part, ...]
# A request row: (negotiated minor, FUSE_SETXATTR_EXT negotiated) -> the body's parts.
RequestRule = Callable[[int, bool], Parts]
# A reply row: (negotiated minor, the GETXATTR/LISTXATTR request's size: 0, 1 for any
# other size, None unknown) -> the body's parts.
ReplyRule = Callable[[int, int | None], Parts]


def _len_of(field: str) -> Callable[[Any], int]:
    return lambda ctx: len(get_bytes(ctx, field))


def _count_of(field: str) -> Callable[[Any], int]:
    return lambda ctx: len(ctx.get(field) or ())


def _in(struct_name: str) -> RequestRule:
    """A request whose body is one struct."""
    return lambda minor, xext: (Fixed(struct_name),)


def _out(struct_name: str) -> ReplyRule:
    """A reply whose body is one struct."""
    return lambda minor, xsize: (Fixed(struct_name),)


def _name(minor: int, xext: bool) -> Parts:
    return (Name(),)


def _nothing(minor: int, xsize: Any) -> Parts:
    return ()


def _entry_out(minor: int, xsize: int | None) -> Parts:
    return (Fixed("fuse_entry_out", C.FUSE_COMPAT_ENTRY_OUT_SIZE if minor < _V9 else None),)


def _attr_out(minor: int, xsize: int | None) -> Parts:
    return (Fixed("fuse_attr_out", C.FUSE_COMPAT_ATTR_OUT_SIZE if minor < _V9 else None),)


def _xattr_out(minor: int, xsize: int | None) -> Parts:
    # size 0 in the request asks for the value's size; otherwise the value itself.
    return (Fixed("fuse_getxattr_out"),) if xsize == 0 else (Rest("value"),)


_INIT_IN_SIZES = (*structs.COMPAT_SIZES["fuse_init_in"], structs.ALL["fuse_init_in"].sizeof())
_INIT_OUT_SIZES = (*structs.COMPAT_SIZES["fuse_init_out"], structs.ALL["fuse_init_out"].sizeof())
_MKNOD_COMPAT = C.FUSE_COMPAT_MKNOD_IN_SIZE  # before 7.12
_WRITE_COMPAT = C.FUSE_COMPAT_WRITE_IN_SIZE  # before 7.9
_SETXATTR_COMPAT = C.FUSE_COMPAT_SETXATTR_IN_SIZE  # without FUSE_SETXATTR_EXT
_STATFS_COMPAT = C.FUSE_COMPAT_STATFS_SIZE  # before 7.4
# The minors from which a layout grows (the only minors the rules below compare with):
# fuse_statfs_out from 7.4; fuse_entry_out, fuse_attr_out and fuse_write_in from 7.9;
# fuse_mknod_in from 7.12.
_V4, _V9, _V12 = 4, 9, 12
#: Every minor at which some body's layout changes: between two steps every rule gives
#: the same parts, so the cached lookups key by :func:`layout_step` (an untrusted minor
#: makes at most one parts tuple per step, not one per value).
MINOR_STEPS = (_V4, _V9, _V12)

# --- requests, in fuse.h's opcode order ---------------------------------------------------

REQUESTS: dict[int, RequestRule] = {
    _OP.FUSE_LOOKUP: _name,
    _OP.FUSE_FORGET: _in("fuse_forget_in"),
    _OP.FUSE_GETATTR: _in("fuse_getattr_in"),
    _OP.FUSE_SETATTR: _in("fuse_setattr_in"),
    _OP.FUSE_READLINK: _nothing,
    _OP.FUSE_SYMLINK: lambda minor, xext: (Name(), Name("link")),
    _OP.FUSE_MKNOD: lambda minor, xext: (
        Fixed("fuse_mknod_in", _MKNOD_COMPAT if minor < _V12 else None),
        Name(),
    ),
    _OP.FUSE_MKDIR: lambda minor, xext: (Fixed("fuse_mkdir_in"), Name()),
    _OP.FUSE_UNLINK: _name,
    _OP.FUSE_RMDIR: _name,
    _OP.FUSE_RENAME: lambda minor, xext: (Fixed("fuse_rename_in"), Name(), Name("newname")),
    _OP.FUSE_LINK: lambda minor, xext: (Fixed("fuse_link_in"), Name()),
    _OP.FUSE_OPEN: _in("fuse_open_in"),
    _OP.FUSE_READ: _in("fuse_read_in"),
    _OP.FUSE_WRITE: lambda minor, xext: (
        Fixed("fuse_write_in", _WRITE_COMPAT if minor < _V9 else None, {"size": _len_of("data")}),
        Sized("data", "size"),
    ),
    _OP.FUSE_STATFS: _nothing,
    _OP.FUSE_RELEASE: _in("fuse_release_in"),
    _OP.FUSE_FSYNC: _in("fuse_fsync_in"),
    _OP.FUSE_SETXATTR: lambda minor, xext: (
        Fixed("fuse_setxattr_in", None if xext else _SETXATTR_COMPAT, {"size": _len_of("value")}),
        Name(),
        Sized("value", "size"),
    ),
    _OP.FUSE_GETXATTR: lambda minor, xext: (Fixed("fuse_getxattr_in"), Name()),
    _OP.FUSE_LISTXATTR: _in("fuse_getxattr_in"),
    _OP.FUSE_REMOVEXATTR: _name,
    _OP.FUSE_FLUSH: _in("fuse_flush_in"),
    _OP.FUSE_INIT: lambda minor, xext: (AnySize("fuse_init_in", _INIT_IN_SIZES),),
    _OP.FUSE_OPENDIR: _in("fuse_open_in"),
    _OP.FUSE_READDIR: _in("fuse_read_in"),
    _OP.FUSE_RELEASEDIR: _in("fuse_release_in"),
    _OP.FUSE_FSYNCDIR: _in("fuse_fsync_in"),
    _OP.FUSE_GETLK: _in("fuse_lk_in"),
    _OP.FUSE_SETLK: _in("fuse_lk_in"),
    _OP.FUSE_SETLKW: _in("fuse_lk_in"),
    _OP.FUSE_ACCESS: _in("fuse_access_in"),
    _OP.FUSE_CREATE: lambda minor, xext: (Fixed("fuse_create_in"), Name()),
    _OP.FUSE_INTERRUPT: _in("fuse_interrupt_in"),
    _OP.FUSE_BMAP: _in("fuse_bmap_in"),
    _OP.FUSE_DESTROY: _nothing,
    _OP.FUSE_IOCTL: lambda minor, xext: (
        Fixed("fuse_ioctl_in", None, {"in_size": _len_of("data")}),
        Sized("data", "in_size"),
    ),
    _OP.FUSE_POLL: _in("fuse_poll_in"),
    _OP.FUSE_NOTIFY_REPLY: lambda minor, xext: (
        Fixed("fuse_notify_retrieve_in", None, {"size": _len_of("data")}),
        Sized("data", "size"),
    ),
    _OP.FUSE_BATCH_FORGET: lambda minor, xext: (
        Fixed("fuse_batch_forget_in", None, {"count": _count_of("entries")}),
        Counted("entries", "count", "fuse_forget_one", back=8),
    ),
    _OP.FUSE_FALLOCATE: _in("fuse_fallocate_in"),
    _OP.FUSE_READDIRPLUS: _in("fuse_read_in"),
    _OP.FUSE_RENAME2: lambda minor, xext: (Fixed("fuse_rename2_in"), Name(), Name("newname")),
    _OP.FUSE_LSEEK: _in("fuse_lseek_in"),
    _OP.FUSE_COPY_FILE_RANGE: _in("fuse_copy_file_range_in"),
    _OP.FUSE_SETUPMAPPING: _in("fuse_setupmapping_in"),
    _OP.FUSE_REMOVEMAPPING: lambda minor, xext: (
        Fixed("fuse_removemapping_in", None, {"count": _count_of("entries")}),
        Counted(
            "entries", "count", "fuse_removemapping_one",
            limit=C.FUSE_REMOVEMAPPING_MAX_ENTRY, back=4,
        ),
    ),
    _OP.FUSE_SYNCFS: _in("fuse_syncfs_in"),
    _OP.FUSE_TMPFILE: lambda minor, xext: (Fixed("fuse_create_in"), Name()),
    _OP.FUSE_STATX: _in("fuse_statx_in"),
    _OP.FUSE_COPY_FILE_RANGE_64: _in("fuse_copy_file_range_in"),
    _OP.CUSE_INIT: _in("cuse_init_in"),
}

# --- replies, in fuse.h's opcode order (FORGET, BATCH_FORGET, NOTIFY_REPLY get none) ----

REPLIES: dict[int, ReplyRule] = {
    _OP.FUSE_LOOKUP: _entry_out,
    _OP.FUSE_FORGET: _nothing,
    _OP.FUSE_GETATTR: _attr_out,
    _OP.FUSE_SETATTR: _attr_out,
    _OP.FUSE_READLINK: lambda minor, xsize: (Rest("link"),),
    _OP.FUSE_SYMLINK: _entry_out,
    _OP.FUSE_MKNOD: _entry_out,
    _OP.FUSE_MKDIR: _entry_out,
    _OP.FUSE_UNLINK: _nothing,
    _OP.FUSE_RMDIR: _nothing,
    _OP.FUSE_RENAME: _nothing,
    _OP.FUSE_LINK: _entry_out,
    _OP.FUSE_OPEN: _out("fuse_open_out"),
    _OP.FUSE_READ: lambda minor, xsize: (Rest("data"),),
    _OP.FUSE_WRITE: _out("fuse_write_out"),
    _OP.FUSE_STATFS: lambda minor, xsize: (
        Fixed("fuse_statfs_out", _STATFS_COMPAT if minor < _V4 else None),
    ),
    _OP.FUSE_RELEASE: _nothing,
    _OP.FUSE_FSYNC: _nothing,
    _OP.FUSE_SETXATTR: _nothing,
    _OP.FUSE_GETXATTR: _xattr_out,
    _OP.FUSE_LISTXATTR: _xattr_out,
    _OP.FUSE_REMOVEXATTR: _nothing,
    _OP.FUSE_FLUSH: _nothing,
    _OP.FUSE_INIT: lambda minor, xsize: (AnySize("fuse_init_out", _INIT_OUT_SIZES),),
    _OP.FUSE_OPENDIR: _out("fuse_open_out"),
    _OP.FUSE_READDIR: lambda minor, xsize: (Dirents(plus=False),),
    _OP.FUSE_RELEASEDIR: _nothing,
    _OP.FUSE_FSYNCDIR: _nothing,
    _OP.FUSE_GETLK: _out("fuse_lk_out"),
    _OP.FUSE_SETLK: _nothing,
    _OP.FUSE_SETLKW: _nothing,
    _OP.FUSE_ACCESS: _nothing,
    _OP.FUSE_CREATE: lambda minor, xsize: (Fixed("fuse_entry_out"), Fixed("fuse_open_out")),
    _OP.FUSE_INTERRUPT: _nothing,
    _OP.FUSE_BMAP: _out("fuse_bmap_out"),
    _OP.FUSE_DESTROY: _nothing,
    _OP.FUSE_IOCTL: lambda minor, xsize: (
        Fixed(
            "fuse_ioctl_out", None,
            {"in_iovs": _count_of("in_iov"), "out_iovs": _count_of("out_iov")},
        ),
        IoctlOut(),
    ),
    _OP.FUSE_POLL: _out("fuse_poll_out"),
    _OP.FUSE_NOTIFY_REPLY: _nothing,
    _OP.FUSE_BATCH_FORGET: _nothing,
    _OP.FUSE_FALLOCATE: _nothing,
    _OP.FUSE_READDIRPLUS: lambda minor, xsize: (Dirents(plus=True),),
    _OP.FUSE_RENAME2: _nothing,
    _OP.FUSE_LSEEK: _out("fuse_lseek_out"),
    _OP.FUSE_COPY_FILE_RANGE: _out("fuse_write_out"),
    _OP.FUSE_SETUPMAPPING: _nothing,
    _OP.FUSE_REMOVEMAPPING: _nothing,
    _OP.FUSE_SYNCFS: _nothing,
    _OP.FUSE_TMPFILE: lambda minor, xsize: (Fixed("fuse_entry_out"), Fixed("fuse_open_out")),
    _OP.FUSE_STATX: _out("fuse_statx_out"),
    _OP.FUSE_COPY_FILE_RANGE_64: _out("fuse_copy_file_range_out"),
    _OP.CUSE_INIT: lambda minor, xsize: (
        Fixed("cuse_init_out"),
        Rest("info", limit=C.CUSE_INIT_INFO_MAX),
    ),
}

# --- notifications (fuse_out_header.unique == 0, error = the code), in fuse.h's order ----

NOTIFICATIONS: dict[int, Callable[[], Parts]] = {
    _NC.FUSE_NOTIFY_POLL: lambda: (Fixed("fuse_notify_poll_wakeup_out"),),
    _NC.FUSE_NOTIFY_INVAL_INODE: lambda: (Fixed("fuse_notify_inval_inode_out"),),
    _NC.FUSE_NOTIFY_INVAL_ENTRY: lambda: (
        Fixed("fuse_notify_inval_entry_out", None, {"namelen": _len_of("name")}),
        NameN("name", "namelen"),
    ),
    _NC.FUSE_NOTIFY_STORE: lambda: (
        Fixed("fuse_notify_store_out", None, {"size": _len_of("data")}),
        Sized("data", "size"),
    ),
    _NC.FUSE_NOTIFY_RETRIEVE: lambda: (Fixed("fuse_notify_retrieve_out"),),
    _NC.FUSE_NOTIFY_DELETE: lambda: (
        Fixed("fuse_notify_delete_out", None, {"namelen": _len_of("name")}),
        NameN("name", "namelen"),
    ),
    _NC.FUSE_NOTIFY_RESEND: lambda: (),
    _NC.FUSE_NOTIFY_INC_EPOCH: lambda: (),
    _NC.FUSE_NOTIFY_PRUNE: lambda: (
        Fixed("fuse_notify_prune_out", None, {"count": _count_of("entries")}),
        Counted("entries", "count", "u64", back=16),
    ),
}


# --- the cached lookups --------------------------------------------------------------------


def layout_step(minor: int) -> int:
    """The lowest minor whose layouts are ``minor``'s: the last of :data:`MINOR_STEPS`
    at or below it (0 below the first)."""
    if minor >= _V12:
        return _V12
    if minor >= _V9:
        return _V9
    return _V4 if minor >= _V4 else 0


def request_parts_of(opcode: int, minor: int, setxattr_ext: bool) -> Parts | None:
    """:func:`request_parts` keyed by plain values (``setxattr_ext``: FUSE_SETXATTR_EXT
    negotiated), the form the codec caches by. Same tuple object for the same key, and for
    every minor of one :func:`layout_step`."""
    return _request_parts(opcode, layout_step(minor), setxattr_ext)


@lru_cache(maxsize=4096)
def _request_parts(opcode: int, step: int, setxattr_ext: bool) -> Parts | None:
    rule = REQUESTS.get(opcode)
    return None if rule is None else rule(step, setxattr_ext)


def request_parts(opcode: int, minor: int = 46, flags: int = 0) -> Parts | None:
    """The parts of ``opcode``'s request body at ``minor`` (None: unknown opcode, raw bytes).

    ``flags`` is the negotiated 64-bit INIT flags (only FUSE_SETXATTR_EXT matters here).
    """
    return request_parts_of(int(opcode), int(minor), bool(flags & FUSE_SETXATTR_EXT))


def reply_parts_of(opcode: int, minor: int, xattr_size: int | None) -> Parts | None:
    """:func:`reply_parts` keyed by plain values (``xattr_size`` already 0, 1 or None);
    one tuple per :func:`layout_step` as for requests."""
    return _reply_parts(opcode, layout_step(minor), xattr_size)


@lru_cache(maxsize=4096)
def _reply_parts(opcode: int, step: int, xattr_size: int | None) -> Parts | None:
    rule = REPLIES.get(opcode)
    return None if rule is None else rule(step, xattr_size)


def reply_parts(opcode: int, minor: int = 46, xattr_size: int | None = None) -> Parts | None:
    """The parts of ``opcode``'s reply body (None: unknown opcode, raw bytes).

    ``xattr_size`` is the GETXATTR/LISTXATTR request's ``size``: 0 selects
    ``fuse_getxattr_out``, anything else (or None, unknown) the raw ``value``.
    """
    if xattr_size is not None:
        xattr_size = 0 if xattr_size == 0 else 1
    return reply_parts_of(int(opcode), int(minor), xattr_size)


@lru_cache(maxsize=4096)
def notification_parts(code: int) -> Parts | None:
    """The parts of notification ``code``'s body (None: unknown code, raw bytes)."""
    rule = NOTIFICATIONS.get(int(code))
    return None if rule is None else rule()


# --- whole bodies --------------------------------------------------------------------------


def request_body(opcode: int, minor: int = 46, flags: int = 0) -> Construct:
    """The construct of ``opcode``'s request body (``GreedyBytes`` for an unknown opcode)."""
    return schema(request_parts(opcode, minor, flags))


def reply_body(opcode: int, minor: int = 46, xattr_size: int | None = None) -> Construct:
    """The construct of ``opcode``'s reply body (``GreedyBytes`` for an unknown opcode)."""
    return schema(reply_parts(opcode, minor, xattr_size))


def notification_body(code: int) -> Construct:
    """The construct of notification ``code``'s body (``GreedyBytes`` if unknown)."""
    return schema(notification_parts(code))
