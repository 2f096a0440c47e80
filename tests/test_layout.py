"""structs.py against the real ``linux/fuse.h``: sizeof, field names, order and offsets.

The C facts come from a program generated from the header's own struct and field names
(``tests/fuseh.py``) and compiled with gcc against

* the *pinned* ``linux-libc-dev`` (``fuseh.pinned_header()``: one package version and the
  SHA-256 of its fuse.h, protocol 7.46, the one the schema describes): every struct must
  match exactly, and there are 76 of them. A newer upstream header changes nothing here;
  ``scripts/compare_fuse_header.py`` reports what it would change;
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
import hashlib
from pathlib import Path
from types import SimpleNamespace

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
def pinned_facts(tmp_path_factory: pytest.TempPathFactory) -> tuple[fuseh.Header, fuseh.Facts]:
    return fuseh.header_facts(fuseh.pinned_header(), tmp_path_factory.mktemp("pinned"))


@pytest.fixture(scope="module")
def installed_facts(tmp_path_factory: pytest.TempPathFactory) -> tuple[fuseh.Header, fuseh.Facts]:
    if not INSTALLED.exists():
        pytest.skip("no /usr/include/linux/fuse.h (apt install linux-libc-dev)")
    h = fuseh.parse_header(INSTALLED)
    return h, fuseh.compile_facts(h, tmp_path_factory.mktemp("installed"))


@pytest.mark.network
def test_pinned_header_layout(pinned_facts: tuple[fuseh.Header, fuseh.Facts]) -> None:
    h, facts = pinned_facts
    # The parser found what gcc found (gcc would not compile a misread name).
    assert set(h.structs) == set(facts.sizeof)
    assert facts.minor == fuseh.PINNED_MINOR == 46
    assert len(facts.sizeof) == 76
    assert set(facts.sizeof) == set(structs.ALL)
    problems, _ = compare(facts, exact=True)
    assert problems == []


@pytest.mark.network
def test_pinned_header_dirent_macros(pinned_facts: tuple[fuseh.Header, fuseh.Facts]) -> None:
    from fuseproto.wire import constants

    _, facts = pinned_facts
    assert facts.dirent_size
    for n, size in facts.dirent_size.items():
        assert constants.FUSE_DIRENT_SIZE(n) == size
        assert constants.FUSE_DIRENTPLUS_SIZE(n) == facts.direntplus_size[n]


@pytest.mark.network
def test_pinned_header_is_the_pinned_bytes() -> None:
    path = fuseh.pinned_header()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fuseh.PINNED_FUSE_H_SHA256


@pytest.mark.network
def test_upstream_diff_reports_what_changed(
    pinned_facts: tuple[fuseh.Header, fuseh.Facts],
    installed_facts: tuple[fuseh.Header, fuseh.Facts],
) -> None:
    """The report of scripts/compare_fuse_header.py, from an older header to the pinned
    one: what 7.39..7.46 added must show up, and a header compared with itself is quiet."""
    assert fuseh.diff_facts(pinned_facts, pinned_facts) == []
    old = installed_facts[1]
    report = fuseh.diff_facts(installed_facts, pinned_facts)
    assert f"FUSE_KERNEL_MINOR_VERSION: 7.{old.minor} -> 7.46" in report
    if old.minor < 39:
        assert "fuse_opcode member FUSE_STATX = 0x34: new" in report
        assert "struct fuse_statx_in: new (24 bytes)" in report
        assert "struct fuse_open_out: new field backing_id at 12 (4 bytes)" in report
        assert "struct fuse_open_out: field padding removed" in report
    # A changed value and a moved field are named with both sides.
    h, f = pinned_facts
    moved = fuseh.Facts(
        f.minor, dict(f.sizeof, fuse_attr_out=f.sizeof["fuse_attr_out"] + 8),
        dict(f.fields, fuse_attr_out=[(n, o + 8 * (n == "attr"), s)
                                      for n, o, s in f.fields["fuse_attr_out"]]),
        dict(f.values, FUSE_ROOT_ID=2), f.dirent_size, f.direntplus_size,
    )
    assert fuseh.diff_facts(pinned_facts, (h, moved)) == [
        "struct fuse_attr_out: sizeof 104 -> 112",
        "struct fuse_attr_out: field attr at 16 (88 bytes) -> at 24 (88 bytes)",
        "#define FUSE_ROOT_ID: 0x1 -> 0x2",
    ]


class _FakeArchive:
    """Stands in for PrivateApt in test_pinned_header_*: offers ``headers`` (version ->
    fuse.h bytes) and counts network use."""

    def __init__(self, root: Path, headers: dict[str, bytes]):
        self.root, self.headers, self.network = root, headers, 0

    def update(self) -> None:
        self.network += 1

    def versions(self, package: str) -> list[str]:
        return list(self.headers)

    def download(self, package: str, version: str) -> Path:
        self.network += 1
        return Path(version)


def _fake_archive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, headers: dict[str, bytes]):
    fake = _FakeArchive(tmp_path, headers)
    monkeypatch.setattr(fuseh, "PrivateApt", SimpleNamespace(for_suites=lambda *s, cache_dir=None: fake))

    def extract(deb: Path, dest: Path) -> Path:
        (dest / "usr/include/linux").mkdir(parents=True)
        (dest / "usr/include/linux/fuse.h").write_bytes(fake.headers[str(deb)])
        return dest

    monkeypatch.setattr(fuseh, "extract", extract)
    return fake


def test_pinned_header_is_found_by_its_digest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good, other = b"/* the pinned header */\n", b"/* 7.47 */\n"
    monkeypatch.setattr(fuseh, "PINNED_FUSE_H_SHA256", hashlib.sha256(good).hexdigest())
    # The pinned version offered: taken, then used from the cache with no network.
    fake = _fake_archive(monkeypatch, tmp_path / "a", {"7.47-1": other, fuseh.PINNED_LIBC_DEV: good})
    path = fuseh.pinned_header()
    assert path.read_bytes() == good and fuseh.PINNED_LIBC_DEV in str(path)
    before = fake.network
    assert fuseh.pinned_header() == path and fake.network == before
    # The pinned version gone: another version with the same bytes will do, a newer
    # header will not.
    fake = _fake_archive(monkeypatch, tmp_path / "b", {"7.47-1": other, "7.46-2": good})
    assert fuseh.pinned_header().read_bytes() == good
    _fake_archive(monkeypatch, tmp_path / "c", {"7.47-1": other})
    with pytest.raises(AssertionError, match=r"pinned fuse.h 7\.46.*compare_fuse_header"):
        fuseh.pinned_header()


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
