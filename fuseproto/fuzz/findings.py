"""Findings: what a fuzz target found, deduplicated by signature, with a reproducer.

A finding's ``signature`` is stable across runs and small code edits: the broken
property and where (``roundtrip:request FUSE_LOOKUP``), the exception type and the
innermost fuseproto function it escaped from (``IndexError@fuseproto/wire/messages.py:
parse``), or for a daemon the failure class and the request that caused it
(``crash:c:FUSE_READ:SIGSEGV``). The store keeps one reproducer per signature (the
smallest seen), counts repeats, and says how to replay it. Beside each reproducer it
writes a standalone reproducer script (``<name>.repro.py``) and, for a finding on a
daemon, a pcap of the exchange (``<name>.pcap``): :mod:`.reproducer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .oracles import Bug
from .reproducer import PCAP_SUFFIX, SCRIPT_SUFFIX, input_doc, write_pcap, write_script

__all__ = ["Finding", "FindingStore", "classify_exception", "replay_command"]

_PKG_ROOT = Path(__file__).resolve().parents[1]  # .../fuseproto
# Frames in these files are the harness, not the code under test.
_HARNESS = ("fuzz/oracles.py", "fuzz/engine.py", "fuzz/targets.py", "fuzz/dax_target.py")


@dataclass
class Finding:
    target: str  # wire_decode | session | dax | virtiofsd
    kind: str  # exception | roundtrip | differential | state | invariant | crash | hang |
    #            protocol | daemon-exit
    signature: str
    summary: str  # one line
    reproducer: str = ""  # file path
    replay: str = ""  # one-line command
    daemon: str | None = None  # c | rust | a path (virtiofsd target)
    count: int = 1
    first_seen: float = field(default_factory=time.time)
    evidence: dict[str, Any] = field(default_factory=dict)
    minimized: str = ""  # <reproducer>.min.json (virtiofsd: fuseproto fuzz shrink)
    shrink: dict[str, Any] = field(default_factory=dict)  # ShrinkResult.to_json() + notes
    script: str = ""  # <reproducer>.repro.py: replays it with the fuseproto package alone
    pcap: str = ""  # <reproducer>.pcap: the daemon's exchange (daemon findings)
    known: str = ""  # a campaign's known-set file that had this signature ("": new; .known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _innermost_code_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The deepest frame in fuseproto outside the harness (else the deepest at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    best = None
    for fr in frames:
        p = Path(fr.filename).resolve()
        try:
            rel = p.relative_to(_PKG_ROOT).as_posix()
        except ValueError:
            continue
        if rel.endswith(_HARNESS):
            continue
        best = fr
    return best or (frames[-1] if frames else None)


def classify_exception(exc: BaseException) -> tuple[str, str, str]:
    """(kind, signature, one-line summary) of an exception a target raised."""
    if isinstance(exc, Bug):
        return exc.kind, f"{exc.kind}:{exc.where}", str(exc)[:300]
    violation = getattr(exc, "violation", None)  # fuseproto.dax.invariants
    if violation is not None and hasattr(violation, "invariant"):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return ("invariant", f"invariant:{violation.invariant}@{getattr(violation, 'sender', '')}"
                .split("@")[0], first[:300])
    fr = _innermost_code_frame(exc)
    where = "?"
    if fr is not None:
        p = Path(fr.filename).resolve()
        try:
            rel = "fuseproto/" + p.relative_to(_PKG_ROOT).as_posix()
        except ValueError:
            rel = p.name
        where = f"{rel}:{fr.name}"
    name = type(exc).__name__
    return "exception", f"{name}@{where}", f"{name}: {exc}"[:300] + f" (in {where})"


def replay_command(path: str, target: str | None = None, daemon: str | None = None) -> str:
    cmd = ["fuseproto", "fuzz", "replay", path]
    if target:
        cmd += ["--target", target]
    if daemon:
        cmd += ["--daemon", daemon]
    return shlex.join(cmd)


class FindingStore:
    """Findings of one campaign under ``root`` (reproducers in ``root/<target>/``)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.by_signature: dict[str, Finding] = {}

    def __len__(self) -> int:
        return len(self.by_signature)

    def __iter__(self) -> Iterator[Finding]:
        return iter(sorted(self.by_signature.values(), key=lambda f: f.first_seen))

    def add(self, finding: Finding, reproducer: bytes | dict[str, Any],
            suffix: str = ".bin",
            exchange: list[tuple[int, int, bytes, int]] | None = None) -> Finding:
        """Record ``finding`` with its reproducer (bytes: an in-process target's input, or
        a JSON document), the reproducer script, and the pcap of ``exchange`` (a daemon's
        messages: (direction, queue, bytes, time_ns)); a known signature only counts,
        keeping the smaller reproducer (and the script and pcap that go with it)."""
        data = (reproducer if isinstance(reproducer, bytes)
                else json.dumps(reproducer, indent=1).encode())
        known = self.by_signature.get(finding.signature)
        if known is not None:
            known.count += 1
            # Once minimized, the reproducer stays the one the .min.json was made from.
            if known.reproducer and not known.minimized \
                    and len(data) < os.path.getsize(known.reproducer):
                _write(known, reproducer, data, exchange)
            return known
        h = hashlib.sha1(finding.signature.encode()).hexdigest()[:12]
        tag = f"{finding.target}-{finding.daemon}" if finding.daemon else finding.target
        d = self.root / tag
        d.mkdir(parents=True, exist_ok=True)
        finding.reproducer = str(d / f"{finding.kind}-{h}{suffix}")
        _write(finding, reproducer, data, exchange)
        finding.replay = replay_command(finding.reproducer, finding.target,
                                        finding.daemon if finding.target == "virtiofsd" else None)
        self.by_signature[finding.signature] = finding
        return finding

    def adopt(self, other: Finding) -> Finding:
        """Take in a finding of another store (a parallel worker's, :mod:`.jobs`): a known
        signature adds its count; a new one is copied here with its files (reproducer,
        script, pcap, minimized reproducer) under this store's layout."""
        known = self.by_signature.get(other.signature)
        if known is not None:
            known.count += other.count
            return known
        f = replace(other, evidence=dict(other.evidence), shrink=dict(other.shrink))
        tag = f"{f.target}-{f.daemon}" if f.daemon else f.target
        d = self.root / tag
        d.mkdir(parents=True, exist_ok=True)
        for attr in ("reproducer", "script", "pcap", "minimized"):
            src = getattr(f, attr)
            if src and os.path.exists(src):
                dst = d / os.path.basename(src)
                if Path(src).resolve() != dst.resolve():
                    shutil.copy2(src, dst)
                setattr(f, attr, str(dst))
        if f.reproducer:
            f.replay = replay_command(f.reproducer, f.target,
                                      f.daemon if f.target == "virtiofsd" else None)
        self.by_signature[f.signature] = f
        return f

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self]


def _write(f: Finding, reproducer: bytes | dict[str, Any], data: bytes,
           exchange: list[tuple[int, int, bytes, int]] | None) -> None:
    """Write ``f``'s reproducer file, its script and (given an exchange) its pcap."""
    path = Path(f.reproducer)
    path.write_bytes(data)
    stem = path.with_name(path.name.removesuffix(path.suffix))
    doc = (reproducer if isinstance(reproducer, dict)
           else input_doc(f.target, reproducer, f.kind, f.signature))
    f.script = str(write_script(f"{stem}{SCRIPT_SUFFIX}", doc, f.summary))
    if exchange is not None:
        sent = [bytes.fromhex(i["hex"]) for i in doc.get("requests", ()) if "hex" in i]
        f.pcap = str(write_pcap(f"{stem}{PCAP_SUFFIX}", exchange, injected=sent,
                                note=f"fuseproto finding {f.kind}: {f.signature}"))
