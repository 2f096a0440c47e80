#!/usr/bin/env python3
"""Atheris harness: operations from FuzzedDataProvider drive a DAX window manager.

The manager (OSv, OSv aggressive, Linux, or FUSEPROTO_DAX_MANAGER=package.module:factory)
runs over the model device; after every read/write/forget/pin the invariants of
fuseproto.dax.invariants and the manager's check_valid() are checked (see
fuseproto/fuzz/dax_target.py).

    python fuzz/dax_fuzzer.py corpus/dax
"""

import random
import sys

import atheris

# Instrument the code under test only (not the mutators, not construct's internals).
with atheris.instrument_imports(include=["fuseproto"], exclude=["fuseproto.fuzz"]):
    import fuseproto.dax.invariants  # noqa: F401
    import fuseproto.dax.linux  # noqa: F401
    import fuseproto.dax.osv  # noqa: F401

from fuseproto.fuzz import dax_target, inject, targets  # noqa: E402

TARGET = dax_target.DAX


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
