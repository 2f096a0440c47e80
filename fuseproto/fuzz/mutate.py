"""Structure-aware mutation of FUSE messages: decode, change one thing, re-encode.

Byte-level mutators (libFuzzer's own) rarely get past ``fuse_in_header.len == len(data)``
and the per-opcode length checks; these mutators work on the decoded message instead, so
most outputs are *well formed but hostile*: a field set to a boundary value, a name that
is empty, ``..`` or 4096 bytes long, a ``count``/``size``/``len`` that lies about what
follows, an extension area that does not add up, one opcode's body under another's
header. Every output is built by :mod:`fuseproto.wire.codec` (with ``length=``,
``total_extlen=`` and count/size fields forced where we want a lie); when an input does
not decode, the raw fallback edits the bytes and re-stamps ``len`` through the header's
schema.

Changing ONE integer field (a header field, or a field of the body's leading fixed
structs) of a message that decodes and re-encoding it gives the bytes of the message with
the new value written at the field's offset: the codec re-encodes every message it
decodes byte for byte (the wire oracle checks exactly that). So those mutations are
byte-level edits at the field offsets of the schema's compiled structs (``structs.FAST``
/ the body's :class:`~fuseproto.wire.messages.Fixed` parts, cached per layout): no decode
and no encode, ~10x cheaper. Names, lists, extensions and derived-field changes still go
through decode, :func:`mutate_body` and the codec.

All functions take a :class:`random.Random` so a seed reproduces a mutation.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from construct import Container, ListContainer

from ..errors import EncodeError
from ..wire import codec, messages, structs
from ..wire.constants import FUSE_REMOVEMAPPING_MAX_ENTRY, fuse_notify_code, fuse_opcode
from .memo import decoded

__all__ = [
    "INTERESTING_INTS",
    "INTERESTING_NAMES",
    "Pools",
    "mutate_request",
    "mutate_reply",
    "mutate_notification",
    "mutate_bytes",
    "restamp",
    "copy_body",
    "random_name",
    "AT_REMOVEMAPPING_MAX",
    "AT_LIMIT_SHARE",
    "at_limit",
    "counted_bounds",
]



def at_limit(limit: int) -> tuple[int, int, int]:
    """The counts at a counted list's maximum and one on either side of it."""
    return (limit - 1, limit, limit + 1)


#: List lengths at the protocol's one counted maximum (REMOVEMAPPING's entries, from the
#: constants) and one on either side of it.
AT_REMOVEMAPPING_MAX = at_limit(FUSE_REMOVEMAPPING_MAX_ENTRY)

_IN = structs.FAST["fuse_in_header"]
_OUT = structs.FAST["fuse_out_header"]
_IN_SIZE, _OUT_SIZE = _IN.size, _OUT.size

# Boundary values for the integer fields (sizes, offsets, counts, flags, modes ...).
INTERESTING_INTS: tuple[int, ...] = (
    0, 1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 257, 511, 512, 1023, 1024,
    4095, 4096, 4097, 8191, 8192, 65535, 65536, 65537, 131072, 1 << 20, (1 << 20) + 1,
    (2 << 20) - 1, 2 << 20, (2 << 20) + 1, 4 << 20, 0x7FFF_FFFF, 0x8000_0000,
    0xFFFF_FFFE, 0xFFFF_FFFF, 1 << 32, (1 << 32) + 1, 0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFE, 0xFFFF_FFFF_FFFF_FFFF,
    0o100644, 0o040755, 0o120777, 0o010644, 0o140755,
)
INTERESTING_NAMES: tuple[bytes, ...] = (
    b"", b".", b"..", b"../..", b"../../../../etc", b"/", b"/etc/passwd", b"a/b", b"file",
    b"dir", b"link", b"new", b"a" * 255, b"a" * 256, b"a" * 1024, b"a" * 4095, b"a" * 4096,
    b"\xff\xfe", b"\n", b"user.test", b"security.capability", b"trusted.x",
    b"system.posix_acl_access", b"user." + b"x" * 250,
)
# Fields whose value the encoder derives when absent: forcing them is how a message lies.
_DERIVED = ("size", "in_size", "count", "namelen", "in_iovs", "out_iovs", "nr_groups")
_BYTES_FIELDS = ("name", "newname", "link", "value", "data", "info", "ctx")
_OPCODES = [int(m) for m in fuse_opcode]
_CODES = [int(m) for m in fuse_notify_code]
_NOTE_CODES = (*_CODES, 0, 100, 0x7FFFFFFF)
_REPLY_ERRORS = (0, -1, -2, -5, -22, -38, -511, -512, -4096, 1, 0x7FFFFFFF, -0x80000000)


class Pools:
    """Values worth reusing: node ids, file handles, uniques the harness has seen."""

    def __init__(self, nodeids: Sequence[int] = (1,), fhs: Sequence[int] = (0,)):
        self.nodeids = list(nodeids)
        self.fhs = list(fhs)

    def pick_nodeid(self, rng: random.Random) -> int:
        return rng.choice(self.nodeids) if self.nodeids else 1


_DEFAULT_POOLS = Pools()


def _interesting_int(rng: random.Random, old: int) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.choice(INTERESTING_INTS)
    if r < 0.85:
        return max(0, old + rng.choice((-1, 1, -8, 8, -4096, 4096)))
    return rng.getrandbits(rng.choice((8, 16, 32, 64)))


def _leaf_paths(obj: Any, ints: list[tuple[Any, ...]], names: list[tuple[Any, ...]],
                lists: list[tuple[Any, ...]], prefix: tuple[Any, ...] = (),
                in_list: bool = False) -> None:
    """The paths (keys / list indexes) of a decoded body's integer fields (not bools),
    its name/data bytes fields and its field lists (a list under a field name), in one
    walk. Private keys (``_...``) are skipped, lists are looked into up to 16 items, and a
    field list found inside a field list is not one more (``in_list``)."""
    if isinstance(obj, (dict, Mapping)):
        items: Any = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj[:16])
    else:
        return
    for k, v in items:
        if isinstance(k, str) and k.startswith("_"):
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            ints.append((*prefix, k))
        elif isinstance(v, bytes) and k in _BYTES_FIELDS:
            names.append((*prefix, k))
        elif isinstance(v, list):
            selected = isinstance(k, str)
            if selected and not in_list:
                lists.append((*prefix, k))
            _leaf_paths(v, ints, names, lists, (*prefix, k), in_list or selected)
        elif isinstance(v, (dict, Mapping)):
            _leaf_paths(v, ints, names, lists, (*prefix, k), in_list)


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    """``obj`` (a copy) with ``value`` at ``path``: every container on the way copied
    first (shallow), so what ``obj`` shares with the body it was copied from stays as
    it was."""
    for p in path[:-1]:
        child = obj[p]
        child = obj[p] = ListContainer(child) if isinstance(child, list) else Container(child)
        obj = child
    obj[path[-1]] = value


def _mutate_name(rng: random.Random, old: bytes) -> bytes:
    r = rng.random()
    if r < 0.5:
        return rng.choice(INTERESTING_NAMES)
    if r < 0.65:
        return old[: rng.randrange(len(old) + 1)]
    if r < 0.8:
        return old + rng.choice((b"x", b"/", b"..", b"\xff", b"a" * 200))
    return random_name(rng, rng.choice((1, 8, 64, 255, 256, 4096)))


_NAME_BYTES = b"abcxyz./\xff\x01"
_NAME_BITS = len(_NAME_BYTES).bit_length()  # what random.choice draws per pick
_NAME_TABLE = bytes(_NAME_BYTES[b >> (8 - _NAME_BITS)] if b >> (8 - _NAME_BITS) < len(_NAME_BYTES)
                    else 0 for b in range(256))
_NAME_REJECT = bytes(b for b in range(256) if b >> (8 - _NAME_BITS) >= len(_NAME_BYTES))


def random_name(rng: random.Random, n: int) -> bytes:
    """``bytes(rng.choice(_NAME_BYTES) for _ in range(n))``, the same bytes and the same
    state of ``rng`` after (tests/test_fuzz_rates.py), ~10x faster for long names.

    ``choice`` draws ``getrandbits(4)`` per pick (one 32-bit output, its top bits) and
    draws again above the last index; a bulk ``getrandbits(32 * k)`` is those k outputs,
    little-endian, so the top byte of each word is one draw. Taking as many words as picks
    are still missing never draws more than ``choice`` would."""
    out = b""
    while len(out) < n:
        need = n - len(out)
        top = rng.getrandbits(32 * need).to_bytes(4 * need, "little")[3::4]
        out += top.translate(_NAME_TABLE, _NAME_REJECT)
    return out


def copy_body(obj: Any) -> Any:
    """A deep copy of a decoded body (Containers and lists copied, ``_``-prefixed fields
    the codec adds dropped) that a mutator or a caller may change freely."""
    if isinstance(obj, (dict, Mapping)):  # dict first: a Container needs no ABC check
        return Container((k, copy_body(v)) for k, v in obj.items() if not str(k).startswith("_"))
    if isinstance(obj, list):
        return ListContainer(copy_body(v) for v in obj)
    return obj


def mutate_body(body: Any, rng: random.Random, pools: Pools = _DEFAULT_POOLS) -> Any:
    """One structural change to a decoded body (raw bytes stay bytes with a byte-level
    change). ``body`` is left as it was: the result is a new Container (without the
    ``_``-prefixed top-level fields) whose changed path is new too, and which shares the
    rest (the items of a long list, nested structs) with ``body``; change it in place
    only after :func:`copy_body`."""
    if isinstance(body, bytes | bytearray):
        return mutate_bytes(bytes(body), rng)
    choices: list[Callable[[], None]] = []
    ints: list[tuple[Any, ...]] = []
    names: list[tuple[Any, ...]] = []
    lists: list[tuple[Any, ...]] = []
    if body is None:
        body = Container()
    else:
        _leaf_paths(body, ints, names, lists)
        body = Container((k, v) for k, v in body.items() if not str(k).startswith("_"))

    def set_int() -> None:
        p = rng.choice(ints)
        _set(body, p, _field_value(p[-1], _get(body, p), rng, pools))

    def set_bytes() -> None:
        p = rng.choice(names)
        _set(body, p, _mutate_name(rng, _get(body, p)))

    def change_list() -> None:
        p = rng.choice(lists)
        items = list(_get(body, p))
        r = rng.random()
        if items and r < 0.3:
            items.pop(rng.randrange(len(items)))
        elif items and r < 0.55:
            items.extend([rng.choice(items)] * rng.choice((1, 2, 7, 255, 256, 257)))
        elif items and r < 0.7:
            # Exactly at the protocol's counted maximum (REMOVEMAPPING's entries) or by one.
            n = rng.choice(AT_REMOVEMAPPING_MAX)
            items.extend([rng.choice(items)] * max(0, n - len(items)))
        elif items:
            rng.shuffle(items)
        _set(body, p, ListContainer(items))

    def derive_all() -> None:
        for k in _DERIVED:
            if k in body:
                body[k] = None

    if ints:
        choices += [set_int] * 4
    if names:
        choices += [set_bytes] * 3
    if lists:
        choices += [change_list] * 2
    if any(k in body for k in _DERIVED):
        choices.append(derive_all)
    if choices:
        rng.choice(choices)()
    # Usually keep the message consistent in its derived fields, so the change above is
    # the only lie; sometimes leave them as decoded (they now disagree with the data).
    if rng.random() < 0.6:
        for k in _DERIVED:
            if k in body and not isinstance(body.get(k), type(None)):
                if k == "size" and "data" not in body and "value" not in body:
                    continue  # READ's size is a request, not a length
                body[k] = None
    return body


# --- byte-level field edits (see the module docstring) --------------------------------------

#: The share of body mutations done as one field edit in place when the body starts with
#: fixed structs (the rest decode and go through mutate_body: names, lists, derived fields).
FIELD_EDIT_SHARE = 0.5
_FORMAT_ITEM = re.compile(r"(\d*)([a-zA-Z?])")
# (leaf name, offset, size) per compiled struct, by (name, size): the format's codes, in
# the order of FastLayout.fields (arrays are one leaf per item; char arrays are skipped).
_LEAVES: dict[tuple[str, int], tuple[tuple[str, int, int], ...]] = {}
Field = tuple[str, int, int, bool, bool]  # leaf, offset in the body, size, derived, deciding
_FIELDS: dict[Any, tuple[Field, ...]] = {}
_FIELDS_MAX = 4096
_IN_AT = {name: (off, size) for name, off, size in structs.layout("fuse_in_header")}
_OUT_AT = {name: (off, size) for name, off, size in structs.layout("fuse_out_header")}
_OPCODE = _IN_AT["opcode"][0]
_LEN, _ERROR, _UNIQUE = (_OUT_AT[f][0] for f in ("len", "error", "unique"))


def struct_leaves(fl: structs.FastLayout) -> tuple[tuple[str, int, int], ...]:
    """``(leaf, offset, size)`` of every integer leaf of a compiled struct (nested fields
    dotted, array items ``name[i]``, as ``fl.fields`` names them), from its format."""
    key = (fl.name, fl.size)
    out = _LEAVES.get(key)
    if out is None:
        leaves: list[tuple[str, int, int]] = []
        names, off = iter(fl.fields), 0
        for count, code in _FORMAT_ITEM.findall(fl.struct.format.lstrip("<>=!@")):
            n, size = int(count or 1), struct.calcsize("<" + code)
            if code == "s":
                next(names)
                off += n
                continue
            for _ in range(n):
                leaves.append((next(names), off, size))
                off += size
        if off != fl.size or next(names, None) is not None:
            raise ValueError(f"{fl.name}: format {fl.struct.format} does not match its fields")
        out = _LEAVES[key] = tuple(leaves)
    return out


# The fields a part's parse reads to decide how far and which way it goes (a count,
# a size, a name length; IOCTL's reply branches on FUSE_IOCTL_RETRY in ``flags``).
_DECIDING_ATTRS = ("count_field", "size_field", "len_field")
_DECIDING_BY_PART = {messages.IoctlOut: ("flags",)}
_DECIDING: dict[Any, tuple[str, ...]] = {}


def deciding_fields(parts: Any) -> tuple[str, ...]:
    """The body fields the parts' parse branches on, in part order: the wire oracle's
    shapes record their values, and the field edits favour them (where parsers go
    wrong)."""
    names = _DECIDING.get(parts)
    if names is None:
        found: list[str] = []
        for p in parts or ():
            found += [getattr(p, a) for a in _DECIDING_ATTRS if isinstance(getattr(p, a, None), str)]
            found += _DECIDING_BY_PART.get(type(p), ())
        names = _DECIDING[parts] = tuple(found)
    return names


def fixed_fields(parts: Any) -> tuple[Field, ...]:
    """The integer fields of a body's leading :class:`~fuseproto.wire.messages.Fixed`
    parts (offsets from the body's start), each marked derived when the encoder computes
    it (a ``size``/``count`` written over is a lie about what follows) and deciding when
    a later part branches on it (:func:`deciding_fields`)."""
    out: list[Field] = []
    base = 0
    deciding = set(deciding_fields(parts))
    for p in parts or ():
        if type(p) is not messages.Fixed:
            break
        out += [(name, base + off, size, name in p.derive, name in deciding)
                for name, off, size in struct_leaves(p.fl)]
        base += p.size
    return tuple(out)


def _fields_of(key: tuple[Any, ...], parts: Callable[[], Any]) -> tuple[Field, ...]:
    out = _FIELDS.get(key)
    if out is None:
        if len(_FIELDS) >= _FIELDS_MAX:
            _FIELDS.clear()
        out = _FIELDS[key] = fixed_fields(parts())
    return out


#: The share of a request's body mutations that set a counted list with a maximum
#: (REMOVEMAPPING's entries) to :func:`at_limit` items, its count derived: an off-by-one
#: at the limit shows only at exactly that many items, which list edits reach ~1 in
#: 22,000 inputs.
AT_LIMIT_SHARE = 0.5
Bound = tuple[str, str, tuple[int, int, int]]  # list field, count field, at_limit counts
_BOUNDS: dict[Any, tuple[Bound, ...]] = {}


def counted_bounds(parts: Any) -> tuple[Bound, ...]:
    """``(list field, count field, at_limit(limit))`` of each counted list of ``parts``
    that has a maximum (:class:`~fuseproto.wire.messages.Counted` ``limit``)."""
    return tuple((p.field, p.count_field, at_limit(p.limit)) for p in parts or ()
                 if type(p) is messages.Counted and p.limit is not None)


def _request_bounds(op: int, minor: int, flags: int) -> tuple[Bound, ...]:
    """:func:`counted_bounds` of a request kind's parts, cached by the plain key."""
    key = (op, minor, bool(flags & messages.FUSE_SETXATTR_EXT))
    out = _BOUNDS.get(key)
    if out is None:
        if len(_BOUNDS) >= _FIELDS_MAX:
            _BOUNDS.clear()
        out = _BOUNDS[key] = counted_bounds(messages.request_parts(op, minor, flags))
    return out


def _at_limit(body: Any, bounds: tuple[Bound, ...], rng: random.Random) -> Any:
    """``body`` with one of its bounded lists at a count of :func:`at_limit` (the limit
    itself half the time), items copied from those present, the count derived."""
    field, count_field, counts = rng.choice(bounds)
    n = counts[1] if rng.random() < 0.5 else rng.choice(counts)
    items = list(body.get(field) or ())
    fill = rng.choice(items) if items else Container()
    out = Container((k, v) for k, v in body.items() if not str(k).startswith("_"))
    out[field] = ListContainer(items[:n] + [fill] * (n - len(items)))
    out[count_field] = None
    return out


def _request_fields(op: int, minor: int, flags: int) -> tuple[Field, ...]:
    ext = bool(flags & messages.FUSE_SETXATTR_EXT)
    return _fields_of((0, op, minor, ext), lambda: messages.request_parts(op, minor, flags))


def _reply_fields(op: int, minor: int) -> tuple[Field, ...]:
    return _fields_of((1, op, minor), lambda: messages.reply_parts(op, minor))


def _notification_fields(code: int) -> tuple[Field, ...]:
    return _fields_of((2, code), lambda: messages.notification_parts(code))


def _put(data: bytes, off: int, size: int, value: int) -> bytes:
    """``data`` with ``value`` (two's complement, cut to ``size`` bytes) at ``off``."""
    return (data[:off] + (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
            + data[off + size:])


def _field_value(key: Any, old: int, rng: random.Random, pools: Pools, bits: int = 32) -> int:
    """A new value for integer field ``key`` (its last name) holding ``old``: node ids and
    handles from the pools; in a ``flags`` word half the time one bit toggled (one of the
    low eight mostly, where the protocol's flag sets begin); else a boundary value."""
    if key in ("nodeid", "parent", "newdir", "oldnodeid") and rng.random() < 0.5:
        return pools.pick_nodeid(rng)
    if key == "fh" and pools.fhs and rng.random() < 0.5:
        return rng.choice(pools.fhs)
    if isinstance(key, str) and key.endswith("flags") and rng.random() < 0.5:
        return old ^ (1 << rng.randrange(8 if rng.random() < 0.7 else bits))
    return _interesting_int(rng, old)


def _edit_body_field(data: bytes, fields: tuple[Field, ...], base: int, rng: random.Random,
                     pools: Pools) -> bytes | None:
    """One body field of ``fields`` (at ``base``) set in place; None if none fits in
    ``data``. A third of the time a field a later part branches on (a count, a size,
    IOCTL's flags: where parsers go wrong), derived or not; otherwise mostly a field the
    encoder does not derive (mutate_body re-derives the derived ones 60% of the time),
    else any, so a size or count lies."""
    room = len(data) - base
    fits = [f for f in fields if f[1] + f[2] <= room]
    if not fits:
        return None
    r = rng.random()
    if r < 0.3:
        fits = [f for f in fits if f[4]] or fits
    elif r < 0.72:
        fits = [f for f in fits if not f[3]] or fits
    name, off, size, _, _ = rng.choice(fits)
    off += base
    old = int.from_bytes(data[off:off + size], "little")
    value = _field_value(name.rsplit(".", 1)[-1], old, rng, pools, 8 * size)
    return _put(data, off, size, value)


def _edit_in_header(data: bytes, r: float, rng: random.Random, pools: Pools) -> bytes:
    """mutate_request's header branches (r in [0.45, 0.84)) as one field written."""
    if r < 0.6:
        field = rng.choice(("nodeid", "nodeid", "unique", "uid", "gid", "pid", "padding"))
        off, size = _IN_AT[field]
        if field == "nodeid" and rng.random() < 0.6:
            value = pools.pick_nodeid(rng)
        else:
            value = _interesting_int(rng, int.from_bytes(data[off:off + size], "little"))
    elif r < 0.72:
        # Another opcode's header over this body: the daemon parses bytes it did not expect.
        field = "opcode"
        value = rng.choice(_OPCODES) if rng.random() < 0.9 else rng.getrandbits(32)
    else:
        field, n = "len", len(data)
        value = rng.choice((0, 1, 39, 40, n - 1, n + 1, n + 8, n + 4096, 0xFFFF_FFFF,
                            _interesting_int(rng, n)))
    off, size = _IN_AT[field]
    return _put(data, off, size, value)


def _edit_out_header(data: bytes, field: str, rng: random.Random) -> bytes:
    """mutate_reply's unique / len branches as one field written."""
    off, size = _OUT_AT[field]
    if field == "unique":
        old = int.from_bytes(data[off:off + size], "little")
        return _put(data, off, size, _interesting_int(rng, old))
    n = len(data)
    return _put(data, off, size, rng.choice((0, 15, 16, n - 1, n + 1, 0xFFFF_FFFF)))


def restamp(data: bytes, *, request: bool) -> bytes:
    """``data`` with its header's ``len`` set to ``len(data)`` (a request's
    ``total_extlen`` to 0): the fields written at the header schema's offsets, the bytes
    its parse, change and build give (tests/test_fuzz_rates.py)."""
    if len(data) < (_IN_SIZE if request else _OUT_SIZE):
        return data
    if request:
        return _put(_put(data, *_IN_AT["len"], len(data)), *_IN_AT["total_extlen"], 0)
    return _put(data, *_OUT_AT["len"], len(data))


def mutate_bytes(data: bytes, rng: random.Random, max_size: int = 1 << 16) -> bytes:
    """A byte-level change (libFuzzer-like, for inputs that do not decode)."""
    b = bytearray(data)
    r = rng.random()
    if not b or r < 0.2:
        b += rng.randbytes(rng.choice((1, 4, 8, 40, 256)))
    elif r < 0.4:
        del b[rng.randrange(len(b)):]
    elif r < 0.7:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif r < 0.85:
        i = rng.randrange(len(b))
        b[i] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x2F, 0x2E))
    else:
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 64))
        b[i:i] = b[i:j]
    return bytes(b[:max_size])


def _encode_request(req: Any, body: Any, hdr: MutableMapping[str, Any], minor: int,
                    flags: int, ext: Any) -> bytes:
    return codec.encode_request(
        hdr["opcode"], body, unique=hdr["unique"], nodeid=hdr["nodeid"], uid=hdr["uid"],
        gid=hdr["gid"], pid=hdr["pid"], minor=minor, flags=flags, ext=ext,
        total_extlen=hdr.get("extlen_forced"),
        padding=hdr.get("padding", 0),
    )


def mutate_request(
    data: bytes,
    rng: random.Random,
    *,
    minor: int = 46,
    flags: int = 0,
    pools: Pools = _DEFAULT_POOLS,
    max_size: int = 1 << 16,
) -> bytes:
    """A mutated request (see the module docstring); falls back to bytes if ``data`` does
    not decode. One header field (r in [0.45, 0.84)) or, half the time, one field of the
    body's leading fixed structs is written in place; a body with a bounded counted list
    is set to :func:`at_limit` items :data:`AT_LIMIT_SHARE` of the time instead."""
    r = rng.random()
    bounds: tuple[Bound, ...] = ()
    if len(data) >= _IN_SIZE:
        if 0.45 <= r < 0.84:
            return _edit_in_header(data, r, rng, pools)[:max_size]
        if r < 0.45:
            op = int.from_bytes(data[_OPCODE:_OPCODE + 4], "little")
            bounds = _request_bounds(op, minor, flags)
            if bounds and rng.random() >= AT_LIMIT_SHARE:
                bounds = ()
            if not bounds and rng.random() < FIELD_EDIT_SHARE:
                out = _edit_body_field(data, _request_fields(op, minor, flags), _IN_SIZE,
                                       rng, pools)
                if out is not None:
                    return out[:max_size]
    # r >= 0.94 and a request that does not decode: bytes (no decode needed to know that).
    req = decoded("request", data, minor, flags) if r < 0.94 else None
    if req is None:
        out = mutate_bytes(data, rng, max_size)
        return restamp(out, request=True) if rng.random() < 0.7 else out
    hdr: dict[str, Any] = dict(req.header)
    hdr["opcode"] = int(req.opcode)
    body: Any = req.body
    ext: Any = list(req.ext)
    if r < 0.84:  # [0.45, 0.84) was handled above (a request that decodes has a header)
        body = _at_limit(body, bounds, rng) if bounds else mutate_body(body, rng, pools)
    else:  # r in [0.84, 0.94): the extension area
        kind = rng.random()
        if kind < 0.4:
            groups = [rng.getrandbits(32) for _ in range(rng.choice((0, 1, 3, 64)))]
            # nr_groups derived, or forced to lie about the groups that follow
            nr = rng.choice((None, None, 0, len(groups) + 1, len(groups) + 2, 0xFFFF_FFFF))
            ext.append(Container(type=32, nr_groups=nr, groups=groups))
        elif kind < 0.7:
            ext.append(Container(type=1, secctx=[Container(
                name=rng.choice((b"security.selinux", b"", b"x" * 300)),
                ctx=rng.randbytes(rng.choice((0, 1, 31, 64))))]))
        else:
            hdr["extlen_forced"] = rng.choice((1, 2, 5, 255, 0xFFFF))
    try:
        out = _encode_request(req, body, hdr, minor, flags, ext or None)
    except EncodeError:
        out = mutate_bytes(data, rng, max_size)
    return out[:max_size]


def mutate_reply(
    data: bytes,
    request: Any,
    rng: random.Random,
    *,
    minor: int = 46,
    max_size: int = 1 << 16,
) -> bytes:
    """A mutated reply to ``request`` (a Request or an opcode). The error, unique and len
    branches and, half the time, a change to one field of the body's leading fixed
    structs are written in place."""
    r = rng.random()
    if len(data) >= _OUT_SIZE:
        has_body = not any(data[_ERROR:_ERROR + 4])  # error 0: decode gives a body
        if 0.82 <= r < 0.92:
            return _edit_out_header(data, "len", rng)[:max_size]
        if 0.7 <= r < 0.82:
            return _edit_out_header(data, "unique", rng)[:max_size]
        if 0.55 <= r < 0.7 or (r < 0.55 and not has_body):
            error = rng.choice(_REPLY_ERRORS)
            if error and rng.random() < 0.8:  # the header alone, as for a failed request
                return _put(_put(data[:_OUT_SIZE], _LEN, 4, _OUT_SIZE), _ERROR, 4, error)
            if error or has_body:
                return _put(data, _ERROR, 4, error)[:max_size]
            # error 0 and no body: the codec builds the body (every field 0).
            try:
                unique = int.from_bytes(data[_UNIQUE:_UNIQUE + 8], "little")
                return codec.encode_reply(request, None, unique=unique, minor=minor)[:max_size]
            except EncodeError:
                return mutate_bytes(data, rng, max_size)
        if r < 0.55 and rng.random() < FIELD_EDIT_SHARE:
            op = int(getattr(request, "opcode", request))
            out = _edit_body_field(data, _reply_fields(op, minor), _OUT_SIZE, rng,
                                   _DEFAULT_POOLS)
            if out is not None:
                return out[:max_size]
    # r >= 0.92 and a reply that does not decode: bytes (no decode needed to know that).
    rep = decoded("reply", data, request, minor) if r < 0.92 else None
    if rep is None or rep.body is None:  # (r < 0.55 with no body went to error above)
        out = mutate_bytes(data, rng, max_size)
        return restamp(out, request=False) if rng.random() < 0.7 else out
    body = mutate_body(rep.body, rng)
    try:
        return codec.encode_reply(request, body, unique=rep.unique, error=rep.error,
                                  minor=minor)[:max_size]
    except EncodeError:
        return mutate_bytes(data, rng, max_size)


def mutate_notification(data: bytes, rng: random.Random, *, max_size: int = 1 << 16) -> bytes:
    """A mutated notification: the code or len written in place, or a body change (one
    field of its leading fixed struct in place half the time)."""
    r = rng.random()
    if len(data) >= _OUT_SIZE:
        if 0.6 <= r < 0.8:
            return _put(data, _ERROR, 4, rng.choice(_NOTE_CODES))[:max_size]
        if r >= 0.8:
            n = len(data)
            return _put(data, _LEN, 4, rng.choice((0, 16, n + 1, 0xFFFF_FFFF)))[:max_size]
        if rng.random() < FIELD_EDIT_SHARE:
            code = int.from_bytes(data[_ERROR:_ERROR + 4], "little", signed=True)
            out = _edit_body_field(data, _notification_fields(code), _OUT_SIZE, rng,
                                   _DEFAULT_POOLS)
            if out is not None:
                return out[:max_size]
    note = decoded("notification", data)
    if note is None:
        out = mutate_bytes(data, rng, max_size)
        return restamp(out, request=False) if rng.random() < 0.7 else out
    try:
        return codec.encode_notification(int(note.code), mutate_body(note.body, rng))[:max_size]
    except EncodeError:
        return mutate_bytes(data, rng, max_size)
