"""The one code generator of the wire layer: fast unpack/pack functions from a layout.

:mod:`.structs` derives each struct's flat layout ONCE, as a tuple of :class:`Node` (its
``FastLayout.tree``); this module turns such a tree into

* the ``struct`` format and the leaf names (:func:`format_of`, :func:`leaves_of`),
* ``parse(buf, offset=0) -> Container`` (:func:`compile_parser`): one ``unpack_from``,
  the Container (nested Containers, ListContainers for integer arrays) built by one
  generated expression over the unpacked tuple,
* ``build(body, *params) -> bytes`` (:func:`compile_builder`): one ``pack`` of the
  body's leaves, read with construct's build rules (an absent or None integer is 0, an
  absent array n zeros, an absent char array n NULs; ``derive`` computes a top-level
  length or count field from the body when it is absent or None), optionally preceded by
  the values of a flat head struct passed as parameters.

Both may be given a flat ``head`` layout (``fuse_in_header``/``fuse_out_header``) so a
header and a fixed-size body go through ONE ``struct`` call. The struct-level fast path
(``structs.FAST``, ``structs.fast_pair``) and the message parts' builders
(``messages.Fixed``, ``messages.prefixed_builder``) all come from here: the source is
generated from the declaration table only, and this is the only ``exec`` of the wire
layer. Generated functions check nothing beyond ``struct``'s own checks; a value the
builder does not mirror (a nested struct that is not a dict) raises :class:`NotFast`, and
the codec then builds with the construct (the reference).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from construct import Container, ListContainer

__all__ = [
    "Node",
    "NotFast",
    "align8",
    "compile_builder",
    "compile_parser",
    "format_of",
    "leaves_of",
    "nested",
    "octets",
    "ints",
    "chars",
]


@dataclass(frozen=True)
class Node:
    """One field of a flat layout.

    ``kind`` is "int" (one scalar), "array" (``count`` scalars, a list), "bytes" (a
    ``char[count]``), "struct" (``children``, nested) or "overlay" (a union member that
    reads the leaf at path ``view`` of the same struct masked with ``mask``: no bytes of
    its own). ``code`` is the scalar's ``struct`` code ("I", "q", ...; "s" for bytes).
    """

    name: str
    kind: str
    code: str = ""
    count: int = 0
    children: tuple[Node, ...] = ()
    view: str = ""
    mask: int = 0


class NotFast(Exception):
    """The fast builder does not mirror the construct for this value: build with that."""


# --- layout ---------------------------------------------------------------------------


def _codes(nodes: Sequence[Node], out: list[str]) -> list[str]:
    for n in nodes:
        if n.kind == "int":
            out.append(n.code)
        elif n.kind in ("array", "bytes"):
            out.append(f"{n.count}{n.code}")
        elif n.kind == "struct":
            _codes(n.children, out)
    return out


def format_of(nodes: Sequence[Node], head: Sequence[Node] = ()) -> str:
    """The little-endian ``struct`` format of ``head`` then ``nodes`` (no alignment)."""
    return "<" + "".join(_codes(head, [])) + "".join(_codes(nodes, []))


def leaves_of(nodes: Sequence[Node], prefix: str = "") -> list[str]:
    """The unpacked values' names in order: dotted paths, ``name[i]`` for array items."""
    out: list[str] = []
    for n in nodes:
        path = prefix + n.name
        if n.kind in ("int", "bytes"):
            out.append(path)
        elif n.kind == "array":
            out.extend(f"{path}[{i}]" for i in range(n.count))
        elif n.kind == "struct":
            out.extend(leaves_of(n.children, path + "."))
    return out


# --- runtime helpers of the generated builders (construct's build rules) ---------------

_NO_FIELDS: dict[str, Any] = {}  # an absent nested struct: every field absent, built as 0


def nested(v: Any) -> Mapping[str, Any]:
    """A nested struct's value as a mapping (absent: every field absent)."""
    if v is None:
        return _NO_FIELDS
    if isinstance(v, dict):
        return v
    raise NotFast


def ints(v: Any, n: int) -> Any:
    """An integer array field as construct's Array(n) builds it (absent: n zeros)."""
    if v is None:
        return (0,) * n
    if len(v) != n:
        raise ValueError(f"expected {n} elements, found {len(v)}")
    return v


def chars(v: Any, n: int) -> bytes:
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


def align8(n: int) -> int:
    """``n`` rounded up to a multiple of 8 (FUSE_DIRENT_ALIGN, FUSE_REC_ALIGN)."""
    return (n + 7) & ~7


def octets(obj: Any) -> bytes:
    """``bytes(obj)`` for a byte-string field, refusing an int: ``bytes(n)`` would allocate
    n zero bytes, and a mutated or forced value must never size an allocation."""
    if isinstance(obj, int):
        raise TypeError(f"expected a byte string, got {type(obj).__name__}")
    return obj if type(obj) is bytes else bytes(obj)


# --- the generator ---------------------------------------------------------------------


def _compile(src: str, ns: dict[str, Any], label: str, name: str) -> Callable[..., Any]:
    """The one exec of the wire layer: ``src`` is generated from a layout only."""
    exec(compile(src, f"<fuseproto.wire.codegen {label}>", "exec"), ns)  # noqa: S102 -- source generated from the declaration table only
    fn: Callable[..., Any] = ns[name]
    return fn


def _parse_expr(nodes: Sequence[Node], pos: list[int], index: dict[str, int], prefix: str) -> str:
    """A ``_C({...})`` expression over the unpacked tuple ``v`` from index ``pos[0]``.

    ``index`` maps the leaf paths (relative to the struct being emitted) to tuple indices,
    so an overlay can read the leaf it views.
    """
    items: list[str] = []
    for n in nodes:
        if n.kind == "overlay":
            items.append(f"{n.name!r}: v[{index[prefix + n.view]}] & {n.mask}")
        elif n.kind in ("int", "bytes"):
            index[prefix + n.name] = pos[0]
            items.append(f"{n.name!r}: v[{pos[0]}]")
            pos[0] += 1
        elif n.kind == "array":
            items.append(f"{n.name!r}: _L(v[{pos[0]}:{pos[0] + n.count}])")
            pos[0] += n.count
        else:
            inner = _parse_expr(n.children, pos, index, f"{prefix}{n.name}.")
            items.append(f"{n.name!r}: {inner}")
    return "_C({" + ", ".join(items) + "})"


def compile_parser(
    nodes: Sequence[Node], head: Sequence[Node] = (), label: str = "struct"
) -> Callable[..., Any]:
    """``parse(buf, offset=0)`` of the layout ``nodes``, at ``unpack_from`` speed.

    Without ``head`` it returns the Container; with a flat ``head`` layout in front it
    returns ``(head values tuple, Container)``. Raises ``struct.error`` when fewer bytes
    than the format's size are available from ``offset``.
    """
    nh = len(leaves_of(head))
    if nh != len(head) or any(n.kind != "int" for n in head):
        raise ValueError(f"{label}: the head must be a flat struct")
    expr = _parse_expr(nodes, [nh], {}, "")
    ret = f"v[:{nh}], {expr}" if head else expr
    src = f"def parse(buf, offset=0):\n    v = _unpack(buf, offset)\n    return {ret}\n"
    unpack = struct.Struct(format_of(nodes, head)).unpack_from
    ns: dict[str, Any] = {"_unpack": unpack, "_C": Container, "_L": ListContainer}
    return _compile(src, ns, f"parse {label}", "parse")


def _build_args(
    nodes: Sequence[Node],
    getter: str,
    lines: list[str],
    derive: Mapping[str, Callable[[Any], Any]],
    ns: dict[str, Any],
) -> list[str]:
    args: list[str] = []
    for n in nodes:
        get = f"{getter}({n.name!r})"
        if n.kind == "int":
            if n.name in derive:
                fn = f"_derive_{n.name}"
                ns[fn] = derive[n.name]
                args.append(f"({fn}(b) if (v := {get}) is None else v)")
            else:
                args.append(f"(0 if (v := {get}) is None else v)")
        elif n.kind == "array":
            args.append(f"*_ints({get}, {n.count})")
        elif n.kind == "bytes":
            args.append(f"_chars({get}, {n.count})")
        elif n.kind == "struct":
            var = f"g{len(lines)}"
            lines.append(f"{var} = _nested({get}).get")
            args.extend(_build_args(n.children, var, lines, {}, ns))
    return args


def compile_builder(
    nodes: Sequence[Node],
    head: Sequence[Node] = (),
    params: Sequence[str] = (),
    derive: Mapping[str, Callable[[Any], Any]] | None = None,
    label: str = "struct",
) -> Callable[..., bytes]:
    """``build(body, *params) -> bytes`` packing ``params`` (the ``head`` struct's values,
    one parameter name per head field, in order) then the body's leaves (see the module
    docstring for the build rules). ``derive`` maps top-level fields of ``nodes`` to
    functions of the body used when the field is absent or None.
    """
    if len(params) != len(head) or any(n.kind != "int" for n in head):
        raise ValueError(f"{label}: a flat head struct with one parameter per field")
    lines: list[str] = []
    ns: dict[str, Any] = {"_nested": nested, "_ints": ints, "_chars": chars}
    args = _build_args(nodes, "g", lines, derive or {}, ns)
    ns["_pack"] = struct.Struct(format_of(nodes, head)).pack
    src = (
        f"def build({', '.join(('b', *params))}):\n    g = b.get\n"
        + "".join(f"    {line}\n" for line in lines)
        + f"    return _pack({', '.join((*params, *args))})\n"
    )
    return _compile(src, ns, f"build {label}", "build")
