"""The virtiofsd target's single-request loop: structure-aware hostile requests to a real
daemon, each judged on its own, through :class:`~fuseproto.fuzz.harness.DaemonHarness`.

:func:`fuzz_daemon` mutates the seed requests (with the daemon's own node ids and file
handles), mutes features that keep bringing a known finding back (:mod:`.mute`), and
starts a fresh daemon after a crash, exit or hang. Requests go one per kick, or a few
per kick to a daemon that serves its queue one at a time in order (:func:`batch_size`:
the Rust daemon without a thread pool; each still judged as alone). What it keeps depends on what it can see: with an
instrumented daemon (``c-asan-cov``: the edge map of :mod:`.coverage` shows guards) an
input that lights new daemon edges joins the corpus with energy in proportion to them
(:func:`.corpus.energy_for`), and so does one that reaches a new outcome class; with a
plain daemon, the outcome class alone steers (opcode x errno x reply size, or the
failure). ``feedback="outcome"`` forces the latter even when edges are measured (the
benchmark's control). Inputs that lit new edges are written to ``corpus_dir`` and read
back at the next start.
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
from pathlib import Path
from typing import Any

from .. import daemons
from ..daemons.options import DEFAULT
from ..errors import DaemonError, TransportError
from ..wire import structs
from ..wire.constants import fuse_opcode
from . import mutate
from .configs import ConfigChooser
from .corpus import Corpus, energy_for
from .coverage import CoverageMap
from .findings import Finding, FindingStore
from .forensics import FATAL, Outcome, count_slow, outcome_signature, slow_note
from .harness import DaemonHarness, instrumented
from .mute import Muter, header_features, request_features

__all__ = ["DaemonStats", "fuzz_daemon", "record_finding", "FEEDBACKS", "EdgeFeedback",
           "batch_size", "IN_ORDER_BATCH"]

#: ``auto``: daemon edges when the daemon is instrumented, else outcome classes;
#: ``coverage`` / ``outcome``: that one (``coverage`` on a plain daemon is ``outcome``).
FEEDBACKS = ("auto", "coverage", "outcome")

_IN = structs.FAST["fuse_in_header"]
# Opcodes a batch ends at: what follows one may meet a daemon it left unusable.
_ENDS_BATCH = frozenset({int(fuse_opcode.FUSE_INIT), int(fuse_opcode.FUSE_DESTROY)})
#: Requests put in flight on one kick for a daemon that serves its queue one request at a
#: time, in order (see batch_size): the daemon answers them without waiting for us in
#: between (Rust, a loaded 2-core machine: ~600-800 -> ~1,000-1,400 requests/s).
IN_ORDER_BATCH = 4
#: With ``configs``: a daemon that lives this many requests makes way for the next config
#: (a warm spare is waiting, so the switch costs little).
CONFIG_PERIOD = 400


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
    skipped: int = 0  # mutants not sent: they hit a muted feature (.mute)
    starts_unusable: int = 0  # restarts after an INIT/DESTROY left the daemon unusable
    error: str | None = None
    sequences: dict[str, Any] = field(default_factory=dict)  # sequence mode's summary
    # The daemon's edges (EdgeFeedback.summary()): guards, edges, timeline, feedback;
    # empty when the daemon is not instrumented.
    edges: dict[str, Any] = field(default_factory=dict)
    seed_edges: int = 0  # daemon edges once the seeds (and saved inputs) had all run
    corpus_loaded: int = 0  # inputs read back from the corpus directory
    corpus_saved: int = 0  # inputs written to it
    configs: dict[str, Any] = field(default_factory=dict)  # ConfigChooser.summary()
    # Replies that came after the hang timeout, within its grace (DaemonHarness.slow):
    # opcode name -> [count, longest wait in s]. Not findings; the report lists them.
    slow: dict[str, list[float]] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def add_slow(self, slow: dict[str, list[float]]) -> None:
        """Count another run's slow replies (:attr:`DaemonHarness.slow`) in with these."""
        for op, (n, worst) in slow.items():
            count_slow(self.slow, op, int(n), worst)

    def slow_note(self) -> str | None:
        """The report's line on slow replies (None: there were none)."""
        return slow_note(self.slow)


class EdgeFeedback:
    """The daemon edge map as the loops use it: after each input, how many edges were
    new (0 when the daemon is not instrumented or feedback is ``outcome``-only:
    ``steering`` is False then, but the edges are still counted for the report).
    Owns the map when it made it (``close``)."""

    def __init__(self, installation: daemons.Installation, coverage: CoverageMap | None,
                 feedback: str = "auto"):
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback: one of {', '.join(FEEDBACKS)}, not {feedback!r}")
        self.feedback = feedback
        self._own = coverage is None
        self.map = coverage if coverage is not None else CoverageMap.create()
        self.installation = installation
        self.measured = instrumented(installation)  # refined once a daemon has started

    def started(self) -> None:
        """After the first daemon start: a map with guards is an instrumented daemon."""
        self.measured = self.measured or self.map.instrumented

    @property
    def steering(self) -> bool:
        return self.measured and self.feedback != "outcome"

    def new_edges(self) -> int:
        return self.map.update() if self.measured else 0

    def summary(self) -> dict[str, Any]:
        if not self.measured:
            return {}
        self.map.sample()
        return dict(self.map.summary(), feedback="coverage" if self.steering else "outcome",
                    variant=self.installation.variant,
                    instrumentation=self.installation.instrumentation)

    def close(self) -> None:
        if self._own:
            self.map.close()


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
    coverage: CoverageMap | None = None,
    feedback: str = "auto",
    corpus_dir: str | Path | None = None,
    spare: bool = True,
    configs: bool = False,
    mute: bool = True,
    batch: int | None = None,
) -> DaemonStats:
    """Fuzz one daemon for ``seconds``: structure-aware mutants of the seed requests (and
    of ``corpus_dir``'s saved inputs), one at a time; inputs lighting new daemon edges or
    reaching a new outcome class join the corpus (see the module docstring); findings go
    to ``store``. ``coverage``: the edge map to use (shared with other loops; default:
    a fresh one for this run; each daemon gets its own map beside it, one seen set).
    ``spare``: restarts take a daemon made in the background (:mod:`.spare`; a DAX
    daemon's spares each have a window of their own). ``configs``: each daemon started gets a configuration of its own
    (:mod:`.configs`: the default, or options chosen by what configs gained: new edges,
    or new outcome classes with ``feedback="outcome"``); a finding's reproducer names
    its daemon's config. ``mute=False``: no mutant is skipped for its muted features
    (:mod:`.mute`; the benchmark's control). ``batch``: requests put in flight on one
    kick (default: :func:`batch_size`'s choice for each daemon)."""
    label = label or installation.kind
    rng = random.Random(seed)
    stats = DaemonStats(label)
    t0 = time.monotonic()
    deadline = t0 + seconds
    cdir = Path(corpus_dir) if corpus_dir is not None else None
    fb = EdgeFeedback(installation, coverage, feedback)
    chooser = ConfigChooser(installation.kind, seed) if configs else None
    try:
        with DaemonHarness(installation, hang_timeout=hang_timeout, on_send=on_send,
                           coverage=fb.map, spare=spare, config=chooser) as h:
            fb.started()
            stats.version = h.version()
            corpus: Corpus[tuple[bytes, int]] = Corpus(4000)
            for r in h.seed_requests():
                corpus.add((r, 0))
            for raw in Corpus.load(cdir, ".bin", limit=2000):
                if len(raw) > 1 and corpus.add((raw[1:], raw[0] % 5)):
                    stats.corpus_loaded += 1
            pending_seeds = list(corpus)
            pools, born = h.pools, 0  # born: requests sent before this daemon started
            # Features (a short request, an opcode, a malformation) that keep bringing
            # back a known finding are mostly skipped (.mute), so the time goes to
            # finding something new rather than to restarts.
            muter = Muter() if mute else Muter(min_repeats=1 << 62)
            kicks = 0
            while time.monotonic() < deadline and (max_requests is None
                                                   or stats.requests < max_requests):
                # The next inputs, up to ``batch`` of them (one kick); a batch ends at an
                # INIT or DESTROY (what follows one may meet a daemon it left unusable).
                room = batch_size(h, fb.steering, batch)
                if max_requests is not None:
                    room = min(room, max_requests - stats.requests)
                todo: list[tuple[bytes, int, set[str]]] = []
                while len(todo) < room:
                    if pending_seeds:
                        data, variant = pending_seeds.pop(0)
                        features = request_features(data, variant, h.minor, h.flags)
                    else:
                        parent, variant = corpus.choose(rng)
                        if rng.random() < 0.15:
                            variant = rng.randrange(5)
                        data = mutate.mutate_request(parent, rng, minor=h.minor, flags=h.flags,
                                                     pools=pools, max_size=1 << 16)
                        # One draw: against the header's features (no decoding), then all.
                        u = rng.random()
                        head = header_features(data, variant)
                        if muter.skip(head, u):
                            stats.skipped += 1
                            continue
                        features = request_features(data, variant, h.minor, h.flags, head,
                                                    h.decode(data))
                        if muter.skip(features, u):
                            stats.skipped += 1
                            continue
                    todo.append((data, variant, features))
                    if len(data) >= _IN.size and _IN.parse(data, 0)["opcode"] in _ENDS_BATCH:
                        break
                if len(todo) == 1:
                    outs = [h.send(todo[0][0], todo[0][1])]
                else:
                    outs = h.send_many([(d, v) for d, v, _ in todo], batch=kicks)
                kicks += 1
                # Each request that got an outcome (a batch stops at a crash, exit or hang).
                for k, ((data, variant, features), out) in enumerate(zip(todo, outs,
                                                                          strict=False)):
                    muter.sent_with(features)
                    stats.requests += 1
                    period_over = chooser is not None and stats.requests - born >= CONFIG_PERIOD
                    if k == len(outs) - 1 or period_over:
                        # Escape canaries, once per kick (the daemon has served the whole
                        # kick by the time its first reply is judged) and before a restart.
                        for esc in h.check_canaries(out.cls.split(":", 1)[0]):
                            record_finding(stats, store, h, label, esc)
                    new = out.cls not in stats.classes
                    stats.classes[out.cls] = stats.classes.get(out.cls, 0) + 1
                    edges = fb.new_edges()
                    if chooser is not None:
                        chooser.credit(h.config, edges if fb.steering else int(new))
                    if not pending_seeds and not stats.seed_edges:
                        stats.seed_edges = fb.map.seen if fb.measured else 0
                    if out.finding is not None:
                        known = outcome_signature(label, out) in store.by_signature
                        record_finding(stats, store, h, label, out)
                        back = out.evidence.get("culprit_back", 1)
                        if back != 1 and back <= len(h.history):
                            # An earlier request (a reply-less one the daemon died on) did it.
                            item = h.history[-back]
                            features = request_features(bytes.fromhex(item["hex"]),
                                                        item["variant"], h.minor, h.flags)
                        if "FUSE_INTERRUPT" in (out.evidence.get("previous") or ()):
                            # A stale INTERRUPT breaks whatever request follows it (the C
                            # daemon answers it in the next one's buffer): mute its cause too.
                            features.add("FUSE_INTERRUPT")
                        muter.repeat(features, known)
                    elif fb.steering and edges:
                        if corpus.add((data, variant), energy_for(edges)) and \
                                Corpus.save(cdir, bytes([variant]) + data, ".bin"):
                            stats.corpus_saved += 1
                    elif new:
                        corpus.add((data, variant))
                    # A fresh daemon after it died, hung, or was left unusable by INIT or
                    # DESTROY; with configs also after CONFIG_PERIOD requests.
                    unusable = out.cls.startswith(("FUSE_INIT:", "FUSE_DESTROY:")) \
                        and not h.healthy()
                    if out.finding in FATAL or unusable or period_over:
                        if unusable and out.finding is None:  # each costs a restart too
                            muter.repeat(features, stats.starts_unusable > 0)
                            stats.starts_unusable += 1
                        try:
                            h.start()
                            pools, born = h.pools, stats.requests
                        except (DaemonError, TransportError) as e:
                            stats.error = f"restart failed: {e}"
                        break
                if stats.error:
                    break
            stats.starts = h.starts
            stats.add_slow(h.slow)
            stats.corpus_size = len(corpus)
            if chooser is not None:
                stats.configs = chooser.summary()
        stats.edges = fb.summary()
        if stats.edges:
            stats.edges["seed_edges"] = stats.seed_edges
    finally:
        fb.close()
    stats.seconds = time.monotonic() - t0
    stats.outcome_classes = len(stats.classes)
    return stats


def batch_size(h: DaemonHarness, steering: bool, batch: int | None = None) -> int:
    """How many requests the loop puts in flight on one kick to ``h``'s daemon: ``batch``
    when given; else :data:`IN_ORDER_BATCH` for a Rust daemon without a thread pool (it
    serves its queue in order, one request at a time: a batch is the same requests one
    after another, each judged as alone, and a panic is the first request left
    unanswered), 1 for the others (the C daemon's thread pool serves a batch at once:
    which request crashed it would be a guess) and whenever daemon edges steer (they
    are read after each input: a batch would credit them to its first)."""
    if batch is not None:
        return max(1, batch)
    if h.kind != "rust" or steering:
        return 1
    args = h.config.args if h.config is not None else ()
    return 1 if any(a.startswith("--thread-pool-size") for a in args) else IN_ORDER_BATCH


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
        "daemon_variant": h.installation.variant,
        "daemon_instrumentation": h.installation.instrumentation,
        "finding": {"kind": out.finding, "signature": sig, "detail": out.detail},
        "setup": "fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/"
                 "empty, OPEN file O_RDWR, OPENDIR dir)",
        "requests": list(h.history),
    }
    if h.env:
        repro["daemon_env"] = dict(h.env)  # what the daemon was started with, over ours
    if h.config is not None and h.config.choice != DEFAULT[h.config.kind].choice:
        repro["daemon_config"] = h.config.to_json()  # its options (fuseproto.daemons.options)
    if not h.setup:
        repro["setup_mode"] = "none"
        repro["setup"] = ("none: a sequence program (fuseproto.fuzz.sequences), INIT is its "
                          "first request; requests with the same batch id share one kick")
    if program is not None:
        repro["program"] = program
        f.evidence.setdefault("mode", "sequence")
    f = store.add(f, repro, suffix=".json", exchange=list(h.exchange))
    if all(x.signature != f.signature for x in stats.findings):
        stats.findings.append(f)
    return f
