"""scapy layers for fuseproto captures (the only module of fuseproto that imports scapy).

Importing this module registers :class:`FuseCapture` for ``LINKTYPE_FUSE`` (147) in
``conf.l2types``, so ``rdpcap("x.pcap")`` dissects our captures as::

    FuseCapture / FuseInHeader / FuseLookupRequest          (a request)
    FuseCapture / FuseOutHeader / FuseLookupReply           (a reply, with an opcode hint)
    FuseCapture / FuseOutHeader / FuseNotifyInvalEntry      (a notification)

Call :func:`register` for another link type. Nothing here is written by hand twice: the
header layers and every body layer are generated from the declarations the codec uses --
the constructs of :mod:`fuseproto.wire.structs` (walked subcon by subcon: integer ->
little-endian scapy field, integer array -> ``FieldListField``, ``char[n]`` ->
``StrFixedLenField``, nested struct -> ``PacketField`` of its own generated layer) and
the per-opcode parts of :mod:`fuseproto.wire.messages` (classes in
:mod:`fuseproto.wire.parts`: ``Name`` -> ``StrNullField``, ``Sized`` -> ``StrLenField``
by its size field, ``Counted`` -> a list by its count field, ``Dirents`` -> a list of
dirent layers, ``Rest`` -> ``StrField``). So field names and order are fuse.h's, and
:func:`as_dict` of a body layer equals the codec's Container.

Limits of a stateless dissector (use :func:`fuseproto.capture.decode_capture` when they
matter): a reply's body needs its request's opcode, taken from the capture's opcode hint
(no hint: the body stays ``Raw``); the protocol minor comes from the minor hint (default
46); a GETXATTR/LISTXATTR reply is ``fuse_getxattr_out`` when it is exactly 8 bytes,
else the value; union overlays (``fuse_uring_cmd_req.ent_zero_copy_buf_index``) are not
fields. Unknown opcodes and notify codes are ``Raw``; the request extension area (after
the body) is scapy ``Padding``. Two fuse.h field names are also attributes of every scapy
``Packet`` -- ``name`` (LOOKUP's name ...) and ``parent`` (notifications) -- so read those
with ``pkt.getfieldval("name")`` (``pkt.name`` is the layer's display name).
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Callable
from typing import Any, cast

from construct import Array, Bytes, Computed, Construct, FormatField, Renamed, Struct
from scapy.config import conf
from scapy.fields import (
    AnyField,
    ByteEnumField,
    ByteField,
    ConditionalField,
    Field,
    FieldListField,
    FlagsField,
    LEIntEnumField,
    LEIntField,
    LELongField,
    LEShortField,
    LESignedIntField,
    LESignedLongField,
    PacketField,
    PacketListField,
    StrField,
    StrFixedLenField,
    StrLenField,
    StrNullField,
)
from scapy.packet import Packet, Raw

from ..wire import messages, parts, structs
from ..wire.constants import (
    FUSE_KERNEL_MINOR_VERSION,
    fuse_notify_code,
    fuse_opcode,
    opcode_name,
)
from .frames import FLAG_MINOR_VALID, FLAG_OPCODE_VALID, LINKTYPE_FUSE

__all__ = [
    "FuseCapture",
    "FuseInHeader",
    "FuseOutHeader",
    "as_dict",
    "body_layer",
    "register",
    "struct_layer",
]

# (size, signed) of a little-endian struct format -> scapy field.
_SCALAR_FIELDS: dict[tuple[int, bool], type[Field[Any, Any]]] = {
    (1, False): ByteField,
    (2, False): LEShortField,
    (4, False): LEIntField,
    (8, False): LELongField,
    (4, True): LESignedIntField,
    (8, True): LESignedLongField,
}
# scapy's value -> name tables for the enum fields (opcode, notify code).
_OPCODE_NAMES = {int(o): o.name for o in fuse_opcode}
_NOTIFY_NAMES = {int(c): c.name for c in fuse_notify_code}
_IN_HEADER = structs.ALL["fuse_in_header"]
_OUT_HEADER = structs.ALL["fuse_out_header"]
_IN_SIZE = _IN_HEADER.sizeof()
_OUT_SIZE = _OUT_HEADER.sizeof()
_STRUCT_NAMES = {id(con): name for name, con in structs.ALL.items()}


class _Element(Packet):
    """Base of generated struct layers: a fixed-size element inside another layer."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


# --- fields from the struct declarations ---------------------------------------------------


def _scalar(fmt: FormatField, name: str) -> Field[Any, Any]:
    code = fmt.fmtstr
    try:
        if code[0] != "<":
            raise KeyError(code)
        return _SCALAR_FIELDS[(_struct.calcsize(code), code[-1].islower())](name, 0)
    except KeyError:
        raise TypeError(f"no scapy field for struct format {fmt.fmtstr!r} ({name})") from None


def _fields_of(con: Construct, enums: dict[str, dict[int, str]] | None = None) -> list[AnyField]:
    """The scapy fields of a struct construct, subcon by subcon (see module docstring)."""
    out: list[AnyField] = []
    for sc in con.subcons:
        assert isinstance(sc, Renamed)
        name, inner = sc.name, sc.subcon
        if isinstance(inner, Computed):
            continue  # a union overlay: no bytes of its own
        if isinstance(inner, FormatField):
            if enums and name in enums and _struct.calcsize(inner.fmtstr) == 4:
                out.append(LEIntEnumField(name, 0, enums[name]))
            else:
                out.append(_scalar(inner, name))
        elif isinstance(inner, Array):
            n = inner.count
            out.append(
                FieldListField(
                    name,
                    [0] * n,  # type: ignore[list-item]  # scapy types the default as fields
                    _scalar(inner.subcon, ""),
                    count_from=_constant(n),
                )
            )
        elif isinstance(inner, Bytes):
            out.append(StrFixedLenField(name, b"\0" * inner.length, inner.length))
        elif isinstance(inner, Struct):
            cls = _struct_class(inner)
            out.append(PacketField(name, cls(), cls))
        else:
            raise TypeError(f"no scapy field for {type(inner).__name__} ({name})")
    return out


def _constant(n: int) -> Callable[[Packet], int]:
    """A ``count_from`` for a fixed-length array (``T name[n]``)."""
    return lambda p: n


_CLASSES: dict[Any, type[Packet]] = {}
# The constructs whose id() keys a layer in _CLASSES, kept alive so no id is reused.
_KEYED_CONSTRUCTS: dict[int, Construct] = {}


def _make(
    name: str, fields: list[AnyField], base: type[Packet] = _Element, **attrs: Any
) -> type[Packet]:
    # __module__: scapy's metaclass would name its own module; the classes live here (and
    # the exported ones are attributes of this module, so they pickle by name).
    ns = {"name": attrs.pop("display", name), "fields_desc": fields, "__module__": __name__,
          **attrs}
    return cast("type[Packet]", type(name, (base,), ns))


def _struct_class(con: Construct) -> type[Packet]:
    key = ("struct", id(con))
    cls = _CLASSES.get(key)
    if cls is None:
        name = _STRUCT_NAMES.get(id(con)) or f"fuse_struct_{con.sizeof()}_{len(_CLASSES)}"
        cls = _CLASSES[key] = _make(name, _fields_of(con))
        _KEYED_CONSTRUCTS[id(con)] = con
    return cls


def struct_layer(name: str, size: int | None = None) -> type[Packet]:
    """The generated layer of fuse.h struct ``name`` (or its ``size``-byte compat prefix)."""
    con = structs.ALL[name] if size is None else structs.compat(name, size)
    return _struct_class(con)


def _dirent_layer(plus: bool) -> type[Packet]:
    key = ("dirent", plus)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    flex, _ = structs.FLEX["fuse_dirent"]  # the name, namelen bytes
    named = _make(
        "fuse_dirent_name",
        [
            *_fields_of(structs.ALL["fuse_dirent"]),
            StrLenField(flex, b"", length_from=lambda p: p.namelen),
        ],
    )
    hsize = structs.ALL["fuse_dirent"].sizeof()
    if not plus:
        fields: list[AnyField] = [
            *named.fields_desc,
            StrLenField("pad", b"", length_from=lambda p: -(hsize + p.namelen) % 8),
        ]
        cls = _make("fuse_dirent_record", fields)
    else:
        entry = _struct_class(structs.ALL["fuse_entry_out"])
        psize = structs.ALL["fuse_direntplus"].sizeof()
        fields = [
            PacketField("entry_out", entry(), entry),
            PacketField("dirent", named(), named),
            StrLenField(
                "pad",
                b"",
                length_from=lambda p: -(psize + (p.dirent.namelen if p.dirent else 0)) % 8,
            ),
        ]
        cls = _make("fuse_direntplus_record", fields)
    _CLASSES[key] = cls
    return cls


def _part_fields(part: parts.Part) -> list[AnyField]:
    if isinstance(part, parts.Fixed):
        return _fields_of(part.con)
    if isinstance(part, parts.NameN):
        lf = part.len_field
        return [
            StrLenField(part.field, b"", length_from=lambda p: getattr(p, lf)),
            StrFixedLenField(f"{part.field}_nul", b"\0", 1),
        ]
    if isinstance(part, parts.Name):
        return [StrNullField(part.field, b"")]
    if isinstance(part, parts.Sized):
        sf = part.size_field
        return [StrLenField(part.field, b"", length_from=lambda p: getattr(p, sf))]
    if isinstance(part, parts.Rest):
        return [StrField(part.field, b"")]
    if isinstance(part, parts.Counted):
        cf = part.count_field
        if part.item == "u64":
            return [
                FieldListField(
                    part.field, [], LELongField("", 0), count_from=lambda p: getattr(p, cf)
                )
            ]
        cls = _struct_class(structs.ALL[part.item])
        return [PacketListField(part.field, [], cls, count_from=lambda p: getattr(p, cf))]
    if isinstance(part, parts.Dirents):
        return [PacketListField("entries", [], _dirent_layer(part.plus))]
    if isinstance(part, parts.IoctlOut):
        iov = _struct_class(structs.ALL["fuse_ioctl_iovec"])
        retry = parts.FUSE_IOCTL_RETRY

        def is_retry(p: Packet) -> bool:
            return bool(p.flags & retry)

        return [
            ConditionalField(
                PacketListField("in_iov", [], iov, count_from=lambda p: p.in_iovs), is_retry
            ),
            ConditionalField(
                PacketListField("out_iov", [], iov, count_from=lambda p: p.out_iovs), is_retry
            ),
            StrField("data", b""),
        ]
    raise TypeError(f"no scapy fields for part {type(part).__name__}")


def _camel(name: str) -> str:
    return "".join(w.capitalize() for w in name.removeprefix("FUSE_").split("_"))


def _body_class(
    kind: str, code: int, body_parts: tuple[parts.Part, ...], body_len: int
) -> type[Packet] | None:
    """The body layer for ``body_parts`` (None: no body). INIT picks its prefix by length."""
    if len(body_parts) == 1 and isinstance(body_parts[0], parts.AnySize):
        variant = body_parts[0].variants.get(body_len)
        if variant is None:
            return None
        body_parts = (variant,)
    if not body_parts:
        return None
    key = ("body", kind, code, body_parts)
    cls = _CLASSES.get(key)
    if cls is None:
        if kind == "notification":
            opname = _NOTIFY_NAMES.get(code, f"notify_{code}")
        else:
            opname = opcode_name(code)
        suffix = {"request": "Request", "reply": "Reply", "notification": ""}[kind]
        size = sum(p.size for p in body_parts if isinstance(p, parts.Fixed))
        clsname = f"Fuse{_camel(opname)}{suffix}"
        if any(k[:3] == ("body", kind, code) for k in _CLASSES):
            # A compat variant of a layer made before (by its size), or the other shape of
            # an xattr reply (the raw value).
            clsname += f"_{size}" if size else f"_{getattr(body_parts[0], 'field', len(_CLASSES))}"
        fields = [f for p in body_parts for f in _part_fields(p)]
        cls = _CLASSES[key] = _make(
            clsname, fields, base=Packet, display=f"{opname} {kind}".rstrip()
        )
    return cls


def body_layer(
    kind: str, code: int, *, minor: int = FUSE_KERNEL_MINOR_VERSION, body_len: int = 0
) -> type[Packet] | None:
    """The generated body layer of a request/reply (by opcode) or notification (by code).

    None when the body is empty or unknown. ``body_len`` selects INIT's size variant.
    """
    if kind == "request":
        body_parts = messages.request_parts(code, minor)
    elif kind == "reply":
        xattr = None
        if code in (fuse_opcode.FUSE_GETXATTR, fuse_opcode.FUSE_LISTXATTR):
            xattr = 0 if body_len == structs.ALL["fuse_getxattr_out"].sizeof() else 1
        body_parts = messages.reply_parts(code, minor, xattr)
    else:
        body_parts = messages.notification_parts(code)
    if body_parts is None:
        return None
    return _body_class(kind, code, body_parts, body_len)


# --- the capture pseudo-header and the FUSE headers ----------------------------------------


class FuseCapture(Packet):
    """fuseproto's capture pseudo-header (see :mod:`fuseproto.capture.frames`)."""

    name = "FUSE capture"
    fields_desc = [
        ByteField("version", 1),
        # "dir", not "direction": scapy's Packet already has a ``direction`` attribute.
        ByteEnumField("dir", 0, {0: "request", 1: "reply", 2: "notification",
                                 3: "annotation"}),
        LEShortField("queue", 0),
        FlagsField("flags", 0, 8, ["OPCODE_VALID", "MINOR_VALID", "INJECTED"]),
        ByteField("minor", 0),
        LEShortField("reserved1", 0),
        LEIntEnumField("opcode", 0, _OPCODE_NAMES),
        LEIntField("reserved2", 0),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if self.dir == 0:
            return FuseInHeader
        if self.dir in (1, 2):
            return FuseOutHeader
        return Raw

    def mysummary(self) -> str:
        return self.sprintf("FUSE %dir% q%queue%")


def _capture_hints(pkt: Packet) -> tuple[int | None, int]:
    """(opcode hint or None, minor) from the FuseCapture under ``pkt``, if any."""
    under = pkt.underlayer
    if not isinstance(under, FuseCapture):
        return None, FUSE_KERNEL_MINOR_VERSION
    flags = int(under.flags)
    opcode = under.opcode if flags & FLAG_OPCODE_VALID else None
    minor = under.minor if flags & FLAG_MINOR_VALID else FUSE_KERNEL_MINOR_VERSION
    return opcode, minor


class FuseInHeader(Packet):
    """struct fuse_in_header, generated from ``structs.fuse_in_header``."""

    name = "fuse_in_header"
    fields_desc = _fields_of(_IN_HEADER, {"opcode": _OPCODE_NAMES})

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        # The body ends where the extension area (total_extlen 8-byte units) begins.
        n = max(0, self.len - _IN_SIZE - 8 * self.total_extlen)
        return s[:n], s[n:]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        _, minor = _capture_hints(self)
        cls = body_layer("request", self.opcode, minor=minor, body_len=len(payload))
        return cls or Raw

    def mysummary(self) -> str:
        return self.sprintf("%opcode% unique=%unique% nodeid=%nodeid%")


class FuseOutHeader(Packet):
    """struct fuse_out_header, generated from ``structs.fuse_out_header``."""

    name = "fuse_out_header"
    fields_desc = _fields_of(_OUT_HEADER)

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        n = max(0, self.len - _OUT_SIZE)
        return s[:n], s[n:]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if self.unique == 0:
            cls = body_layer("notification", self.error) if self.error > 0 else None
            return cls or Raw
        if self.error != 0:
            return Raw
        opcode, minor = _capture_hints(self)
        if opcode is None:
            return Raw
        return body_layer("reply", opcode, minor=minor, body_len=len(payload)) or Raw

    def mysummary(self) -> str:
        if self.unique == 0:
            return f"FUSE notification {_NOTIFY_NAMES.get(self.error, self.error)}"
        return self.sprintf("FUSE reply unique=%unique% error=%error%")


def register(linktype: int = LINKTYPE_FUSE) -> None:
    """Make scapy dissect packets of ``linktype`` as :class:`FuseCapture`."""
    conf.l2types.register(linktype, FuseCapture)


register()


# --- comparing with the codec --------------------------------------------------------------


def as_dict(pkt: Packet | None) -> dict[str, Any]:
    """A layer's fields as plain Python (nested layers and lists of layers recursively),
    shaped like the codec's Container for the same bytes. Helper fields the codec has no
    key for (``name_nul`` after a ``namelen`` name) are left out; an absent conditional
    list (IOCTL iovecs without FUSE_IOCTL_RETRY) is ``[]``."""
    if pkt is None:
        return {}
    out: dict[str, Any] = {}
    for f in pkt.fields_desc:
        if f.name.endswith("_nul"):
            continue
        v = pkt.getfieldval(f.name)
        out[f.name] = _plain(v, f)
    return out


def _plain(v: Any, f: AnyField | None = None) -> Any:
    if isinstance(v, Packet):
        return as_dict(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if v is None and f is not None and isinstance(f, ConditionalField):
        return []
    if isinstance(v, int):
        return int(v)
    return v


# --- every generated layer under its own name ------------------------------------------------


def _export_layers() -> list[str]:
    """Generate the body layer of every request, reply and notification fuse.h names (at
    the newest minor; GETXATTR/LISTXATTR replies in both shapes; INIT at its full size)
    and bind each to its class name in this module, so ``from
    fuseproto.capture.scapy_layers import FuseLookupReply`` works and the classes pickle
    by name. Compat variants of older minors are still made on demand by
    :func:`body_layer`."""
    jobs: list[tuple[str, int, int]] = []
    getxattr_out = structs.ALL["fuse_getxattr_out"].sizeof()
    for op in fuse_opcode:
        for kind in ("request", "reply"):
            ps = messages.request_parts(op) if kind == "request" else messages.reply_parts(op)
            if ps is None:
                continue
            if len(ps) == 1 and isinstance(ps[0], parts.AnySize):
                jobs.append((kind, int(op), max(ps[0].variants)))
            elif kind == "reply" and op in (fuse_opcode.FUSE_GETXATTR,
                                            fuse_opcode.FUSE_LISTXATTR):
                jobs += [(kind, int(op), getxattr_out), (kind, int(op), getxattr_out + 1)]
            else:
                jobs.append((kind, int(op), 0))
    jobs += [("notification", int(code), 0) for code in fuse_notify_code]
    names = []
    for kind, code, body_len in jobs:
        cls = body_layer(kind, code, body_len=body_len)
        if cls is not None and cls.__name__ not in globals():
            globals()[cls.__name__] = cls
            names.append(cls.__name__)
    return names


__all__ += _export_layers()
