#!/usr/bin/env python3
"""Atheris harness: arbitrary bytes into fuseproto's decoders.

Input: a 4-byte envelope (kind, minor, opcode) then a FUSE message; see
fuseproto/fuzz/inputs.py. The oracle (fuseproto.fuzz.oracles.check_wire): decoders raise
only DecodeError, a decoded message re-encodes byte for byte, and the fast path and the
construct schema agree. Mutation: 70% structure-aware (fuseproto.fuzz.mutate), 30%
libFuzzer's own.

    python fuzz/wire_decode_fuzzer.py corpus/wire_decode -dict=fuzz/wire_decode.dict
"""

import random
import sys

import atheris

# Instrument the code under test only (not the mutators, not construct's internals).
with atheris.instrument_imports(include=["fuseproto"], exclude=["fuseproto.fuzz"]):
    import fuseproto.session  # noqa: F401
    import fuseproto.wire.codec  # noqa: F401

from fuseproto.fuzz import inject, targets  # noqa: E402

TARGET = targets.WIRE_DECODE


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
