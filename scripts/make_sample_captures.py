#!/usr/bin/env python3
"""Write the sample captures under corpus/captures/ (deterministic: same bytes every run).

    .venv/bin/python scripts/make_sample_captures.py [OUTDIR]

* ``session.pcap``: a DAX-enabled virtio-fs session (fuseproto.capture.samples).
* ``session-errors.pcap``: the same with a corrupted request, a reply nobody asked for
  and a record whose pseudo-header is bad inserted, for the decoder's error reporting.

tests/test_capture_decode.py checks that the committed files equal what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuseproto.capture.samples import write_sample, write_sample_with_errors  # noqa: E402


def main(argv: list[str]) -> int:
    out = (
        Path(argv[1])
        if len(argv) > 1
        else Path(__file__).resolve().parent.parent / "corpus" / "captures"
    )
    out.mkdir(parents=True, exist_ok=True)
    n = write_sample(str(out / "session.pcap"))
    m = write_sample_with_errors(str(out / "session-errors.pcap"))
    print(f"{out}/session.pcap: {n} records; session-errors.pcap: {m} records")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
