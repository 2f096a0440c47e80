"""Muting known findings in the live loop (fuseproto.fuzz.mute): features and the Muter."""

from __future__ import annotations

import random

from construct import Container

from fuseproto.fuzz.mute import (
    MAX_SKIP,
    MIN_REPEATS,
    PASS_SHARE,
    SKIP_GAIN,
    Muter,
    header_features,
    request_features,
)
from fuseproto.wire import codec, structs
from fuseproto.wire.constants import FUSE_KERNEL_MINOR_VERSION as MINOR
from fuseproto.wire.constants import fuse_opcode as O

_IN = structs.FAST["fuse_in_header"]


def _lookup(name: bytes = b"file") -> bytes:
    return codec.encode_request(O.FUSE_LOOKUP, Container(name=name), unique=2, nodeid=1)


def _with_header(data: bytes, **fields: int) -> bytes:
    h = dict(_IN.parse(data, 0))
    h.update(fields)
    return _IN.build(h) + data[_IN.size:]


def test_features_name_the_malformations_and_pair_them_with_the_opcode():
    ok = _lookup()
    assert request_features(ok, 0, MINOR, 0) == {"FUSE_LOOKUP"}
    assert request_features(ok[:20], 0, MINOR, 0) == {"short"}
    assert request_features(ok, 2, MINOR, 0) == {"FUSE_LOOKUP", "area:2", "FUSE_LOOKUP+area:2"}
    # An extension area a daemon may read as part of the name.
    ext = _with_header(ok + bytes(8), len=len(ok) + 8, total_extlen=1)
    assert {"ext", "FUSE_LOOKUP+ext"} <= request_features(ext, 0, MINOR, 0)
    # The header's len past the bytes, and short of them (the daemon reads to len).
    longer = request_features(_with_header(ok, len=len(ok) + 8), 0, MINOR, 0)
    assert {"len>bytes", "FUSE_LOOKUP+len>bytes"} <= longer
    assert any(f.startswith("bad:") for f in longer)
    assert "len<bytes" in request_features(_with_header(ok, len=len(ok) - 3), 0, MINOR, 0)
    # Trailing bytes after the name's NUL: refused by our codec, named by how.
    assert "FUSE_LOOKUP+bad:TrailingDataError:" in request_features(
        _with_header(ok + b"xy", len=len(ok) + 2), 0, MINOR, 0)


def test_a_feature_is_muted_after_known_repeats_of_any_signatures():
    m = Muter()
    feats = {"FUSE_LOOKUP", "ext", "FUSE_LOOKUP+ext"}
    for _ in range(20):
        m.sent_with(feats)
    m.repeat(feats, known=False)  # a first hit is recorded, never counted
    assert not m.muted
    for _ in range(MIN_REPEATS - 1):
        m.repeat(feats)
    assert not m.muted and m.skip_chance(feats) == 0.0
    m.repeat(feats)  # the 5th known repeat (whatever its signature)
    assert "ext" in m.muted
    assert m.skip_chance(feats) == min(MAX_SKIP, 1 - PASS_SHARE / MIN_REPEATS,
                                       SKIP_GAIN * MIN_REPEATS / 20)
    # A mutant without a muted feature is never skipped.
    assert m.skip_chance({"FUSE_GETATTR"}) == 0.0
    rng = random.Random(1)
    assert not any(m.skip({"FUSE_GETATTR"}, rng) for _ in range(200))


def test_skip_follows_the_worst_muted_feature_and_keeps_a_share_sent():
    m = Muter()
    always = {"FUSE_NOTIFY_REPLY"}
    for _ in range(5):
        m.sent_with(always)
        m.repeat(always)
    early = m.skip_chance(always)
    assert early == 1 - PASS_SHARE / 5
    for _ in range(500):
        m.sent_with(always)
        m.repeat(always)
    # The more a feature brought a known finding back, the fewer of its mutants are sent.
    assert early < m.skip_chance(always) == MAX_SKIP
    # A mutant with that feature and a benign one: the worst decides.
    m.sent_with({"FUSE_READ"})
    assert m.skip_chance(always | {"FUSE_READ"}) == MAX_SKIP
    rng = random.Random(3)
    sent = sum(not m.skip(always, rng) for _ in range(5000))
    assert 0 < sent < 5000 * (1 - MAX_SKIP) * 2  # some still go out: a new finding can
    assert m.skipped == 5000 - sent
    # A rarely failing feature is seldom held back.
    rare = {"FUSE_WRITE"}
    for _ in range(1000):
        m.sent_with(rare)
    for _ in range(MIN_REPEATS):
        m.repeat(rare)
    assert 0 < m.skip_chance(rare) <= SKIP_GAIN * MIN_REPEATS / 1000 + 1e-9


def test_one_draw_checks_the_header_features_then_all():
    """The loop skips on the header's features before decoding; with one draw it is the
    same decision as against all features (whose chance is never lower)."""
    data = _with_header(_lookup() + b"xy", len=len(_lookup()) + 2)
    head = header_features(data, 0)
    full = request_features(data, 0, MINOR, 0, head)
    assert head < full and full == request_features(data, 0, MINOR, 0)
    m = Muter()
    bad = "FUSE_LOOKUP+bad:TrailingDataError:"
    for _ in range(MIN_REPEATS):
        m.sent_with(full)
        m.repeat({bad})
    assert m.skip_chance(head) == 0.0 and m.skip_chance(full) > 0.9
    assert not m.skip(head, 0.5) and m.skip(full, 0.5) and not m.skip(full, 0.999)
    assert m.skipped == 1


def test_the_harness_decodes_a_mutant_once_for_features_and_send():
    """The loop names a mutant's features from DaemonHarness.decode and send_many decodes
    the same bytes again: the second is the kept answer, not a second decode; other
    bytes, or another negotiated minor, decode afresh."""
    from types import SimpleNamespace

    from fuseproto.fuzz.harness import DaemonHarness

    h = DaemonHarness(SimpleNamespace(kind="c"))  # never started: decoding only
    ok = _lookup()
    first = h.decode(ok)
    assert first[1] is None and first[0].body.name == b"file"
    assert h.decode(bytes(bytearray(ok))) is first  # equal bytes: the kept answer
    bad = _with_header(ok + b"xy", len=len(ok) + 2)
    req, err = h.decode(bad)
    assert req is None and type(err).__name__ == "TrailingDataError"
    assert "FUSE_LOOKUP+bad:TrailingDataError:" in request_features(
        bad, 0, MINOR, 0, None, (req, err))
    h.minor = MINOR - 1
    assert h.decode(ok) is not first  # another minor: decoded again
    h.close()
