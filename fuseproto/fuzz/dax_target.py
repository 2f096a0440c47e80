"""The DAX fuzz target: a geometry and operations chosen by the input drive the window
managers, and every invariant of :mod:`fuseproto.dax.invariants` watches them.

The input format (geometry header, 6-byte operations) is :mod:`.dax_ops`'s; what each
operation does and how it is judged, :mod:`.dax_run`'s. Here: the *model* stage (pattern
files, :class:`~fuseproto.dax.device.ModelDevice` behind a
:class:`~fuseproto.dax.device.RefusingDevice`), the seeds and the mutator.

``FUSEPROTO_DAX_MANAGER`` (``osv``, ``osv-aggressive``, ``linux`` or
``package.module:factory``, see :func:`fuseproto.dax.registry.load_manager`) fixes the
manager, e.g. to fuzz one of your own; ``FUSEPROTO_DAX_OSV_DEFECTS`` turns on OSv seed
defects (:data:`fuseproto.dax.osv.OSV_SEED_DEFECTS`). ``FUSEPROTO_DAX_DEVICE=c-dax`` (or
another DAX build, e.g. ``c-dax-bug-unmap``) runs the same inputs against a live daemon
(:mod:`.dax_live`): one daemon per process, the invariants also on its backend-channel
record.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterator
from typing import Any

from ..dax.device import ModelDevice, RefusingDevice
from ..dax.forbidden import FORBIDDEN
from ..dax.messages import DaxMessage
from . import mutate
from .dax_ops import (
    HEADER_SIZE,
    OP,
    OP_SIZE,
    PatternFiles,
    Program,
    decode_program,
    encode_program,
)
from .dax_run import ENV_MANAGER, ENV_OSV_DEFECTS, FULL_EVERY, run_program
from .targets import Target

__all__ = ["DAX", "ENV_DEVICE", "ENV_MANAGER", "ENV_OSV_DEFECTS", "ModelStage", "check_dax",
           "dax_dictionary", "dax_inputs", "dax_mutator", "run_model", "tune_gc"]

ENV_DEVICE = "FUSEPROTO_DAX_DEVICE"  # "model" (default) or a DAX daemon build: c-dax, ...


class ModelStage:
    """The model: pattern files and the model device, no daemon."""

    reuse_nodes = True

    def __init__(self, program: Program) -> None:
        geo = program.geometry
        self.backend = PatternFiles()
        model = ModelDevice(geo.window_size, self.backend,  # type: ignore[arg-type]
                            geo.map_alignment, through_codec=False)
        self.device = RefusingDevice(model)
        self.oracle = self.backend.read  # type: ignore[method-assign]  # (no call between)
        self.matches = self.backend.matches  # the checker's comparison, without a copy

    def node(self, n: int) -> int:
        return n

    def set_file(self, nodeid: int, size: int, key: int) -> None:
        self.backend.add(nodeid, size, key)

    def oracle(self, nodeid: int, offset: int, size: int) -> bytes:
        return self.backend.read(nodeid, offset, size)

    def fh(self, nodeid: int, write: bool) -> int:
        return 0

    def probe(self, msg: DaxMessage) -> int:
        return self.device.inner.submit(msg)


def run_model(data: bytes, *, full_every: int = FULL_EVERY) -> Any:
    """One input on the model; the checker (None: nothing to run)."""
    program = decode_program(data)
    if program is None:
        return None
    return run_program(program, ModelStage(program), full_every=full_every)


GC_THRESHOLD = (20_000, 50, 50)


def tune_gc() -> None:
    """Garbage collection for a process that runs DAX inputs (the atheris harness, the
    benchmark): what the imports made is frozen out of every collection, and young
    objects are collected every 20,000 allocations instead of 700. An input makes
    thousands of short-lived objects and a few cycles (a checker and the managers it
    observes) that can wait; the default collects ~15 % of the run time away."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def check_dax(data: bytes) -> None:
    """The DAX target's oracle: raises InvariantViolation / AssertionError / the bug."""
    device = os.environ.get(ENV_DEVICE, "model")
    if device in ("", "model"):
        run_model(data)
        return
    from .dax_live import check_live

    check_live(data, device)


# ---- seeds ------------------------------------------------------------------------------
def _header(config: int, *, align: int = 0, unit: int = 2, chunks: int = 5, extra: int = 0,
            sizes: tuple[int, ...] = (0x12, 0x25, 0x07, 0x33)) -> dict[str, Any]:
    return dict(config=config, align=align, unit=unit, chunks=chunks, extra=extra,
                sizes=list(sizes))


def _ops(rng: random.Random, n: int, kinds: tuple[int, ...] = tuple(range(12))
         ) -> list[dict[str, int]]:
    return [dict(kind=rng.choice(kinds), sel=rng.randrange(256), a=rng.randrange(65536),
                 b=rng.randrange(65536)) for _ in range(n)]


def dax_inputs() -> Iterator[tuple[str, bytes]]:
    """Seeds: each manager over small and large windows, and a few shapes the invariants
    need reached (hundreds of Linux ranges forgotten at once, refusals, deep unmaps,
    several mounts)."""
    rng = random.Random(11)
    for config in range(3):
        for k, (chunks, unit) in enumerate(((5, 2), (20, 0), (200, 1), (230, 0x80))):
            yield (f"dax-{config}-{k}",
                   encode_program(_header(config, chunks=chunks, unit=unit, extra=k * 5),
                                  _ops(rng, 8 + 4 * k)))
    # Linux, 300 ranges of 4 KiB, a file of 2 windows read in 5 pieces of 256 KiB and
    # forgotten: 300 ranges in 2 REMOVEMAPPINGs.
    whole = [dict(kind=0, sel=0, a=(4 << 13) | (i * 64), b=5 << 13)
             for i in range(5)] + [dict(kind=5, sel=0, a=0, b=0)]
    yield "dax-linux-hundreds", encode_program(
        _header(2, unit=0, chunks=238, extra=0x10, sizes=(0x07, 0x01, 0x01, 0x01)), whole)
    # OSv: refusals in the middle of reads, deep unmaps, direct maps; three mounts.
    refuse = [dict(kind=8, sel=0, a=i, b=i) for i in range(4)]
    yield "dax-osv-refusals", encode_program(
        _header(0, chunks=8, extra=0x08), [o for r in refuse
                                            for o in (r, *_ops(rng, 3, (0, 6, 7)))])
    yield "dax-linux-refusals", encode_program(
        _header(2, chunks=8, extra=0x08), [o for r in refuse
                                            for o in (r, *_ops(rng, 3, (0, 4, 6, 7, 10)))])
    # Linux, a range pinned at the busy list's head: the worker forced, then a read larger
    # than the window (the free list runs out: inline reclaim of the inode's lowest range)
    # must both pass the pinned range by.
    pinned = [dict(kind=0, sel=0, a=0, b=2 << 13), dict(kind=6, sel=0, a=0, b=0),
              dict(kind=10, sel=0x10, a=0, b=0), dict(kind=0, sel=0, a=(4 << 13) | 1, b=5 << 13),
              dict(kind=7, sel=0, a=0, b=0), dict(kind=5, sel=0, a=0, b=0)]
    yield "dax-linux-pinned-reclaim", encode_program(
        _header(2, chunks=8, sizes=(0x07, 0x12, 0x25, 0x33)), pinned)
    # Every forbidden request shape once (a probe per row of dax.forbidden.FORBIDDEN).
    yield "dax-probes", encode_program(
        _header(0, chunks=8), [dict(kind=11, sel=i & 3, a=i, b=3 * i)
                               for i in range(len(FORBIDDEN))])


def dax_dictionary() -> str:
    """libFuzzer dictionary for ``dax_fuzzer.py``: whole operation records of each kind
    at each offset class (start of file, unit boundary, one byte before / after one, end
    of file, past it) with each size class, and header bytes for the extreme geometries."""
    lines = ["# libFuzzer dictionary for dax_fuzzer.py (generated by make_corpus.py)"]
    for kind in range(12):
        for pos in (0, 3, 4, 5, 6, 7):
            for size in (0, 2, 3, 5, 7):
                rec = OP.build(dict(kind=kind, sel=0, a=pos << 13, b=size << 13))
                lines.append(f'op_{kind}_{pos}_{size}="{_escape(rec)}"')
    for name, b in (("window_1", 0), ("window_402", 255), ("unit_2m", 0x80),
                    ("unit_6m", 0xC0), ("align_unset", 0xF8), ("align_2m", 7)):
        lines.append(f'hdr_{name}="{_escape(bytes([b]))}"')
    return "\n".join(lines) + "\n"


def _escape(b: bytes) -> str:
    return "".join(chr(c) if 0x20 <= c < 0x7F and c not in b'"\\' else f"\\x{c:02x}"
                   for c in b)


def dax_mutator(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """Edits that keep the structure: a header byte replaced, operations repeated,
    dropped, spliced or one field changed; else a byte mutation."""
    if len(data) < HEADER_SIZE + OP_SIZE or rng.random() < 0.25:
        return mutate.mutate_bytes(data, rng, max_size)
    head, body = bytearray(data[:HEADER_SIZE]), bytearray(data[HEADER_SIZE:])
    nops = len(body) // OP_SIZE
    i = rng.randrange(nops) * OP_SIZE
    step = body[i:i + OP_SIZE]
    r = rng.random()
    if r < 0.2:
        head[rng.randrange(HEADER_SIZE)] = rng.randrange(256)
    elif r < 0.4:
        body[i:i] = step * rng.randint(1, 4)
    elif r < 0.55:
        del body[i:i + OP_SIZE]
    elif r < 0.7:
        j = rng.randrange(nops + 1) * OP_SIZE
        body[j:j] = step
    else:
        field = rng.randrange(OP_SIZE)
        body[i + field] = rng.choice((0, 1, 0x1F, 0x20, 0x3F, 0x80, 0xC0, 0xE0, 0xFF,
                                      rng.randrange(256)))
    return (bytes(head) + bytes(body))[:max_size]


DAX = Target(
    "dax", check_dax, dax_mutator, dax_inputs,
    "geometry + operations -> DAX managers (osv/linux/module:factory) over the model "
    "device (or FUSEPROTO_DAX_DEVICE=c-dax): every invariant of fuseproto.dax.invariants")
