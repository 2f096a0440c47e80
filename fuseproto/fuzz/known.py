"""Findings seen before: which of a run's signatures are new.

A campaign marks each of its findings *new* or *known* against findings kept from earlier
runs (``fuseproto fuzz campaign --known PATH``; default ``corpus/findings`` when the
working directory has one). A PATH is a directory, searched recursively, or one file:

* a reproducer (``*.json`` whose ``finding`` has a ``signature``, as the finding store
  writes them);
* a standalone reproducer script (``*.repro.py``: its ``# signature:`` header line);
* a campaign report (``report.json``: ``findings[].signature``).

Anything else is skipped (and counted): a known-set is a convenience, never a reason for a
campaign to fail. Signatures name the daemon build (``c-dax-asan-cov``, ``rust-cov``), so
the same bug seen on another build is new there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Known", "load", "default_paths", "DEFAULT"]

#: The known-set a campaign uses when none is given and the working directory has it.
DEFAULT = Path("corpus") / "findings"
#: Files larger than this are not read (a report of a long campaign is a few MB).
MAX_BYTES = 64 << 20
_HEADER = "# signature: "


@dataclass
class Known:
    """Signature -> a file that has it (a reproducer rather than a report); ``files`` read, ``skipped`` not usable."""

    where: dict[str, str] = field(default_factory=dict)
    files: int = 0
    skipped: int = 0
    sources: list[str] = field(default_factory=list)
    _from_report: set[str] = field(default_factory=set, repr=False)

    def __contains__(self, signature: object) -> bool:
        return signature in self.where

    def __len__(self) -> int:
        return len(self.where)

    def mark(self, findings: Iterable[Any]) -> tuple[int, int]:
        """Set each finding's ``known`` to the file that had its signature ("" when new);
        (new, known) counts."""
        new = old = 0
        for f in findings:
            f.known = self.where.get(f.signature, "")
            if f.known:
                old += 1
            else:
                new += 1
        return new, old

    def add(self, signature: Any, path: Path, report: bool = False) -> bool:
        """Keep the first reproducer that has ``signature``; a report names it only until
        a reproducer does (a reproducer replays, a report only lists)."""
        if not isinstance(signature, str) or not signature:
            return False
        if signature not in self.where or signature in self._from_report and not report:
            self.where[signature] = str(path)
            if report:
                self._from_report.add(signature)
            else:
                self._from_report.discard(signature)
        return True


def default_paths() -> list[Path]:
    """``[corpus/findings]`` when the working directory has it, else nothing."""
    return [DEFAULT] if DEFAULT.is_dir() else []


def load(paths: Iterable[str | os.PathLike[str]]) -> Known:
    """The signatures in ``paths`` (see the module docstring). A path that does not exist
    raises FileNotFoundError: the user named it."""
    k = Known()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"known findings: no such file or directory: {p}")
        k.sources.append(str(p))
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.name.endswith(".repro.py"):
                ok = _from_script(k, f)
            elif f.suffix == ".json":
                ok = _from_json(k, f)
            else:
                continue
            k.files += 1
            k.skipped += not ok
    return k


def _read(f: Path) -> str | None:
    try:
        if f.stat().st_size > MAX_BYTES:
            return None
        return f.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _from_script(k: Known, f: Path) -> bool:
    text = _read(f)
    if text is None:
        return False
    for line in text.splitlines()[:40]:  # the header comes first
        if line.startswith(_HEADER):
            return k.add(line[len(_HEADER):].strip(), f)
    return False


def _from_json(k: Known, f: Path) -> bool:
    text = _read(f)
    if text is None:
        return False
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    finding = doc.get("finding")
    if isinstance(finding, dict):
        return k.add(finding.get("signature"), f)
    found = doc.get("findings")
    if isinstance(found, list):  # a campaign report
        added = [k.add(x.get("signature"), f, report=True) for x in found
                 if isinstance(x, dict)]
        return any(added) or not found
    return False
