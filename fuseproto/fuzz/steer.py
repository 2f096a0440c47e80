"""Parent scheduling for the live loops, by what each pick gained: which corpus entry is
mutated next, and how much of the time each kind of input (a request's opcode) gets.

A loop tells :meth:`Steer.reward` what the mutant of the last :meth:`Steer.pick` gained
-- new daemon edges when it steers by coverage, 1 for a new outcome class otherwise (so
the outcome-class control of the benchmarks schedules by its own signal too) -- and:

- the parent's energy (:meth:`.corpus.Corpus.set_energy`) grows with a gain and shrinks
  (down to a floor of a tenth of what it was given) with each pick that gained nothing:
  an input whose mutants stopped finding anything gets less time, one that keeps
  finding gets more (AFL's per-entry energy, without its per-entry budget);
- each *bucket* of entries (``bucket(item)``: the opcode of a request; one bucket when
  None) is picked in proportion to its recent yield, (gains + 1) / (picks + 20), with
  both counts halving every :data:`HALF_LIFE` picks, then an entry inside it by energy;
  a bucket never falls below a tenth of the mean yield (it may start to pay again).

The corpus stays the loop's own (:class:`.corpus.Corpus`: ``add``, ``len``, saving);
:meth:`Steer.add` adds to it and files the entry in its bucket.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .corpus import Corpus, Weights

__all__ = ["Steer", "HALF_LIFE"]

T = TypeVar("T")

#: Picks after which a bucket's gains and picks count half.
HALF_LIFE = 2000.0
#: A pick that gained nothing multiplies its parent's energy by this.
DECAY = 0.9
#: A parent's energy never falls below this share of what it was given.
FLOOR = 0.1
#: Nor grows above this.
CAP = 64.0
_PRIOR_GAIN, _PRIOR_PICKS = 1.0, 20.0
#: A bucket's weight is at least this share of the mean yield.
EXPLORE = 0.1
class _Bucket:
    __slots__ = ("members", "weights", "gain", "picks", "t")

    def __init__(self) -> None:
        self.members: list[int] = []  # corpus indices
        self.weights = Weights()  # their energies, same order
        self.gain = 0.0
        self.picks = 0.0
        self.t = 0  # the pick count when gain/picks were last decayed

    def decay_to(self, now: int) -> None:
        if now > self.t:
            f = math.pow(0.5, (now - self.t) / HALF_LIFE)
            self.gain *= f
            self.picks *= f
            self.t = now

    @property
    def rate(self) -> float:
        return (self.gain + _PRIOR_GAIN) / (self.picks + _PRIOR_PICKS)


class Steer(Generic[T]):
    """Schedules ``corpus``'s entries (see the module docstring). ``bucket``: an entry's
    bucket key (None: one bucket, energies only)."""

    def __init__(self, corpus: Corpus[T], bucket: Callable[[T], Hashable] | None = None):
        self.corpus = corpus
        self.bucket_of = bucket
        self.buckets: dict[Hashable, _Bucket] = {}
        self.where: list[tuple[Hashable, int]] = []  # corpus index -> (bucket, slot)
        self.base: list[float] = []  # corpus index -> energy it was given
        self.energy: list[float] = []  # corpus index -> energy
        self.picks = 0
        self.last: int | None = None  # corpus index of the last pick
        for i, item in enumerate(corpus.items):
            self._file(i, item, corpus.energy(i))

    def _file(self, index: int, item: T, energy: float) -> None:
        key = self.bucket_of(item) if self.bucket_of is not None else None
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = _Bucket()
            b.t = self.picks
        self.where.append((key, len(b.members)))
        b.members.append(index)
        self.base.append(energy)
        self.energy.append(energy)
        b.weights.append(energy)
        self.corpus.set_energy(index, energy)

    def _reweigh(self, index: int) -> None:
        key, slot = self.where[index]
        w = self.energy[index]
        self.buckets[key].weights.set(slot, w)
        self.corpus.set_energy(index, w)

    def add(self, item: T, energy: float = 1.0) -> bool:
        """Add ``item`` to the corpus and its bucket (False: the corpus is full)."""
        if not self.corpus.add(item, energy):
            return False
        self._file(len(self.corpus) - 1, item, energy)
        return True

    def pick(self, rng: random.Random) -> T:
        """A parent: a bucket by recent yield, then an entry in it by energy."""
        return self.corpus.items[self.pick_index(rng)]

    def pick_index(self, rng: random.Random) -> int:
        """:meth:`pick`, as the parent's corpus index (what :meth:`reward` takes when
        several picks are in flight at once, as in a loop's batch)."""
        self.picks += 1
        if len(self.buckets) == 1:
            b = next(iter(self.buckets.values()))
        else:
            bs = list(self.buckets.values())
            for b in bs:
                b.decay_to(self.picks)
            rates = [b.rate for b in bs]
            floor = EXPLORE * sum(rates) / len(rates)
            b = rng.choices(bs, [max(r, floor) for r in rates])[0]
        slot = b.weights.find(rng.random() * b.weights.total) if b.weights.total > 0 \
            else rng.randrange(len(b.members))
        self.last = b.members[slot]
        return self.last

    def reward(self, gain: float, index: int | None = None) -> None:
        """What the mutant of parent ``index`` (default: the last pick's, once) gained
        (0: nothing)."""
        i = self.last if index is None else index
        if index is None:
            self.last = None
        if i is None or not 0 <= i < len(self.energy):
            return
        key, _ = self.where[i]
        b = self.buckets[key]
        b.decay_to(self.picks)
        b.picks += 1
        e = self.energy[i]
        if gain > 0:
            b.gain += min(math.sqrt(gain), 4.0)
            e = min(CAP, e + 2.0 * min(gain, 16))
        else:
            e = max(self.base[i] * FLOOR, e * DECAY)
        self.energy[i] = e
        self._reweigh(i)

    def summary(self, name: Callable[[Hashable], str] = str, top: int = 8) -> dict[str, float]:
        """The buckets with the highest recent yield (for a report)."""
        for b in self.buckets.values():
            b.decay_to(self.picks)
        best = sorted(self.buckets.items(), key=lambda kv: -kv[1].rate)[:top]
        return {name(k): round(b.rate, 4) for k, b in best}
