"""The DAX fuzz target: operations chosen by the input drive a window manager over the
model device, and the black-box invariants (:mod:`fuseproto.dax.invariants`) plus the
manager's own ``check_valid()`` are checked after every step.

Input (read with atheris' FuzzedDataProvider): a manager choice, then operations until the
bytes run out -- ``read(node, offset, size)``, ``write(node, offset, data)``,
``forget(node)`` (optionally handing the node id to a new file, as a daemon may), and for
managers that pin (Linux) ``pin``/``unpin``. The window is small (six 16 KiB chunks, 4 KiB
alignment) so eviction happens within a few steps. ``FUSEPROTO_DAX_MANAGER`` (``osv``,
``linux`` or ``package.module:factory``, see :func:`fuseproto.dax.registry.load_manager`)
fixes the manager, e.g. to fuzz one of your own.

Checked: alignment of foffset/moffset/len, mappings inside the window, REMOVEMAPPING
count <= 256 and == its entries, no overlap, view == device, accounting, bytes read ==
file bytes, no read from an evicted range, the policy's own rules -- every invariant of
``DEFAULT_INVARIANTS`` -- and that reads and writes return the file's data.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

from construct import Byte, GreedyBytes, Int16ul, Struct

from ..dax.device import ModelDevice
from ..dax.host import FileStore
from ..dax.invariants import DaxChecker
from ..dax.registry import load_manager
from . import mutate
from .targets import Target

__all__ = ["DAX", "check_dax", "dax_mutator", "dax_inputs", "ENV_MANAGER"]

ENV_MANAGER = "FUSEPROTO_DAX_MANAGER"
CHUNK = 16 * 1024
WINDOW = 6 * CHUNK
NODES = (2, 3, 4, 5)
MAX_STEPS = 64
_CONFIGS = ("osv", "osv-aggressive", "linux")
OPS = ("read", "read", "read", "write", "forget", "pin", "unpin")


def _content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _make(config: str, device: ModelDevice, files: FileStore) -> Any:
    spec = os.environ.get(ENV_MANAGER) or config
    if spec == "osv-aggressive":
        return load_manager("osv")(device, files, chunk_size=CHUNK, aggressive=True)
    if spec == "osv":
        return load_manager("osv")(device, files, chunk_size=CHUNK)
    if spec == "linux":
        return load_manager("linux")(device, files, range_shift=14)
    return load_manager(spec)(device, files)


def check_dax(data: bytes) -> None:
    """The DAX target's oracle (raises InvariantViolation / AssertionError / the bug).
    Needs atheris (its FuzzedDataProvider reads the input), imported here so that the
    target table imports without it."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    config = _CONFIGS[fdp.ConsumeIntInRange(0, len(_CONFIGS) - 1)]
    files = FileStore()
    for n in NODES:
        files.add(n, _content(n, (n - 1) * CHUNK + 1000 * n))
    device = ModelDevice(WINDOW, files)
    mgr = _make(config, device, files)
    checker = DaxChecker.for_manager(mgr)
    pins: list[tuple[int, int]] = []
    generation = 0
    for _ in range(MAX_STEPS):
        if fdp.remaining_bytes() < 2:
            break
        op = OPS[fdp.ConsumeIntInRange(0, len(OPS) - 1)]
        node = NODES[fdp.ConsumeIntInRange(0, len(NODES) - 1)]
        if op == "read":
            offset = fdp.ConsumeIntInRange(0, 5 * CHUNK)
            size = fdp.ConsumeIntInRange(0, 3 * CHUNK)
            res = mgr.read(node, offset, size)
            file = files.data(node)
            if not res.error:
                assert bytes(res.data) == bytes(file[offset:offset + len(res.data)]), (
                    f"read({node}, {offset}, {size}) returned other bytes than the file's")
                if offset < len(file) and size:
                    assert res.data, f"read({node}, {offset}, {size}) inside the file is empty"
        elif op == "write":
            offset = fdp.ConsumeIntInRange(0, 5 * CHUNK)
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 2 * CHUNK)) or b"x"
            before = bytearray(files.data(node))
            res = mgr.write(node, offset, payload)
            if not res.error:
                assert res.written == len(payload), f"write wrote {res.written}/{len(payload)}"
                if offset > len(before):
                    before.extend(bytes(offset - len(before)))
                before[offset:offset + len(payload)] = payload
                assert files.data(node) == before, "write did not reach the file"
        elif op == "forget":
            if node in [n for n, _m in pins]:
                continue  # the kernel never forgets a node with an access in flight
            mgr.forget(node)
            checker.note_forget(mgr, node)
            if fdp.ConsumeBool():  # the daemon hands the node id to another file
                generation += 1
                files.add(node, _content(node + 7 * generation, 3 * CHUNK + 77))
        elif op == "pin" and hasattr(mgr, "pin"):
            moffset = mgr.pin(node, fdp.ConsumeIntInRange(0, 5 * CHUNK))
            if moffset is not None:
                pins.append((node, moffset))
        elif op == "unpin" and pins and hasattr(mgr, "unpin"):
            _node, moffset = pins.pop(fdp.ConsumeIntInRange(0, len(pins) - 1))
            mgr.unpin(moffset)
        checker.check_state()
        mgr.check_valid()
    for _node, moffset in pins:
        mgr.unpin(moffset)
    mgr.unmount()
    checker.check_state()


_seed_schema = Struct("config" / Byte, "ops" / GreedyBytes)
_op_schema = Struct("op" / Byte, "node" / Byte, "a" / Int16ul, "b" / Int16ul)


def dax_inputs() -> Iterator[tuple[str, bytes]]:
    """Seeds: each configuration with a few op sequences (bytes for FuzzedDataProvider)."""
    rng = random.Random(11)
    for ci in range(len(_CONFIGS)):
        for k in range(4):
            ops = b"".join(_op_schema.build(dict(op=rng.randrange(256), node=rng.randrange(256),
                                                 a=rng.randrange(65536),
                                                 b=rng.randrange(65536)))
                           for _ in range(8 + 8 * k))
            yield f"dax-{_CONFIGS[ci]}-{k}", _seed_schema.build(dict(config=ci, ops=ops))


def dax_mutator(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """Operation-level edits: repeat, drop or splice 6-byte steps; else byte mutation."""
    if len(data) < 8 or rng.random() < 0.4:
        return mutate.mutate_bytes(data, rng, max_size)
    head, body = data[:1], bytearray(data[1:])
    i = rng.randrange(0, max(1, len(body) - 6))
    step = body[i:i + 6]
    r = rng.random()
    if r < 0.4:
        body[i:i] = step * rng.randint(1, 4)
    elif r < 0.7:
        del body[i:i + 6]
    else:
        j = rng.randrange(0, max(1, len(body)))
        body[j:j] = step
    return (head + bytes(body))[:max_size]


DAX = Target(
    "dax", check_dax, dax_mutator, dax_inputs,
    "operations -> DAX manager (osv/linux/module:factory) over the model device: every "
    "invariant of fuseproto.dax.invariants after each step", requires=("atheris",))
