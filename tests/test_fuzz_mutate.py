"""The structure-aware mutators' boundary weighting, their use of the oracle's decodes,
and the engine's fresh oracle per run."""

from __future__ import annotations

import collections
import dataclasses
import random

from construct import Container

from fuseproto.fuzz import engine, memo, mutate, oracles, registry
from fuseproto.wire import codec, messages
from fuseproto.wire.constants import FUSE_REMOVEMAPPING_MAX_ENTRY, fuse_opcode

_RM = int(fuse_opcode.FUSE_REMOVEMAPPING)


def test_counted_bounds_are_the_limited_counted_lists():
    assert mutate.counted_bounds(messages.request_parts(_RM)) == (
        ("entries", "count", mutate.AT_REMOVEMAPPING_MAX),)
    assert mutate.AT_REMOVEMAPPING_MAX == (FUSE_REMOVEMAPPING_MAX_ENTRY - 1,
                                           FUSE_REMOVEMAPPING_MAX_ENTRY,
                                           FUSE_REMOVEMAPPING_MAX_ENTRY + 1)
    # BATCH_FORGET's and NOTIFY_PRUNE's lists have no maximum; a name has no list.
    assert mutate.counted_bounds(messages.request_parts(fuse_opcode.FUSE_BATCH_FORGET)) == ()
    assert mutate.counted_bounds(messages.notification_parts(9)) == ()
    assert mutate.counted_bounds(messages.request_parts(fuse_opcode.FUSE_LOOKUP)) == ()


def test_removemapping_mutants_reach_the_entry_limit_and_one_either_side():
    """A REMOVEMAPPING request mutated 400 times: the limit itself (count derived, so
    the count and the entries agree) comes up often, and one on either side of it."""
    one = Container(moffset=0, len=4096)
    data = codec.encode_request(_RM, Container(fh=1, count=None, entries=[one, one]),
                                unique=2, nodeid=1)
    rng = random.Random(5)
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(400):
        try:
            req = codec.decode_request(mutate.mutate_request(data, rng))
        except Exception:  # noqa: BLE001,S112 -- only the mutants that decode are counted
            continue
        body = req.body
        if req.opcode == _RM and len(body["entries"]) == body["count"]:
            counts[body["count"]] += 1
    limit = FUSE_REMOVEMAPPING_MAX_ENTRY
    assert counts[limit] >= 40, counts
    assert counts[limit - 1] >= 5, counts  # 257 is refused by the decoder: not counted


def test_mutators_take_the_noted_decode_and_decode_what_was_not_noted():
    data = codec.encode_request(fuse_opcode.FUSE_LOOKUP, {"name": b"x"}, unique=2, nodeid=1)
    noted = object()
    memo.forget()
    memo.remember("request", data, (46, 0), noted)
    assert memo.decoded("request", data, 46, 0) is noted
    assert memo.decoded("request", data, 12, 0) is not noted  # another key: decoded
    assert memo.decoded("request", data, 12, 0).body["name"] == b"x"
    memo.forget()
    assert memo.decoded("request", data, 46, 0).body["name"] == b"x"
    assert memo.decoded("request", data[:-1], 46, 0) is None  # refused
    # The wire oracle notes what it decoded; a mutation leaves the noted body as it was.
    from fuseproto.fuzz import inputs

    oracles.check_wire(inputs.build_wire_input(inputs.WIRE_REQUEST, data))
    req = memo.decoded("request", data, 46, 0)
    before = dict(req.body)
    rng = random.Random(1)
    for _ in range(50):
        mutate.mutate_request(data, rng)
    assert memo.decoded("request", data, 46, 0) is req and dict(req.body) == before


def test_each_engine_run_starts_with_a_fresh_oracle(tmp_path):
    """run_loop calls the target's ``fresh`` first: the wire differential forgets the
    shapes of earlier runs, so a run with a seed checks the same whatever ran before."""
    calls = []
    target = registry.TARGETS["wire_decode"]
    spy = dataclasses.replace(target, fresh=lambda: calls.append(1))
    engine.run_loop(spy, iterations=5, seed=1)
    assert calls == [1]
    data = codec.encode_request(fuse_opcode.FUSE_GETATTR, {}, unique=2, nodeid=1)
    from fuseproto.fuzz import inputs

    data = inputs.build_wire_input(inputs.WIRE_REQUEST, data)

    def compared() -> int:
        return oracles.diff_stats()["compared"]

    target.fresh()
    n = compared()
    oracles.check_wire(data)
    assert compared() == n + 1  # a new shape: the construct runs
    oracles.check_wire(data)
    assert compared() == n + 1  # seen (and agreed on): not again
    target.fresh()
    oracles.check_wire(data)
    assert compared() == n + 2  # forgotten: new again
