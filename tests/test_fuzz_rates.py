"""What the fuzz targets do to be fast keeps what they check (issue 11, the rates; the
rates themselves are measured by benchmarks/bench_fuzz_rates.py, not here):

* the envelopes' packer and reader (made from the schemas) give the bytes and fields
  the construct schemas give, and refuse a schema they cannot follow;
* the fast random name is the one ``random.choice`` made, and leaves the rng alike;
* the sampled construct differential still catches a bug only it can see, with the
  default sampling, and the finding replays in a fresh state; a message it compared
  before is compared again once the fast path's verdict changed;
* the mutators' in-place field edits are the bytes decoding, changing that field and
  re-encoding give; the harness's mutator replays from libFuzzer's seed;
* the warm spare daemon: a restart takes it, everything it started is stopped by PID.
"""

from __future__ import annotations

import os
import random
import signal

import fuzz_mutants
import pytest
from construct import (
    Container,
    CString,
    GreedyBytes,
    Int8ul,
    Int16ub,
    Prefixed,
    Struct,
)
from fixtures_daemons import child_pids

from fuseproto.fuzz import inputs, mutate, oracles, registry, targets
from fuseproto.fuzz.harness import DaemonHarness
from fuseproto.wire import codec, messages, structs


@pytest.mark.parametrize("name", ["wire_decode", "session"])
def test_envelopes_are_the_schemas_bytes(name):
    rng = random.Random(4)
    target = registry.TARGETS[name]
    datas = [d for _n, d in target.corpus()]
    datas += [target.mutate(rng.choice(datas), 1 << 14, rng) for _ in range(300)]
    for d in datas:
        if name == "wire_decode":
            w = inputs.parse_wire_input(d)
            if w is None:
                continue
            msg = w.message
            if w.kind == inputs.WIRE_PAIR:
                msg = inputs.wire_pair_schema.build(dict(request=w.request, reply=w.message))
            op = w.opcode | (inputs.SETXATTR_EXT_BIT if w.setxattr_ext else 0)
            ref = inputs.wire_input_schema.build(dict(kind=w.kind, minor=w.minor, opcode=op,
                                                      message=msg))
            got = inputs.build_wire_input(w.kind, w.message, minor=w.minor, opcode=w.opcode,
                                          setxattr_ext=w.setxattr_ext, request=w.request)
            # and the reader: the schema's fields of the same bytes
            p = inputs.wire_input_schema.parse(d)
            assert (p.kind % 4, p.minor, p.opcode) == (w.kind, w.minor, op)
            if w.kind == inputs.WIRE_PAIR:
                # (a request length past the end: the reader takes what is there)
                if 2 + int.from_bytes(p.message[:2], "little") <= len(p.message):
                    pair = inputs.wire_pair_schema.parse(p.message)
                    assert (pair.request, pair.reply) == (w.request, w.message)
            else:
                assert p.message == w.message
        else:
            recs = inputs.parse_session_input(d)
            ref = inputs.session_input_schema.build(
                [dict(direction=int(r.is_reply), data=r.data) for r in recs])
            got = inputs.build_session_input(recs)
            if ref == d:  # no truncated last record: the schema reads the same records
                parsed = inputs.session_input_schema.parse(d)
                assert [(bool(r.direction & 1), r.data) for r in parsed] == list(map(tuple, recs))
        assert got == ref


@pytest.mark.parametrize("schema", [
    Struct("data" / GreedyBytes, "kind" / Int8ul),  # an integer after the bytes
    Struct("kind" / Int16ub, "data" / GreedyBytes),  # big-endian
    Struct("a" / Prefixed(Int8ul, GreedyBytes), "b" / Prefixed(Int8ul, GreedyBytes)),
    Struct("kind" / Int8ul, "name" / CString("ascii")),
])
def test_envelope_packer_refuses_a_layout_it_does_not_know(schema):
    """The packer comes from the schema or not at all: a schema it cannot pack as the
    schema builds is refused when the packer is made."""
    with pytest.raises(ValueError):
        inputs.Envelope(schema)


def test_random_name_is_random_choice():
    alphabet = b"abcxyz./\xff\x01"
    for n in (0, 1, 8, 64, 255, 256, 4096):
        for seed in range(25):
            a, b = random.Random(seed), random.Random(seed)
            assert mutate.random_name(a, n) == bytes(b.choice(alphabet) for _ in range(n))
            assert a.getstate() == b.getstate()


def test_sampled_differential_catches_a_bug_only_it_sees(tmp_path):
    """``ioctl_retry_wrong_bit`` decodes and re-encodes consistently (the roundtrip holds);
    only the construct reference disagrees. With the default sampling (new shapes, and 1
    in 8 others) it is still caught, after fewer construct parses than bodies, and the
    finding's input is caught again in a fresh state (a replay)."""
    every = oracles.DIFF_EVERY
    oracles.set_diff_every(8)
    try:
        before = oracles.diff_stats()
        st = fuzz_mutants.hunt("ioctl_retry_wrong_bit", seed=1, cap=10000, store_dir=tmp_path)
        after = oracles.diff_stats()
        assert st.findings and st.findings[0].kind == "differential", st.findings
        bodies = after["bodies"] - before["bodies"]
        compared = after["compared"] - before["compared"]
        assert 0 < compared < 0.6 * bodies  # sampled, yet caught
        with open(st.findings[0].reproducer, "rb") as f:
            data = f.read()
        oracles.set_diff_every(8)  # forget the shapes: a fresh process
        with fuzz_mutants.planted("ioctl_retry_wrong_bit"), pytest.raises(oracles.Bug):
            registry.TARGETS["wire_decode"].check(data)
        registry.TARGETS["wire_decode"].check(data)  # clean code: nothing
    finally:
        oracles.set_diff_every(every)


def _set_leaf(body, leaf, value):
    """Set a FastLayout leaf (``attr.ino``, ``spare[2]``) in a decoded body."""
    *path, last = leaf.split(".")
    for p in path:
        body = body[p]
    if last.endswith("]"):
        name, i = last[:-1].split("[")
        body[name][int(i)] = value
    else:
        body[last] = value


def _field_edits(kind, msg, op, minor=46, flags=0):
    """(expected re-encoded bytes, in-place bytes) for every header field and every
    field of the body's leading fixed structs of one seed message."""
    head = structs.FAST["fuse_in_header" if kind == "req" else "fuse_out_header"]
    if kind == "req":
        parts = messages.request_parts(op, minor, flags)
    elif kind == "rep":
        parts, decode = messages.reply_parts(op, minor), codec.decode_reply
    else:
        parts, decode = messages.notification_parts(op), codec.decode_notification
    for name, off, size, _derived, _deciding in mutate.fixed_fields(parts):
        if any(p.startswith("_") for p in name.split(".")):
            continue  # fuse.h's __reserved fields: copy_body drops them (built as 0)
        if kind == "req":
            msg_obj = codec.decode_request(msg, minor, flags=flags)
        else:
            msg_obj = decode(msg) if kind == "not" else decode(msg, op, minor)
        body = mutate.copy_body(msg_obj.body)
        _set_leaf(body, name, 5)
        if kind == "req":
            h = msg_obj.header
            again = codec.encode_request(op, body, unique=h["unique"], nodeid=h["nodeid"],
                                         uid=h["uid"], gid=h["gid"], pid=h["pid"], minor=minor,
                                         flags=flags, ext=msg_obj.ext, padding=h["padding"])
        elif kind == "rep":
            again = codec.encode_reply(op, body, unique=msg_obj.unique, minor=minor)
        else:
            again = codec.encode_notification(op, body)
        at = head.size + off
        yield name, again, msg[:at] + (5).to_bytes(size, "little") + msg[at + size:]


def test_field_edits_are_what_reencoding_gives():
    """The structured mutators write one field of the body's leading fixed structs in
    place instead of decode / change / encode: for every field of every seed message's
    body, the two give the same bytes (the offsets are the schema's)."""
    n = 0
    for name, data in registry.TARGETS["wire_decode"].corpus():
        w = inputs.parse_wire_input(data)
        kind = name.split("-")[0]
        if kind == "req":
            op = structs.FAST["fuse_in_header"].parse(w.message)["opcode"]
        elif kind in ("rep", "notify"):
            op = w.opcode if kind == "rep" else structs.FAST["fuse_out_header"].parse(
                w.message)["error"]
        else:
            continue
        flags = oracles.SETXATTR_EXT if w.setxattr_ext else 0
        for field, again, edited in _field_edits(kind[:3], w.message, op, w.minor, flags):
            assert again == edited, (name, field)
            n += 1
    assert n > 300


def test_the_harness_mutator_replays_from_libfuzzers_seed():
    calls = [(d, 4096, 1000 + i) for i, (_n, d) in enumerate(
        registry.TARGETS["wire_decode"].corpus())]

    def run(first_seed):
        m = targets.libfuzzer_mutator(registry.TARGETS["wire_decode"], lambda d, n: d[::-1])
        return [m(d, n, first_seed if i == 0 else s) for i, (d, n, s) in enumerate(calls)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert targets.libfuzzer_flags(["h.py", "corpus"]) == ["h.py", "-max_len=8192", "corpus"]
    assert targets.libfuzzer_flags(["h.py", "-max_len=64"]) == ["h.py", "-max_len=64"]


def test_a_message_compared_before_is_compared_again_when_the_fast_path_changes(monkeypatch):
    """The differential skips the construct on a message it already compared only while
    the fast path gives the verdict that agreed then."""
    look = codec.encode_reply(1, Container(nodeid=7, attr=Container(ino=7)), unique=2)
    data = inputs.build_wire_input(inputs.WIRE_REPLY, look, opcode=1)
    every = oracles.DIFF_EVERY
    oracles.set_diff_every(1)
    try:
        oracles.check_wire(data)
        before = oracles.diff_stats()
        oracles.check_wire(data)  # the same message: not parsed by the construct again
        after = oracles.diff_stats()
        assert after["repeats"] == before["repeats"] + 1
        assert after["compared"] == before["compared"]
        fast_pair = structs.fast_pair

        def wrong_pair(head, name, size=None):  # the fixed reply's fast path, broken
            st, parse = fast_pair(head, name, size)

            def bad(buf, off=0):
                values, body = parse(buf, off)
                body["generation"] ^= 1
                return values, body
            return st, bad

        monkeypatch.setattr(codec.structs, "fast_pair", wrong_pair)
        monkeypatch.setattr(codec, "_KINDS", {})
        with pytest.raises(oracles.Bug, match="differential"):
            oracles.check_wire(data)
    finally:
        oracles.set_diff_every(every)


def test_warm_spare_is_taken_and_everything_is_stopped(daemon_installations):
    inst = daemon_installations["c"]
    children = child_pids()
    with DaemonHarness(inst, spare=True) as h:
        assert h.spare_allowed()
        first = h.daemon
        assert first is not None and first.pid is not None
        pids = [first.pid]
        for _ in range(3):
            h.daemon.signal(signal.SIGKILL)  # a crash
            h.start()
            assert h.daemon is not None and h.daemon.pid not in pids
            pids.append(h.daemon.pid)
            seed = h.seed_requests()[0]
            assert h.send(seed).finding is None  # the adopted spare serves, set up
        assert first.poll() is not None  # stopped and reaped
        spare_state = h._spare  # noqa: SLF001 -- the test looks inside
        assert spare_state is not None and spare_state.made >= 3
        workdir = h.workdir
    # close(): the untaken spare and every retired daemon stopped, the work dir gone.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert child_pids() <= children
    assert not os.path.exists(workdir)


def test_spares_beside_dax_and_instrumented_daemons_not_with_one_shared_map():
    from fuseproto import daemons
    from fuseproto.fuzz.coverage import ENV_VAR

    # Each daemon gets its own edge map (test_fuzz_coverage.py) and a DAX daemon its own
    # window, backend channel and mapping record (test_fuzz_spare_dax.py): spares allowed.
    # A caller that names one edge map for every daemon in env gets none (two daemons
    # would light one map).
    for variant in ("c", "c-asan-cov", "c-dax", "c-dax-asan-cov"):
        inst = daemons.find(variant)
        if inst is None:
            continue
        h = DaemonHarness(inst, spare=True)
        assert h.spare_allowed(), variant
        h.close()
        h = DaemonHarness(inst, spare=True, env={ENV_VAR: "/fuseproto-test-one-map"})
        assert not h.spare_allowed(), variant
        h.close()


def _paths_reference(obj, want, prefix=()):
    """The walk mutate_body did once per kind of field (the reference for its one walk)."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj[:16])
    else:
        return []
    out = []
    for k, v in items:
        if isinstance(k, str) and k.startswith("_"):
            continue
        if want(k, v):
            out.append((*prefix, k))
        elif isinstance(v, dict | list):
            out.extend(_paths_reference(v, want, (*prefix, k)))
    return out


def test_one_walk_finds_the_paths_of_three():
    """mutate_body's one walk gives, in order, the integer, name and field-list paths
    three walks gave: on every seed body and mutants of them, and on a body with bools,
    private keys, lists in lists and field lists inside field lists."""
    wants = (
        lambda k, v: isinstance(v, int) and not isinstance(v, bool),
        lambda k, v: isinstance(v, bytes) and k in mutate._BYTES_FIELDS,  # noqa: SLF001
        lambda k, v: isinstance(v, list) and isinstance(k, str),
    )
    rng = random.Random(7)
    bodies = [Container(a=True, _b=1, c=[[1, b"x"], Container(name=b"n", d=[2])],
                        e=Container(entries=[Container(data=b"", f=[3], g=4)] * 20))]
    target = registry.TARGETS["wire_decode"]
    datas = [d for _n, d in target.corpus()]
    datas += [target.mutate(rng.choice(datas), 1 << 14, rng) for _ in range(300)]
    for d in datas:
        w = inputs.parse_wire_input(d)
        try:
            if w.kind == inputs.WIRE_REQUEST:
                bodies.append(codec.decode_request(w.message, w.minor).body)
            elif w.kind == inputs.WIRE_REPLY:
                bodies.append(codec.decode_reply(w.message, w.opcode, w.minor).body)
        except Exception:  # noqa: BLE001,S112 -- only bodies that decode
            continue
    assert len(bodies) > 100
    for body in bodies:
        got: tuple[list, list, list] = ([], [], [])
        mutate._leaf_paths(body, *got)  # noqa: SLF001
        assert got == tuple(_paths_reference(body, want) for want in wants)


def test_restamp_is_the_header_schemas_parse_change_build():
    """restamp writes len (and a request's total_extlen) at the schema's offsets: the
    bytes the header schema's parse, change and build give, for any bytes."""
    rng = random.Random(3)
    for _ in range(500):
        data = rng.randbytes(rng.choice((0, 8, 15, 16, 17, 39, 40, 41, 100, 4096)))
        for request, fl in ((True, structs.FAST["fuse_in_header"]),
                            (False, structs.FAST["fuse_out_header"])):
            want = data
            if len(data) >= fl.size:
                hdr = dict(fl.parse(data, 0))
                hdr["len"] = len(data)
                if request:
                    hdr["total_extlen"] = 0
                want = fl.build(hdr) + data[fl.size:]
            assert mutate.restamp(data, request=request) == want
