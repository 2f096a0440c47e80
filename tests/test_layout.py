"""structs.py against the real ``linux/fuse.h``: sizeof, field names, order and offsets.

The C facts come from a program generated from the header's own struct and field names
(``tests/fuseh.py``) and compiled with gcc against

* the newest ``linux-libc-dev`` of Debian sid/experimental (``newest_header()``, the
  protocol the schema describes, 7.46): every struct must match exactly, and there must
  be 76 of them at 7.46;
* this machine's ``/usr/include/linux/fuse.h`` (7.38 on Debian 12): structs it lacks are
  not compared; structs in both must have the same sizeof, and every old field must
  either sit at the same offset with the same size, or have been *carved*: its bytes are
  now exactly tiled by newer fields (a field added out of padding, or renamed). Carved
  fields are reported by name and must be in ``KNOWN_CARVED`` -- anything else fails,
  so a real layout break cannot pass as a carve.

Plus the schema's own properties: byte-exact roundtrip of every struct (and compat
prefix) for random bytes, and the fast path equal to the construct.
"""

from __future__ import annotations

import functools
from pathlib import Path

import fuseh
import pytest
from construct import Construct
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseproto.wire import structs

INSTALLED = Path("/usr/include/linux/fuse.h")

# (struct, old field) -> the newer fields that now occupy its bytes, each with the minor
# that introduced it (0: the rest of the old field, still there).
KNOWN_CARVED: dict[tuple[str, str], dict[str, int]] = {
    # 7.40: padding became the passthrough backing id.
    ("fuse_open_out", "padding"): {"backing_id": 40},
    # 7.40/7.43: max_stack_depth and request_timeout came out of unused[].
    ("fuse_init_out", "unused"): {"max_stack_depth": 40, "request_timeout": 43, "unused": 0},
}


def expected_carves(minor: int) -> dict[tuple[str, str], tuple[str, ...]]:
    """What a header of ``minor`` shows as carved: the fields added after it (a 7.38
    header: both init_out fields and backing_id; Debian 13's 7.41: request_timeout)."""
    out = {}
    for key, fields in KNOWN_CARVED.items():
        newer = tuple(f for f, since in fields.items() if since == 0 or since > minor)
        if any(fields[f] for f in newer):
            out[key] = newer
    return out


def _sub_layout(con: Construct) -> list[tuple[str, int, int]]:
    out, off = [], 0
    for sc in con.subcons:
        n = sc.sizeof()
        out.append((sc.name, off, n))
        off += n
    return out


def schema_fields(name: str) -> list[tuple[str, int, int]]:
    """(field, offset, size) from the construct, members of unnamed struct types dotted."""
    out: list[tuple[str, int, int]] = []
    con = structs.ALL[name]
    by_name = {sc.name: sc for sc in con.subcons}
    for fname, off, size in structs.layout(name):
        out.append((fname, off, size))
        sub = by_name[fname]
        # Only the anonymous struct type of the union is listed field by field in C
        # facts; named nested structs are compared as structs of their own.
        if f"{name}.{fname}" in structs.DECLS:
            out += [(f"{fname}.{n}", off + o, s) for n, o, s in _sub_layout(sub.subcon)]
    return out


def compare(facts: fuseh.Facts, *, exact: bool) -> tuple[list[str], dict]:
    """Mismatches between C facts and the schema, and (for not exact) the carved fields."""
    problems: list[str] = []
    carved: dict[tuple[str, str], tuple[str, ...]] = {}
    for name, c_size in facts.sizeof.items():
        if name not in structs.ALL:
            problems.append(f"{name}: missing from structs")
            continue
        con = structs.ALL[name]
        if con.sizeof() != c_size:
            problems.append(f"{name}: sizeof {con.sizeof()} != C {c_size}")
        ours = schema_fields(name)
        c_fixed = [f for f in facts.fields[name] if f[2] is not None]
        for fname, off, size in facts.fields[name]:
            # A flexible array member is not in the construct: it must be in FLEX, at the end.
            flex_ok = structs.FLEX.get(name, (None,))[0] == fname and off == con.sizeof()
            if size is None and not flex_ok:
                problems.append(f"{name}.{fname}: flexible member at {off} not in FLEX")
        if exact:
            if [f[0] for f in ours] != [f[0] for f in c_fixed]:
                problems.append(
                    f"{name}: fields {[f[0] for f in ours]} != C {[f[0] for f in c_fixed]}"
                )
            for ours_f, c_f in zip(ours, c_fixed, strict=False):
                if ours_f != c_f:
                    problems.append(f"{name}: {ours_f} != C {c_f}")
            continue
        for fname, off, size in c_fixed:
            if (fname, off, size) in ours:
                continue
            tiles = [f for f in ours if off <= f[1] and f[1] + f[2] <= off + size and "." not in f[0]]
            if sum(f[2] for f in tiles) == size and tiles and tiles[0][1] == off:
                carved[(name, fname)] = tuple(f[0] for f in tiles)
            else:
                problems.append(f"{name}.{fname}: C ({off}, {size}) matches no schema fields")
    return problems, carved


@pytest.fixture(scope="module")
def newest_facts(tmp_path_factory: pytest.TempPathFactory) -> tuple[fuseh.Header, fuseh.Facts]:
    from fuseproto.daemons import newest_header

    path = newest_header()
    h = fuseh.parse_header(path)
    return h, fuseh.compile_facts(h, tmp_path_factory.mktemp("newest"), fuseh.include_root(path))


@pytest.fixture(scope="module")
def installed_facts(tmp_path_factory: pytest.TempPathFactory) -> tuple[fuseh.Header, fuseh.Facts]:
    if not INSTALLED.exists():
        pytest.skip("no /usr/include/linux/fuse.h (apt install linux-libc-dev)")
    h = fuseh.parse_header(INSTALLED)
    return h, fuseh.compile_facts(h, tmp_path_factory.mktemp("installed"))


@pytest.mark.network
def test_newest_header_layout(newest_facts: tuple[fuseh.Header, fuseh.Facts]) -> None:
    h, facts = newest_facts
    # The parser found what gcc found (gcc would not compile a misread name).
    assert set(h.structs) == set(facts.sizeof)
    if facts.minor == 46:
        assert len(facts.sizeof) == 76
        assert set(facts.sizeof) == set(structs.ALL)
    problems, _ = compare(facts, exact=True)
    assert problems == []


@pytest.mark.network
def test_newest_header_dirent_macros(newest_facts: tuple[fuseh.Header, fuseh.Facts]) -> None:
    from fuseproto.wire import constants

    _, facts = newest_facts
    assert facts.dirent_size
    for n, size in facts.dirent_size.items():
        assert constants.FUSE_DIRENT_SIZE(n) == size
        assert constants.FUSE_DIRENTPLUS_SIZE(n) == facts.direntplus_size[n]


def test_installed_header_layout(installed_facts: tuple[fuseh.Header, fuseh.Facts]) -> None:
    h, facts = installed_facts
    assert set(h.structs) == set(facts.sizeof)
    problems, carved = compare(facts, exact=False)
    assert problems == []
    # Report precisely; fail on any carve nobody has looked at.
    assert carved == expected_carves(facts.minor), f"fields carved since 7.{facts.minor}"


def test_expected_carves_follow_the_header_minor() -> None:
    assert expected_carves(38) == {
        ("fuse_open_out", "padding"): ("backing_id",),
        ("fuse_init_out", "unused"): ("max_stack_depth", "request_timeout", "unused"),
    }
    assert expected_carves(41) == {("fuse_init_out", "unused"): ("request_timeout", "unused")}
    assert expected_carves(46) == {}


def test_schema_shape() -> None:
    assert len(structs.ALL) == 76
    assert set(structs.FAST) == set(structs.ALL)
    for name, con in structs.ALL.items():
        assert getattr(structs, name) is con
        assert structs.FAST[name].size == con.sizeof()
        # The flat fast path's field list is the construct's field list.
        if structs.FAST[name].flat:
            assert list(structs.FAST[name].fields) == [sc.name for sc in con.subcons]
    assert structs.FLEX == {"fuse_dirent": ("name", "char"), "fuse_supp_groups": ("groups", "u32")}


def _strip(obj: object) -> object:
    """A Container as plain data, keeping "__x" header fields that Container.__eq__ skips."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "_io"}
    if isinstance(obj, list):
        return [_strip(x) for x in obj]
    return obj


@functools.cache
def _compiled(name: str) -> Construct:
    return structs.ALL[name].compile()


@pytest.mark.parametrize("name", sorted(structs.ALL))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_roundtrip(name: str, data: st.DataObject) -> None:
    con = structs.ALL[name]
    raw = data.draw(st.binary(min_size=con.sizeof(), max_size=con.sizeof()))
    parsed = con.parse(raw)
    assert con.build(parsed) == raw
    fl = structs.FAST[name]
    fast_parsed = fl.parse(b"\0" * 3 + raw, 3)
    assert _strip(fast_parsed) == _strip(parsed)
    assert fl.build(parsed) == raw
    assert con.build(fast_parsed) == raw
    # construct's compiled form is a third implementation: it must agree too.
    compiled = _compiled(name)
    assert _strip(compiled.parse(raw)) == _strip(parsed)
    assert compiled.build(parsed) == raw


def _is_prefix(part: object, whole: object) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(_is_prefix(v, whole[k]) for k, v in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and part == whole[: len(part)]
    return part == whole


COMPAT_CASES = [(n, s) for n, sizes in structs.COMPAT_SIZES.items() for s in sizes]


@pytest.mark.parametrize(("name", "size"), COMPAT_CASES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_compat_roundtrip(name: str, size: int, data: st.DataObject) -> None:
    con = structs.compat(name, size)
    assert con.sizeof() == size
    raw = data.draw(st.binary(min_size=size, max_size=size))
    parsed = con.parse(raw)
    assert con.build(parsed) == raw
    full = structs.ALL[name].parse(raw + bytes(structs.ALL[name].sizeof() - size))
    # A compat prefix parses to the same values as the full struct's first bytes.
    assert _is_prefix(_strip(parsed), _strip(full))
    fl = structs.fast(name, size)
    assert fl.size == size
    assert _strip(fl.parse(raw)) == _strip(parsed)
    assert fl.build(parsed) == raw


def test_compat_prefixes() -> None:
    from fuseproto.wire import constants as c

    assert [sc.name for sc in structs.compat("fuse_entry_out", c.FUSE_COMPAT_ENTRY_OUT_SIZE)
            .subcons[-1].subcon.subcons][-1] == "rdev"
    assert [sc.name for sc in structs.compat("fuse_init_out", c.FUSE_COMPAT_22_INIT_OUT_SIZE)
            .subcons][-1] == "max_write"
    assert [sc.name for sc in structs.compat("fuse_init_in", 8).subcons] == ["major", "minor"]
    assert structs.compat("fuse_write_in", c.FUSE_COMPAT_WRITE_IN_SIZE).sizeof() == 24
    assert structs.compat("fuse_in_header", 40) is structs.fuse_in_header
    for bad in (("fuse_entry_out", 121), ("fuse_init_out", 65), ("fuse_init_out", -1)):
        with pytest.raises(ValueError):
            structs.compat(*bad)
    with pytest.raises(KeyError):
        structs.compat("fuse_nonexistent", 8)
