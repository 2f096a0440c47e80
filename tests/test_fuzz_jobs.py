"""``--jobs N``: libFuzzer -fork for the atheris targets, parallel workers (each with its
own daemons) for the live and in-process loops; one store, one corpus, one result.
Every run here is N=2 and bounded by seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuseproto.fuzz import campaign, jobs
from fuseproto.fuzz.findings import FindingStore

TESTS = os.path.dirname(os.path.abspath(__file__))
needs_fuzz_dir = pytest.mark.skipif(campaign.fuzz_dir() is None,
                                    reason="needs the fuzz/ directory")


def test_libfuzzer_argv_uses_a_launcher_only_for_several_jobs(tmp_path):
    script = campaign.fuzz_dir() or Path(TESTS)
    script = script / "wire_decode_fuzzer.py"
    assert jobs.libfuzzer_argv(script, 1, tmp_path) == [sys.executable, str(script)]
    # The user's own -jobs/-fork wins.
    assert jobs.libfuzzer_argv(script, 4, tmp_path, ["-fork=3"]) == [sys.executable, str(script)]
    argv = jobs.libfuzzer_argv(script, 2, tmp_path)
    launcher = Path(argv[1])
    assert argv[0] == sys.executable and argv[2] == "-fork=2"
    assert launcher.is_absolute() and os.access(launcher, os.X_OK)
    text = launcher.read_text()
    assert text.startswith(f"#!{sys.executable}\n") and repr(str(script.resolve())) in text


@needs_fuzz_dir
def test_run_atheris_target_with_two_jobs(tmp_path):
    """``fuseproto fuzz run wire_decode --jobs 2``: libFuzzer forks two jobs (its own
    progress lines say so), new inputs land in the run's one corpus directory."""
    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "run", "wire_decode",
                           "--seconds", "10", "--jobs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-fork=2: fuzzing in separate process" in proc.stderr, proc.stderr[-2000:]
    progress = re.findall(r"#(\d+): cov: \d+ ft: \d+ corp: \d+ exec/s \d+ .* job: (\d+)",
                          proc.stderr)
    assert progress and int(progress[-1][0]) > 0, proc.stderr[-2000:]
    assert any((tmp_path / "corpus" / "wire_decode").iterdir())


@needs_fuzz_dir
def test_forked_atheris_campaign_classifies_every_crash(tmp_path, monkeypatch):
    """A planted session bug, campaign with --jobs 2 (libFuzzer -fork=2): the crash inputs
    are classified by replay into one finding with its script, none is left in
    artifacts/, and the one report says how the target ran."""
    env = {"FUSEPROTO_FUZZ_INJECT": "fuzz_faults:session_keyerror", "PYTHONPATH": TESTS}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    res = campaign.run_campaign(tmp_path, seconds=20, daemons=[], target_names=["session"],
                                env=env, jobs=2, seed=1)
    [r] = res.results
    assert r.engine == "atheris" and r.notes == ["libFuzzer -fork=2"] and r.iterations > 0
    assert len(res.findings) == 1, [f.signature for f in res.findings]
    f = res.findings[0]
    assert f.signature.startswith("KeyError@") and f.script and Path(f.script).exists()
    assert not list((tmp_path / "artifacts" / "session").iterdir())
    assert "libFuzzer -fork=2" in (tmp_path / "report.md").read_text()


def test_inprocess_loop_in_two_workers_merges_findings(tmp_path, monkeypatch, no_leaks):
    """Two in-process workers with a planted session bug: both find it, the store keeps
    one finding whose count is both workers' together; their directory is gone."""
    monkeypatch.setenv("FUSEPROTO_FUZZ_INJECT", "fuzz_faults:session_keyerror")
    monkeypatch.setenv("PYTHONPATH", TESTS)
    store = FindingStore(tmp_path / "findings")
    st = jobs.run_inprocess("session", jobs=2, seconds=4, store=store, seed=3,
                            workdir=tmp_path)
    assert st.iterations > 0 and st.findings
    sigs = {f.signature for f in store}
    assert len(sigs) == len(store) and all(s.startswith("KeyError@") for s in sigs)
    f = next(iter(store))
    assert f.count >= 2  # both workers hit it
    assert Path(f.reproducer).parent.parent == tmp_path / "findings"
    assert Path(f.reproducer).exists() and Path(f.script).exists()
    assert not list(tmp_path.glob(".jobs-*"))


@pytest.mark.daemon
def test_live_requests_on_two_daemons_unite_edges_and_findings(tmp_path, no_leaks):
    """Two workers, each with its own instrumented C daemon (own scratch directory and
    socket), fuzz single requests: the merged statistics count both, the edges are the
    union of both edge sets, the inputs that lit new edges share one corpus directory,
    and the findings (with their pcaps and scripts) land in the caller's store."""
    from fuseproto import daemons

    spec = "c-asan-cov" if daemons.find("c-asan-cov") is not None else "c"
    store = FindingStore(tmp_path / "findings")
    corpus = tmp_path / "corpus"
    st, union = jobs.fuzz_live("requests", spec, jobs=2, seconds=8, store=store, label=spec,
                               seed=5, corpus_dir=corpus, workdir=tmp_path)
    assert st.error is None, st.error
    assert st.requests > 0 and st.starts >= 2 and st.daemon == spec
    assert sum(st.classes.values()) == st.requests
    if spec == "c-asan-cov":
        assert union is not None and st.edges["jobs"] == 2
        per_job = st.edges["edges_per_job"]
        assert len(per_job) == 2 and st.edges["edges"] >= max(per_job) > 0
        assert st.edges["edges"] == len(union) - union.count(0)
        assert st.corpus_saved > 0 and len(list(corpus.iterdir())) == st.corpus_saved
    assert st.findings and {f.signature for f in st.findings} <= set(store.by_signature)
    for f in store:
        assert Path(f.reproducer).exists() and Path(f.script).exists()
        assert Path(f.pcap).exists() and str(tmp_path / "findings") in f.reproducer
    assert not list(tmp_path.glob(".jobs-*"))


@pytest.mark.daemon
def test_cli_runs_sequences_on_two_daemons(tmp_path, no_leaks):
    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "run", "virtiofsd",
                           "--daemon", "c", "--sequences", "--seconds", "6", "--jobs", "2",
                           "--no-corpus", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "c: 2 jobs" in proc.stdout, proc.stdout
    m = re.search(r"\): (\d+) requests, \d+/s, (\d+) outcome classes, (\d+) daemon starts",
                  proc.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(3)) >= 2, proc.stdout


@pytest.mark.daemon
@pytest.mark.parametrize("loop, specs", [("chains", ["c"]), ("control_plane", ["c"]),
                                         ("diff", ["c", "rust"])])
def test_other_live_loops_run_in_two_workers(loop, specs, tmp_path, no_leaks):
    """Chains, control plane and the C-vs-Rust differential with --jobs 2: the loop's own
    statistics type comes back with both workers' counts merged, their findings in the
    caller's store."""
    store = FindingStore(tmp_path / "findings")
    st = jobs.run_loop_jobs(loop, specs, jobs=2, seconds=5, store=store, labels=specs,
                            seed=2, workdir=tmp_path)
    done = getattr(st, "inputs", None) or getattr(st, "programs", 0)
    assert done >= 2 and st.per_second > 0, st
    assert st.seconds <= 5 + jobs.GRACE_S
    if loop == "diff":
        assert st.daemons == ("c", "rust") and st.compared > 0
        assert all(d["count"] >= 1 for d in st.divergences.values())
    else:
        assert st.daemon == "c" and sum(st.classes.values()) >= done
    for f in st.findings:
        assert store.by_signature[f.signature] is f and Path(f.reproducer).exists()
    assert not list(tmp_path.glob(".jobs-*"))
