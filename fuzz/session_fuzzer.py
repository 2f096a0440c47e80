#!/usr/bin/env python3
"""Atheris harness: sequences of requests and replies fed to a sans-IO Session.

Input: records (direction u8, length u16, bytes); see fuseproto/fuzz/inputs.py. The
oracle (fuseproto.fuzz.oracles.check_session): feed_request/feed_reply raise only
DecodeError or ProtocolError, an error leaves the session as it was (except completing a
request whose reply body is bad), check_valid() holds and pending stays bounded.
Mutation: 70% structure-aware (one record through the schema, or the sequence), 30%
libFuzzer's own.

    python fuzz/session_fuzzer.py corpus/session -dict=fuzz/session.dict
"""

import random
import sys

import atheris

# Instrument the code under test only (not the mutators, not construct's internals).
with atheris.instrument_imports(include=["fuseproto"], exclude=["fuseproto.fuzz"]):
    import fuseproto.session  # noqa: F401
    import fuseproto.wire.codec  # noqa: F401

from fuseproto.fuzz import inject, targets  # noqa: E402

TARGET = targets.SESSION


def TestOneInput(data: bytes) -> None:  # noqa: N802 -- libFuzzer's name
    TARGET.check(data)


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:  # noqa: N802
    rng = random.Random(seed)
    if rng.random() < targets.STRUCTURED_SHARE:
        return TARGET.mutate(data, max_size, rng)
    return atheris.Mutate(data, max_size)


def main() -> None:
    inject.apply_from_env()
    atheris.Setup(sys.argv, TestOneInput, custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
