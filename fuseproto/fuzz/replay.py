"""Replaying virtiofsd reproducers: a finding's requests, sent again to a fresh daemon.

A reproducer (written by :func:`.virtiofsd.record_finding`) lists the requests its daemon
saw since setup as ``{"hex", "variant", "batch"}`` items; consecutive items with the same
``batch`` id shared one kick and are put in flight together again
(:func:`request_groups`). ``setup_mode: none`` marks a sequence program's reproducer (no
harness setup; the program's own INIT comes first). ``fuseproto fuzz replay`` and
:mod:`.shrink` use these functions.
"""

from __future__ import annotations

from typing import Any

from .. import daemons
from .forensics import FATAL, Outcome
from .harness import DaemonHarness

__all__ = ["request_groups", "replay_items", "replay_daemon"]


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
                 harness: DaemonHarness | None = None) -> list[Outcome]:
    """Send reproducer ``items`` (hex, variant, batch) to a fresh daemon; the outcome of
    each. Stops when the daemon dies or hangs; protocol findings do not stop it. With
    ``harness`` (a started one, same ``setup``) that harness is restarted and reused."""
    own = harness is None
    h = harness or DaemonHarness(installation, hang_timeout=hang_timeout, setup=setup,
                                 history=100_000)
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
        if own:
            h.close()
        else:
            h.stop()
    return outs


def replay_daemon(repro: dict[str, Any], installation: daemons.Installation, *,
                  hang_timeout: float = 0.5) -> list[Outcome]:
    """Send a reproducer's requests to a fresh daemon (the setup it names: the harness's
    INIT + LOOKUPs, or none for a sequence program, which starts with its own INIT)."""
    return replay_items(repro.get("requests", []), installation,
                        setup=repro.get("setup_mode", "harness") != "none",
                        hang_timeout=hang_timeout)
