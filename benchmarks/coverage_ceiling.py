"""How many of c-asan-cov's edges could a fuzzer reach, and which ones did it?

The instrumented C virtiofsd (``c-asan-cov``) links QEMU's util, QAPI, QObject, QOM and
trace code besides virtiofsd and libvhost-user, and ASan + UBSan add a guarded block in
front of every report call. Its edge count (the ``guards`` in the coverage map's header)
is therefore far above what any input can light. This tool maps every SanitizerCoverage
guard to its code and says, per part of the binary:

* **guards**: edges in that part;
* **sanitizer**: blocks whose only call is an ASan/UBSan report (``__asan_report_*``,
  ``__ubsan_handle_*``): lit only by a finding;
* **noreturn**: blocks that call ``__asan_handle_no_return`` first, i.e. that end in a
  noreturn call (assertion failure, ``abort``, ``exit``);
* **normal**: the rest (normal + sanitizer + noreturn == guards);
* how many guards each edge bitmap reached, and their union;

then the functions with the most unreached normal edges, and the ceiling line: 1.5x the
baseline arm's edges (issue 9's goal) beside the union of all the bitmaps and the normal
edges of virtiofsd + libvhost-user.

How: the guards are the ``__sancov_guards`` section, numbered 1..N in address order by
the runtime (``fuseproto/daemons/csrc/cov_runtime.c``; guard g counts at map index g - 1).
``objdump -d`` finds each guard's call site (an instruction that names the guard's address,
then ``call __sanitizer_cov_trace_pc_guard``) and the first call after it (the block's
kind); ``llvm-symbolizer`` names the site's function and file. The map is cached under
fuseproto's cache directory (``coverage-ceiling/<sha256 of the binary>.json``), so the
second run takes a second, not a minute.

Bitmaps: one byte per map counter, non-zero = seen (``bench_coverage.py --save-edges DIR``
writes one per arm; ``CoverageMap.seen_bitmap()``), or a coverage map file itself (its
64-byte header is skipped).

Run: ``.venv/bin/python benchmarks/coverage_ceiling.py [--binary PATH] [--baseline NAME]
[--top 25] [--all-parts] BITMAP...`` (no bitmap: the guard classification alone). Needs
``fuseproto daemons build c-asan-cov``, binutils' ``objdump`` and ``llvm-symbolizer``
(Debian: ``apt-get install binutils llvm``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fuseproto import daemons
from fuseproto.fuzz.coverage import HEADER_SIZE, MAGIC

#: Bump when the cached map's content or meaning changes.
CACHE_VERSION = 2
#: The parts a fuzzer of the protocol can reach (the "ceiling" line's M).
DAEMON_PARTS = ("virtiofsd", "libvhost-user")
KINDS = ("normal", "sanitizer", "noreturn")
GUARD_CALL = "__sanitizer_cov_trace_pc_guard"
REPORT_PREFIXES = ("__asan_report", "__ubsan_handle")
NO_RETURN = "__asan_handle_no_return"

_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_REF = re.compile(r"#\s+([0-9a-f]+)\b")
_TARGET = re.compile(r"<([^>+@]+)")
_SECTION = re.compile(r"^\s*\d+\s+__sancov_guards\s+([0-9a-f]+)\s+([0-9a-f]+)\s")
# How far a guard's call may follow the instruction that names it, and how far a block is
# followed to its first call before it counts as normal.
SITE_WINDOW = 4
BLOCK_WINDOW = 64


class CeilingError(Exception):
    """A missing binary or tool, or a binary that is not what this tool reads."""


@dataclass(frozen=True)
class Guard:
    """One edge: its number (1-based), where it is and what kind of block it guards."""

    number: int
    function: str
    file: str  # source file of the block (after inlining), relative to the QEMU tree
    line: int
    part: str  # from the function's own file: virtiofsd, libvhost-user, qemu <dir>, ...
    kind: str  # one of KINDS


# -- tools and the binary ------------------------------------------------------------------
def find_tools() -> tuple[str, str]:
    """objdump and llvm-symbolizer (any versioned Debian name), or CeilingError."""
    objdump = shutil.which("objdump")
    sym = shutil.which("llvm-symbolizer") or next(
        iter(sorted(glob.glob("/usr/bin/llvm-symbolizer-*"), reverse=True)), None)
    missing = [n for n, p in (("objdump (apt-get install binutils)", objdump),
                              ("llvm-symbolizer (apt-get install llvm)", sym)) if not p]
    if missing:
        raise CeilingError("missing tool: " + ", ".join(missing))
    assert objdump and sym
    return objdump, sym


def find_binary(path: str | None = None) -> str:
    """``path``, else the c-asan-cov build from fuseproto's daemons registry."""
    if path is None:
        inst = daemons.find("c-asan-cov")
        if inst is None:
            raise CeilingError("c-asan-cov is not built (fuseproto daemons build c-asan-cov)")
        path = inst.binary
    if not os.path.isfile(path):
        raise CeilingError(f"{path}: no such binary")
    return path


def guard_section(objdump: str, binary: str) -> tuple[int, int]:
    """(address, guard count) of the binary's ``__sancov_guards`` section."""
    out = subprocess.run([objdump, "-h", binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        m = _SECTION.match(line)
        if m:
            return int(m.group(2), 16), int(m.group(1), 16) // 4
    raise CeilingError(f"{binary}: no __sancov_guards section (not built with "
                       "-fsanitize-coverage=trace-pc-guard)")


# -- the guard map -------------------------------------------------------------------------
def scan_sites(lines: object, start: int, count: int) -> tuple[dict[int, int], dict[int, str]]:
    """From ``objdump -d --no-show-raw-insn`` lines: each guard's call site (the address
    of its ``call __sanitizer_cov_trace_pc_guard``) and its block's kind (see KINDS). A
    guard whose address the compiler hoisted into a register (a loop's guard: ``lea`` once,
    ``mov %r15,%rdi; call`` later) gets the address of the first instruction that names it,
    which is in the same function, and counts as normal."""
    end = start + 4 * count
    sites: dict[int, int] = {}
    first: dict[int, int] = {}  # guard -> first instruction naming it
    kinds: dict[int, str] = {}
    pending: tuple[int, int] | None = None  # (guard, instructions since it was named)
    block: tuple[int, int] | None = None  # (guard, instructions since its call)
    for line in lines:  # type: ignore[attr-defined]
        m = _INSN.match(line)
        if not m:
            if block is not None and line.strip().endswith(">:"):  # a new function
                kinds[block[0]], block = "normal", None
            pending = None
            continue
        addr, mnemonic, operands = int(m.group(1), 16), m.group(2), m.group(3)
        ref = _REF.search(operands)
        if ref and mnemonic != "call":
            a = int(ref.group(1), 16)
            g = (a - start) // 4 + 1
            if start <= a < end and (a - start) % 4 == 0 and g not in sites:
                first.setdefault(g, addr)
                if block is not None:  # fell through into the next guarded block
                    kinds[block[0]], block = "normal", None
                pending = (g, 0)
                continue
        if mnemonic == "call":
            t = _TARGET.search(operands)
            name = t.group(1) if t else ""
            if name == GUARD_CALL and pending is not None:
                sites[pending[0]] = addr
                block, pending = (pending[0], 0), None
                continue
            if block is not None:
                kind = ("sanitizer" if name.startswith(REPORT_PREFIXES)
                        else "noreturn" if name == NO_RETURN else "normal")
                kinds[block[0]], block = kind, None
        elif block is not None and (mnemonic.startswith("j") or mnemonic in ("ret", "ud2")):
            kinds[block[0]], block = "normal", None
        if pending is not None:
            pending = (pending[0], pending[1] + 1)
            if pending[1] > SITE_WINDOW:
                pending = None
        if block is not None:
            block = (block[0], block[1] + 1)
            if block[1] > BLOCK_WINDOW:
                kinds[block[0]], block = "normal", None
    if block is not None:
        kinds[block[0]] = "normal"
    for g, addr in first.items():
        sites.setdefault(g, addr)
    return sites, kinds


def source_path(path: str) -> tuple[str, bool]:
    """(path relative to the QEMU tree, generated by the build) for a DWARF file name."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(len(parts) - 2, -1, -1):  # the tree's directory: qemu-<version>
        if re.match(r"qemu-\d", parts[i]):
            return "/".join(parts[i + 1:]), False
    if "tree" in parts:  # the build directory: builds/tree/<variant>/...
        i = parts.index("tree")
        return "/".join(parts[i + 2:]), True
    return path, False


def part_of(path: str) -> str:
    """The part of the binary a function's file belongs to."""
    if not path or path.startswith("?"):
        return "other"
    rel, generated = source_path(path)
    if os.path.isabs(rel):  # outside QEMU's tree: a system header's inline function
        return "other"
    if rel.startswith("tools/virtiofsd/"):
        return "virtiofsd"
    if rel.startswith("subprojects/libvhost-user/"):
        return "libvhost-user"
    top = rel.split("/")[0] if "/" in rel else "(top)"
    return f"qemu {top}" + (" (generated)" if generated else "")


def symbolize(symbolizer: str, binary: str, addrs: list[int]
              ) -> list[tuple[dict[str, object], dict[str, object]]]:
    """llvm-symbolizer's (innermost, outermost) frames for each address, in order: the
    source line is the innermost's, the function and its home file the outermost's (a
    glib inline cleanup inlined into virtiofsd's log_func is virtiofsd's edge)."""
    out = subprocess.run([symbolizer, "--obj", binary, "--output-style=JSON",
                          "--functions=linkage", "--inlining=true"],
                         input="".join(f"{a:#x}\n" for a in addrs),
                         capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.splitlines():
        if line.strip():
            sym = json.loads(line).get("Symbol") or [{}]
            frames.append((sym[0], sym[-1]))
    if len(frames) != len(addrs):
        raise CeilingError(f"llvm-symbolizer answered {len(frames)} of {len(addrs)} addresses")
    return frames


def build_map(binary: str) -> list[Guard]:
    """Every guard of ``binary`` mapped and classified (a minute or so: objdump of the
    whole binary and one llvm-symbolizer run)."""
    objdump, sym = find_tools()
    start, count = guard_section(objdump, binary)
    with subprocess.Popen([objdump, "-d", "--no-show-raw-insn", binary],
                          stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        sites, kinds = scan_sites(p.stdout, start, count)
    if p.returncode:
        raise CeilingError(f"objdump -d {binary} exited {p.returncode}")
    order = sorted(sites)
    frames = dict(zip(order, symbolize(sym, binary, [sites[g] for g in order]), strict=True))
    guards = []
    for g in range(1, count + 1):
        inner, outer = frames.get(g, ({}, {}))
        file = str(inner.get("FileName") or "?")
        home = str(outer.get("StartFileName") or outer.get("FileName") or "?")
        guards.append(Guard(g, str(outer.get("FunctionName") or "?"), source_path(file)[0],
                            int(str(inner.get("Line") or 0)), part_of(home) if g in sites else "other",
                            kinds.get(g, "normal")))
    return guards


def cache_path(binary: str) -> Path:
    h = hashlib.sha256()
    with open(binary, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return daemons.cache_root() / "coverage-ceiling" / f"{h.hexdigest()[:32]}.json"


def guard_map(binary: str, use_cache: bool = True) -> list[Guard]:
    """:func:`build_map`, cached by the binary's hash."""
    path = cache_path(binary)
    if use_cache and path.exists():
        data = json.loads(path.read_text())
        if data.get("version") == CACHE_VERSION:
            return [Guard(*row) for row in data["guards"]]
    guards = build_map(binary)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "binary": binary,
                               "guards": [list(vars(g).values()) for g in guards]}))
    tmp.replace(path)
    return guards


# -- bitmaps and the report ----------------------------------------------------------------
def read_bitmap(path: str) -> bytes:
    """A saved bitmap (one byte per counter) or a coverage map file (header skipped)."""
    data = Path(path).read_bytes()
    if data[:len(MAGIC)] == MAGIC:
        data = data[HEADER_SIZE:]
    if not data:
        raise CeilingError(f"{path}: empty bitmap")
    return data


def lit(guards: list[Guard], bitmap: bytes) -> set[int]:
    """The guards a bitmap shows reached (guard g at counter (g - 1) % len(bitmap), as the
    runtime counts: with fewer counters than guards, colliding guards all read as lit)."""
    n = len(bitmap)
    return {g.number for g in guards if bitmap[(g.number - 1) % n]}


def tally(guards: list[Guard], reached: dict[str, set[int]]) -> dict[str, dict[str, int]]:
    """Per part: guards, each kind, and how many guards each bitmap (by name) reached."""
    rows: dict[str, dict[str, int]] = collections.defaultdict(collections.Counter)
    for g in guards:
        for key in (g.part, "all"):
            row = rows[key]
            row["guards"] += 1
            row[g.kind] += 1
            for name, hit in reached.items():
                if g.number in hit:
                    row[name] += 1
                    row[f"{name}:{g.kind}"] += 1
    return {k: dict(v) for k, v in rows.items()}


def top_unreached(guards: list[Guard], hit: set[int], parts: tuple[str, ...] | None,
                  n: int) -> list[tuple[int, int, str, str]]:
    """(unreached normal edges, normal edges, function, file) of the ``n`` functions with
    the most unreached normal edges (in ``parts``; None: all)."""
    per: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    files: dict[str, str] = {}
    for g in guards:
        if g.kind != "normal" or (parts is not None and g.part not in parts):
            continue
        per[g.function][1] += 1
        per[g.function][0] += g.number not in hit
        files.setdefault(g.function, g.file)
    rows = [(u, t, f, files[f]) for f, (u, t) in per.items() if u]
    return sorted(rows, key=lambda r: (-r[0], r[2]))[:n]


def report(guards: list[Guard], bitmaps: dict[str, bytes], baseline: str | None,
           top: int, all_parts: bool) -> str:
    """The printed report (see the module docstring)."""
    reached = {name: lit(guards, bm) for name, bm in bitmaps.items()}
    union: set[int] = set().union(*reached.values()) if reached else set()
    cols = dict(reached)
    if len(reached) > 1:
        cols["all runs"] = union
    rows = tally(guards, cols)
    out = []
    labels = {k: k.rsplit(".", 1)[0][:16] for k in cols}  # column k: names below the table
    width = max(7, *(len(v) for v in labels.values())) if cols else 7
    head = f"{'part':28s} {'guards':>7s} {'sanitzr':>7s} {'noretrn':>7s} {'normal':>7s}"
    out.append(head + "".join(f" {labels[k]:>{width}s}" for k in cols))
    daemon = {k: sum(rows.get(p, {}).get(k, 0) for p in DAEMON_PARTS)
              for k in {*KINDS, "guards", *cols}}
    qemu = {k: sum(v.get(k, 0) for p, v in rows.items() if p.startswith("qemu "))
            for k in {*KINDS, "guards", *cols}}
    order = [*DAEMON_PARTS, "virtiofsd+libvhost-user"]
    qemu_parts = sorted((p for p in rows if p.startswith("qemu ")),
                        key=lambda p: -rows[p]["guards"])
    order += [*qemu_parts, "linked-in QEMU", *(["other"] if "other" in rows else []), "all"]
    for part in order:
        row = daemon if part == "virtiofsd+libvhost-user" else qemu if part == "linked-in QEMU" \
            else rows.get(part, {})
        out.append(f"{part[:28]:28s} {row.get('guards', 0):7d} {row.get('sanitizer', 0):7d} "
                   f"{row.get('noreturn', 0):7d} {row.get('normal', 0):7d}"
                   + "".join(f" {row.get(k, 0):{width}d}" for k in cols))
    for k in cols:
        odd = {kind: rows["all"].get(f"{k}:{kind}", 0) for kind in ("sanitizer", "noreturn")}
        if any(odd.values()):
            out.append(f"note: {k} reached {odd['sanitizer']} sanitizer-report and "
                       f"{odd['noreturn']} noreturn blocks (a finding, an exit or a "
                       "misclassified block)")
    scope = None if all_parts else DAEMON_PARTS
    title = "all parts" if all_parts else "virtiofsd + libvhost-user"
    out.append(f"\ntop {top} functions by unreached normal edges ({title}; "
               f"reached = {'the union' if len(reached) > 1 else 'the bitmap' if reached else 'none'}):")
    for u, t, fn, file in top_unreached(guards, union, scope, top):
        out.append(f"  {u:5d} unreached of {t:5d}  {fn}  {file}")
    m = daemon["normal"]
    if reached:
        base = baseline if baseline in reached else next(
            (k for k in reached if "outcome" in k), next(iter(reached)))
        x = len(reached[base])
        out.append(f"\n1.5x of arm {base} = {round(1.5 * x)} edges ({x} reached); union of "
                   f"all runs = {len(union)}; normal edges in virtiofsd+libvhost-user = {m}")
    else:
        out.append(f"\nnormal edges in virtiofsd+libvhost-user = {m}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Map c-asan-cov's SanitizerCoverage guards to code, classify the "
                    "sanitizer-report blocks, and say per part of the binary how many "
                    "edges the given bitmaps reached and how many are left.",
        epilog="Bitmaps: files of one byte per map counter, non-zero = seen (written by "
               "benchmarks/bench_coverage.py --save-edges DIR), or coverage map files. "
               "Needs objdump (binutils) and llvm-symbolizer (llvm). The guard map is "
               "cached under fuseproto's cache dir by the binary's hash.")
    ap.add_argument("bitmaps", nargs="*", metavar="BITMAP",
                    help="edge bitmaps; a directory means every *.edges / *.bits file in it")
    ap.add_argument("--binary", help="the instrumented daemon (default: the c-asan-cov "
                                     "build from `fuseproto daemons list`)")
    ap.add_argument("--baseline", help="the bitmap (file name) the 1.5x line is computed "
                                       "from (default: the first with 'outcome' in its name, "
                                       "else the first)")
    ap.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    ap.add_argument("--all-parts", action="store_true",
                    help="list unreached functions of every part, not only virtiofsd + "
                         "libvhost-user")
    ap.add_argument("--no-cache", action="store_true", help="rebuild the guard map")
    a = ap.parse_args(argv)
    try:
        binary = find_binary(a.binary)
        paths: list[str] = []
        for p in a.bitmaps:
            if os.path.isdir(p):
                found = sorted(glob.glob(os.path.join(p, "*.edges")) +
                               glob.glob(os.path.join(p, "*.bits")))
                if not found:
                    raise CeilingError(f"{p}: no *.edges or *.bits files")
                paths += found
            elif os.path.isfile(p):
                paths.append(p)
            else:
                raise CeilingError(f"{p}: no such bitmap")
        bitmaps = {os.path.basename(p): read_bitmap(p) for p in paths}
        if len(bitmaps) != len(paths):
            raise CeilingError("two bitmaps with the same file name")
        guards = guard_map(binary, use_cache=not a.no_cache)
    except (CeilingError, OSError, subprocess.CalledProcessError) as e:
        print(f"coverage_ceiling: {e}", file=sys.stderr)
        return 2
    mapped = sum(g.function != "?" for g in guards)
    print(f"{binary}: {len(guards)} guards, {mapped} mapped to a function")
    print(report(guards, bitmaps, a.baseline, a.top, a.all_parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
