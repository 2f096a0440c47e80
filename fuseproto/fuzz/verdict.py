"""Which replay judges a reproducer: one table for ``fuseproto fuzz replay`` and the
standalone ``.repro.py`` scripts (:mod:`.reproducer`).

A reproducer names its target; :func:`verdict` hands it to that target's replay (a
virtiofsd request list: :func:`.replay.daemon_verdict`; descriptor chains, control-plane
programs and C-vs-Rust programs: their own modules; an in-process target's input:
:func:`.replay.input_verdict`) and returns its verdict (``reproduced``, ``expected``,
``seen``, what came back). :func:`reproducer_main` is what a script runs: it prints
``reproduced`` or ``not reproduced`` and exits 1 / 0 (2: it could not run).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import daemons
from ..errors import FuseprotoError
from .replay import Exchange, daemon_verdict, input_verdict
from .reproducer import write_pcap

__all__ = ["verdict", "reproducer_main", "DAEMON_TARGETS"]

#: Targets whose reproducers are JSON documents replayed against live daemons.
DAEMON_TARGETS = ("virtiofsd", "chains", "control_plane", "diff")


def verdict(target: str, doc: dict[str, Any] | None = None, data: bytes = b"", *,
            spec: str | None = None, kind: str | None = None, hang_timeout: float = 0.5,
            exchange: Exchange | None = None) -> dict[str, Any]:
    """Replay a reproducer of ``target``: ``doc`` (a JSON reproducer) or ``data`` (an
    in-process target's input); ``spec``/``kind``: another daemon than the one it names;
    ``exchange`` receives a virtiofsd replay's messages."""
    if doc is not None and "input_hex" in doc:
        expected = (doc.get("finding") or {}).get("signature")
        return input_verdict(target, bytes.fromhex(doc["input_hex"]), expected)
    if target not in DAEMON_TARGETS:
        return input_verdict(target, data)
    assert doc is not None
    if target == "diff":  # a divergence: the program on both daemons again
        from .diff import diff_verdict

        return diff_verdict(doc, (spec, None), hang_timeout=hang_timeout)
    if target == "chains":
        from .chains import chains_verdict

        return chains_verdict(doc, spec, kind)
    if target == "control_plane":
        from .control_plane import control_verdict

        return control_verdict(doc, spec, kind)
    return daemon_verdict(doc, spec, kind, hang_timeout=hang_timeout, exchange=exchange)


def reproducer_main(doc: dict[str, Any], argv: list[str] | None = None) -> int:
    """A reproducer script's main (:mod:`.reproducer`): replay ``doc``, print
    ``reproduced`` or ``not reproduced``; exit status 1 / 0, 2 when it could not run."""
    p = argparse.ArgumentParser(description="Replay a fuseproto fuzz finding.")
    p.add_argument("--daemon", default=None, metavar="c|rust|VARIANT|PATH",
                   help="daemon findings: replay against this daemon (default: the one "
                   "the finding was seen on; for diff, the first of the pair)")
    p.add_argument("--virtiofsd-kind", choices=daemons.KINDS, default=None,
                   help="which daemon a PATH is (default: detected)")
    p.add_argument("--hang-timeout", type=float, default=0.5)
    p.add_argument("--pcap", default=None, metavar="FILE",
                   help="virtiofsd findings: write the replay's exchange as a pcap")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = p.parse_args(argv)
    target = str(doc.get("target", ""))
    exchange: Exchange = []
    try:
        v = verdict(target, doc, spec=args.daemon, kind=args.virtiofsd_kind,
                    hang_timeout=args.hang_timeout, exchange=exchange)
        if args.pcap:
            expected = (doc.get("finding") or {}).get("signature")
            write_pcap(args.pcap, exchange, note=f"replay of {expected}")
    except (FuseprotoError, OSError, KeyError, ValueError) as e:
        print(f"could not run: {type(e).__name__}: {e}")
        return 2
    if args.json:
        print(json.dumps(v, indent=1, default=str))
    elif v["reproduced"]:
        print(f"reproduced: {v.get('kind')}: {v.get('summary', '')}")
    else:
        seen = v.get("seen") or []
        print("not reproduced" + (f" (saw instead: {', '.join(seen)})" if seen else ""))
    return 1 if v["reproduced"] else 0
