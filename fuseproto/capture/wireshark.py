"""A Wireshark dissector for fuseproto captures, generated from the codec's schema.

:func:`lua_plugin` returns the source of a Lua plugin for Wireshark/tshark (4.0 or newer)
that dissects the records of a fuseproto capture (docs/capture.md: link type
``LINKTYPE_USER0`` = 147, a 16-byte pseudo-header, then one FUSE message)::

    FUSE
        capture pseudo-header       version, direction, queue, flags, minor, opcode hint
        fuse_in_header / fuse_out_header
        body                        the opcode's (notify code's) fields, as fuse.h names them
        extensions: N item(s)       the request extension area, if any

Nothing in it is written by hand twice. The tables at the top of the plugin are generated
here from the declarations the codec itself decodes with:

* ``S[struct]`` -- every struct of :mod:`fuseproto.wire.structs`, walked subcon by subcon
  (integer -> a ProtoField of its width and signedness, integer array -> one ProtoField
  per element under an "N item(s)" subtree, ``char[n]`` -> bytes, nested struct -> a
  subtree of its own struct's fields). A compat prefix is the same layout cut at its size.
* ``P[i]`` -- every distinct body of :mod:`fuseproto.wire.messages` (a list of
  :mod:`fuseproto.wire.parts`: fixed struct, INIT's size variants, names, sized and
  trailing data, counted entries, READDIR/READDIRPLUS records, the IOCTL reply);
* ``REQ[opcode]`` / ``REP[opcode]`` / ``NOT[code]`` -- which body a request, reply or
  notification has, by the negotiated minor (and FUSE_SETXATTR_EXT for requests, the
  GETXATTR/LISTXATTR request's ``size`` for replies), found by evaluating the codec's own
  rules at every minor.

So if a struct gains a field, or an opcode a body, the plugin gains it with no edit here.
The rest of the plugin (:data:`.wireshark_engine.ENGINE`) is the engine that walks those
tables; it names no field.

It decodes as ``fuseproto decode`` does. Replies are decoded by their request's opcode: the
request in flight with the same ``unique`` (paired on the first pass: ``tshark -2``, or
Wireshark's own first pass), else the pseudo-header's opcode hint. The minor is the one
INIT negotiated in the capture, else the minor hint, else 46. What the Session would
refuse (a reply to no request in flight, an error out of range, a unique reused, a second
INIT) is an expert warning (group Sequence); a message that breaks its layout an expert
error (group Malformed, the codec's reason), shown as far as it parsed; an unknown opcode
or notify code has its body as raw bytes. A record the snaplen cut is shown as decode
shows it: its missing bytes stood in by zeros and by 0xff, it keeps its header alone when
the zeros do not decode, has ``body: [truncated]`` when the 0xff do not, else every field
as far as captured (``[truncated]`` past the cut, data as far as captured), with a
``[Packet size limited during capture: N of M bytes]`` line.
``tests/test_capture_wireshark.py`` runs tshark on every shipped capture, the sample, the
golden vectors, cut and garbled captures, and checks it shows the fields and values
``fuseproto decode -V`` shows.
"""

from __future__ import annotations

import errno as _errno
import struct as _struct
from typing import Any

from construct import Array, Bytes, Computed, Construct, FormatField, Renamed, Struct

from ..session import REPLY_EXPECTATION, ReplyExpectation
from ..wire import messages, parts, structs
from ..wire.constants import (
    FUSE_IOCTL_MAX_IOV,
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_KERNEL_VERSION,
    InitFlags,
    fuse_ext_type,
    fuse_notify_code,
    fuse_opcode,
    opcode_name,
)
from .dissect import MAX_TRUNCATED_LEN
from .frames import FRAME_HEADER, LINKTYPE_FUSE, LINKTYPE_USER0
from .wireshark_engine import ENGINE

__all__ = ["PLUGIN_NAME", "lua_plugin", "wtap_encap_name"]

PLUGIN_NAME = "fuseproto.lua"

def wtap_encap_name(linktype: int) -> str:
    """Wireshark's name (``wtap_encaps.<name>``) of the encapsulation of pcap ``linktype``;
    only the private link types LINKTYPE_USER0..15 (147..162: USER0..USER15)."""
    if not LINKTYPE_USER0 <= linktype <= LINKTYPE_USER0 + 15:
        raise ValueError(f"link type {linktype} is not one of LINKTYPE_USER0..15 (147..162)")
    return f"USER{linktype - LINKTYPE_USER0}"


def _q(s: str) -> str:
    """A Lua string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _lua(v: Any) -> str:
    """A Lua literal of a Python value (None, bool, int, str, tuple/list, dict)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, str):
        return _q(v)
    if isinstance(v, _Raw):
        return v.code
    if isinstance(v, list | tuple):
        return "{" + ", ".join(_lua(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no Lua literal for {type(v).__name__}")


class _Raw:
    """Lua code placed as is (a ProtoField reference)."""

    def __init__(self, code: str) -> None:
        self.code = code


# (size, signed) of a little-endian struct format -> the runtime's type name.
_TYPES = {(1, False): "u8", (2, False): "u16", (4, False): "u32", (8, False): "u64",
          (1, True): "i8", (2, True): "i16", (4, True): "i32", (8, True): "i64"}
_CTOR = {"u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
         "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64"}
# The capture pseudo-header's fields (docs/capture.md), in FRAME_HEADER's order.
_CAPTURE_FIELDS = ("version", "direction", "queue", "flags", "minor", "reserved1", "opcode",
                   "reserved2")
# Field -> value string table of the header fields that have one.
_VALUE_STRINGS = {("fuse_in_header", "opcode"): "OPNAME",
                  ("fuse_out_header", "error"): "ERRNAME"}


def _scalar_type(fmt: FormatField, where: str) -> str:
    code = fmt.fmtstr
    if code[0] != "<" or len(code) != 2:
        raise TypeError(f"no Wireshark field for struct format {code!r} ({where})")
    return _TYPES[(_struct.calcsize(code), code[-1].islower())]


def _base(name: str, t: str) -> str:
    """Display base: mode octal, flag words hex (as ``fuseproto decode`` shows them)."""
    if t.startswith("u") and name == "mode":
        return "base.OCT"
    if t.startswith("u") and "flags" in name:
        return "base.HEX"
    return "base.DEC"


class _Generator:
    """Collects ProtoFields, struct layouts and body part lists as Lua source lines."""

    def __init__(self) -> None:
        self.fields: list[str] = []  # ProtoField constructors, FL[1..]
        self.by_abbrev: dict[str, _Raw] = {}
        self.ctors: dict[str, str] = {}  # abbrev -> ProtoField constructor
        self.layouts: dict[str, str | None] = {}  # struct name -> its S[...] table
        self.struct_names = {id(con): name for name, con in structs.ALL.items()}
        self.bodies: dict[str, int] = {}  # the Lua of a part list -> its index in P

    def field(self, abbrev: str, label: str, ctor: str, *args: str) -> _Raw:
        """A ProtoField (made once per abbrev; a name that is another type elsewhere, as
        SYMLINK's ``link`` string and READLINK's ``link`` bytes, gets ``.<type>`` added)."""
        known = self.by_abbrev.get(abbrev)
        if known is not None and self.ctors[abbrev] != ctor:
            abbrev = f"{abbrev}.{ctor}"
            known = self.by_abbrev.get(abbrev)
        if known is None:
            self.fields.append(f"ProtoField.{ctor}({', '.join([_q(abbrev), _q(label), *args])})")
            known = self.by_abbrev[abbrev] = _Raw(f"FL[{len(self.fields)}]")
            self.ctors[abbrev] = ctor
        return known

    def struct(self, name: str, con: Construct) -> str:
        """The layout of struct ``name`` (and of the structs nested in it) into S."""
        if name in self.layouts:
            return name
        self.layouts[name] = None
        short = name.removeprefix("fuse_")
        rows: list[Any] = []
        off = 0
        for sc in con.subcons:
            assert isinstance(sc, Renamed)
            fname, inner = sc.name, sc.subcon
            if isinstance(inner, Computed):
                continue  # a union overlay (fuse_uring_cmd_req): no bytes of its own
            size = inner.sizeof()
            abbrev = f"fuse.{short}.{fname}"
            if isinstance(inner, FormatField):
                t = _scalar_type(inner, f"{name}.{fname}")
                args = [_base(fname, t)]
                vs = _VALUE_STRINGS.get((name, fname))
                if vs is not None:
                    args.append(vs)
                rows.append((fname, t, off, size, self.field(abbrev, fname, _CTOR[t], *args)))
            elif isinstance(inner, Array):
                et = _scalar_type(inner.subcon, f"{name}.{fname}")
                pf = self.field(abbrev, fname, _CTOR[et], _base(fname, et))
                rows.append((fname, "array", off, size, pf, et, int(inner.count)))
            elif isinstance(inner, Bytes):
                rows.append((fname, "bytes", off, size, self.field(abbrev, fname, "bytes")))
            elif isinstance(inner, Struct):
                sub = self.struct(self.struct_names.get(id(inner), f"{name}.{fname}"), inner)
                rows.append((fname, "struct", off, size, self.field(abbrev, fname, "none"), sub))
            else:
                raise TypeError(f"no Wireshark field for {type(inner).__name__} ({name}.{fname})")
            off += size
        body = ", ".join(_lua(r) for r in rows)
        self.layouts[name] = f"{{size = {con.sizeof()}, {body}}}"
        return name

    def text_field(self, field: str) -> _Raw:
        return self.field(f"fuse.{field}", field, "string")

    def bytes_field(self, field: str) -> _Raw:
        return self.field(f"fuse.{field}", field, "bytes")

    def part(self, p: parts.Part) -> Any:
        """One part as the runtime's tuple (see _RUNTIME's dissect_parts)."""
        if isinstance(p, parts.Fixed):
            return ("fixed", self.struct(p.struct_name, structs.ALL[p.struct_name]), p.size)
        if isinstance(p, parts.AnySize):
            self.struct(p.struct_name, structs.ALL[p.struct_name])
            return ("anysize", p.struct_name, {n: True for n in p.sizes})
        if isinstance(p, parts.NameN):
            return ("namen", p.field, p.len_field, self.text_field(p.field))
        if isinstance(p, parts.Name):
            return ("name", p.field, self.text_field(p.field))
        if isinstance(p, parts.Sized):
            return ("sized", p.field, p.size_field, self.bytes_field(p.field))
        if isinstance(p, parts.Rest):
            return ("rest", p.field, p.limit, self.bytes_field(p.field))
        if isinstance(p, parts.Counted):
            if p.item == "u64":
                pf = self.field(f"fuse.{p.field}.item", p.field, "uint64", "base.DEC")
                return ("counted", p.field, p.count_field, "u64", p.limit, pf)
            item = self.struct(p.item, structs.ALL[p.item])
            return ("counted", p.field, p.count_field, item, p.limit, None)
        if isinstance(p, parts.Dirents):
            for name in ("fuse_dirent", "fuse_direntplus"):
                self.struct(name, structs.ALL[name])
            return ("dirents", p.plus)
        if isinstance(p, parts.IoctlOut):
            self.struct("fuse_ioctl_iovec", structs.ALL["fuse_ioctl_iovec"])
            self.bytes_field("data")
            return ("ioctl_out",)
        raise TypeError(f"no Wireshark dissection for part {type(p).__name__}")

    def body(self, ps: tuple[parts.Part, ...] | None) -> int | None:
        """The index in P of a body's part list (None: unknown, raw bytes)."""
        if ps is None:
            return None
        code = _lua([self.part(p) for p in ps])
        if code not in self.bodies:
            self.bodies[code] = len(self.bodies) + 1
        return self.bodies[code]

    def rules(self, keys: tuple[Any, ...], body_of: Any) -> list[tuple[Any, ...]]:
        """``{lo, hi, key, P[i]}`` rows over minors 0..46 (key nil when it does not matter)."""
        per_key: dict[Any, list[tuple[int, int, int | None]]] = {}
        for key in keys:
            runs: list[tuple[int, int, int | None]] = []
            for minor in range(FUSE_KERNEL_MINOR_VERSION + 1):
                i = self.body(body_of(minor, key))
                if runs and runs[-1][2] == i:
                    runs[-1] = (runs[-1][0], minor, i)
                else:
                    runs.append((minor, minor, i))
            per_key[key] = runs
        if all(r == per_key[keys[0]] for r in per_key.values()):
            return [(lo, hi, None, i) for lo, hi, i in per_key[keys[0]] if i is not None]
        return [(lo, hi, k, i) for k, runs in per_key.items() for lo, hi, i in runs
                if i is not None]


def _rule_table(rows: list[tuple[Any, ...]]) -> str:
    return "{" + ", ".join(
        "{" + f"{lo}, {hi}, {_lua(k)}, P[{i}]" + "}" for lo, hi, k, i in rows) + "}"


def lua_plugin(linktype: int = LINKTYPE_FUSE) -> str:
    """The Lua source of the Wireshark plugin (see the module docstring) for captures of
    ``linktype`` (default 147, LINKTYPE_USER0; one of 147..162)."""
    encap = wtap_encap_name(linktype)
    g = _Generator()
    for name, con in structs.ALL.items():
        g.struct(name, con)
    xext = int(InitFlags.FUSE_SETXATTR_EXT)
    req: dict[int, str] = {}
    rep: dict[int, str] = {}
    # The codec's rule tables themselves (not the cached lookups: thousands of keys would
    # only churn the codec's caches). Requests first: their names (SYMLINK's ``link``)
    # keep the plain string field names.
    for op, rule in messages.REQUESTS.items():
        rows = g.rules((False, True), rule)  # key: FUSE_SETXATTR_EXT negotiated
        if rows:
            req[int(op)] = _rule_table(rows)
    for op, reply_rule in messages.REPLIES.items():
        # key: the GETXATTR/LISTXATTR request's size (-1 unknown, 0, 1 any other)
        rows = g.rules((-1, 0, 1), lambda m, k, r=reply_rule: r(m, None if k == -1 else k))
        if rows:
            rep[int(op)] = _rule_table(rows)
    notes = {int(c): g.body(rule()) for c, rule in messages.NOTIFICATIONS.items()}
    named = {
        "capture": g.field("fuse.capture", "capture pseudo-header", "none"),
        "in_header": g.field("fuse.in_header", "fuse_in_header", "none"),
        "out_header": g.field("fuse.out_header", "fuse_out_header", "none"),
        "body": g.field("fuse.body", "body", "none"),
        "raw_body": g.field("fuse.body.raw", "body", "bytes"),
        "dirent_name": g.field(f"fuse.dirent.{structs.FLEX['fuse_dirent'][0]}",
                               structs.FLEX["fuse_dirent"][0], "string"),
        "dirent_pad": g.field("fuse.dirent.pad", "pad", "bytes"),
        "data": g.bytes_field("data"),
        "ext_group": g.field("fuse.supp_groups.groups", structs.FLEX["fuse_supp_groups"][0],
                             "uint32", "base.DEC"),
        "ext_pad": g.field("fuse.ext.pad", "pad", "bytes"),
        "ext_data": g.field("fuse.ext.data", "data", "bytes"),
        "secctx_name": g.field("fuse.secctx.name", "name", "string"),
        "secctx_ctx": g.field("fuse.secctx.ctx", "ctx", "bytes"),
        "secctx_pad": g.field("fuse.secctx.pad", "pad", "bytes"),
    }
    fmt = FRAME_HEADER.format.lstrip("<")
    cap_fields, off = [], 0
    for name, c in zip(_CAPTURE_FIELDS, fmt, strict=True):
        n = _struct.calcsize("<" + c)
        t = _TYPES[(n, False)]
        args = [_base(name, t)] + (["OPNAME"] if name == "opcode" else
                                   ["DIRNAME"] if name == "direction" else [])
        pf = g.field(f"fuse.capture.{name}", name, _CTOR[t], *args)
        cap_fields.append((name, pf, off, n))
        off += n

    consts = {
        "MSG": FRAME_HEADER.size,
        "ENCAP": encap,
        "MAX_MINOR": FUSE_KERNEL_MINOR_VERSION,
        "KERNEL_VERSION": FUSE_KERNEL_VERSION,
        "SETXATTR_EXT": xext,
        "INIT_OPS": {int(fuse_opcode.FUSE_INIT): True, int(fuse_opcode.CUSE_INIT): True},
        # The codec's reply size checks (fuseproto.wire.codec "Checks made on decode").
        "SIZE_LIMITED": {int(op): True for op in (
            fuse_opcode.FUSE_READ, fuse_opcode.FUSE_READDIR, fuse_opcode.FUSE_READDIRPLUS)},
        "XATTR_OPS": {int(op): True for op in (
            fuse_opcode.FUSE_GETXATTR, fuse_opcode.FUSE_LISTXATTR)},
        "IOCTL_OP": int(fuse_opcode.FUSE_IOCTL),
        "MAX_CUT": MAX_TRUNCATED_LEN,
        "MIN_ERROR": -511,  # a reply's error lies in (-512, 0] (512 is ERESTARTSYS)
        "INTERRUPT_OP": int(fuse_opcode.FUSE_INTERRUPT),
        "INTERRUPT_TARGET": "unique",  # fuse_interrupt_in.unique: the request interrupted
        "MAX_PENDING": 65536,
        "DIRENT_SIZE": structs.ALL["fuse_dirent"].sizeof(),
        "DIRENTPLUS_SIZE": structs.ALL["fuse_direntplus"].sizeof(),
        "NAMELEN_OFF": _offset("fuse_dirent", "namelen"),
        "IOVEC": "fuse_ioctl_iovec",
        "IOVEC_SIZE": structs.ALL["fuse_ioctl_iovec"].sizeof(),
        "IOCTL_RETRY": parts.FUSE_IOCTL_RETRY,
        "IOCTL_MAX_IOV": FUSE_IOCTL_MAX_IOV,
        "EXT_HDR_SIZE": structs.ALL["fuse_ext_header"].sizeof(),
        "SECCTX_SIZE": structs.ALL["fuse_secctx"].sizeof(),
        "EXT_GROUPS": int(fuse_ext_type.FUSE_EXT_GROUPS),
        "MAX_NR_SECCTX": int(fuse_ext_type.FUSE_MAX_NR_SECCTX),
        "SIZE": {t: n for (n, _), t in _TYPES.items()},
        "OPNAME": {int(o): opcode_name(o) for o in fuse_opcode},
        "NOTIFY_NAME": {int(c): c.name for c in fuse_notify_code},
        "ERRNAME": {0: "OK", **{-n: name for n, name in sorted(_errno.errorcode.items())},
                    **{int(c): c.name for c in fuse_notify_code}},  # error = notify code
        "DIRNAME": {0: "request", 1: "reply", 2: "notification", 3: "annotation"},
        "NO_REPLY": {int(op): True for op, e in REPLY_EXPECTATION.items()
                     if e is ReplyExpectation.NONE},
    }
    out = [
        "-- fuseproto's Wireshark dissector, generated by `fuseproto wireshark` from the",
        "-- codec's schema (fuseproto.wire.structs / messages / parts). Do not edit: rerun.",
        "-- Install: copy to ~/.local/lib/wireshark/plugins/ (or tshark -X lua_script:FILE).",
        f'local fuse = Proto("fuse", "FUSE (fuseproto capture, link type {linktype})")',
    ]
    out += [f"local {k} = {_lua(v)}" for k, v in consts.items()]
    out.append("local FL = {")
    out += [f"    {f}," for f in g.fields]
    out.append("}")
    out.append("fuse.fields = FL")
    out.append("local EX = {malformed = ProtoExpert.new(\"fuse.malformed\", "
               "\"Malformed FUSE message\", expert.group.MALFORMED, expert.severity.ERROR)}")
    out.append("EX.protocol = ProtoExpert.new(\"fuse.protocol\", \"FUSE protocol error (the "
               "session refuses the message)\", expert.group.SEQUENCE, expert.severity.WARN)")
    out.append("fuse.experts = {EX.malformed, EX.protocol}")
    out.append(f"local PF = {_lua(named)}")
    out.append(f"local CAPTURE_FIELDS = {_lua(cap_fields)}")
    out.append("local S = {}")
    out += [f"S[{_q(name)}] = {lay}" for name, lay in g.layouts.items()]
    out.append("local P = {}")
    out += [f"P[{i}] = {code}" for code, i in g.bodies.items()]
    out.append("local REQ = {}")
    out += [f"REQ[{op}] = {rows}" for op, rows in req.items()]
    out.append("local REP = {}")
    out += [f"REP[{op}] = {rows}" for op, rows in rep.items()]
    out.append("local NOT = {}")
    out += [f"NOT[{c}] = P[{i}]" for c, i in notes.items() if i is not None]
    return "\n".join(out) + "\n" + ENGINE


def _offset(struct_name: str, field: str) -> int:
    """The byte offset of ``field`` in struct ``struct_name``."""
    off = 0
    for sc in structs.ALL[struct_name].subcons:
        if sc.name == field:
            return off
        if not isinstance(sc.subcon, Computed):
            off += sc.subcon.sizeof()
    raise KeyError(f"{struct_name} has no field {field}")
