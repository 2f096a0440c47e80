"""Which configuration the next daemon of a live loop gets (:mod:`fuseproto.daemons.options`:
one alternative per option gene), steered by what earlier daemons of each config reached.

Much of a virtiofsd is behind its options (the xattr mapper, POSIX ACLs, cache modes,
lock handling, the thread pool, file handles for inodes, a read-only share): a loop that
always starts the default daemon never reaches it. :class:`ConfigChooser` gives each new
daemon a config -- the default, a random one near it, or a mutant (one gene changed) of
a config that paid off -- and :meth:`ConfigChooser.credit` is told what each input on a
daemon of that config gained: new daemon edges when the loop steers by coverage, new
outcome classes otherwise (so the outcome-class control of the benchmarks steers configs
by its own signal too). A config's weight as a parent is one plus what it gained, capped.

Thread-safe: a warm spare (:mod:`.spare`) asks for its config from its own thread.
"""

from __future__ import annotations

import random
import threading

from ..daemons.options import DEFAULT, DaemonConfig, mutate_config, random_config

__all__ = ["ConfigChooser", "MAX_WEIGHT"]

#: A parent config's weight is 1 + its gains, at most this (one lucky config must not
#: starve the others).
MAX_WEIGHT = 64.0


class ConfigChooser:
    """Configs for the daemons of one live loop on daemon kind ``kind`` (``c``/``rust``).

    ``default_share``: how often the next daemon is the default config (what every other
    target and a user run); ``random_share``: a random config near the default; the rest:
    a mutant of a parent picked by weight."""

    def __init__(self, kind: str, seed: int = 0, *, default_share: float = 0.3,
                 random_share: float = 0.2):
        self.kind = kind
        self.default_share, self.random_share = default_share, random_share
        self._rng = random.Random(seed ^ 0x5EED)
        self._lock = threading.Lock()
        self.gain: dict[DaemonConfig, float] = {DEFAULT[kind]: 0.0}  # the parents
        self.used: dict[DaemonConfig, int] = {}  # daemons started with each config
        # Configs whose daemon did not start or set up (refuse()): never chosen again.
        self.refused: dict[DaemonConfig, str] = {}

    def next(self) -> DaemonConfig:
        """The config for the next daemon (the first is the default)."""
        with self._lock:
            rng = self._rng
            cfg = DEFAULT[self.kind]
            for _ in range(8):  # a refused config is drawn again
                x = rng.random()
                if not self.used or x < self.default_share:
                    cfg = DEFAULT[self.kind]
                elif x < self.default_share + self.random_share:
                    cfg = random_config(self.kind, rng)
                else:
                    parents = list(self.gain)
                    weights = [1.0 + min(self.gain[p], MAX_WEIGHT - 1) for p in parents]
                    cfg = mutate_config(rng.choices(parents, weights)[0], rng)
                if cfg not in self.refused:
                    break
            else:
                cfg = DEFAULT[self.kind]
            self.used[cfg] = self.used.get(cfg, 0) + 1
            return cfg

    def refuse(self, cfg: DaemonConfig, why: str = "") -> None:
        """``cfg``'s daemon did not start or set up (the harness then started the default):
        it is never chosen again, nor bred from."""
        with self._lock:
            self.refused[cfg] = why[:200]
            self.gain.pop(cfg, None)

    def credit(self, cfg: DaemonConfig | None, gain: float) -> None:
        """An input on a daemon of ``cfg`` gained ``gain`` (new edges, or new outcome
        classes); a config that gains becomes a parent."""
        if cfg is None or gain <= 0:
            return
        with self._lock:
            self.gain[cfg] = self.gain.get(cfg, 0.0) + gain

    def summary(self) -> dict[str, object]:
        """For the report: daemons per config and the parents' gains, by label."""
        with self._lock:
            return {"refused": {c.label: why for c, why in self.refused.items()},
                    "daemons": {c.label: n for c, n in sorted(
                        self.used.items(), key=lambda kv: -kv[1])},
                    "gains": {c.label: g for c, g in sorted(
                        self.gain.items(), key=lambda kv: -kv[1]) if g > 0}}
