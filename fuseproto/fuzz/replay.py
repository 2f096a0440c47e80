"""Replaying reproducers: a finding's requests sent again to a fresh daemon, or an
in-process target's input checked again; the verdict ``fuseproto fuzz replay`` and the
standalone reproducer scripts (:mod:`.reproducer`) print.

A virtiofsd reproducer (written by :func:`.virtiofsd.record_finding`) lists the requests
its daemon saw since setup as ``{"hex", "variant", "batch"}`` items; consecutive items
with the same ``batch`` id shared one kick and are put in flight together again
(:func:`request_groups`). ``setup_mode: none`` marks a sequence program's reproducer (no
harness setup; the program's own INIT comes first); ``daemon_env`` is the environment
the daemon was started with (e.g. ``FUSEPROTO_PLANTED_BUG``). :func:`doc_installation`
finds the daemon a reproducer names. :func:`daemon_verdict` and :func:`input_verdict`
say whether the finding's signature came back (:mod:`.verdict` picks the replay a
reproducer's target needs). :mod:`.shrink` uses :func:`replay_items` too.
"""

from __future__ import annotations

import traceback
from typing import Any

from .. import daemons
from ..daemons.options import DaemonConfig, config_from_json
from .findings import classify_exception
from .forensics import FATAL, Outcome, outcome_signature
from .harness import DaemonHarness, resolve_installation

__all__ = ["request_groups", "replay_items", "replay_daemon", "doc_installation",
           "daemon_verdict", "input_verdict", "Exchange"]

#: A daemon's messages as the harness taps them: (direction, queue, bytes, time_ns).
Exchange = list[tuple[int, int, bytes, int]]


def request_groups(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive reproducer items with the same ``batch`` id go in flight together."""
    groups: list[list[dict[str, Any]]] = []
    for item in items:
        b = item.get("batch")
        if groups and b is not None and groups[-1][-1].get("batch") == b:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def replay_items(items: list[dict[str, Any]], installation: daemons.Installation, *,
                 setup: bool = True, hang_timeout: float = 0.5,
                 harness: DaemonHarness | None = None, env: dict[str, str] | None = None,
                 exchange: Exchange | None = None, config: Any = None) -> list[Outcome]:
    """Send reproducer ``items`` (hex, variant, batch) to a fresh daemon (started with
    ``env`` over the harness's own); the outcome of each. Stops when the daemon dies or
    hangs; protocol findings do not stop it. With ``harness`` (a started one, same
    ``setup``) that harness is restarted and reused. ``exchange``, when given, receives
    every message of the replay (setup included). ``config``: the daemon's options
    (a :class:`~fuseproto.daemons.options.DaemonConfig`; None: the default)."""
    own = harness is None
    h = harness or DaemonHarness(installation, hang_timeout=hang_timeout, setup=setup,
                                 history=100_000, env=env, config=config)
    outs: list[Outcome] = []
    try:
        h.start()
        for n, group in enumerate(request_groups(items)):
            got = h.send_many([(bytes.fromhex(i["hex"]), i.get("variant", 0)) for i in group],
                              batch=n)
            outs += got
            if got and got[-1].finding in FATAL:
                break
        else:
            if outs and outs[-1].cls.endswith(":noreply"):
                late = h.settle(outs[-1].cls.split(":")[0])
                if late is not None:
                    outs.append(late)
    finally:
        if exchange is not None:
            exchange.extend(h.exchange)
        if own:
            h.close()
        else:
            h.stop()
    return outs


def replay_daemon(repro: dict[str, Any], installation: daemons.Installation, *,
                  hang_timeout: float = 0.5, exchange: Exchange | None = None
                  ) -> list[Outcome]:
    """Send a reproducer's requests to a fresh daemon (the setup it names: the harness's
    INIT + LOOKUPs, or none for a sequence program, which starts with its own INIT; the
    environment it names)."""
    return replay_items(repro.get("requests", []), installation,
                        setup=repro.get("setup_mode", "harness") != "none",
                        hang_timeout=hang_timeout, env=repro.get("daemon_env"),
                        exchange=exchange, config=doc_config(repro))


def doc_config(doc: dict[str, Any]) -> DaemonConfig | None:
    """The daemon options a reproducer names (``daemon_config``), None for the default."""
    cfg = doc.get("daemon_config")
    return config_from_json(cfg) if cfg else None


def doc_installation(doc: dict[str, Any], spec: str | None = None,
                     kind: str | None = None) -> tuple[str, daemons.Installation]:
    """The daemon to replay reproducer ``doc`` against: ``spec`` (c | rust | a variant |
    a path) when given, else the one it was found on (a kind or variant by name, a path's
    label ``kind:name`` by its recorded binary); (spec used, installation)."""
    label = str(doc.get("daemon", ""))
    if spec is None:
        spec = label or "c"
        if spec not in daemons.KINDS and spec not in daemons.VARIANTS and ":" in spec:
            spec = doc.get("daemon_binary", spec)
    if kind is None and ":" in label and label.split(":", 1)[0] in daemons.KINDS \
            and spec == doc.get("daemon_binary"):
        kind = label.split(":", 1)[0]
    return spec, resolve_installation(spec, kind)


def daemon_verdict(doc: dict[str, Any], spec: str | None = None, kind: str | None = None,
                   *, hang_timeout: float = 0.5, exchange: Exchange | None = None
                   ) -> dict[str, Any]:
    """Replay virtiofsd reproducer ``doc``; its verdict: ``reproduced`` when the
    finding's signature (named after the daemon it was found on, so another daemon showing
    the same bug counts) comes back, and what was seen."""
    used, inst = doc_installation(doc, spec, kind)
    outs = replay_daemon(doc, inst, hang_timeout=hang_timeout, exchange=exchange)
    label = doc.get("daemon", used)
    expected = (doc.get("finding") or {}).get("signature")
    hits = [(outcome_signature(label, o), o) for o in outs if o.finding]
    match = [o for sig, o in hits if sig == expected]
    hit = match[0] if match else (hits[-1][1] if hits else None)
    verdict: dict[str, Any] = {
        "target": "virtiofsd", "daemon": used, "binary": inst.binary,
        "reproduced": bool(match), "requests_sent": len(outs), "expected": expected,
        "seen": sorted({sig for sig, _ in hits if sig})}
    if hit is not None:
        verdict.update(kind=hit.finding, summary=hit.detail, outcome=hit.cls,
                       evidence=hit.evidence)
    return verdict


def input_verdict(target: str, data: bytes, expected: str | None = None) -> dict[str, Any]:
    """Check ``data`` again under in-process ``target``'s oracle (after the planted fault
    of ``FUSEPROTO_FUZZ_INJECT``, if any): reproduced when it fails with the ``expected``
    signature (any failure when none is expected)."""
    from . import inject
    from .registry import get_target

    inject.apply_from_env()
    try:
        get_target(target).check(data)
    except (Exception, AssertionError) as e:  # noqa: B014 -- a finding, whatever it is
        kind, sig, summary = classify_exception(e)
        return {"target": target, "reproduced": expected is None or sig == expected,
                "kind": kind, "signature": sig, "summary": summary, "expected": expected,
                "seen": [sig], "traceback": "".join(traceback.format_exception(e))[-3000:]}
    return {"target": target, "reproduced": False, "expected": expected, "seen": []}
