"""Parent scheduling for the live loops, by what each pick gained: which corpus entry is
mutated next.

A loop tells :meth:`Steer.reward` what the mutant of the last :meth:`Steer.pick` gained
-- new daemon edges when it steers by coverage, 1 for a new outcome class otherwise (so
the outcome-class control of the benchmarks schedules by its own signal too). The
parent's energy (:meth:`.corpus.Corpus.set_energy`, which the corpus picks by) grows with
a gain and shrinks (down to a floor of a tenth of what it was given) with each pick that
gained nothing: an input whose mutants stopped finding anything gets less time, one that
keeps finding gets more (AFL's per-entry energy, without its per-entry budget).

(Opcode buckets weighted by recent yield, and AFL-style favourites, were measured on the
live C daemon in the coverage benchmark and gained nothing, 0.98x-1.02x: they are gone.)

The corpus stays the loop's own (:class:`.corpus.Corpus`: ``add``, ``len``, saving);
:meth:`Steer.add` adds to it and remembers the entry's starting energy.
"""

from __future__ import annotations

import random
from typing import Generic, TypeVar

from .corpus import Corpus

__all__ = ["Steer", "DECAY", "FLOOR", "CAP"]

T = TypeVar("T")

#: A pick that gained nothing multiplies its parent's energy by this.
DECAY = 0.9
#: A parent's energy never falls below this share of what it was given.
FLOOR = 0.1
#: Nor grows above this.
CAP = 64.0


class Steer(Generic[T]):
    """Schedules ``corpus``'s entries by energy (see the module docstring)."""

    def __init__(self, corpus: Corpus[T]):
        self.corpus = corpus
        self.base = [corpus.energy(i) for i in range(len(corpus))]  # energy it was given
        self.last: int | None = None  # corpus index of the last pick

    def add(self, item: T, energy: float = 1.0) -> bool:
        """Add ``item`` to the corpus (False: the corpus is full)."""
        if not self.corpus.add(item, energy):
            return False
        self.base.append(energy)
        return True

    def pick(self, rng: random.Random) -> T:
        """A parent, chosen by energy."""
        self.last = self.corpus.choose_index(rng)
        return self.corpus.items[self.last]

    def reward(self, gain: float) -> None:
        """What the mutant of the last pick gained (0: nothing); once per pick."""
        i, self.last = self.last, None
        if i is None:
            return
        e = self.corpus.energy(i)
        grown = min(CAP, e + 2.0 * min(gain, 16))
        self.corpus.set_energy(i, grown if gain > 0 else max(self.base[i] * FLOOR, e * DECAY))
