"""The in-process fuzz targets of the wire layer and the session: oracle + structure-aware
mutator + seeds, as :class:`Target` objects (:data:`WIRE_DECODE`, :data:`SESSION`).

``fuzz/<name>_fuzzer.py`` (atheris, coverage-guided) and the pure-Python loop in
:mod:`.engine` (tests, replay, environments without atheris) both use these objects, so
what the campaign runs and what a test runs is the same code. The table of every target
by name is :mod:`.registry`.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..wire import codec, structs
from ..wire.constants import fuse_opcode
from . import inputs, memo, mutate, oracles, seeds

__all__ = ["Target", "WIRE_DECODE", "SESSION", "STRUCTURED_SHARE", "wire_mutator",
           "session_mutator", "libfuzzer_mutator", "libfuzzer_flags", "LIBFUZZER_DEFAULTS"]

# libFuzzer's structured/byte mix: this share of custom_mutator calls goes through the
# schema, the rest through libFuzzer's own byte mutations (atheris.Mutate).
STRUCTURED_SHARE = 0.7
_OPS = [int(m) for m in fuse_opcode]
_OUT = structs.FAST["fuse_out_header"]
_IN = structs.FAST["fuse_in_header"]
_OUT_UNIQUE, _IN_UNIQUE = _OUT.fields.index("unique"), _IN.fields.index("unique")


@dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[bytes], Any]
    mutate: Callable[[bytes, int, random.Random], bytes]  # structured only
    corpus: Callable[[], Iterator[tuple[str, bytes]]]
    description: str
    requires: tuple[str, ...] = ()  # modules the oracle imports when it runs
    # Forgets what earlier runs in this process left in the oracle (the wire
    # differential's shapes seen): a run then checks as in a fresh process.
    fresh: Callable[[], None] | None = None

    @property
    def available(self) -> bool:
        """Every module in ``requires`` can be imported here."""
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    @property
    def fuzzer(self) -> str:
        """The atheris harness's file name in ``fuzz/``."""
        return f"{self.name}_fuzzer.py"


#: libFuzzer flags an atheris harness sets unless its command line gives them: the
#: campaign's -max_len (libFuzzer's own default is the corpus's longest input, at least
#: 4096: a READ reply of a page, a name of PATH_MAX, 257 REMOVEMAPPING entries need more).
#: -len_control needs no default: libFuzzer turns it off for a custom mutator.
LIBFUZZER_DEFAULTS = ("-max_len=8192",)


def libfuzzer_flags(argv: list[str]) -> list[str]:
    """``argv`` with each of :data:`LIBFUZZER_DEFAULTS` it does not set, after the
    program name."""
    given = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")}
    extra = [f for f in LIBFUZZER_DEFAULTS if f.split("=", 1)[0] not in given]
    return [*argv[:1], *extra, *argv[1:]]


def libfuzzer_mutator(target: Target, byte_mutator: Callable[[bytes, int], bytes]
                      ) -> Callable[[bytes, int, int], bytes]:
    """The ``custom_mutator`` of an atheris harness: :data:`STRUCTURED_SHARE` of the calls
    through ``target.mutate``, the rest through ``byte_mutator`` (``atheris.Mutate``).

    One :class:`random.Random`, seeded from the first call's seed: every choice is still a
    function of libFuzzer's ``-seed`` and the order of the calls (a run replays with the
    same seed), but no Random is seeded per call (that was ~7 us, 3% of an execution)."""
    rng = random.Random()
    seeded = False

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        nonlocal seeded
        if not seeded:
            rng.seed(seed)
            seeded = True
        if rng.random() < STRUCTURED_SHARE:
            return target.mutate(data, max_size, rng)
        return byte_mutator(data, max_size)

    return mutator


def wire_mutator(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """Mutate a wire input's message through the schema; sometimes its envelope."""
    w = memo.envelope(data)
    if w is None:
        return mutate.mutate_bytes(data, rng, max_size)
    r = rng.random()
    kind, minor, opcode, msg, req = w.kind, w.minor, w.opcode, w.message, w.request
    if r < 0.08:
        minor = rng.choice((0, 4, 8, 9, 12, 22, 23, 28, 31, 36, 38, 46, 255))
    elif r < 0.14:
        opcode = rng.choice(_OPS) if rng.random() < 0.9 else rng.getrandbits(15)
    elif r < 0.18:
        kind = rng.randrange(4)
    flags = oracles.SETXATTR_EXT if w.setxattr_ext else 0
    if kind == inputs.WIRE_REQUEST:
        msg = mutate.mutate_request(msg, rng, minor=minor, flags=flags, max_size=max_size)
    elif kind == inputs.WIRE_REPLY:
        msg = mutate.mutate_reply(msg, opcode, rng, minor=minor, max_size=max_size)
    elif kind == inputs.WIRE_NOTIFICATION:
        msg = mutate.mutate_notification(msg, rng, max_size=max_size)
    else:
        if rng.random() < 0.3:
            req = mutate.mutate_request(req, rng, minor=minor, flags=flags, max_size=4096)
        else:
            try:
                request: Any = memo.decoded("request", req, minor, flags)
            except Exception:  # noqa: BLE001 -- not a message: the reply to the opcode
                request = None
            if request is None:
                request = opcode
            msg = mutate.mutate_reply(msg, request, rng, minor=minor, max_size=max_size)
    out = inputs.build_wire_input(kind, msg, minor=minor, opcode=opcode,
                                  setxattr_ext=w.setxattr_ext, request=req[:0xFFFF])
    return out[:max_size]


def session_mutator(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """Mutate one record through the schema, or the sequence (drop, repeat, swap, a
    burst, an INTERRUPT of an earlier request, pair a reply with another request's
    unique)."""
    recs = inputs.parse_session_input(data)
    if not recs:
        return mutate.mutate_bytes(data, rng, max_size)
    r = rng.random()
    i = rng.randrange(len(recs))
    if r < 0.6:
        rec = recs[i]
        if rec.is_reply:
            request: Any = _request_for(recs, i)
            new = mutate.mutate_reply(rec.data, request, rng, max_size=4096)
        else:
            new = mutate.mutate_request(rec.data, rng, flags=seeds.INIT_FLAGS, max_size=4096)
        recs[i] = inputs.SessionRecord(rec.is_reply, new)
    elif r < 0.7 and len(recs) > 1:
        del recs[i]
    elif r < 0.76:
        recs.insert(rng.randrange(len(recs) + 1), recs[i])
    elif r < 0.82:
        # A burst: copies of one request under fresh uniques, all in flight at once
        # (reaches max_pending; an INTERRUPT copied so interrupts the same request again).
        rec, at = recs[i], rng.randrange(len(recs) + 1)
        if len(rec.data) >= _IN.size and not rec.is_reply:
            hdr = dict(_IN.parse(rec.data, 0))
            base = rng.getrandbits(16) << 1
            for k in range(rng.choice((2, 4, 8, 9, 16))):
                hdr["unique"] = base + 2 * k + 2 + (hdr["unique"] & 1)
                recs.insert(at, inputs.SessionRecord(False, _IN.build(hdr) + rec.data[_IN.size:]))
        else:
            recs.insert(at, rec)
    elif r < 0.85:
        _interrupt(recs, i, rng)
    elif r < 0.9 and len(recs) > 1:
        j = rng.randrange(len(recs))
        recs[i], recs[j] = recs[j], recs[i]
    else:
        # Re-address a reply (or flip a record's direction).
        rec = recs[i]
        if rec.is_reply and len(rec.data) >= 16:
            hdr = dict(_OUT.parse(rec.data, 0))
            hdr["unique"] = rng.choice((0, 1, 2, 3, 4, hdr["unique"] ^ 1, 1 << 63,
                                        (1 << 63) | hdr["unique"]))
            recs[i] = inputs.SessionRecord(True, _OUT.build(hdr) + rec.data[16:])
        else:
            recs[i] = inputs.SessionRecord(not rec.is_reply, rec.data)
    return inputs.build_session_input(recs[:64])[:max_size]


def _interrupt(recs: list[inputs.SessionRecord], i: int, rng: random.Random) -> None:
    """An INTERRUPT of record ``i`` (a request) after it, as the kernel sends one for a
    request in flight (its unique with bit 0 set), in place of a later record (the
    input keeps its length; the end if there is none); half the time a second one
    follows under another odd unique (the kernel sends it again after -EAGAIN; a second
    INTERRUPT of one request is a case the session must keep apart)."""
    rec = recs[i]
    if rec.is_reply or len(rec.data) < _IN.size:
        return
    target = _IN.struct.unpack_from(rec.data, 0)[_IN_UNIQUE]
    uniques = [target | 1]
    if rng.random() < 0.5:
        uniques.append((rng.getrandbits(16) << 1) | 1)
    new = [inputs.SessionRecord(False, codec.encode_request(
        fuse_opcode.FUSE_INTERRUPT, {"unique": target}, unique=u)) for u in uniques]
    at = rng.randrange(i + 1, len(recs) + 1)
    recs[at:at + 1] = new


def _request_for(recs: list[inputs.SessionRecord], i: int) -> Any:
    """The decoded request a reply at ``i`` answers (by unique), else LOOKUP's opcode.
    Uniques are compared in the headers; only a request that carries the reply's unique
    is decoded."""
    data = recs[i].data
    if len(data) >= _OUT.size:
        unique = _OUT.struct.unpack_from(data, 0)[_OUT_UNIQUE]
        for rec in recs[:i]:
            if (not rec.is_reply and len(rec.data) >= _IN.size
                    and _IN.struct.unpack_from(rec.data, 0)[_IN_UNIQUE] == unique):
                try:
                    return codec.decode_request(rec.data, flags=seeds.INIT_FLAGS)
                except Exception:  # noqa: BLE001,S112 -- any request that decodes will do
                    continue
    return fuse_opcode.FUSE_LOOKUP


WIRE_DECODE = Target(
    "wire_decode", oracles.check_wire, wire_mutator, seeds.wire_inputs,
    "bytes -> decode_request/reply/notification: DecodeError only, roundtrip, "
    "fast path vs construct", fresh=lambda: oracles.set_diff_every(oracles.DIFF_EVERY))
SESSION = Target(
    "session", oracles.check_session, session_mutator, seeds.session_inputs,
    "request/reply sequences -> Session: DecodeError/ProtocolError only, no state "
    "change on error, check_valid, bounded pending")
