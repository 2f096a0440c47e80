"""constants.py against the real ``linux/fuse.h``: every enum member and ``#define``.

Names come from the header text (``tests/fuseh.py``), values from gcc compiling that
header, so the test needs no list of its own. Every name must exist in
``fuseproto.wire.constants`` with the compiler's value, except ``EXCLUDED``. The headers:
the pinned one the schema describes (``fuseh.pinned_header()``, 7.46; what a newer one
would change is ``scripts/compare_fuse_header.py``'s report) and this machine's own.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from pathlib import Path

import fuseh
import pytest

from fuseproto.wire import constants

INSTALLED = Path("/usr/include/linux/fuse.h")

# Header names deliberately absent from constants.py (the include guard and macros with
# arguments are never collected by the parser):
EXCLUDED = {
    # A sentinel "one past the last notify code" of headers up to 7.39; it moves with
    # every new code, so it is not a protocol value.
    "FUSE_NOTIFY_CODE_MAX",
}
# Names whose value is, by definition, the header's own version.
VERSIONED = {"FUSE_KERNEL_MINOR_VERSION"}


def _check(h: fuseh.Header, facts: fuseh.Facts, *, pinned: bool) -> None:
    missing = sorted(n for n in facts.values if n not in EXCLUDED and not hasattr(constants, n))
    assert missing == []
    wrong = {
        n: (int(getattr(constants, n)), v)
        for n, v in facts.values.items()
        if n not in EXCLUDED
        and not (n in VERSIONED and not pinned)
        and int(getattr(constants, n)) != v
    }
    assert wrong == {}
    # Each C enum is an IntEnum of the same name holding the same members.
    for enum_name, members in h.enums.items():
        cls = getattr(constants, enum_name)
        assert issubclass(cls, IntEnum)
        for m in members:
            if m not in EXCLUDED:
                assert cls[m] == facts.values[m], (enum_name, m)


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> tuple[fuseh.Header, fuseh.Facts]:
    return fuseh.header_facts(fuseh.pinned_header(), tmp_path_factory.mktemp("pinned"))


@pytest.mark.network
def test_pinned_header_constants(pinned: tuple[fuseh.Header, fuseh.Facts]) -> None:
    h, facts = pinned
    assert facts.minor == fuseh.PINNED_MINOR
    assert len(facts.values) > 150  # the parser found the header's names
    _check(h, facts, pinned=True)


@pytest.mark.network
def test_no_invented_names(pinned: tuple[fuseh.Header, fuseh.Facts]) -> None:
    # Every enum/flag member of constants.py is a name of the header.
    _, facts = pinned
    ours = {n for cls in constants.ENUMS for n in cls.__members__}
    assert sorted(ours - set(facts.values)) == []


def test_installed_header_constants(tmp_path: Path) -> None:
    if not INSTALLED.exists():
        pytest.skip("no /usr/include/linux/fuse.h (apt install linux-libc-dev)")
    h = fuseh.parse_header(INSTALLED)
    _check(h, fuseh.compile_facts(h, tmp_path), pinned=False)


def test_flags_keep_unknown_bits() -> None:
    for cls in constants.ENUMS:
        if issubclass(cls, IntFlag):
            assert int(cls(1 << 62 | 1)) == 1 << 62 | 1
    f = constants.InitFlags.from_words(0xFFFFFFFF, 0x80000001)
    assert f.words() == (0xFFFFFFFF, 0x80000001)
    assert constants.InitFlags.FUSE_SECURITY_CTX.words() == (0, 1)


def test_plain_values() -> None:
    c = constants
    assert (c.FUSE_KERNEL_VERSION, c.FUSE_KERNEL_MINOR_VERSION) == (7, 46)
    assert c.FUSE_KERNEL_MINOR_VERSION == fuseh.PINNED_MINOR  # the schema claims the pin
    assert c.FUSE_REMOVEMAPPING_MAX_ENTRY == 256
    assert c.fuse_opcode.FUSE_SETUPMAPPING == 48 and c.FUSE_REMOVEMAPPING == 49
    assert c.CUSE_INIT == 4096
    assert c.opcode_or_int(7) == 7 and c.opcode_or_int(1) is c.FUSE_LOOKUP
    assert c.notify_code_or_int(9) is c.FUSE_NOTIFY_PRUNE
    assert [c.FUSE_DIRENT_ALIGN(x) for x in (0, 1, 8, 9)] == [0, 8, 8, 16]
