"""The corpus's changeable energies (Weights) and the parent scheduler (fuzz/steer.py)."""

from __future__ import annotations

import bisect
import random
from collections import Counter

import pytest

from fuseproto.fuzz.corpus import Corpus, Weights
from fuseproto.fuzz.steer import FLOOR, Steer


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 100, 513])
def test_weights_find_matches_a_bisect_of_the_running_sums(n):
    rng = random.Random(n)
    w = Weights()
    vals = [rng.choice((0.0, 0.5, 1.0, 3.0, 33.0)) for _ in range(n)]
    for v in vals:
        w.append(v)
    for _ in range(3):
        cum, t = [], 0.0
        for v in vals:
            t += v
            cum.append(t)
        assert w.total == pytest.approx(t)
        for _ in range(500):
            x = rng.random() * t
            assert w.find(x) == min(bisect.bisect_right(cum, x), n - 1)
        i = rng.randrange(n)  # change one and check again
        vals[i] = rng.choice((0.0, 2.0, 40.0))
        w.set(i, vals[i])


def test_corpus_choose_follows_energy_and_a_zeroed_entry_is_never_picked():
    c: Corpus[str] = Corpus(10)
    for name, e in (("a", 1.0), ("b", 3.0), ("c", 6.0)):
        c.add(name, e)
    rng = random.Random(0)
    n = Counter(c.choose(rng) for _ in range(10_000))
    assert n["c"] > n["b"] > n["a"] > 500
    c.set_energy(2, 0.0)
    assert "c" not in {c.choose(rng) for _ in range(2000)}
    for i in range(3):
        c.set_energy(i, 0.0)
    assert {c.choose(rng) for _ in range(200)} == {"a", "b", "c"}  # all 0: uniform


def test_a_parent_that_gains_gets_more_time_one_that_does_not_decays_to_its_floor():
    c: Corpus[str] = Corpus(10)
    c.add("dry", 4.0)
    c.add("rich", 4.0)
    s = Steer(c)
    rng = random.Random(1)
    for _ in range(400):
        p = s.pick(rng)
        s.reward(3 if p == "rich" else 0)
    assert 4.0 * FLOOR <= c.energy(0) < 1.0
    assert c.energy(1) > 16.0
    lone: Corpus[str] = Corpus(1)
    lone.add("dry", 4.0)
    ls = Steer(lone)
    for _ in range(100):
        ls.pick(rng)
        ls.reward(0)
    assert lone.energy(0) == pytest.approx(4.0 * FLOOR)  # never below its floor
    picks = Counter(s.pick(rng) for _ in range(2000))  # energies as they are now
    assert picks["rich"] > 5 * picks["dry"]


def test_steer_files_entries_already_in_the_corpus_and_reward_without_a_pick_is_ignored():
    c: Corpus[str] = Corpus(3)
    c.add("seed", 1.0)
    s = Steer(c)
    s.reward(5)  # nothing picked yet: no effect
    assert c.energy(0) == 1.0
    assert s.add("x", 2.0) and s.add("y") and not s.add("z")  # the corpus is full
    assert s.pick(random.Random(0)) in ("seed", "x", "y")


def test_a_reward_counts_once_per_pick():
    c: Corpus[str] = Corpus(2)
    c.add("a", 4.0)
    s = Steer(c)
    s.pick(random.Random(0))
    s.reward(8)
    grown = c.energy(0)
    assert grown > 4.0
    s.reward(8)  # the same pick again: ignored
    assert c.energy(0) == grown
