#!/usr/bin/env python3
"""What changed upstream: the pinned ``linux/fuse.h`` against the newest one.

The layout and constant tests compare fuseproto's schema with one *pinned* header
(``tests/fuseh.py``: a ``linux-libc-dev`` version and its fuse.h digest), so a new
upstream header never breaks ``make test``. This command is the other half: it fetches
the newest ``linux-libc-dev`` of Debian sid/experimental (through fuseproto's private apt
configuration, never the system's sources), compiles both headers with gcc and prints
every difference -- the protocol minor, new or removed structs, sizeof changes, fields
added, removed, moved or resized, new or changed opcodes, notify codes, flags and
``#define``s. ``--header PATH`` compares with any other ``.../linux/fuse.h`` instead (the
directory above ``linux/`` goes first on gcc's include path: a kernel tree's
``include/uapi/linux/fuse.h`` works as it is).

Exit status: 0 when the headers describe the same protocol, 1 when something changed
(each change on a line), 2 when a header could not be fetched or compiled.

    .venv/bin/python scripts/compare_fuse_header.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fuseh  # noqa: E402

from fuseproto.daemons import newest_header  # noqa: E402
from fuseproto.errors import DaemonError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--header", type=Path,
                    help="compare with this fuse.h instead of the newest linux-libc-dev")
    args = ap.parse_args(argv)
    try:
        pinned = fuseh.pinned_header()
        other = args.header or newest_header()
        with tempfile.TemporaryDirectory(prefix="fuseh-") as tmp:
            old = fuseh.header_facts(pinned, Path(tmp) / "pinned")
            new = fuseh.header_facts(other, Path(tmp) / "other")
    except (DaemonError, AssertionError, OSError) as e:
        print(f"compare_fuse_header: {e}", file=sys.stderr)
        return 2
    print(f"pinned: linux-libc-dev {fuseh.PINNED_LIBC_DEV} (7.{old[1].minor}) {pinned}")
    print(f"other:  7.{new[1].minor} {other}")
    changes = fuseh.diff_facts(old, new)
    if not changes:
        print("no change: the pinned header and this one describe the same protocol")
        return 0
    print(f"{len(changes)} change(s) from the pinned header:")
    for line in changes:
        print(f"  {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
