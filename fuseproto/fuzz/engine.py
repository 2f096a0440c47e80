"""A small in-process fuzz loop (no libFuzzer): for tests, replay and quick runs.

It mutates with the target's structure-aware mutator and a byte mutator, keeps inputs
that reach a new *outcome class* (which decoder path accepted or rejected them, and why)
in its corpus, and records every finding in a :class:`~.findings.FindingStore`. The
coverage-guided runs are the atheris harnesses in ``fuzz/`` (see :mod:`.campaign`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from . import mutate
from .findings import Finding, FindingStore, classify_exception
from .targets import STRUCTURED_SHARE, Target

__all__ = ["LoopStats", "run_loop"]


@dataclass
class LoopStats:
    target: str
    iterations: int = 0
    seconds: float = 0.0
    corpus_size: int = 0
    outcome_classes: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds else 0.0


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    return f"{type(exc).__name__}:{getattr(exc, 'path', '')}"


def run_loop(
    target: Target,
    *,
    iterations: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    store: FindingStore | None = None,
    stop_on_finding: bool = False,
    max_size: int = 1 << 14,
) -> LoopStats:
    """Fuzz ``target`` for ``iterations`` inputs or ``seconds`` (whichever ends first).
    The oracle starts as in a fresh process (``target.fresh``): a run with a seed checks
    the same whatever ran before it."""
    if iterations is None and seconds is None:
        raise ValueError("give iterations or seconds")
    if target.fresh is not None:
        target.fresh()
    rng = random.Random(seed)
    corpus = [data for _name, data in target.corpus()]
    seen: set[str] = set()
    stats = LoopStats(target.name)
    t0 = time.monotonic()
    deadline = t0 + seconds if seconds is not None else None
    i = 0
    while (iterations is None or i < iterations) and (
        deadline is None or (i & 15) or time.monotonic() < deadline
    ):
        i += 1
        # The seeds themselves first, then mutants.
        if i <= len(corpus) and i <= (iterations or i):
            data = corpus[i - 1]
        else:
            parent = rng.choice(corpus)
            if rng.random() < STRUCTURED_SHARE:
                data = target.mutate(parent, max_size, rng)
            else:
                data = mutate.mutate_bytes(parent, rng, max_size)
        try:
            target.check(data)
            outcome = "ok"
        except (Exception, AssertionError) as e:  # noqa: B014 -- a finding, whatever it is
            kind, sig, summary = classify_exception(e)
            f = Finding(target.name, kind, sig, summary)
            if store is not None:
                f = store.add(f, data)
            if all(x.signature != f.signature for x in stats.findings):
                stats.findings.append(f)
            if stop_on_finding:
                break
            continue
        key = _outcome(None) + str(len(data) // 64)
        if outcome == "ok" and key not in seen and len(corpus) < 5000:
            seen.add(key)
            corpus.append(data)
    stats.iterations = i
    stats.seconds = time.monotonic() - t0
    stats.corpus_size = len(corpus)
    stats.outcome_classes = len(seen)
    return stats
