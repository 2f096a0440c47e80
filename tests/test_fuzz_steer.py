"""The corpus's changeable energies (Weights) and the parent scheduler (fuzz/steer.py)."""

from __future__ import annotations

import bisect
import random
from collections import Counter

import pytest

from fuseproto.fuzz.corpus import Corpus, Weights
from fuseproto.fuzz.steer import CULL_EVERY, FLOOR, UNFAVOURED, Steer, request_bucket


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
    s = Steer(c, request_bucket)
    for i in range(10):
        s.add((lookup + bytes([i]), 0))
    s.add((getattr_, 0))
    s.add((b"ab", 0))  # shorter than a header: bucket -1
    assert set(s.buckets) == {1, 3, -1}
    rng = random.Random(2)
    got: Counter[int] = Counter()
    for _ in range(6000):
        item = s.pick(rng)
        op = request_bucket(item)
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


def test_each_edge_favours_its_smallest_entry_and_the_rest_are_picked_less():
    c: Corpus[str] = Corpus(10)
    s = Steer(c)
    for name in ("a", "b", "c", "d"):
        s.add(name, 4.0)
    s.favour(0, [1, 2, 3], 10)  # a: the cheapest entry running 2 and 3
    s.favour(1, [1], 2)  # b: the cheapest running 1
    s.favour(2, [2], 50)  # c: runs nothing more cheaply than another: no favourite
    s.favour(9, [7], 1)  # no such entry: ignored
    s.favour(3, [], 1)  # d: no edges known
    assert s.top == {1: (2, 1), 2: (10, 0), 3: (10, 0)}
    rng = random.Random(4)
    s.pick(rng)  # the first pick culls
    assert s.favoured == {0, 1}
    assert c.energy(0) == c.energy(1) == 4.0
    assert c.energy(2) == c.energy(3) == pytest.approx(4.0 * UNFAVOURED)
    s.add("e", 4.0)  # filed after the cull: counts fully until the next one
    assert c.energy(4) == 4.0
    s.favour(4, [2, 3, 8], 1)  # e: now cheapest for 2, 3 and the only one for 8
    for _ in range(CULL_EVERY):
        s.pick(rng)
    assert s.favoured == {1, 4}
    assert c.energy(0) == pytest.approx(4.0 * UNFAVOURED) and c.energy(4) == 4.0


def test_touched_lists_the_counters_an_input_changed(tmp_path):
    from fuseproto.fuzz.coverage import HEADER_SIZE, CoverageMap

    with CoverageMap.create(256, str(tmp_path)) as cov:
        before = cov.counters()
        cov.mm[HEADER_SIZE + 3] = 1
        cov.mm[HEADER_SIZE + 200] = 7
        assert cov.touched(before) == [3, 200]
        again = cov.counters()
        cov.mm[HEADER_SIZE + 3] = 2  # an edge seen before runs again: touched, not new
        assert cov.touched(again) == [3]
        assert cov.touched(b"short") == []  # a snapshot of another size: nothing


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
