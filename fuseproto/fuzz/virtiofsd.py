"""The virtiofsd target's single-request loop: structure-aware hostile requests to a real
daemon, one at a time, through :class:`~fuseproto.fuzz.harness.DaemonHarness`.

:func:`fuzz_daemon` mutates the seed requests (with the daemon's own node ids and file
handles), keeps inputs that reach a new outcome class, mutes features that keep hitting
a known finding, and starts a fresh daemon after a crash, exit or hang.
:func:`record_finding` (also used by :mod:`.sequences`) files a finding under its
signature (:func:`.forensics.outcome_signature`) with a reproducer: a JSON document with
the daemon kind, version and binary, the setup (``setup_mode: none`` for a program) and
the requests sent since that daemon's setup (hex; a shared ``batch`` id: same kick),
replayable with ``fuseproto fuzz replay`` (:mod:`.replay`) and minimized with
``fuseproto fuzz shrink`` (:mod:`.shrink`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import daemons
from ..errors import DaemonError, TransportError
from ..wire import structs
from ..wire.constants import opcode_name
from . import mutate
from .findings import Finding, FindingStore
from .forensics import FATAL, Outcome, outcome_signature
from .harness import DaemonHarness

__all__ = ["DaemonStats", "fuzz_daemon", "record_finding"]

_IN = structs.FAST["fuse_in_header"]


@dataclass
class DaemonStats:
    daemon: str
    version: str = ""
    requests: int = 0
    seconds: float = 0.0
    starts: int = 0
    outcome_classes: int = 0
    corpus_size: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    skipped: int = 0  # mutants not sent: they hit a muted feature
    error: str | None = None
    sequences: dict[str, Any] = field(default_factory=dict)  # sequence mode's summary

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def fuzz_daemon(
    installation: daemons.Installation,
    *,
    seconds: float,
    store: FindingStore,
    seed: int = 0,
    hang_timeout: float = 0.5,
    max_requests: int | None = None,
    on_send: Callable[[DaemonHarness, bytes], None] | None = None,
    label: str | None = None,
) -> DaemonStats:
    """Fuzz one daemon for ``seconds``: structure-aware mutants of the seed requests, one at
    a time; inputs reaching a new outcome class join the corpus; findings go to ``store``."""
    label = label or installation.kind
    rng = random.Random(seed)
    stats = DaemonStats(label)
    t0 = time.monotonic()
    deadline = t0 + seconds
    with DaemonHarness(installation, hang_timeout=hang_timeout, on_send=on_send) as h:
        stats.version = h.version()
        corpus: list[tuple[bytes, int]] = [(r, 0) for r in h.seed_requests()]
        pending_seeds = list(corpus)
        pools = h.pools
        # Features (a short request, an opcode) that keep triggering an already known
        # finding are mostly skipped, so the time goes to finding something new.
        repeats: dict[tuple[str, str], int] = {}
        muted: set[str] = set()
        while time.monotonic() < deadline and (max_requests is None
                                               or stats.requests < max_requests):
            if pending_seeds:
                data, variant = pending_seeds.pop(0)
            else:
                parent, variant = rng.choice(corpus)
                if rng.random() < 0.15:
                    variant = rng.randrange(5)
                data = mutate.mutate_request(parent, rng, minor=h.minor, flags=h.flags,
                                             pools=pools, max_size=1 << 16)
                if muted and _feature(data) in muted and rng.random() < 0.9:
                    stats.skipped += 1
                    continue
            out = h.send(data, variant)
            stats.requests += 1
            new = out.cls not in stats.classes
            stats.classes[out.cls] = stats.classes.get(out.cls, 0) + 1
            if out.finding is not None:
                f = record_finding(stats, store, h, label, out)
                key = (f.signature, _feature(data))
                repeats[key] = repeats.get(key, 0) + 1
                if repeats[key] >= 5:
                    muted.add(key[1])
            elif new and len(corpus) < 4000:
                corpus.append((data, variant))
            # A fresh daemon after it died, hung, or was left unusable by INIT/DESTROY.
            if out.finding in FATAL or (
                out.cls.startswith(("FUSE_INIT:", "FUSE_DESTROY:")) and not h.healthy()
            ):
                try:
                    h.start()
                except (DaemonError, TransportError) as e:
                    stats.error = f"restart failed: {e}"
                    break
                pools = h.pools
        stats.starts = h.starts
        stats.corpus_size = len(corpus)
    stats.seconds = time.monotonic() - t0
    stats.outcome_classes = len(stats.classes)
    return stats


def _feature(data: bytes) -> str:
    if len(data) < _IN.size:
        return "short"
    return opcode_name(_IN.parse(data, 0)["opcode"])


def record_finding(stats: DaemonStats, store: FindingStore, h: DaemonHarness, label: str,
                   out: Outcome, program: list[dict[str, Any]] | None = None) -> Finding:
    """File ``out`` (a finding on daemon ``label``) in ``store`` with a reproducer of the
    requests ``h`` sent since its daemon's setup (and the ``program`` in sequence mode);
    the first of each signature is added to ``stats.findings``. Returns the stored
    finding."""
    sig = outcome_signature(label, out) or ""
    f = Finding("virtiofsd", out.finding or "", sig, out.detail[:300], daemon=label,
                evidence=dict(out.evidence))
    repro = {
        "target": "virtiofsd",
        "daemon": label,
        "daemon_binary": h.installation.binary,
        "daemon_version": stats.version,
        "finding": {"kind": out.finding, "signature": sig, "detail": out.detail},
        "setup": "fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/"
                 "empty, OPEN file O_RDWR, OPENDIR dir)",
        "requests": list(h.history),
    }
    if not h.setup:
        repro["setup_mode"] = "none"
        repro["setup"] = ("none: a sequence program (fuseproto.fuzz.sequences), INIT is its "
                          "first request; requests with the same batch id share one kick")
    if program is not None:
        repro["program"] = program
        f.evidence.setdefault("mode", "sequence")
    f = store.add(f, repro, suffix=".json")
    if all(x.signature != f.signature for x in stats.findings):
        stats.findings.append(f)
    return f
