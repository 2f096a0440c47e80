"""Read a ``linux/fuse.h`` the way the tests need it: names from the text, facts from gcc.

A small parser takes the struct, field, enum and ``#define`` *names* out of the header;
a C program generated from those names is compiled against the same header and prints
every ``sizeof``, ``offsetof`` and value, so the numbers come from the compiler, never
from our reading of the text. Used by ``test_layout.py``, ``test_constants.py`` and
``scripts/compare_fuse_header.py``.

The header the schema describes is *pinned* (:func:`pinned_header`): one
``linux-libc-dev`` version and the SHA-256 of its ``fuse.h``, so the tests compare with the
same bytes every day and a newer upstream header changes nothing until the pin is moved.
What a newer header would change is :func:`diff_facts`'s report, printed by
``scripts/compare_fuse_header.py``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fuseproto.daemons import PrivateApt, extract

# The linux/fuse.h that fuseproto.wire describes (protocol 7.46). The pin is the header's
# own bytes (its SHA-256); the package version says where they were found first. If the
# archive stops offering that version, any version it still offers whose fuse.h has the
# same digest will do (a final release after the rc, say); otherwise the tests fail
# naming the pin, and scripts/compare_fuse_header.py shows what moving it would change.
PINNED_SUITES = ("sid", "experimental")
PINNED_LIBC_DEV = "7.3~rc7-1~exp1"
PINNED_MINOR = 46
PINNED_FUSE_H_SHA256 = "56549165bbc4fe806ac78ac15eefa159a49bdc1e051a68e44e828d6ee1e4e2a2"

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


@dataclass
class CField:
    name: str  # dotted for members of an anonymous struct type: "bufpool.uaddr"
    flex: bool = False  # flexible array member: no sizeof
    in_union: bool = False


@dataclass
class CStruct:
    name: str
    fields: list[CField] = field(default_factory=list)


@dataclass
class Header:
    path: Path
    structs: dict[str, CStruct]
    enums: dict[str, list[str]]
    defines: list[str]  # object-like macros with a value (no guards, no arguments)


def _clean(text: str) -> str:
    return _COMMENT.sub(" ", text).replace("\\\n", " ")


def _split_top(body: str) -> list[str]:
    """Split a brace body at the ';' that are not inside nested braces."""
    out, depth, cur = [], 0, []
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == ";" and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        out.append(tail)
    return [d for d in out if d]


def _members(body: str, prefix: str = "", in_union: bool = False) -> list[CField]:
    fields: list[CField] = []
    for decl in _split_top(body):
        if "{" in decl:
            kind = decl.split(None, 1)[0]
            inner = decl[decl.index("{") + 1 : decl.rindex("}")]
            after = decl[decl.rindex("}") + 1 :].strip()
            if not after:  # anonymous union/struct: its members belong to this struct
                fields += _members(inner, prefix, in_union or kind == "union")
            else:  # a member of an unnamed struct type: list it and its sub-fields
                fields.append(CField(prefix + after, in_union=in_union))
                fields += _members(inner, f"{prefix}{after}.", False)
            continue
        m = re.search(r"(\w+)\s*(\[\s*([^\]]*)\])?\s*$", decl)
        if not m:
            raise ValueError(f"cannot parse member {decl!r}")
        flex = m.group(2) is not None and not m.group(3).strip()
        fields.append(CField(prefix + m.group(1), flex=flex, in_union=in_union))
    return fields


def parse_header(path: Path) -> Header:
    text = _clean(path.read_text())
    structs: dict[str, CStruct] = {}
    for m in re.finditer(r"^struct\s+(\w+)\s*\{", text, re.M):
        start = m.end()
        depth, i = 1, start
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        structs[m.group(1)] = CStruct(m.group(1), _members(text[start : i - 1]))
    enums = {
        m.group(1): [e.split("=")[0].strip() for e in m.group(2).split(",") if e.strip()]
        for m in re.finditer(r"^enum\s+(\w+)\s*\{(.*?)\}", text, re.M | re.S)
    }
    defines: list[str] = []
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\(?)(.*)$", text, re.M):
        name, is_function, value = m.group(1), m.group(2), m.group(3).strip()
        if is_function or not value:  # macros with arguments; the include guard
            continue
        defines.append(name)
    return Header(path, structs, enums, defines)


@dataclass
class Facts:
    """What gcc says about a header."""

    minor: int
    sizeof: dict[str, int]
    # struct -> [(field, offset, size or None for a flexible array member)]
    fields: dict[str, list[tuple[str, int, int | None]]]
    values: dict[str, int]  # the value's bit pattern in its C type, as unsigned
    dirent_size: dict[int, int]  # namelen -> FUSE_DIRENT_SIZE
    direntplus_size: dict[int, int]  # namelen -> FUSE_DIRENTPLUS_SIZE


def _c_program(h: Header, namelens: range) -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/ioctl.h>",
        "#include <linux/fuse.h>",
        # FUSE_REMOVEMAPPING_MAX_ENTRY divides PAGE_SIZE, which userspace lacks.
        "#ifndef PAGE_SIZE",
        "#define PAGE_SIZE 4096",
        "#endif",
        "int main(void) {",
        '  printf("V %d\\n", FUSE_KERNEL_MINOR_VERSION);',
    ]
    for s in h.structs.values():
        t = f"struct {s.name}"
        lines.append(f'  printf("S {s.name} %zu\\n", sizeof({t}));')
        for f in s.fields:
            size = "(size_t)0" if f.flex else f"sizeof((({t} *)0)->{f.name})"
            lines.append(
                f'  printf("F {s.name} {f.name} {int(f.flex)} %zu %zu\\n",'
                f" offsetof({t}, {f.name}), {size});"
            )
    for name in [*h.defines, *(n for ns in h.enums.values() for n in ns)]:
        # Value and width: "(1 << 31)" is a negative int in C, but bit 31 on the wire.
        lines.append(f'  printf("C {name} %lld %zu\\n", (long long)({name}), sizeof({name}));')
    if "FUSE_DIRENT_SIZE" in (p := h.path.read_text()) and "FUSE_DIRENTPLUS_SIZE" in p:
        lines.append("  { struct fuse_dirent d; struct fuse_direntplus dp;")
        for n in namelens:
            lines.append(f"    d.namelen = {n}; dp.dirent.namelen = {n};")
            lines.append(
                f'    printf("D {n} %zu %zu\\n", (size_t)FUSE_DIRENT_SIZE(&d),'
                " (size_t)FUSE_DIRENTPLUS_SIZE(&dp));"
            )
        lines.append("  }")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def compile_facts(h: Header, build_dir: Path, include_dir: Path | None = None) -> Facts:
    """Compile and run the generated program; ``include_dir`` goes first on the path."""
    src = build_dir / "fuse_facts.c"
    exe = build_dir / "fuse_facts"
    src.write_text(_c_program(h, range(0, 18)))
    cmd = ["gcc", "-std=gnu11", "-O0", "-o", str(exe), str(src)]
    if include_dir is not None:
        cmd[1:1] = ["-I", str(include_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"gcc failed for {h.path}:\n{proc.stderr[-4000:]}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    facts = Facts(0, {}, {}, {}, {}, {})
    for line in out.splitlines():
        tag, *rest = line.split()
        if tag == "V":
            facts.minor = int(rest[0])
        elif tag == "S":
            facts.sizeof[rest[0]] = int(rest[1])
            facts.fields[rest[0]] = []
        elif tag == "F":
            struct, name, flex, off, size = rest
            facts.fields[struct].append((name, int(off), None if flex == "1" else int(size)))
        elif tag == "C":
            facts.values[rest[0]] = int(rest[1]) % (1 << (8 * int(rest[2])))
        elif tag == "D":
            facts.dirent_size[int(rest[0])] = int(rest[1])
            facts.direntplus_size[int(rest[0])] = int(rest[2])
    return facts


def include_root(header: Path) -> Path:
    """``<tree>/usr/include`` for ``<tree>/usr/include/linux/fuse.h``."""
    return header.parent.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_header(apt: PrivateApt, version: str) -> Path:
    """``fuse.h`` of ``linux-libc-dev`` ``version``, downloaded and unpacked once (the
    same tree ``fuseproto.daemons.newest_header`` uses)."""
    header = apt.root / "trees" / f"linux-libc-dev_{version}" / "usr/include/linux/fuse.h"
    if not header.exists():
        extract(apt.download("linux-libc-dev", version), header.parents[3])
    return header


def pinned_header(cache_dir: Path | None = None) -> Path:
    """Path of the pinned ``linux/fuse.h`` (see ``PINNED_*``), checked by its digest.

    Once unpacked into fuseproto's apt cache it is used from there with no network;
    otherwise it is fetched through the private apt configuration of
    :class:`fuseproto.daemons.PrivateApt` (never the system's sources).
    """
    apt = PrivateApt.for_suites(*PINNED_SUITES, cache_dir=cache_dir)
    cached = apt.root / "trees" / f"linux-libc-dev_{PINNED_LIBC_DEV}" / "usr/include/linux/fuse.h"
    if cached.exists() and _sha256(cached) == PINNED_FUSE_H_SHA256:
        return cached
    apt.update()
    offered = apt.versions("linux-libc-dev")
    # The pinned version first, then whatever else is offered.
    for version in sorted(offered, key=lambda v: v != PINNED_LIBC_DEV):
        header = _tree_header(apt, version)
        if _sha256(header) == PINNED_FUSE_H_SHA256:
            return header
    raise AssertionError(
        f"no linux-libc-dev in {'/'.join(PINNED_SUITES)} (offered: {', '.join(offered)}) has "
        f"the pinned fuse.h 7.{PINNED_MINOR} (linux-libc-dev {PINNED_LIBC_DEV}, sha256 "
        f"{PINNED_FUSE_H_SHA256}): run scripts/compare_fuse_header.py, update the schema if "
        "needed, and move the pin in tests/fuseh.py"
    )


def header_facts(path: Path, build_dir: Path) -> tuple[Header, Facts]:
    """Parse a ``<tree>/usr/include/linux/fuse.h`` and compile its facts against that tree
    (the installed ``/usr/include/linux/fuse.h`` against the system's include path)."""
    h = parse_header(path)
    tree = include_root(path)
    build_dir.mkdir(parents=True, exist_ok=True)
    return h, compile_facts(h, build_dir, None if tree == Path("/usr/include") else tree)


def diff_facts(old: tuple[Header, Facts], new: tuple[Header, Facts]) -> list[str]:
    """What changed from header ``old`` to header ``new``, one line per change: the
    protocol minor, structs added or removed, a struct's sizeof, fields added, removed,
    moved or resized, constants (opcodes, notify codes, flags, ``#define``s) added,
    removed or given a new value, and the dirent size macros. Empty: the same protocol."""
    (oh, of), (nh, nf) = old, new
    out: list[str] = []
    if of.minor != nf.minor:
        out.append(f"FUSE_KERNEL_MINOR_VERSION: 7.{of.minor} -> 7.{nf.minor}")
    out += [f"struct {s}: new ({nf.sizeof[s]} bytes)" for s in nf.sizeof if s not in of.sizeof]
    out += [f"struct {s}: removed" for s in of.sizeof if s not in nf.sizeof]
    for s in (s for s in of.sizeof if s in nf.sizeof):
        if of.sizeof[s] != nf.sizeof[s]:
            out.append(f"struct {s}: sizeof {of.sizeof[s]} -> {nf.sizeof[s]}")
        ofields = {f[0]: f[1:] for f in of.fields[s]}
        nfields = {f[0]: f[1:] for f in nf.fields[s]}
        for name, (off, size) in nfields.items():
            if name not in ofields:
                out.append(f"struct {s}: new field {name} at {off} ({_size_text(size)})")
            elif ofields[name] != (off, size):
                o_off, o_size = ofields[name]
                out.append(
                    f"struct {s}: field {name} at {o_off} ({_size_text(o_size)}) -> "
                    f"at {off} ({_size_text(size)})"
                )
        out += [f"struct {s}: field {n} removed" for n in ofields if n not in nfields]
    enum_of = {m: e for e, ms in nh.enums.items() for m in ms}
    enum_of.update({m: e for e, ms in oh.enums.items() for m in ms if m not in enum_of})
    for name, value in nf.values.items():
        if name == "FUSE_KERNEL_MINOR_VERSION":  # the first line already says it
            continue
        what = f"{enum_of[name]} member" if name in enum_of else "#define"
        if name not in of.values:
            out.append(f"{what} {name} = {value:#x}: new")
        elif of.values[name] != value:
            out.append(f"{what} {name}: {of.values[name]:#x} -> {value:#x}")
    out += [
        f"{(enum_of[n] + ' member') if n in enum_of else '#define'} {n}: removed"
        for n in of.values
        if n not in nf.values
    ]
    for n in sorted(set(of.dirent_size) & set(nf.dirent_size)):
        if (of.dirent_size[n], of.direntplus_size[n]) != (nf.dirent_size[n], nf.direntplus_size[n]):
            out.append(f"FUSE_DIRENT_SIZE/FUSE_DIRENTPLUS_SIZE of namelen {n} changed")
    return out


def _size_text(size: int | None) -> str:
    return "flexible" if size is None else f"{size} bytes"
