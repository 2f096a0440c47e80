#!/usr/bin/env python3
"""Atheris harness: a geometry and operations drive DAX window managers.

Each input chooses the manager (OSv, OSv aggressive, Linux; FUSEPROTO_DAX_MANAGER fixes
one, or names package.module:factory), the map alignment, the policy's unit, the window
(1 to 402 units), the mounts and the files' sizes, then runs up to 32 operations (reads,
writes, forgets, OSv's direct map/unmap, Linux pins and reclaim worker, device refusals,
mounts); every invariant of fuseproto.dax.invariants watches (see
fuseproto/fuzz/dax_target.py, dax_ops.py, dax_run.py). FUSEPROTO_DAX_DEVICE=c-dax runs the
same inputs against the real DAX daemon (one per process) and its real window.

    python fuzz/dax_fuzzer.py corpus/dax -dict=fuzz/dax.dict
"""

import ctypes
import os
import random
import sys

import atheris

# Instrument the managers only (not the model device, the invariants that judge them, the
# fuzzer's own modules, or construct). The device's coverage cost 2.4 M of the 8 M
# instructions an input took and steered no better: over six seeds the hardest DAX
# variants were caught as often and as fast without it (fuzz/README.md, "The DAX target").
# atheris instruments every module of a named package imported inside the block, so what
# the managers import (the codec, the messages, the window, the device) comes first.
import fuseproto.dax.device  # noqa: E402, F401
import fuseproto.dax.host  # noqa: E402, F401
import fuseproto.dax.messages  # noqa: E402, F401
import fuseproto.transport.window  # noqa: E402, F401

with atheris.instrument_imports(include=["fuseproto.dax.osv", "fuseproto.dax.linux",
                                         "fuseproto.dax.manager"]):
    import fuseproto.dax.registry  # noqa: F401 -- imports the three

from fuseproto.fuzz import dax_target, inject, targets  # noqa: E402

TARGET = dax_target.DAX


LIVE = os.environ.get(dax_target.ENV_DEVICE, "model") not in ("", "model")


def _stop_live(_arg: object = None) -> None:
    from fuseproto.fuzz import dax_live

    dax_live.close_session()  # the daemon stopped by PID, its scratch directory removed


# libFuzzer ends the process with exit() (time up) or abort() (a finding) and Python's
# atexit never runs: a C atexit handler stops the live daemon at the normal end, and a
# finding stops it before the exception reaches libFuzzer.
_AT_EXIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_stop_live)
if LIVE:  # glibc exports atexit() as __cxa_atexit(func, arg, dso_handle)
    ctypes.CDLL(None).__cxa_atexit(_AT_EXIT, None, None)


def TestOneInput(data: bytes) -> None:  # noqa: N802 -- libFuzzer's name
    if not LIVE:
        TARGET.check(data)
        return
    try:
        TARGET.check(data)
    except BaseException:
        _stop_live()
        raise


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:  # noqa: N802
    rng = random.Random(seed)
    if rng.random() < targets.STRUCTURED_SHARE:
        return TARGET.mutate(data, max_size, rng)
    return atheris.Mutate(data, max_size)


def main() -> None:
    inject.apply_from_env()
    atheris.Setup(sys.argv, TestOneInput, custom_mutator=CustomMutator)
    dax_target.tune_gc()  # after the imports: they are frozen out of every collection
    atheris.Fuzz()


if __name__ == "__main__":
    main()
