"""benchmarks/coverage_ceiling.py: the guard classifier on synthetic disassembly, the
report's arithmetic, its errors, and (marked daemon) the guard map of the real c-asan-cov
binary with invariants that a wrong section, a wrong numbering or a wrong part would
break."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fuseproto import daemons

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "coverage_ceiling.py"
_spec = importlib.util.spec_from_file_location("coverage_ceiling", _PATH)
assert _spec is not None and _spec.loader is not None
cc = importlib.util.module_from_spec(_spec)
sys.modules["coverage_ceiling"] = cc
_spec.loader.exec_module(cc)

START = 0x1000  # the guard section of the synthetic disassembly: 5 guards

DIS = """
0000000000000080 <sancov.module_ctor_trace_pc_guard>:
   80:\tlea    0xf79(%rip),%rdi        # 1000 <__TMC_END__>
   87:\tlea    0xf86(%rip),%rsi        # 1014 <__bss_start>
   8e:\tcall   940 <__sanitizer_cov_trace_pc_guard_init>
   93:\tret

0000000000000100 <f>:
  100:\tlea    0xeff(%rip),%rdi        # 1000 <__TMC_END__>
  107:\tcall   900 <__sanitizer_cov_trace_pc_guard>
  10c:\ttest   %eax,%eax
  10e:\tjne    140 <f+0x40>
  110:\tlea    0xef1(%rip),%rdi        # 1004 <__TMC_END__+0x4>
  117:\tcall   900 <__sanitizer_cov_trace_pc_guard>
  11c:\tmov    %rbx,%rdi
  11f:\tcall   910 <__asan_report_load8>
  124:\tlea    0xee5(%rip),%rdi        # 1008 <__TMC_END__+0x8>
  12b:\tcall   900 <__sanitizer_cov_trace_pc_guard>
  130:\tcall   920 <__asan_handle_no_return>
  135:\tcall   930 <abort@plt>
  13a:\tlea    0xecb(%rip),%r15        # 100c <__TMC_END__+0xc>
  141:\tjmp    160 <f+0x60>
  150:\tlea    0xeb9(%rip),%rdi        # 1010 <__TMC_END__+0x10>
  157:\tcall   900 <__sanitizer_cov_trace_pc_guard>
  15c:\tcall   950 <__ubsan_handle_add_overflow>
  160:\tmov    %r15,%rdi
  163:\tcall   900 <__sanitizer_cov_trace_pc_guard>
"""


def test_scan_sites_classifies_blocks_and_skips_the_init_call():
    sites, kinds = cc.scan_sites(DIS.splitlines(), START, 5)
    # Guard 1's site is f's call, not the constructor that hands the array to the runtime;
    # guard 4's address was hoisted into %r15: the lea that names it stands for its site.
    assert sites == {1: 0x107, 2: 0x117, 3: 0x12B, 4: 0x13A, 5: 0x157}
    assert kinds == {1: "normal", 2: "sanitizer", 3: "noreturn", 5: "sanitizer"}
    # A guard outside the section (the __bss_start reference) or misaligned is no guard.
    sites, _ = cc.scan_sites(["  300:\tlea    0x0(%rip),%rdi        # 1002 <x>",
                              "  307:\tcall   900 <__sanitizer_cov_trace_pc_guard>"], START, 5)
    assert sites == {}


def test_scan_sites_a_call_too_far_away_is_not_the_site():
    lines = ["  100:\tlea    0x0(%rip),%rdi        # 1000 <g>"]
    lines += [f"  {0x101 + i:x}:\tnop" for i in range(cc.SITE_WINDOW + 2)]
    lines.append("  200:\tcall   900 <__sanitizer_cov_trace_pc_guard>")
    sites, kinds = cc.scan_sites(lines, START, 1)
    assert sites == {1: 0x100} and kinds == {}  # the naming instruction, kind unknown


def test_part_of_and_source_path():
    src = "/c/builds/tree/c-asan-cov/../../source/qemu-7.2+dfsg-7+deb12u18/"
    assert cc.part_of(src + "tools/virtiofsd/passthrough_ll.c") == "virtiofsd"
    assert cc.part_of(src + "subprojects/libvhost-user/libvhost-user.c") == "libvhost-user"
    # A file named qemu-* is not the tree's directory.
    assert cc.part_of(src + "util/qemu-thread-posix.c") == "qemu util"
    assert cc.part_of("/c/builds/tree/c-asan-cov/qapi/qapi-visit-core.c") == \
        "qemu qapi (generated)"
    assert cc.part_of("/usr/include/glib-2.0/glib/gstring.h") == "other"
    assert cc.part_of("??") == "other"


def _guards():
    G = cc.Guard
    return [G(1, "lo_lookup", "tools/virtiofsd/passthrough_ll.c", 1, "virtiofsd", "normal"),
            G(2, "lo_lookup", "tools/virtiofsd/passthrough_ll.c", 2, "virtiofsd", "sanitizer"),
            G(3, "vu_dispatch", "subprojects/libvhost-user/libvhost-user.c", 3,
              "libvhost-user", "normal"),
            G(4, "vu_dispatch", "subprojects/libvhost-user/libvhost-user.c", 4,
              "libvhost-user", "noreturn"),
            G(5, "qdict_get", "qobject/qdict.c", 5, "qemu qobject", "normal"),
            G(6, "lo_read", "tools/virtiofsd/passthrough_ll.c", 6, "virtiofsd", "normal")]


def test_report_counts_parts_union_and_the_ceiling_line():
    g = _guards()
    bitmaps = {"coverage-seed0.edges": bytes([1, 0, 1, 0, 0, 0, 0, 0]),
               "outcome-seed0.edges": bytes([1, 1, 0, 0, 1, 0, 0, 0])}
    rows = cc.tally(g, {k: cc.lit(g, v) for k, v in bitmaps.items()})
    assert rows["virtiofsd"]["guards"] == 3 and rows["virtiofsd"]["normal"] == 2
    assert rows["virtiofsd"]["outcome-seed0.edges"] == 2
    assert rows["virtiofsd"]["outcome-seed0.edges:sanitizer"] == 1
    assert rows["qemu qobject"]["outcome-seed0.edges"] == 1
    assert rows["all"]["guards"] == 6
    text = cc.report(g, bitmaps, None, 5, False)
    # Baseline: the outcome arm (3 edges); union {1, 2, 3, 5}; normal in the daemon: 1, 3, 6.
    assert ("1.5x of arm outcome-seed0.edges = 4 edges (3 reached); union of all runs = 4; "
            "normal edges in virtiofsd+libvhost-user = 3") in text
    assert "reached 1 sanitizer-report and 0 noreturn blocks" in text
    # Unreached normal edges of the daemon's parts: lo_read only (qdict_get is QEMU's).
    tops = cc.top_unreached(g, {1, 2, 3, 5}, cc.DAEMON_PARTS, 5)
    assert tops == [(1, 1, "lo_read", "tools/virtiofsd/passthrough_ll.c")]
    assert [r[2] for r in cc.top_unreached(g, set(), None, 5)] == \
        ["lo_lookup", "lo_read", "qdict_get", "vu_dispatch"]


def test_lit_wraps_a_short_bitmap_like_the_runtime():
    g = _guards()
    assert cc.lit(g, bytes([0, 0, 0, 0, 1])) == {5}
    assert cc.lit(g, bytes([1, 0])) == {1, 3, 5}  # guard g counts at (g - 1) % 2


def test_read_bitmap_skips_a_map_header_and_rejects_empty(tmp_path):
    from fuseproto.fuzz.coverage import HEADER_SIZE, write_header

    f = tmp_path / "map"
    f.write_bytes(write_header(4) + bytes([0, 1, 0, 0]))
    assert cc.read_bitmap(str(f)) == bytes([0, 1, 0, 0])
    assert len(write_header(4)) == HEADER_SIZE
    (tmp_path / "empty.edges").write_bytes(b"")
    with pytest.raises(cc.CeilingError, match="empty bitmap"):
        cc.read_bitmap(str(tmp_path / "empty.edges"))


def test_main_fails_clearly(tmp_path, monkeypatch, capsys):
    assert cc.main(["--binary", str(tmp_path / "nope")]) == 2
    assert "no such binary" in capsys.readouterr().err
    (tmp_path / "bin").write_bytes(b"\x7fELF")
    monkeypatch.setenv("FUSEPROTO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cc.shutil, "which", lambda name: None)
    monkeypatch.setattr(cc.glob, "glob", lambda pattern: [])
    assert cc.main(["--binary", str(tmp_path / "bin")]) == 2
    err = capsys.readouterr().err
    assert "missing tool: objdump" in err and "llvm-symbolizer" in err
    assert cc.main(["--binary", str(tmp_path / "bin"), str(tmp_path / "none.edges")]) == 2
    assert "no such bitmap" in capsys.readouterr().err


# -- the real binary -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    inst = daemons.find("c-asan-cov")
    if inst is None:
        pytest.skip("c-asan-cov is not built (fuseproto daemons build c-asan-cov)")
    try:
        cc.find_tools()
    except cc.CeilingError as e:
        pytest.skip(str(e))
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSEPROTO_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield inst.binary, cc.guard_map(inst.binary)
    finally:
        mp.undo()


@pytest.mark.daemon
def test_real_guard_map_invariants(real):
    binary, guards = real
    objdump, _ = cc.find_tools()
    _, count = cc.guard_section(objdump, binary)
    assert [g.number for g in guards] == list(range(1, count + 1))
    assert count > 10000
    # Nearly every guard is named (a handful may sit in code without line info).
    assert sum(g.function != "?" for g in guards) >= 0.99 * count
    rows = cc.tally(guards, {})
    for part, row in rows.items():
        assert sum(row.get(k, 0) for k in cc.KINDS) == row["guards"], part
    assert sum(r["guards"] for p, r in rows.items() if p != "all") == rows["all"]["guards"]
    # Both daemon parts have normal and sanitizer blocks; QEMU's QAPI is linked in.
    for part in cc.DAEMON_PARTS:
        assert rows[part]["normal"] > 1000 and rows[part]["sanitizer"] > 100, part
    assert any(p.startswith("qemu qapi") for p in rows)
    by_fn = {}
    for g in guards:
        by_fn.setdefault(g.function, set()).add(g.part)
    assert by_fn["lo_lookup"] == {"virtiofsd"}
    assert by_fn["vu_dispatch"] == {"libvhost-user"}
    assert by_fn["fuse_session_process_buf_int"] == {"virtiofsd"}


@pytest.mark.daemon
def test_real_one_lit_guard_counts_in_its_part(real):
    _, guards = real
    g = next(x for x in guards if x.function == "vu_dispatch" and x.kind == "normal")
    bitmap = bytearray(1 << 16)
    bitmap[g.number - 1] = 1
    rows = cc.tally(guards, {"one": cc.lit(guards, bytes(bitmap))})
    assert rows["libvhost-user"].get("one") == 1 and rows["all"].get("one") == 1
    assert all(r.get("one", 0) == 0 for p, r in rows.items()
               if p not in ("libvhost-user", "all"))
    for r in rows.values():
        assert r.get("one", 0) <= r.get("normal", 0) <= r["guards"]


@pytest.mark.daemon
def test_real_map_is_cached_by_hash(real, monkeypatch):
    binary, guards = real
    path = cc.cache_path(binary)
    assert path.exists() and path.parent.name == "coverage-ceiling"

    def no_build(_binary):
        raise AssertionError("rebuilt despite the cache")

    monkeypatch.setattr(cc, "build_map", no_build)
    assert cc.guard_map(binary) == guards
