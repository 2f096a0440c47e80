"""The request extension area: ``total_extlen`` 8-byte units of fuse_ext_header records.

Each record starts with fuse_ext_header {size, type}; size includes the header and is a
multiple of 8 (FUSE_REC_ALIGN). type 0..FUSE_MAX_NR_SECCTX is a fuse_secctx_header whose
nr_secctx is the type; FUSE_EXT_GROUPS is fuse_supp_groups.

Shapes:
  Container(size=, type=32, nr_groups=, groups=[gid, ...], pad=b"")
  Container(size=, type=nr, secctx=[Container(size=, padding=, name=, ctx=, pad=)])
  Container(size=, type=, data=b"...")                       (any other type)
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Mapping
from typing import Any

from construct import Construct, Container, ListContainer

from ..errors import LengthMismatchError, TruncatedError
from . import constants as C
from .codegen import align8, octets
from .constructs import Area

__all__ = ["FUSE_EXT_GROUPS", "FUSE_MAX_NR_SECCTX", "build_ext", "ext_area", "parse_ext"]

FUSE_EXT_GROUPS = int(C.fuse_ext_type.FUSE_EXT_GROUPS)
FUSE_MAX_NR_SECCTX = int(C.fuse_ext_type.FUSE_MAX_NR_SECCTX)

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
                pend = p + align8(cend - p)
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
                name = octets(c["name"])
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


def _build_area(obj: Any) -> bytes:
    return build_ext(obj or [])


# The extension area as a construct (parse to the end of the stream; see parse_ext).
ext_area: Construct = Area(parse_ext, _build_area)
