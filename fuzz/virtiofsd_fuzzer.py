#!/usr/bin/env python3
"""Atheris harness: one structure-aware FUSE request per input into a real virtiofsd.

Input: variant u8 (reply-area size choice) + one FUSE request. The daemon
(FUSEPROTO_FUZZ_DAEMON=c|rust|PATH, default c) is started sandboxed on a scratch
directory and restarted after every crash; crashes, panics, exits and hangs raise (so
libFuzzer keeps the input), protocol violations are recorded under
FUSEPROTO_FUZZ_OUT (default out/virtiofsd-atheris/findings) and fuzzing goes on.
Python coverage says little about a C or Rust daemon: the campaign runs this target
with its own loop (outcome-class feedback, fuseproto.fuzz.virtiofsd.fuzz_daemon).

    FUSEPROTO_FUZZ_DAEMON=rust python fuzz/virtiofsd_fuzzer.py -max_total_time=60
"""

import atexit
import os
import random
import sys

import atheris

from fuseproto.fuzz import inject, mutate
from fuseproto.fuzz.findings import Finding, FindingStore
from fuseproto.fuzz.harness import DaemonHarness, resolve_installation

HARNESS = None
STORE = FindingStore(os.environ.get("FUSEPROTO_FUZZ_OUT", "out/virtiofsd-atheris/findings"))
SEEDS: list = []


def _harness() -> DaemonHarness:
    global HARNESS
    if HARNESS is None:
        inst = resolve_installation(os.environ.get("FUSEPROTO_FUZZ_DAEMON", "c"))
        HARNESS = DaemonHarness(inst).start()
        atexit.register(HARNESS.close)
        SEEDS[:] = HARNESS.seed_requests()
    return HARNESS


def TestOneInput(data: bytes) -> None:  # noqa: N802 -- libFuzzer's name
    if len(data) < 2:
        return
    h = _harness()
    out = h.send(data[1:], data[0])
    if out.finding is None:
        return
    f = Finding("virtiofsd", out.finding, f"{out.finding}:{out.cls}", out.detail,
                daemon=h.kind, evidence=dict(out.evidence))
    STORE.add(f, {"target": "virtiofsd", "daemon": h.kind, "requests": list(h.history)},
              suffix=".json")
    if out.finding in ("crash", "daemon-exit", "hang"):
        # libFuzzer ends the process on this exception without running Python's atexit:
        # stop the daemon by PID and remove its socket, pid file and scratch directory now
        # (a later input, under -fork or -keep_going, starts a fresh one).
        global HARNESS
        HARNESS = None
        h.close()
        raise RuntimeError(f"virtiofsd {out.finding}: {out.detail}")


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:  # noqa: N802
    h = _harness()
    rng = random.Random(seed)
    if len(data) < 2 or rng.random() < 0.05:
        data = bytes([0]) + rng.choice(SEEDS)
    variant = data[0] if rng.random() < 0.85 else rng.randrange(5)
    req = mutate.mutate_request(data[1:], rng, minor=h.minor, flags=h.flags, pools=h.pools,
                                max_size=max_size - 1)
    return bytes([variant]) + req


def main() -> None:
    inject.apply_from_env()
    atheris.Setup(sys.argv, TestOneInput, custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
