"""Running one DAX fuzz program: the mounts, the operations, and how each is judged.

A :class:`Stage` is where the program runs: the model (:mod:`.dax_target`: pattern files,
the model device) or a live daemon (:mod:`.dax_live`: real files, ``c-dax`` and the real
window). Either way the managers see a :class:`~fuseproto.dax.device.RefusingDevice`
with the input's geometry, and a :class:`~fuseproto.dax.invariants.DaxChecker` watches
every message and access.

Operations (``Op.kind`` modulo the policy's table, :data:`OSV_KINDS` /
:data:`LINUX_KINDS`; a plugged-in manager named "linux" gets Linux's, any other OSv's,
skipping what it lacks):

``read``      through a mount; the bytes must be the file's (checker), a read inside the
              file that reports no error returns something (Linux: everything up to end
              of file), a failed OSv read falls back to FUSE_READ for all of it
``write``     the bytes must reach the file; a failed DAX write wrote a correct prefix
``forget``    the node leaves every manager; with the flag the node id goes to a new
              file (model only: a daemon reusing an id)
``map``       (OSv) ``map(nodeid, fh, nchunks, fstart, evict)`` direct, never past end of
              file; accepted: the chunk is findable; ENOBUFS (full, no eviction): state
              unchanged
``unmap``     (OSv) ``unmap(n, deep)``, n up to the window's chunks + 2 (more than is
              mapped); nothing mapped: ENODATA; a failed deep unmap changes nothing;
              otherwise exactly min(n, mapped) chunks go
``pin`` / ``unpin``  (Linux) a reference held by another user of the range
``worker``    (Linux) the background reclaim, forced or when queued
``aggressive_read``  (OSv) a read with the aggressive mode flipped for it
``refuse``    arms the device: request ``b % 4`` from now fails with EINVAL, ENOSPC, EIO
              or ENOMEM (no effect on the window); Linux must then warn of a refused
              REMOVEMAPPING (the range is freed anyway, as the kernel does)
``mount``     unmounts that mount, or mounts one more (up to 3; Linux and plug-ins:
              unmount the connection's manager and start a new one)
``probe``     a request the protocol forbids, sent to the device itself: the row ``a``
              (modulo their number) of :data:`fuseproto.dax.forbidden.FORBIDDEN`
              (misaligned fields, past the window's end or the largest file offset,
              unknown flags, a lying count, count 0 or 257 entries, bad entries, write
              through a read-only handle) built at window offset ``b``: it must be
              refused and change nothing (``invalid_accepted``)

After each operation: the checker's per-step checks; every :data:`FULL_EVERY` operations,
after any operation the device refused something in, and at the end, the full state
checks, the managers' ``check_valid()`` and ``in_use_leak``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, Protocol

from ..dax.device import RefusingDevice
from ..dax.forbidden import FORBIDDEN, Where
from ..dax.invariants import DaxChecker
from ..dax.messages import FUSE_REMOVEMAPPING, DaxMessage
from ..dax.osv import OsvDaxManager, OsvVirtiofs
from ..dax.registry import load_manager
from .dax_ops import CONFIGS, Geometry, Op, Program, length, pattern_bytes, position

__all__ = ["ENV_MANAGER", "ENV_OSV_DEFECTS", "FULL_EVERY", "LINUX_KINDS", "OSV_KINDS",
           "Mounts", "Stage", "UnfitGeometry", "run_program"]

ENV_MANAGER = "FUSEPROTO_DAX_MANAGER"
ENV_OSV_DEFECTS = "FUSEPROTO_DAX_OSV_DEFECTS"  # comma-separated OSV_SEED_DEFECTS
FULL_EVERY = 32
ERRNOS = (errno.EINVAL, errno.ENOSPC, errno.EIO, errno.ENOMEM)
OSV_KINDS = ("read", "read", "read", "read", "write", "forget", "map", "unmap", "refuse",
             "mount", "aggressive_read", "probe")
LINUX_KINDS = ("read", "read", "read", "read", "write", "forget", "pin", "unpin", "refuse",
               "mount", "worker", "probe")
MAX_MOUNTS = 3


class UnfitGeometry(Exception):
    """A plugged-in manager refused the input's geometry (ValueError at construction):
    the input is skipped, not a finding."""


class Stage(Protocol):
    """Where a program runs (the model, or a live daemon)."""

    device: RefusingDevice
    backend: Any  # FuseBackend
    reuse_nodes: bool  # a forgotten node id may go to a new file

    def node(self, n: int) -> int:
        """The node id of the program's file ``n`` (2..5)."""
        ...

    def set_file(self, nodeid: int, size: int, key: int) -> None: ...

    def oracle(self, nodeid: int, offset: int, size: int) -> bytes: ...

    def fh(self, nodeid: int, write: bool) -> int: ...

    def probe(self, msg: DaxMessage) -> int:
        """Send ``msg`` to the device itself (no geometry of the input's, no refusal
        armed, no manager); 0 or an errno."""
        ...


class Mounts:
    """The input's mounts of the one device: OSv's ``virtiofs_mount`` (one manager per
    device, shared by its mounts; seed defects from ``FUSEPROTO_DAX_OSV_DEFECTS``), or one
    manager (Linux: one connection for the device's mounts; a plug-in)."""

    def __init__(self, geo: Geometry, stage: Stage, checker: DaxChecker,
                 observe: bool = True) -> None:
        self.stage, self.checker, self.observe = stage, checker, observe
        spec = os.environ.get(ENV_MANAGER) or CONFIGS[geo.config]
        self.policy = spec if spec in CONFIGS else "plugin"
        self.geo = geo
        self.spec = spec
        self.fs: OsvVirtiofs | None = None
        self.mounts: list[Any] = []
        if spec.startswith("osv") and spec in CONFIGS:
            defects = [d for d in os.environ.get(ENV_OSV_DEFECTS, "").split(",") if d]
            self.fs = OsvVirtiofs(seed_defects=defects, chunk_size=geo.unit,
                                  aggressive=spec == "osv-aggressive")
        try:
            for _ in range(geo.mounts):
                self.add()
        except ValueError as e:
            if self.policy == "plugin":
                raise UnfitGeometry(str(e)) from e
            raise
        if self.policy == "plugin":  # a plug-in built on a reference policy is judged as it
            name = getattr(self.manager(0), "name", "")
            self.policy = name if name in ("osv", "linux") else "plugin"

    def _new_manager(self) -> Any:
        dev, backend = self.stage.device, self.stage.backend
        if self.spec == "linux":
            return load_manager("linux")(dev, backend, range_shift=self.geo.range_shift,
                                         background=self.geo.background)
        return load_manager(self.spec)(dev, backend)

    def add(self) -> None:
        if self.fs is not None:
            mnt = self.fs.mount(self.stage.device, self.stage.backend)
            mgr = mnt.dax_mgr
        else:
            live = [m for m in self.mounts if not m.unmounted]
            mgr = mnt = live[0] if live else self._new_manager()
        if mgr is not None and mgr not in self.checker.managers:
            self._track(mgr)
        self.mounts.append(mnt)

    def _track(self, mgr: Any) -> None:
        if self.observe:
            self.checker.attach(mgr)
        else:  # known, not watched (the benchmark's floor)
            self.checker.managers.append(mgr)

    def manager(self, i: int) -> Any:
        return self.pick(i)[1]

    def managers(self) -> list[Any]:
        out: list[Any] = []
        for i in range(len(self.mounts)):
            m = self.manager(i)
            if m is not None and not m.unmounted and m not in out:
                out.append(m)
        return out

    def pick(self, i: int) -> tuple[Any, Any]:
        """(the mount ``i``, its manager): a read goes to the mount (OSv's falls back to
        FUSE_READ there), the rest to the manager."""
        mnt = self.mounts[i % len(self.mounts)]
        return mnt, mnt.dax_mgr if self.fs is not None else mnt

    def toggle(self, i: int, pinned: bool) -> None:
        if i < len(self.mounts) and len(self.mounts) > 1:
            mnt = self.mounts.pop(i)
            if self.fs is not None:
                self.fs.unmount(mnt)
            elif not any(m is mnt for m in self.mounts):
                mnt.unmount()
        elif len(self.mounts) < MAX_MOUNTS:
            self.add()
        elif self.fs is None and not pinned:  # the connection's manager starts over
            self.mounts[0].unmount()
            new = self._new_manager()
            self._track(new)
            self.mounts = [new] * len(self.mounts)

    def unmount_all(self) -> None:
        if self.fs is not None:
            for mnt in list(self.mounts):
                self.fs.unmount(mnt)
        else:
            for m in {id(m): m for m in self.mounts}.values():
                m.unmount()
        self.mounts = []


def _kinds(policy: str) -> tuple[str, ...]:
    return LINUX_KINDS if policy == "linux" else OSV_KINDS


def run_program(program: Program, stage: Stage, *, full_every: int = FULL_EVERY,
                on_step: Callable[[], None] | None = None,
                checked: bool = True) -> DaxChecker | None:
    """Run ``program`` on ``stage``; raises InvariantViolation / AssertionError (or
    whatever the manager raises) at the first thing found; None when a plugged-in
    manager refuses the geometry. ``full_every=1``: every check after every operation
    (the benchmark's baseline). ``on_step`` runs after each operation's checks (the live
    stage checks the backend record there). ``checked=False``: no checker at all, only
    the operations and their own judgement (the benchmark's floor)."""
    geo = program.geometry
    for i, code in enumerate(geo.size_codes):
        stage.set_file(stage.node(2 + i), geo.file_size(code), key=2 + i)
    dev = stage.device
    checker = DaxChecker(geo.window_size, geo.map_alignment, oracle=stage.oracle,
                         matches=getattr(stage, "matches", None), device=dev)
    try:
        run = _Run(geo, stage, checker, checked)
    except UnfitGeometry:
        return None
    try:
        _steps(program, run, dev, full_every, on_step)
    finally:
        checker.detach()  # (no cycle left: the run's objects go when the last use ends)
    return checker


def _steps(program: Program, run: _Run, dev: RefusingDevice, full_every: int,
           on_step: Callable[[], None] | None) -> None:
    table = run.operations(_kinds(run.mounts.policy))
    nkinds = len(table)
    injected = dev.injected
    check = run.check
    for step, op in enumerate(program.ops, 1):
        if dev.armed:  # only an armed refusal answers a request of this step
            before, warned = len(injected), run.warnings()
            table[op.kind % nkinds](op)
            refused = injected[before:]
            if refused:
                run.judge_refused(refused, warned)
            check(bool(refused) or step % full_every == 0)
        else:
            table[op.kind % nkinds](op)
            check(step % full_every == 0)
        if on_step is not None:
            on_step()
    run.finish()


class _Run:
    """One program's state: the mounts, the pins, the generation of reused node ids."""

    def __init__(self, geo: Geometry, stage: Stage, checker: DaxChecker,
                 checked: bool = True) -> None:
        self.geo, self.stage, self.checker, self.checked = geo, stage, checker, checked
        self.mounts = Mounts(geo, stage, checker, observe=checked)
        self.pins: list[tuple[Any, int, int]] = []  # (manager, nodeid, moffset)
        self.generation = 0

    def check(self, full: bool) -> None:
        if not self.checked:
            return
        self.checker.check_state(full=full)
        if not full:
            return
        for m in self.mounts.managers():
            m.check_valid()
            self.checker.check_in_use(m, [p for mm, _n, p in self.pins if mm is m])

    def warnings(self) -> int:
        return sum(len(getattr(m, "warnings", ())) for m in self.checker.managers)

    def judge_refused(self, refused: list[Any], warned: int) -> None:
        """Documented outcomes of refused requests beyond the invariants: Linux frees a
        range whose REMOVEMAPPING failed, with a warning (fs/fuse/dax.c's pr_warn)."""
        if self.mounts.policy == "linux" and any(m.opcode == FUSE_REMOVEMAPPING
                                                 for m in refused):
            assert self.warnings() > warned, "a refused REMOVEMAPPING and no warning"

    def finish(self) -> None:
        for m, _n, moffset in self.pins:
            m.unpin(moffset)
        self.pins.clear()
        self.check(True)
        self.mounts.unmount_all()
        if self.checked:
            self.checker.check_state(full=True)

    # ---- operations ------------------------------------------------------------------------
    def apply(self, kind: str, op: Op) -> None:
        getattr(self, f"op_{kind}")(op)

    def operations(self, kinds: tuple[str, ...]) -> list[Callable[[Op], None]]:
        """The operation of each kind, in the order of ``kinds`` (looked up once)."""
        return [getattr(self, f"op_{kind}") for kind in kinds]

    def _size(self, nodeid: int) -> int:
        return int(self.stage.backend.file_size(nodeid))

    def op_read(self, op: Op, aggressive: bool | None = None) -> None:
        mnt, mgr = self.mounts.pick(op.mount)
        node = self.stage.node(op.node)
        size = self._size(node)
        unit = self.geo.unit
        offset = position(op.a, size, unit)
        n = length(op.b, size, offset, unit)
        flip = aggressive is not None and isinstance(mgr, OsvDaxManager)
        if flip:
            mgr.aggressive = not mgr.aggressive
        try:
            res = mnt.read(node, offset, n, fh=self.stage.fh(node, False))
        finally:
            if flip:
                mgr.aggressive = not mgr.aggressive
        want = max(0, min(n, size - offset))
        got = len(res.data)
        if not res.error:
            assert got or not want, f"read({node}, {offset:#x}, {n:#x}) inside the file " \
                                    "returned nothing"
            if self.mounts.policy == "linux":
                assert got == want, f"Linux read({node}, {offset:#x}, {n:#x}) returned " \
                                    f"{got:#x} of {want:#x} bytes"
        elif res.fell_back and self.mounts.policy != "plugin":
            assert got == want, f"fall-back read returned {got:#x} of {want:#x} bytes"

    def op_aggressive_read(self, op: Op) -> None:
        self.op_read(op, aggressive=True)

    def op_write(self, op: Op) -> None:
        mgr = self.mounts.manager(op.mount)
        if mgr is None:
            return
        node = self.stage.node(op.node)
        size = self._size(node)
        offset = position(op.a, size, self.geo.unit)
        n = max(1, min(length(op.b, size, offset, self.geo.unit), 1 << 16))
        payload = pattern_bytes(op.a * 7919 + op.b + 1, offset, n)
        res = mgr.write(node, offset, payload, fh=self.stage.fh(node, True))
        if self.checked:
            self.checker.note_write(mgr, node, offset, n)
        done = n if not res.error else res.written
        assert 0 <= done <= n and (res.error or res.written == n), \
            f"write of {n:#x} at {offset:#x} wrote {res.written:#x} (error {res.error})"
        if done:
            assert self.stage.oracle(node, offset, done) == payload[:done], \
                f"write({node}, {offset:#x}, {n:#x}) did not reach the file"

    def op_forget(self, op: Op) -> None:
        node = self.stage.node(op.node)
        if any(n == node for _m, n, _p in self.pins):
            return  # the kernel never forgets a node with an access in flight
        for m in self.mounts.managers():
            m.forget(node)
            self.checker.note_forget(m, node)
        if op.flag and self.stage.reuse_nodes:  # the daemon hands the node id to a new file
            self.generation += 1
            self.stage.set_file(node, self.geo.file_size(op.b & 0xFF),
                                key=op.node + 7919 * self.generation)

    def op_pin(self, op: Op) -> None:
        mgr = self.mounts.manager(op.mount)
        if mgr is None or not hasattr(mgr, "pin"):
            return
        node = self.stage.node(op.node)
        moffset = mgr.pin(node, position(op.a, self._size(node), self.geo.unit))
        if moffset is not None:
            self.pins.append((mgr, node, moffset))

    def op_unpin(self, op: Op) -> None:
        if self.pins:
            m, _n, moffset = self.pins.pop(op.a % len(self.pins))
            m.unpin(moffset)

    def op_worker(self, op: Op) -> None:
        mgr = self.mounts.manager(op.mount)
        if mgr is not None and hasattr(mgr, "run_worker"):
            mgr.run_worker(force=op.flag)

    def op_map(self, op: Op) -> None:
        mgr = self.mounts.manager(op.mount)
        if not isinstance(mgr, OsvDaxManager) or not mgr.usable:
            return
        c = mgr.chunk_size
        node = self.stage.node(op.node)
        fchunks = -(-self._size(node) // c)
        if fchunks == 0:
            return
        fstart = op.a % fchunks
        nchunks = 1 + op.b % (fchunks - fstart)
        view = mgr.view()
        err, part = mgr.map(node, self.stage.fh(node, False), nchunks, fstart, evict=op.flag)
        if not err:
            assert part is not None and 0 < part.nchunks <= nchunks
            assert mgr.find(node, fstart) is not None, "a mapped chunk is not findable"
        elif err == errno.ENOBUFS:
            assert not op.flag and mgr.view() == view, "ENOBUFS changed the mappings"

    def op_unmap(self, op: Op) -> None:
        mgr = self.mounts.manager(op.mount)
        if not isinstance(mgr, OsvDaxManager):
            return
        n = op.b % (mgr.window_chunks + 3)
        mapped = mgr.first_empty()
        view = mgr.view()
        err, part = mgr.unmap(n, deep=op.flag)
        if n and not mapped:
            assert err == errno.ENODATA, f"unmap({n}) of an empty window answered {err}"
        elif err:
            assert op.flag and mgr.view() == view, f"a failed unmap ({err}) changed the view"
        else:
            assert part is not None and mgr.first_empty() == mapped - min(n, mapped), \
                f"unmap({n}) of {mapped} chunks left {mgr.first_empty()}"

    def op_refuse(self, op: Op) -> None:
        self.stage.device.refuse(ERRNOS[op.a % len(ERRNOS)], after=op.b % 4)

    def op_probe(self, op: Op) -> None:
        dev = self.stage.device.inner
        a, w = dev.alignment, dev.window_size
        if w < 2 * a:
            return
        row = FORBIDDEN[op.a % len(FORBIDDEN)]
        if row.handles and self.stage.reuse_nodes:
            return  # the model has no handles
        node = self.stage.node(op.node)
        at = (op.b % (w // a - 1)) * a  # an aligned offset with two units above it
        msg = row.build(Where(a, w, at, node, self.stage.fh(node, False)))
        if msg is None:
            return  # the geometry cannot express it (no alignment to break)
        before = dev.mappings()
        err = self.stage.probe(msg)
        self.checker.check_refused(msg, err, row.name, dev.mappings() != before)

    def op_mount(self, op: Op) -> None:
        self.mounts.toggle(op.mount, bool(self.pins))
