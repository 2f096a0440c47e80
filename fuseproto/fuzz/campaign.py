"""The fuzz campaign: every target for a slice of time, then one report.

In-process targets (wire_decode, session, dax when present) run as atheris harnesses
(``fuzz/<target>_fuzzer.py``, coverage-guided libFuzzer, one subprocess at a time owned
and stopped by PID) or, with ``engine="inprocess"`` or without the ``fuzz/`` directory, in
the pure-Python loop of :mod:`.engine`. libFuzzer stops at the first crash; the campaign
then classifies the crash input by replaying it (``fuseproto fuzz replay --json`` in a
subprocess, so a planted fault from ``FUSEPROTO_FUZZ_INJECT`` applies the same way) and
restarts the harness with the time left. The virtiofsd target runs against each daemon
given: single hostile requests (:func:`.virtiofsd.fuzz_daemon`), then stateful sequence
programs (:func:`.sequences.fuzz_sequences`, ``sequence_share`` of its time), then each of
its new findings is minimized (:func:`.shrink.shrink_file`, ``<name>.min.json``) within
``shrink_share`` of its time. With ``jobs`` > 1 every target runs that many jobs at once
(:mod:`.jobs`: libFuzzer ``-fork`` for atheris, parallel workers with their own daemons
for the rest), merged into the same store, corpus and report. Both loops of one daemon
share one edge map (:mod:`.coverage`): with an instrumented daemon (the default C daemon is ``c-asan-cov``
when it is built: :func:`.harness.default_daemons`) new edges steer them and the result
carries the edges over time; with ``corpus_root`` the inputs that lit new edges are kept
in ``<corpus_root>/virtiofsd-{requests,sequences}-<daemon>/`` and loaded by the next run.
Below the FUSE layer, each daemon also gets hostile descriptor chains (:mod:`.chains`)
and vhost-user control-plane programs (:mod:`.control_plane`): results ``chains`` and
``control_plane``, engine ``below-fuse``.

Everything lands under ``out``: ``report.md`` and ``report.json`` (see :mod:`.report`),
``findings/<target>[-<daemon>]/`` (one reproducer per signature), ``corpus/<target>/``
(what libFuzzer added), ``logs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import engine, jobs, registry
from .corpus import default_dir
from .coverage import CoverageMap
from .findings import Finding, FindingStore
from .forensics import slow_note

__all__ = ["TargetResult", "CampaignResult", "run_campaign", "fuzz_dir", "run_atheris"]

_MAX_RESTARTS = 8


def fuzz_dir() -> Path | None:
    """The repository's ``fuzz/`` directory (None when fuseproto is installed elsewhere)."""
    d = Path(__file__).resolve().parents[2] / "fuzz"
    return d if (d / "wire_decode_fuzzer.py").exists() else None


def corpus_dir(target: str) -> Path | None:
    d = Path(__file__).resolve().parents[2] / "corpus" / target
    return d if d.is_dir() else None


@dataclass
class TargetResult:
    target: str
    engine: str  # atheris | inprocess | daemon
    daemon: str | None = None
    daemon_version: str | None = None
    daemon_binary: str | None = None
    seconds: float = 0.0
    iterations: int = 0
    coverage: dict[str, int] = field(default_factory=dict)  # cov/ft, or outcome_classes
    corpus_size: int = 0
    findings: list[str] = field(default_factory=list)  # signatures
    restarts: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    sequences: dict[str, Any] = field(default_factory=dict)  # virtiofsd sequence mode
    # virtiofsd on an instrumented daemon: guards, edges, timeline [[s, edges]], feedback,
    # variant, instrumentation, and the edges when sequences started (``requests_edges``)
    edges: dict[str, Any] = field(default_factory=dict)
    # the diff target (a daemon pair): programs, answers compared, every divergence seen
    # with its count and, when the allow-list explains it, the reason (DiffStats.summary)
    diff: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_second"] = round(self.per_second, 1)
        return d


@dataclass
class CampaignResult:
    out: str
    started: float
    seconds: float = 0.0
    results: list[TargetResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    command: str = ""
    python: str = field(default_factory=lambda: sys.version.split()[0])
    atheris: str | None = None
    known_sources: list[str] = field(default_factory=list)  # the known-set (.known) read
    known_count: int = 0  # signatures in it


# -- atheris subprocesses -------------------------------------------------------------------

_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_PROGRESS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")
# libFuzzer -fork's own progress lines: "#12727: cov: 1496 ft: 1292 corp: 111 exec/s 2887"
_FORK_PROGRESS = re.compile(r"#(\d+): cov: (\d+) ft: (\d+) corp: (\d+) exec/s (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class AtherisRun:
    returncode: int
    executions: int
    cov: int
    ft: int
    corpus: int
    exec_per_sec: int
    artifact: str | None
    log: str
    # Every crash/timeout/oom input the run left (under -fork, several jobs may crash).
    artifacts: list[str] = field(default_factory=list)


# libFuzzer's RSS reading is ru_maxrss, which Linux carries over from the process that
# forked and exec'ed it: a fuzzer started from a large process (a test runner) would start
# "over the limit". The budget is 2 GiB above what this process has used.
RSS_BUDGET_MB = 2048


def _rss_limit_mb() -> int:
    import resource

    return RSS_BUDGET_MB + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def run_atheris(target: str, seconds: float, workdir: Path, *, seed: int = 0,
                extra: list[str] | None = None, env: dict[str, str] | None = None,
                n_jobs: int = 1) -> AtherisRun:
    """One libFuzzer run of ``fuzz/<target>_fuzzer.py`` for up to ``seconds`` (with
    ``n_jobs`` > 1: under ``-fork=n_jobs``)."""
    fz = fuzz_dir()
    if fz is None:
        raise FileNotFoundError("fuzz/ directory not found next to the fuseproto package")
    work_corpus = workdir / "corpus" / target
    artifacts = workdir / "artifacts" / target
    logs = workdir / "logs"
    for d in (work_corpus, artifacts, logs):
        d.mkdir(parents=True, exist_ok=True)
    argv = jobs.libfuzzer_argv(fz / f"{target}_fuzzer.py", n_jobs, workdir, extra)
    argv += [f"-max_total_time={max(1, int(seconds))}", "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/", f"-seed={seed or 1}", "-timeout=10",
            f"-rss_limit_mb={_rss_limit_mb()}", "-max_len=8192"]
    dic = fz / f"{target}.dict"
    if dic.exists():
        argv.append(f"-dict={dic}")
    argv += list(extra or [])
    argv.append(str(work_corpus))
    seeds_dir = corpus_dir(target)
    if seeds_dir is not None:
        argv.append(str(seeds_dir))
    log_path = logs / f"{target}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            proc.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            # Ours, by PID (its own session: libFuzzer forks nothing, but be sure).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    prog = _PROGRESS.findall(text)
    last = prog[-1] if prog else ("0", "0", "0", "0")
    fork = _FORK_PROGRESS.findall(text)
    if fork:
        # The parent's totals (stat:: lines, if any, are one job's).
        n, cov, ft, corp, eps = (int(x) for x in fork[-1])
        stats["number_of_executed_units"] = max(n, stats.get("number_of_executed_units", 0))
        stats["average_exec_per_sec"] = eps
        last = (str(n), str(cov), str(ft), str(corp))
    art = _ARTIFACT.findall(text)
    left = sorted(str(p) for p in artifacts.iterdir()
                  if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    return AtherisRun(
        returncode=proc.returncode,
        executions=stats.get("number_of_executed_units", int(last[0])),
        cov=int(last[1]), ft=int(last[2]), corpus=int(last[3]),
        exec_per_sec=stats.get("average_exec_per_sec", 0),
        artifact=art[-1] if art else (left[0] if left else None),
        log=str(log_path),
        artifacts=left or ([art[-1]] if art else []),
    )


def classify_artifact(path: str, target: str, env: dict[str, str] | None = None
                      ) -> dict[str, Any]:
    """Replay a crash input in a fresh interpreter; its JSON verdict."""
    proc = subprocess.run(
        [sys.executable, "-m", "fuseproto", "fuzz", "replay", path, "--target", target,
         "--json"], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})})
    try:
        verdict: dict[str, Any] = json.loads(proc.stdout)
        return verdict
    except json.JSONDecodeError:
        return {"reproduced": False, "error": (proc.stderr or proc.stdout)[-500:]}


def _atheris_target(name: str, seconds: float, out: Path, store: FindingStore, seed: int,
                    env: dict[str, str] | None, n_jobs: int = 1) -> TargetResult:
    res = TargetResult(name, "atheris")
    if n_jobs > 1:
        res.notes.append(f"libFuzzer -fork={n_jobs}")
    t0 = time.monotonic()
    deadline = t0 + seconds
    runs = 0
    while True:
        left = deadline - time.monotonic()
        if left < 1 or runs > _MAX_RESTARTS:
            break
        run = run_atheris(name, left, out, seed=seed + runs, env=env, n_jobs=n_jobs)
        runs += 1
        res.iterations += run.executions
        res.coverage = {"cov": max(res.coverage.get("cov", 0), run.cov),
                        "ft": max(res.coverage.get("ft", 0), run.ft)}
        res.corpus_size = max(res.corpus_size, run.corpus)
        if run.artifact is None:
            if run.returncode not in (0, None):
                res.error = f"libFuzzer exited {run.returncode} without an artifact ({run.log})"
            break
        for artifact in run.artifacts or [run.artifact]:
            data = Path(artifact).read_bytes()
            verdict = classify_artifact(artifact, name, env)
            if verdict.get("reproduced"):
                f = Finding(name, verdict["kind"], verdict["signature"], verdict["summary"])
            else:
                f = Finding(name, "exception", f"unreproduced:{name}",
                            f"libFuzzer reported a crash that did not replay: "
                            f"{verdict.get('error', '')[:200]}")
            f.evidence = {"libfuzzer_log": run.log}
            f = store.add(f, data)
            with contextlib.suppress(OSError):
                os.unlink(artifact)
            if f.signature not in res.findings:
                res.findings.append(f.signature)
        res.restarts += 1
    res.seconds = time.monotonic() - t0
    return res


def _inprocess_target(name: str, seconds: float, store: FindingStore, seed: int,
                      n_jobs: int = 1, out: Path | None = None) -> TargetResult:
    if n_jobs > 1:
        st = jobs.run_inprocess(name, jobs=n_jobs, seconds=seconds, store=store, seed=seed,
                                workdir=out)
    else:
        st = engine.run_loop(registry.get_target(name), seconds=seconds, seed=seed,
                             store=store)
    res = TargetResult(name, "inprocess", seconds=st.seconds, iterations=st.iterations,
                       coverage={"outcome_classes": st.outcome_classes},
                       corpus_size=st.corpus_size,
                       findings=[f.signature for f in st.findings])
    return res


def _daemon_target(spec: str, seconds: float, store: FindingStore, seed: int,
                   hang_timeout: float, *, kind: str | None = None,
                   sequence_share: float = 0.3, shrink_share: float = 0.2,
                   log: Any = None, corpus_root: Path | None = None, n_jobs: int = 1,
                   out: Path | None = None, configs: bool = True) -> TargetResult:
    from . import harness

    say = log or (lambda msg: None)
    res = TargetResult("virtiofsd", "daemon", daemon=spec)
    try:
        inst = harness.resolve_installation(spec, kind)
    except Exception as e:  # noqa: BLE001 -- reported, the campaign goes on
        res.error = f"cannot get daemon {spec}: {e}"
        return res
    label = harness.daemon_label(spec, inst)
    res.daemon = label
    res.daemon_binary = inst.binary
    t0 = time.monotonic()
    before = set(store.by_signature)
    single = seconds * max(0.0, 1.0 - sequence_share - shrink_share)
    dirs = {m: (default_dir(f"virtiofsd-{m}", label, corpus_root) if corpus_root else None)
            for m in ("requests", "sequences")}
    if n_jobs > 1:
        res.notes.append(f"{n_jobs} daemons in parallel (one edge map each, edges united)")
    try:
        if n_jobs > 1:
            st, union = jobs.fuzz_live("requests", spec, jobs=n_jobs, seconds=single,
                                       store=store, label=label, seed=seed, kind=kind,
                                       hang_timeout=hang_timeout, workdir=out,
                                       corpus_dir=dirs["requests"], configs=configs)
            sq = None
            if sequence_share > 0:
                left = seconds * (1.0 - shrink_share) - (time.monotonic() - t0)
                sq, _ = jobs.fuzz_live("sequences", spec, jobs=n_jobs,
                                       seconds=max(1.0, left), store=store, label=label,
                                       seed=seed, kind=kind, hang_timeout=hang_timeout,
                                       workdir=out, corpus_dir=dirs["sequences"],
                                       prior_edges=union)
        else:
            st, sq = _daemon_loops(inst, single, seconds, t0, store, seed, hang_timeout,
                                   label, dirs, sequence_share, shrink_share, configs)
    except Exception as e:  # noqa: BLE001
        res.error = f"{type(e).__name__}: {e}"
        return res
    return _daemon_result(res, st, sq, store, before, inst, label, t0, seconds,
                          hang_timeout, say)


def _daemon_loops(inst: Any, single: float, seconds: float, t0: float, store: FindingStore,
                  seed: int, hang_timeout: float, label: str, dirs: dict[str, Path | None],
                  sequence_share: float, shrink_share: float, configs: bool = True
                  ) -> tuple[Any, Any]:
    """One daemon's single-request loop (``configs``: each daemon with options of its
    own, :mod:`.configs`), then its sequence programs (one edge map)."""
    from . import sequences, virtiofsd

    cov = CoverageMap.create()
    try:
        st = virtiofsd.fuzz_daemon(inst, seconds=single, store=store, seed=seed,
                                   hang_timeout=hang_timeout, label=label, coverage=cov,
                                   corpus_dir=dirs["requests"], configs=configs)
        sq = None
        if sequence_share > 0:
            left = seconds * (1.0 - shrink_share) - (time.monotonic() - t0)
            sq = sequences.fuzz_sequences(inst, seconds=max(1.0, left), store=store,
                                          seed=seed, hang_timeout=hang_timeout, label=label,
                                          coverage=cov, corpus_dir=dirs["sequences"])
    finally:
        cov.close()
    return st, sq


def _daemon_result(res: TargetResult, st: Any, sq: Any, store: FindingStore, before: set[str],
                   inst: Any, label: str, t0: float, seconds: float, hang_timeout: float,
                   say: Any) -> TargetResult:
    """Fill ``res`` from the loops' statistics, then minimize the new findings."""
    from . import shrink

    res.edges = dict(sq.edges if sq is not None and sq.edges else st.edges)
    if res.edges:
        res.edges["requests_edges"] = st.edges.get("edges", 0)
        res.edges["corpus_loaded"] = st.corpus_loaded + (sq.corpus_loaded if sq else 0)
        res.edges["corpus_saved"] = st.corpus_saved + (sq.corpus_saved if sq else 0)
        res.coverage["daemon_edges"] = res.edges["edges"]
    res.daemon_version = st.version
    res.iterations = st.requests + (sq.requests if sq else 0)
    classes = set(st.classes) | (set(sq.classes) if sq else set())
    res.coverage["outcome_classes"] = len(classes)
    res.corpus_size = st.corpus_size + (sq.corpus_size if sq else 0)
    sigs = [f.signature for f in st.findings]
    if sq is not None:
        sigs += [f.signature for f in sq.findings if f.signature not in sigs]
        res.sequences = dict(sq.sequences, seconds=round(sq.seconds, 1))
        res.sequences["new_findings"] = [s for s in sq.sequences["findings"]
                                         if s not in {f.signature for f in st.findings}]
        if sq.error:
            res.notes.append(f"sequences: {sq.error}")
    res.findings = sigs
    cfg = getattr(st, "configs", None) or {}
    if cfg.get("daemons"):  # the single-request loop's daemon configs (.configs)
        used, gains = cfg["daemons"], cfg.get("gains", {})
        res.notes.append(f"daemon configs: {len(used)} used over {sum(used.values())} "
                         "daemons; gained most: " + (", ".join(
                             f"{k} ({v:g})" for k, v in list(gains.items())[:4]) or "none"))
    res.restarts = max(0, st.starts - 1) + (sq.starts if sq else 0)
    res.error = st.error
    if st.skipped:
        res.notes.append(f"{st.skipped} mutants skipped (features muted after 5 repeats of a "
                         "known finding)")
    if sq is not None:
        st.add_slow(sq.slow)
    slow = st.slow_note()
    if slow:
        res.notes.append(slow)
    # Minimize this daemon's new findings, oldest first, within the budget left.
    new = [f for f in store if f.signature not in before and f.daemon == label
           and f.reproducer.endswith(".json")]
    # Findings only sequences reached first: their reproducers are the longest to read.
    seq_only = set(res.sequences.get("new_findings", ()))
    new.sort(key=lambda f: (f.signature not in seq_only, f.first_seen))
    shrink_end = t0 + seconds
    for i, f in enumerate(new):
        left = shrink_end - time.monotonic()
        if i == 0 and left < 1.0:
            # The loops overran their shares (a restart or a hang at the deadline, a loaded
            # machine): the first new finding still gets 1 s, so a campaign that found
            # something never reports it unminimized for want of a few hundred ms.
            res.notes.append(f"loops overran by {max(0.0, -left):.1f} s: 1 s to minimize "
                             "the first new finding")
            left = 1.0
            shrink_end = time.monotonic() + left
        if left < 0.5:
            res.notes.append(f"{len(new) - i} finding(s) not minimized: shrink budget spent")
            break
        try:
            # A fair share of what is left (at least 1 s, at most 5 s) for each of the rest.
            share = min(5.0, max(1.0, left / (len(new) - i)))
            sr = shrink.shrink_file(f.reproducer, inst, seconds=min(left, share),
                                    hang_timeout=hang_timeout)
        except Exception as e:  # noqa: BLE001 -- a failed shrink is a note, not an abort
            f.shrink = {"error": f"{type(e).__name__}: {e}"}
            continue
        f.shrink = sr.to_json() | {"notes": sr.notes}
        if sr.path:
            f.minimized = sr.path
            say(f"virtiofsd ({label}): shrunk {f.signature[:60]}: {sr.before} -> {sr.after} "
                "requests")
    res.seconds = time.monotonic() - t0
    return res


def diff_pair(specs: list[str], kind: str | None = None) -> tuple[str, str] | None:
    """The daemons the diff target compares, from a campaign's list: the first C-kind one
    without DAX (a DAX build answers mapping requests the Rust one cannot; else the
    packaged ``c``) and the first Rust-kind one; None when the list lacks either kind."""
    from .. import daemons as d
    from . import harness

    c_spec = rust_spec = None
    has_c = False
    for spec in specs:
        try:
            inst = harness.resolve_installation(spec, kind)
        except Exception:  # noqa: BLE001 -- the daemon's own target reports it
            continue
        if inst.kind == "c":
            has_c = True
            if c_spec is None and not d.has_dax(inst):
                c_spec = spec
        elif inst.kind == "rust" and rust_spec is None:
            rust_spec = spec
    if has_c and c_spec is None:
        c_spec = "c"
    return (c_spec, rust_spec) if c_spec and rust_spec else None


def _diff_target(pair: tuple[str, str], seconds: float, store: FindingStore, seed: int,
                 hang_timeout: float, kind: str | None = None, n_jobs: int = 1,
                 out: Path | None = None) -> TargetResult:
    """The differential target on ``pair`` (C-kind first) for ``seconds``."""
    from . import diff, harness

    res = TargetResult("diff", "daemon-pair")
    try:
        insts = [harness.resolve_installation(s, kind) for s in pair]
        labels = (harness.daemon_label(pair[0], insts[0]),
                  harness.daemon_label(pair[1], insts[1]))
        res.daemon = diff.diff_label(*labels)
        if n_jobs > 1:
            res.notes.append(f"{n_jobs} daemon pairs in parallel")
            st = jobs.run_loop_jobs("diff", list(pair), jobs=n_jobs, seconds=seconds,
                                    store=store, labels=list(labels), seed=seed, kind=kind,
                                    timeout=hang_timeout, workdir=out)
        else:
            st = diff.fuzz_diff(insts[0], insts[1], seconds=seconds, store=store, seed=seed,
                                hang_timeout=hang_timeout, labels=labels)
    except Exception as e:  # noqa: BLE001 -- reported, the campaign goes on
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.seconds = st.seconds
    res.iterations = st.requests
    res.daemon_version = " / ".join(st.versions)
    res.coverage = {"outcome_classes": st.outcome_classes}
    res.corpus_size = st.corpus_size
    res.restarts = st.starts
    res.findings = [f.signature for f in st.findings + st.daemon_findings]
    res.diff = st.summary()
    res.error = st.error
    return res


def _below_coverage(st: Any) -> dict[str, int]:
    """A below-FUSE loop's coverage figures: outcome classes, and daemon edges when seen."""
    return {"outcome_classes": len(st.classes),
            **({"daemon_edges": st.edges["edges"]} if st.edges else {})}


def _below_fuse_targets(spec: str, seconds: float, store: FindingStore, seed: int,
                        hang_timeout: float, kind: str | None, n_jobs: int = 1,
                        out_dir: Path | None = None) -> list[TargetResult]:
    """Below the FUSE layer on one daemon: hostile descriptor chains (:mod:`.chains`) for
    60% of ``seconds``, then control-plane programs (:mod:`.control_plane`)."""
    from . import chains, control_plane, harness

    try:
        inst = harness.resolve_installation(spec, kind)
    except Exception as e:  # noqa: BLE001 -- reported, the campaign goes on
        return [TargetResult("chains", "below-fuse", daemon=spec,
                             error=f"cannot get daemon {spec}: {e}")]
    label = harness.daemon_label(spec, inst)
    out = []
    def par(loop: str, share: float) -> Any:
        return jobs.run_loop_jobs(loop, [spec], jobs=n_jobs, seconds=share * seconds,
                                  store=store, labels=[label], seed=seed, kind=kind,
                                  timeout=hang_timeout, workdir=out_dir)

    st = par("chains", 0.6) if n_jobs > 1 else chains.fuzz_chains(
        inst, seconds=0.6 * seconds, store=store, seed=seed, label=label, timeout=hang_timeout)
    out.append(TargetResult(
        "chains", "below-fuse", daemon=label, daemon_binary=inst.binary, seconds=st.seconds,
        iterations=st.inputs, coverage=_below_coverage(st),
        findings=[f.signature for f in st.findings], restarts=max(0, st.starts - 1),
        error=st.error, notes=[f"{st.valid} of {st.inputs} chains were valid virtio",
                               *filter(None, [slow_note(st.slow)])],
        corpus_size=st.corpus_size, edges=st.edges))
    cs = par("control_plane", 0.4) if n_jobs > 1 else control_plane.fuzz_control_plane(
        inst, seconds=0.4 * seconds, store=store, seed=seed, label=label, timeout=hang_timeout)
    out.append(TargetResult(
        "control_plane", "below-fuse", daemon=label, daemon_binary=inst.binary,
        seconds=cs.seconds, iterations=cs.programs,
        coverage=_below_coverage(cs),
        findings=[f.signature for f in cs.findings], restarts=cs.programs, error=cs.error,
        notes=[f"{cs.served} programs ended with ring 1 set up and serving a FUSE INIT",
               *filter(None, [slow_note(cs.slow)])],
        corpus_size=cs.corpus_size, edges=cs.edges))
    return out


def run_campaign(
    out: str | os.PathLike[str],
    *,
    seconds: float = 120.0,
    daemons: list[str] | None = None,
    target_names: list[str] | None = None,
    engine_name: str = "atheris",
    seed: int = 0,
    hang_timeout: float = 0.5,
    env: dict[str, str] | None = None,
    command: str = "",
    log: Any = None,
    diff: bool = True,
    below_fuse: bool = True,
    daemon_kind: str | None = None,
    sequence_share: float = 0.3,
    shrink_share: float = 0.2,
    corpus_root: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    configs: bool = True,
    known: list[str | os.PathLike[str]] | None = None,
) -> CampaignResult:
    """Run the campaign and write the report; see the module docstring. ``diff``: also
    the differential target (:mod:`.diff`) when the daemons include a C and a Rust one
    (:func:`diff_pair`), for one time unit. ``below_fuse``: also the hostile descriptor
    chains (:mod:`.chains`) and the vhost-user control plane (:mod:`.control_plane`) on
    each daemon, half a unit per daemon between them. ``configs``: the single-request
    loop gives each daemon options of its own (:mod:`.configs`). ``daemons``
    default: :func:`.harness.default_daemons` (``c-dax-asan-cov`` for C when it is built).
    ``known``: findings of earlier runs (:mod:`.known`; None: ``corpus/findings`` when
    the working directory has it); each finding is marked new or known in the report."""
    from . import harness, report
    from .known import default_paths, load

    seen_before = load(default_paths() if known is None else known)

    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    store = FindingStore(out_path / "findings")
    daemons = harness.default_daemons() if daemons is None else daemons
    croot = Path(corpus_root) if corpus_root is not None else None
    names = target_names or registry.available_targets()
    use_atheris = engine_name == "atheris" and fuzz_dir() is not None
    # Time shares: each in-process target 1, each daemon 1.5 (restarts are slow), the
    # diff of a C and a Rust daemon 1.
    pair = diff_pair(daemons, daemon_kind) if diff else None
    units = len(names) + (2.0 if below_fuse else 1.5) * len(daemons) + (1 if pair else 0)
    unit = seconds / units if units else 0
    result = CampaignResult(str(out_path), time.time(), command=command)
    try:
        from importlib.metadata import version

        import atheris  # noqa: F401

        result.atheris = version("atheris")
    except Exception:  # noqa: BLE001
        use_atheris = False
    t0 = time.monotonic()
    say = log or (lambda msg: None)
    for name in names:
        say(f"{name}: {'atheris' if use_atheris else 'in-process'} for {unit:.0f} s")
        if use_atheris:
            r = _atheris_target(name, unit, out_path, store, seed, env, jobs)
        else:
            r = _inprocess_target(name, unit, store, seed, jobs, out_path)
        say(f"{name}: {r.iterations} inputs, {r.per_second:.0f}/s, {len(r.findings)} findings")
        result.results.append(r)
    for spec in daemons:
        say(f"virtiofsd ({spec}): {1.5 * unit:.0f} s")
        r = _daemon_target(spec, 1.5 * unit, store, seed, hang_timeout, kind=daemon_kind,
                           sequence_share=sequence_share, shrink_share=shrink_share, log=say,
                           corpus_root=croot, n_jobs=jobs, out=out_path, configs=configs)
        say(f"virtiofsd ({spec}): {r.iterations} requests, {r.per_second:.0f}/s, "
            f"{len(r.findings)} findings, {r.restarts} restarts"
            + (f", {r.edges['edges']} of {r.edges['guards']} daemon edges" if r.edges else "")
            + (f", error: {r.error}" if r.error else ""))
        result.results.append(r)
        if below_fuse:
            say(f"chains and control plane ({spec}): {0.5 * unit:.0f} s")
            for r in _below_fuse_targets(spec, 0.5 * unit, store, seed, hang_timeout,
                                         daemon_kind, jobs, out_path):
                say(f"{r.target} ({r.daemon}): {r.iterations} inputs, {r.per_second:.0f}/s, "
                    f"{len(r.findings)} findings" + (f", error: {r.error}" if r.error else ""))
                result.results.append(r)
    if pair is not None:
        say(f"diff ({pair[0]} vs {pair[1]}): {unit:.0f} s")
        r = _diff_target(pair, unit, store, seed, hang_timeout, daemon_kind, jobs, out_path)
        say(f"diff ({r.daemon}): {r.diff.get('programs', 0)} programs, "
            f"{len(r.diff.get('divergences', {}))} kinds of divergence, "
            f"{len(r.diff.get('findings', []))} not allow-listed"
            + (f", error: {r.error}" if r.error else ""))
        result.results.append(r)
    result.seconds = time.monotonic() - t0
    result.findings = list(store)
    result.known_sources, result.known_count = seen_before.sources, len(seen_before)
    seen_before.mark(result.findings)
    report.write(result, out_path)
    return result
