"""Known findings (fuseproto.fuzz.known): a campaign marks each finding new or known."""

import json
from pathlib import Path

import pytest

from fuseproto.fuzz import known, report
from fuseproto.fuzz.campaign import CampaignResult
from fuseproto.fuzz.findings import Finding

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path: Path) -> Path:
    d = tmp_path / "kept"
    (d / "s1").mkdir(parents=True)
    (d / "s1" / "crash-1.json").write_text(json.dumps(
        {"target": "virtiofsd", "finding": {"kind": "crash", "signature": "crash:c:SIGSEGV:X"}}))
    (d / "s1" / "hang-2.repro.py").write_text(
        "#!/usr/bin/env python3\n# Reproducer ...\n#\n# signature: hang:rust:FUSE_READ\n"
        "import sys\n")
    (d / "report.json").write_text(json.dumps(
        {"findings": [{"signature": "asan:c:heap|f"}, {"signature": "crash:c:SIGSEGV:X"}]}))
    (d / "s1" / "broken.json").write_text("{not json")
    (d / "s1" / "list.json").write_text("[1, 2]")
    (d / "s1" / "notes.txt").write_text("# signature: not-read")
    (d / "s1" / "plain.repro.py").write_text("print('no header')\n")
    return d


def test_load_reads_reproducers_scripts_and_reports_and_skips_the_rest(tmp_path):
    k = known.load([_tree(tmp_path)])
    assert set(k.where) == {"crash:c:SIGSEGV:X", "hang:rust:FUSE_READ", "asan:c:heap|f"}
    assert k.where["hang:rust:FUSE_READ"].endswith("hang-2.repro.py")
    assert k.files == 6 and k.skipped == 3  # broken.json, list.json, plain.repro.py
    assert "crash:c:SIGSEGV:X" in k and len(k) == 3
    one = known.load([tmp_path / "kept" / "s1" / "crash-1.json"])  # one file
    assert set(one.where) == {"crash:c:SIGSEGV:X"} and one.sources == [
        str(tmp_path / "kept" / "s1" / "crash-1.json")]
    with pytest.raises(FileNotFoundError, match="no such file"):
        known.load([tmp_path / "nowhere"])
    assert len(known.load([])) == 0


def test_the_shipped_findings_corpus_is_a_known_set():
    k = known.load([ROOT / "corpus" / "findings"])
    assert len(k) >= 250 and k.skipped == 0  # the reproducers and known-signatures.json
    assert "protocol:control:c-dax-asan-cov:stray-SET_VRING_CALL:" \
        "SET_VRING_CALL[fds=bad]" in k


def _finding(sig: str) -> Finding:
    return Finding("virtiofsd", sig.split(":")[0], sig, "what", reproducer="r.json",
                   replay="fuseproto fuzz replay r.json", daemon="c")


def test_mark_and_the_report_put_new_findings_first(tmp_path):
    k = known.load([_tree(tmp_path)])
    fs = [_finding("crash:c:SIGSEGV:X"), _finding("hang:c:FUSE_LSEEK"),
          _finding("asan:c:heap|f")]
    assert k.mark(fs) == (1, 2)
    assert fs[0].known.endswith("crash-1.json") and fs[1].known == ""
    res = CampaignResult(str(tmp_path), 0.0, findings=fs, known_sources=k.sources,
                         known_count=len(k))
    j = report.to_json(res)
    assert j["known"] == {"sources": k.sources, "signatures": 3, "new": 1}
    assert [f["known"] == "" for f in j["findings"]] == [False, True, False]
    md = report._md(res)
    assert "3 finding(s): **1 new**, 2 known (against 3 signatures in" in md
    first = md.index("### 1. NEW hang: virtiofsd (c)")
    assert first < md.index("### 2. crash: virtiofsd (c)") < md.index("### 3. asan")
    assert "- new: not in the known findings" in md and "- known: seen before in `" in md
    res.known_sources = []
    assert "no known findings were given" in report._md(res)
