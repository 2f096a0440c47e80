"""Muting known findings in the live single-request loop (:mod:`.virtiofsd`).

A daemon that dies on a whole class of requests (the Rust worker panics on every name
with a NUL inside, on every reply area too small for its reply, on every NOTIFY_REPLY)
costs a restart each time a mutant of that class is sent, and teaches nothing new after
the first few. :func:`request_features` names what a request's finding may hang on (its
opcode, how our codec refuses it, a reply area smaller than the kernel's, a name with a
NUL inside, an extension area, and each of those paired with the opcode);
:class:`Muter` counts, per feature, the mutants sent with it and the known findings they
repeated (a signature already filed: the first hit of each signature is always sent and
recorded with its reproducer), and mutes a feature once known findings came back
:data:`MIN_REPEATS` times through it -- whichever signatures: the Rust worker's panics
on one kind of malformed request carry several messages (a name's NUL, an early end, a
bad length), one signature each, and counting each apart let every one of them come back
five times per feature before any was held back. A mutant carrying muted features is
skipped with :data:`SKIP_GAIN` times the share of the worst of them that led to a known finding
(measured on the mutants sent), at most ``1 -`` :data:`PASS_SHARE` ``/ repeats`` (and
:data:`MAX_SKIP`): a feature that always panics is almost never sent again, the less
the more it did, one that rarely does is seldom held back, and a new finding behind a
muted feature can still come up.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from ..errors import DecodeError
from ..wire import codec, structs
from ..wire.constants import opcode_name

__all__ = ["header_features", "request_features", "Muter", "MIN_REPEATS", "SKIP_GAIN", "MAX_SKIP", "PASS_SHARE"]

_IN = structs.FAST["fuse_in_header"]
#: A feature is muted once one finding signature came back this many times through it.
MIN_REPEATS = 5
#: A muted feature's mutants are skipped with this many times the share of them that
#: repeated a known finding, at most MAX_SKIP (a restart costs tens of requests).
SKIP_GAIN = 5.0
MAX_SKIP = 0.998
#: At most 1 - PASS_SHARE / repeats of a muted feature's mutants are skipped: the more
#: often it brought a known finding back, the fewer are still sent (after 5 repeats 2 in
#: 100, after 50 repeats 2 in 1,000, the least MAX_SKIP leaves).
PASS_SHARE = 0.1
# Body fields that carry a NUL-terminated name (a NUL inside one is a feature of its own).
_NAMES = ("name", "newname", "link")


def header_features(data: bytes, variant: int) -> set[str]:
    """The features :func:`request_features` reads from the header and the reply area
    alone (no decoding: the loop looks at these first, and a mutant they already mute is
    skipped without being decoded)."""
    if len(data) < _IN.size:
        return {"short"}
    hdr = _IN.parse(data, 0)
    op = opcode_name(hdr["opcode"])
    out = []
    if variant % 5 in (2, 4):
        out.append(f"area:{variant % 5}")
    if hdr["total_extlen"]:
        out.append("ext")
    if hdr["len"] != len(data):
        out.append("len>bytes" if hdr["len"] > len(data) else "len<bytes")
    return {op, *out, *(f"{op}+{f}" for f in out)}


def request_features(data: bytes, variant: int, minor: int, flags: int,
                     header: set[str] | None = None,
                     decoded: tuple[Any, DecodeError | None] | None = None) -> set[str]:
    """What a known finding may hang on: the opcode (``short``: no header); for a request
    our codec refuses, how (``bad:<error>``, with the field when it is the header's); a
    header ``len`` past the bytes or short of them (``len>bytes`` / ``len<bytes``); a
    reply area smaller than the kernel's (``area:<variant>``); a name with a NUL inside
    (``name:nul``); an extension area after the body (``ext``: a daemon that does not
    know extensions reads it as part of the last name). Each feature but the opcode also
    comes paired with it (``FUSE_LOOKUP+ext``): a cause that holds for one opcode only
    is seen apart from the same feature on the others. ``header``: this request's
    :func:`header_features` when already made; ``decoded``: ``data`` decoded with
    ``minor`` and ``flags`` when already done, as (request, None) or (None, the error)."""
    out = set(header) if header is not None else header_features(data, variant)
    if len(data) < _IN.size:
        return out
    op = opcode_name(_IN.parse(data, 0)["opcode"])
    if decoded is None:
        try:
            decoded = (codec.decode_request(data, minor, flags=flags), None)
        except DecodeError as e:
            decoded = (None, e)
    req: Any = decoded[0]
    err = decoded[1]
    if err is not None or req is None:
        path = getattr(err, "path", None) or ""
        field = path if path.startswith("fuse_in_header") else ""
        bad = f"bad:{type(err).__name__}:{field}"
        out.update((bad, f"{op}+{bad}"))
        return out
    body = req.body
    if isinstance(body, dict) and any(
            isinstance(body.get(k), bytes | bytearray) and b"\0" in body[k] for k in _NAMES):
        out.update(("name:nul", f"{op}+name:nul"))  # a name with a NUL inside, any opcode
    return out


class Muter:
    """Per-feature counts of mutants sent and of known findings they repeated; the
    muted features and how often a mutant with one is skipped (the module docstring)."""

    def __init__(self, min_repeats: int = MIN_REPEATS):
        self.min_repeats = min_repeats
        self.sent: dict[str, int] = {}  # mutants sent with the feature
        self.repeated: dict[str, int] = {}  # of those, ones that repeated a known finding
        self.muted: set[str] = set()
        self.skipped = 0

    def skip_chance(self, features: Iterable[str]) -> float:
        """How likely a mutant with ``features`` is to be skipped (0: none is muted)."""
        worst = -1.0
        for f in features:
            if f in self.muted:
                n = self.repeated[f]
                chance = min(1.0 - PASS_SHARE / n, SKIP_GAIN * n / max(1, self.sent.get(f, 0)))
                worst = max(worst, chance)
        return 0.0 if worst < 0 else min(MAX_SKIP, worst)

    def skip(self, features: Iterable[str], rng: random.Random | float) -> bool:
        """Whether to skip this mutant (counted in :attr:`skipped`); ``rng``: the
        generator to draw from, or the draw itself (one draw checked against the header's
        features first and then against all of them is one decision)."""
        if not self.muted:
            return False
        chance = self.skip_chance(features)
        u = rng if isinstance(rng, float) else rng.random()
        if chance and u < chance:
            self.skipped += 1
            return True
        return False

    def sent_with(self, features: Iterable[str]) -> None:
        """A mutant with ``features`` was sent."""
        for f in features:
            self.sent[f] = self.sent.get(f, 0) + 1

    def repeat(self, features: Iterable[str], known: bool = True) -> None:
        """A mutant sent with ``features`` hit a finding (``known``: one whose signature
        was filed before; the first hit of each signature does not count)."""
        if not known:
            return
        for f in features:
            n = self.repeated[f] = self.repeated.get(f, 0) + 1
            if n >= self.min_repeats:
                self.muted.add(f)
