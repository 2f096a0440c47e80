"""What a finding leaves beside its reproducer: a standalone script and a pcap.

:func:`write_script` writes ``<name>.repro.py``: a Python program that needs only the
fuseproto package (no ``fuseproto`` command). It embeds the reproducer document (a
virtiofsd reproducer: daemon, its environment, the requests; an in-process target's
input as hex) and hands it to :func:`fuseproto.fuzz.verdict.reproducer_main`, which starts
the same daemon (or ``--daemon SPEC``), replays the exchange and prints ``reproduced`` or
``not reproduced``; the exit status says the same (1 reproduced, 0 not, 2 could not run:
so ``git bisect run`` reads "the bug is here" as "bad").

:func:`write_pcap` writes ``<name>.pcap``: every message the daemon exchanged since its
start (setup included), in fuseproto's capture format (:mod:`fuseproto.capture.frames`:
the same pseudo-header the recorder and the dissectors use), requests of the reproducer
flagged INJECTED, and the finding as a closing ANNOTATION record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..capture.frames import CaptureRecorder, Direction

__all__ = ["write_script", "write_pcap", "script_text", "input_doc", "SCRIPT_SUFFIX",
           "PCAP_SUFFIX"]

SCRIPT_SUFFIX = ".repro.py"
PCAP_SUFFIX = ".pcap"

_SCRIPT = '''#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
{about}
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads({doc})

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
'''


def input_doc(target: str, data: bytes, kind: str, signature: str) -> dict[str, Any]:
    """The reproducer document of an in-process target's input (the script embeds it)."""
    return {"target": target, "input_hex": data.hex(),
            "finding": {"kind": kind, "signature": signature}}


def script_text(doc: dict[str, Any], summary: str = "") -> str:
    """The reproducer script for ``doc`` (see the module docstring)."""
    f = doc.get("finding") or {}
    lines = [f"{doc.get('target', '?')}"
             + (f" on {doc['daemon']}" if doc.get("daemon") else "")
             + f": {f.get('kind', '?')}", f"signature: {f.get('signature', '?')}"]
    if summary:
        lines.append(summary)
    about = "\n".join("# " + " ".join(line.split())[:300] for line in lines)
    return _SCRIPT.format(about=about, doc=repr(json.dumps(doc, separators=(",", ":"))))


def write_script(path: str | os.PathLike[str], doc: dict[str, Any], summary: str = "") -> Path:
    """Write the reproducer script for ``doc`` to ``path`` (executable)."""
    p = Path(path)
    p.write_text(script_text(doc, summary))
    p.chmod(0o755)
    return p


def write_pcap(path: str | os.PathLike[str], exchange: Iterable[tuple[int, int, bytes, int]],
               *, injected: Iterable[bytes] = (), note: str | None = None) -> Path:
    """Write ``exchange`` ((direction, queue, bytes, time_ns) per message, in order) as a
    pcap; requests whose bytes are in ``injected`` get the INJECTED flag, ``note`` (the
    finding) closes the file as an ANNOTATION record."""
    marked = set(injected)
    last = 0
    with CaptureRecorder(path) as rec:
        for direction, queue, data, ts in exchange:
            rec(direction, queue, data, ts,
                injected=direction == Direction.REQUEST and data in marked)
            last = ts
        if note:
            rec.annotate(0, note, last or None)
    return Path(path)
