"""Minimizing virtiofsd reproducers: the fewest, smallest requests that still fail.

A reproducer keeps every request its daemon saw (up to 32 in single-request mode, the
whole program in sequence mode). :func:`shrink` replays candidate request lists against
a fresh daemon each time and keeps a candidate when the replay produces the *same
finding signature*:

1. delta debugging (ddmin) over the request list: drop chunks, halving the chunk size
   down to single requests;
2. then each remaining request's bytes: truncated (to the header, to half, minus the
   last 8 bytes; with ``fuse_in_header.len`` left as it was or re-stamped), and each
   non-zero integer body field set to 0 -- decoded and re-encoded through the codec with
   the original header ``len`` forced, so a lie the finding needs survives.

Everything runs within a time budget; the result is valid whenever it stops (each
accepted step reproduced). Requests that shared a kick keep their ``batch`` id.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from construct import Container

from .. import daemons
from ..errors import DecodeError, EncodeError
from ..wire import codec, structs
from . import mutate
from .forensics import outcome_signature
from .harness import DaemonHarness, resolve_installation
from .replay import doc_config, replay_items

__all__ = ["ShrinkResult", "shrink", "shrink_file", "min_path"]

_IN = structs.FAST["fuse_in_header"]


@dataclass
class ShrinkResult:
    doc: dict[str, Any] | None  # the minimized reproducer (None: original did not reproduce)
    before: int = 0  # requests
    after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    replays: int = 0
    seconds: float = 0.0
    complete: bool = False  # False: the budget ran out first
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"requests_before": self.before, "requests_after": self.after,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "replays": self.replays, "seconds": round(self.seconds, 1),
                "complete": self.complete, "minimized": self.path}


def min_path(path: str | Path) -> Path:
    """``x/crash-ab12.json`` -> ``x/crash-ab12.min.json``."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".json") + ".min.json")


class _Budget(Exception):
    pass


def shrink(doc: dict[str, Any], installation: daemons.Installation, *, seconds: float = 30.0,
           hang_timeout: float = 0.5, label: str | None = None,
           log: Callable[[str], None] | None = None) -> ShrinkResult:
    """Minimize reproducer ``doc`` (see the module docstring) against ``installation``."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    expected = doc.get("finding", {}).get("signature")
    label = label or doc.get("daemon") or installation.kind
    setup = doc.get("setup_mode", "harness") != "none"
    items: list[dict[str, Any]] = [dict(i) for i in doc.get("requests", [])]
    res = ShrinkResult(None, before=len(items),
                       bytes_before=sum(len(i["hex"]) // 2 for i in items))
    say = log or (lambda m: None)
    harness = DaemonHarness(installation, hang_timeout=hang_timeout, setup=setup,
                            history=100_000, env=doc.get("daemon_env"),
                            config=doc_config(doc))

    def reproduces(cand: list[dict[str, Any]], check_budget: bool = True) -> bool:
        if check_budget and time.monotonic() > deadline:
            raise _Budget
        res.replays += 1
        outs = replay_items(cand, installation, setup=setup, harness=harness)
        return any(outcome_signature(label, o) == expected for o in outs)

    try:
        if not expected or not items:
            res.notes.append("nothing to shrink (no signature or no requests)")
            return res
        # Racy findings: give the original three chances before giving up.
        if not any(reproduces(items, check_budget=False) for _ in range(3)):
            res.notes.append("the reproducer does not reproduce against a fresh daemon")
            res.seconds = time.monotonic() - t0
            return res
        latest = [items]  # the best list accepted so far (kept when the budget stops us)

        def accept(cand: list[dict[str, Any]]) -> list[dict[str, Any]]:
            latest[0] = cand
            return cand

        try:
            best = _cut_after_fatal(items, reproduces, accept)
            best = _ddmin(best, reproduces, accept)
            best = _shrink_bytes(best, reproduces, accept)
            res.complete = True
        except _Budget:
            res.notes.append(f"time budget ({seconds:.0f} s) ran out; result still reproduces")
            best = latest[0]
        out = copy.deepcopy(doc)
        out["requests"] = best
        out["shrunk_from"] = {"requests": res.before, "bytes": res.bytes_before}
        res.doc = out
        res.after = len(best)
        res.bytes_after = sum(len(i["hex"]) // 2 for i in best)
        say(f"shrunk {res.before} -> {res.after} requests, {res.bytes_before} -> "
            f"{res.bytes_after} bytes in {res.replays} replays")
    finally:
        harness.close()
        res.seconds = time.monotonic() - t0
    return res


_Accept = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _cut_after_fatal(items: list[dict[str, Any]], test: Callable[..., bool], accept: _Accept
                     ) -> list[dict[str, Any]]:
    """The shortest prefix that still fails (binary search; a finding needs its trigger,
    which is at or before the end): cheap, and usually most of the win."""
    lo, hi = 1, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(items[:mid]):
            hi = mid
            items = accept(items[:mid])
        else:
            lo = mid + 1
    return items


def _ddmin(items: list[dict[str, Any]], test: Callable[..., bool], accept: _Accept
           ) -> list[dict[str, Any]]:
    """Zeller's ddmin over the complement: remove chunks while the failure stays."""
    n = 2
    while len(items) >= 2:
        chunk = max(1, len(items) // n)
        removed = False
        for start in range(0, len(items), chunk):
            cand = items[:start] + items[start + chunk:]
            if cand and test(cand):
                items = accept(cand)
                n = max(n - 1, 2)
                removed = True
                break
        if not removed:
            if chunk == 1:
                break
            n = min(len(items), n * 2)
    return items


def _byte_candidates(data: bytes, minor: int) -> list[bytes]:
    out: list[bytes] = []
    n = len(data)
    for m in (_IN.size, n // 2, n - 8):
        if 0 < m < n:
            out.append(data[:m])
            out.append(mutate.restamp(data[:m], request=True))
    try:
        req = codec.decode_request(data, minor)
    except DecodeError:
        return out
    body = req.body
    if isinstance(body, dict):
        hdr = req.header
        for k, v in list(body.items()):
            if str(k).startswith("_") or isinstance(v, bool) or not isinstance(v, int) or not v:
                continue
            b = Container(mutate.copy_body(body))
            b[k] = 0
            try:
                out.append(codec.encode_request(
                    req.opcode, b, unique=hdr["unique"], nodeid=hdr["nodeid"], uid=hdr["uid"],
                    gid=hdr["gid"], pid=hdr["pid"], minor=minor, length=hdr["len"],
                    total_extlen=hdr["total_extlen"], padding=hdr["padding"],
                    ext=list(req.ext) or None))
            except (EncodeError, ValueError, TypeError):
                continue
    return [c for c in dict.fromkeys(out) if c != data]


def _shrink_bytes(items: list[dict[str, Any]], test: Callable[..., bool], accept: _Accept
                  ) -> list[dict[str, Any]]:
    minor = 46
    for idx in range(len(items)):
        changed = True
        while changed:
            changed = False
            data = bytes.fromhex(items[idx]["hex"])
            for cand in sorted(_byte_candidates(data, minor), key=len):
                trial = list(items)
                trial[idx] = {**items[idx], "hex": cand.hex()}
                if test(trial):
                    items = accept(trial)
                    changed = len(cand) < len(data)  # zeroing: one pass is enough
                    break
    return items


def shrink_file(path: str | Path, installation: daemons.Installation | None = None, *,
                seconds: float = 30.0, hang_timeout: float = 0.5,
                log: Callable[[str], None] | None = None) -> ShrinkResult:
    """Shrink the reproducer at ``path``; on success write ``<name>.min.json`` next to it
    (same format, so ``fuseproto fuzz replay`` runs it)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("target") != "virtiofsd":
        raise ValueError(f"{path}: only virtiofsd reproducers (JSON) are shrunk")
    if installation is None:
        spec = doc.get("daemon", "c")
        if spec not in daemons.KINDS:
            spec = doc.get("daemon_binary", spec)
        installation = resolve_installation(spec)
    res = shrink(doc, installation, seconds=seconds, hang_timeout=hang_timeout, log=log)
    if res.doc is not None:
        out = min_path(path)
        res.doc["shrink"] = res.to_json() | {"minimized": str(out)}
        out.write_text(json.dumps(res.doc, indent=1) + "\n")
        res.path = str(out)
    return res
