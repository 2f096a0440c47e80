#!/usr/bin/env python3
"""Atheris harness: arbitrary bytes into fuseproto's decoders.

Input: a 4-byte envelope (kind, minor, opcode) then a FUSE message; see
fuseproto/fuzz/inputs.py. The oracle (fuseproto.fuzz.oracles.check_wire): decoders raise
only DecodeError, a decoded message re-encodes byte for byte, and the fast path and the
construct schema agree. Mutation: 70% structure-aware (fuseproto.fuzz.mutate), 30%
libFuzzer's own.

    python fuzz/wire_decode_fuzzer.py corpus/wire_decode -dict=fuzz/wire_decode.dict
"""

import sys

import atheris

# Instrument the code under test only: the decoders and encoders
# (fuseproto.wire.{codec,parts,ext}). Not the session (this target never calls it: the
# oracles import it after the block; instrumenting it was ~0.4 s of every start-up), not
# the mutators and oracles (fuseproto.fuzz, imported after the block), not the
# declarative reference the oracle compares with (wire.constructs; construct itself is
# outside fuseproto), and not the modules that only declare (errors: the exception
# classes; wire.constants, wire.structs: tables; wire.messages: the per-opcode tables
# and their cached lookups, whose edges are the same for every input; wire.decoded: the
# message classes, whose edges -- a header tuple kept, a body the decoders never leave
# LAZY -- are the same for every decoded input, ~4 traced calls per input;
# wire.codegen: the generator whose generated code is not instrumented either). Their
# edges were ~a third of the traced calls per input; each traced call costs a few
# hundred ns under libFuzzer (a builtin call costs ~15).
NOT_UNDER_TEST = ["fuseproto.fuzz", "fuseproto.session", "fuseproto.errors",
                  "fuseproto.wire.constants", "fuseproto.wire.structs",
                  "fuseproto.wire.messages", "fuseproto.wire.decoded",
                  "fuseproto.wire.codegen", "fuseproto.wire.constructs"]
with atheris.instrument_imports(include=["fuseproto"], exclude=NOT_UNDER_TEST):
    import fuseproto.wire.codec  # noqa: F401

from fuseproto.fuzz import inject, targets  # noqa: E402

TARGET = targets.WIRE_DECODE


def TestOneInput(data: bytes) -> None:  # noqa: N802 -- libFuzzer's name
    TARGET.check(data)


# atheris.Mutate is looked up per call: atheris rebinds it when libFuzzer starts.
CustomMutator = targets.libfuzzer_mutator(TARGET, lambda data, n: atheris.Mutate(data, n))


def main() -> None:
    inject.apply_from_env()
    atheris.Setup(targets.libfuzzer_flags(sys.argv), TestOneInput,
                  custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
