"""Hypothesis state machines: each reference manager against the model device, with the
black-box invariants (fuseproto.dax.invariants) and the manager's own ``check_valid()``
as ``@invariant``s -- the shape of hypothesis's cache-implementation test."""

from __future__ import annotations

import random

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from fuseproto.dax.device import ModelDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import DaxChecker
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.osv import OsvDaxManager

C = 16 * 1024  # chunk / range size: four 4 KiB pages
WINDOW = 6 * C
NODES = [2, 3, 4, 5]

SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class DaxMachine(RuleBasedStateMachine):
    def make_manager(self, device: ModelDevice, files: FileStore):
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.files = FileStore()
        self.generation = 0
        for n in NODES:
            self.files.add(n, content(n, (n - 1) * C + 1000 * n))
        self.device = ModelDevice(WINDOW, self.files)
        self.mgr = self.make_manager(self.device, self.files)
        self.checker = DaxChecker.for_manager(self.mgr)

    @rule(
        nodeid=st.sampled_from(NODES),
        offset=st.integers(0, 5 * C),
        size=st.integers(0, 3 * C),
    )
    def read(self, nodeid: int, offset: int, size: int) -> None:
        res = self.mgr.read(nodeid, offset, size)
        file = self.files.data(nodeid)
        if offset < len(file) and size > 0 and not res.error:
            assert res.data, "a read inside the file returned nothing"
        assert bytes(res.data) == bytes(file[offset : offset + len(res.data)])

    @rule(
        nodeid=st.sampled_from(NODES),
        offset=st.integers(0, 5 * C),
        data=st.binary(min_size=1, max_size=2 * C),
    )
    def write(self, nodeid: int, offset: int, data: bytes) -> None:
        before = bytearray(self.files.data(nodeid))
        res = self.mgr.write(nodeid, offset, data)
        if not res.error:
            assert res.written == len(data)
            if offset > len(before):
                before.extend(bytes(offset - len(before)))
            before[offset : offset + len(data)] = data
            assert self.files.data(nodeid) == before

    @rule(nodeid=st.sampled_from(NODES), reuse=st.booleans())
    def forget(self, nodeid: int, reuse: bool) -> None:
        if not self.can_forget(nodeid):
            return
        self.mgr.forget(nodeid)
        self.checker.note_forget(self.mgr, nodeid)
        if reuse:  # the daemon hands the node id to another file
            self.generation += 1
            self.files.add(nodeid, content(nodeid + 7 * self.generation, 3 * C + 77))

    def can_forget(self, nodeid: int) -> bool:
        return True

    @invariant()
    def black_box_invariants(self) -> None:
        self.checker.check_state()

    @invariant()
    def manager_structures(self) -> None:
        self.mgr.check_valid()

    def teardown(self) -> None:
        self.mgr.unmount()
        self.checker.check_state()


class OsvMachine(DaxMachine):
    def make_manager(self, device, files):
        return OsvDaxManager(device, files, chunk_size=C)


class OsvAggressiveMachine(DaxMachine):
    def make_manager(self, device, files):
        return OsvDaxManager(device, files, chunk_size=C, aggressive=True)


class LinuxMachine(DaxMachine):
    pins = Bundle("pins")

    def __init__(self) -> None:
        self.pinned_nodes: dict[int, int] = {}
        super().__init__()

    def make_manager(self, device, files):
        return LinuxDaxManager(device, files, range_shift=14)

    @rule(target=pins, nodeid=st.sampled_from(NODES), offset=st.integers(0, 5 * C))
    def pin(self, nodeid: int, offset: int):
        moffset = self.mgr.pin(nodeid, offset)
        if moffset is None:
            return (nodeid, -1)
        self.pinned_nodes[nodeid] = self.pinned_nodes.get(nodeid, 0) + 1
        return (nodeid, moffset)

    @rule(pin=consumes(pins))
    def unpin(self, pin: tuple[int, int]) -> None:
        nodeid, moffset = pin
        if moffset >= 0:
            self.mgr.unpin(moffset)
            self.pinned_nodes[nodeid] -= 1

    def can_forget(self, nodeid: int) -> bool:
        # A node with a DAX page mapped (pinned) is not evicted by the kernel.
        return not self.pinned_nodes.get(nodeid)

    @rule()
    def worker(self) -> None:
        self.mgr.run_worker(force=True)

    def teardown(self) -> None:
        for moffset, _ in self.mgr.pinned():
            while any(p == moffset for p, _ in self.mgr.pinned()):
                self.mgr.unpin(moffset)
        super().teardown()


class LinuxNoBackgroundMachine(LinuxMachine):
    def make_manager(self, device, files):
        return LinuxDaxManager(device, files, range_shift=14, background="off")


TestOsv = OsvMachine.TestCase
TestOsv.settings = SETTINGS
TestOsvAggressive = OsvAggressiveMachine.TestCase
TestOsvAggressive.settings = SETTINGS
TestLinux = LinuxMachine.TestCase
TestLinux.settings = SETTINGS
TestLinuxNoBackground = LinuxNoBackgroundMachine.TestCase
TestLinuxNoBackground.settings = SETTINGS
