"""The corpus's changeable energies (Weights) and the parent scheduler (fuzz/steer.py)."""

from __future__ import annotations

import bisect
import random
from collections import Counter

import pytest

from fuseproto.fuzz.corpus import Corpus, Weights
from fuseproto.fuzz.steer import FLOOR, Steer


def opcode_of(item: tuple[bytes, int]) -> int:
    """A single-request entry's bucket in these tests: its opcode (-1: too short)."""
    return int.from_bytes(item[0][4:8], "little") if len(item[0]) >= 8 else -1


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


def test_buckets_share_time_by_recent_yield_and_a_dry_one_keeps_a_floor():
    c: Corpus[tuple[bytes, int]] = Corpus(100)
    lookup = bytes(4) + (1).to_bytes(4, "little")  # opcode 1
    getattr_ = bytes(4) + (3).to_bytes(4, "little")  # opcode 3
    s = Steer(c, opcode_of)
    for i in range(10):
        s.add((lookup + bytes([i]), 0))
    s.add((getattr_, 0))
    s.add((b"ab", 0))  # shorter than a header: bucket -1
    assert set(s.buckets) == {1, 3, -1}
    rng = random.Random(2)
    got: Counter[int] = Counter()
    for _ in range(6000):
        item = s.pick(rng)
        op = opcode_of(item)
        got[op] += 1
        s.reward(1 if op == 3 else 0)  # only GETATTR mutants keep gaining
    assert got[3] > got[1] and got[3] > got[-1]
    assert got[1] > 100 and got[-1] > 100  # never starved
    assert list(s.summary(top=1)) == ["3"]


def test_steer_files_entries_already_in_the_corpus_and_reward_without_a_pick_is_ignored():
    c: Corpus[str] = Corpus(3)
    c.add("seed", 1.0)
    s = Steer(c)
    s.reward(5)  # nothing picked yet: no effect
    assert c.energy(0) == 1.0
    assert s.add("x", 2.0) and s.add("y") and not s.add("z")  # the corpus is full
    assert s.pick(random.Random(0)) in ("seed", "x", "y")


def test_rewards_by_index_for_picks_in_flight_together():
    c: Corpus[str] = Corpus(4)
    s = Steer(c)
    s.add("a", 4.0)
    s.add("b", 4.0)
    rng = random.Random(5)
    picked = [s.pick_index(rng) for _ in range(6)]  # one batch of six mutants
    for i in picked:
        s.reward(8 if c.items[i] == "b" else 0, i)
    if "b" in (c.items[i] for i in picked):
        assert c.energy(1) > 4.0
    if "a" in (c.items[i] for i in picked):
        assert c.energy(0) < 4.0
    s.reward(3, 99)  # no such entry: ignored
