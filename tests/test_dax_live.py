"""DAX against real virtiofsd daemons (both builds, installed on demand).

* Released daemons answer SETUPMAPPING with ENOSYS: through the virtiofsd device, every
  OSv read falls back to FUSE_READ and returns the host file's bytes; the Linux policy
  reports the errno (it has no fall-back).
* With the real mmap window (host files mapped into this process, resolved from the
  LOOKUP replies), DAX reads and FUSE_READ through virtiofsd agree byte for byte on
  random reads of random files.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from fuseproto.client import Client
from fuseproto.dax.device import MmapDevice
from fuseproto.dax.invariants import DaxChecker
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.osv import OsvDaxManager
from fuseproto.dax.virtiofsd import ClientBackend, VirtiofsdDevice
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire.constants import FUSE_ROOT_ID

pytestmark = pytest.mark.daemon

MiB = 1 << 20
WINDOW = 8 * MiB
CHUNK = 256 * 1024


class Live:
    """A daemon on ``shared_dir`` with random files, looked up and opened."""

    def __init__(self, installation, shared_dir: str, nfiles: int = 5, seed: int = 1):
        rnd = random.Random(seed)
        self.root = shared_dir
        self.data: dict[int, bytes] = {}
        self.paths: dict[int, str] = {}
        self.fh: dict[int, int] = {}
        names = []
        for i in range(nfiles):
            size = rnd.choice([1, 4095, 4096, 100_000, 3 * MiB + 17, 5 * MiB])
            name = f"file{i}"
            with open(os.path.join(shared_dir, name), "wb") as f:
                f.write(rnd.randbytes(size))
            names.append(name)
        self.client = Client(VhostUserTransport.spawn(installation, shared_dir))
        self.client.init()
        self.backend = ClientBackend(self.client)
        for name in names:
            entry = self.client.lookup(FUSE_ROOT_ID, name)
            n = entry.nodeid
            self.paths[n] = os.path.join(shared_dir, name)  # learned from LOOKUP
            self.backend.note_size(n, entry.attr.size)
            with open(self.paths[n], "rb") as f:
                self.data[n] = f.read()
            self.fh[n] = self.client.open(n).fh

    def resolve(self, nodeid: int, fh: int) -> str:
        return self.paths[nodeid]

    def reads(self, count: int, seed: int = 2):
        return random_reads(self.data, count, seed)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def live(no_leaks, installation, shared_dir):
    lv = Live(installation, shared_dir)
    try:
        yield lv
    finally:
        lv.close()


def test_osv_reads_fall_back_to_fuse_read_after_enosys(live):
    window = MmapDevice(WINDOW, live.resolve)
    device = VirtiofsdDevice(live.client, window)
    mgr = OsvDaxManager(device, live.backend, chunk_size=CHUNK)
    checker = DaxChecker.for_manager(mgr, oracle=lambda n, o, s: live.data[n][o : o + s])
    with device:
        for n, off, size in live.reads(40):
            res = mgr.read(n, off, size, fh=live.fh[n])
            assert res.data == live.data[n][off : off + size]
            if off < len(live.data[n]):
                assert res.fell_back and res.error == errno.ENOSYS
        checker.check_state()
    assert set(device.replies) == {errno.ENOSYS}  # the daemon's answer, every time
    assert mgr.stats.dax_bytes == 0 and mgr.stats.fallback_bytes > 0
    assert mgr.view() == []  # nothing the daemon refused is believed mapped


def test_linux_policy_reports_enosys(live):
    window = MmapDevice(WINDOW, live.resolve)
    device = VirtiofsdDevice(live.client, window)
    mgr = LinuxDaxManager(device, live.backend, range_shift=18)
    with device:
        n = max(live.data, key=lambda k: len(live.data[k]))
        res = mgr.read(n, 0, 100)
        assert res.error == errno.ENOSYS and res.data == b""
        assert mgr.free_list() == [i * CHUNK for i in range(1, WINDOW // CHUNK)] + [0]
        mgr.check_valid()


@pytest.mark.parametrize("policy", ["osv", "linux"])
def test_mmap_window_dax_reads_match_fuse_read(live, policy):
    window = MmapDevice(WINDOW, live.resolve)
    if policy == "osv":
        mgr = OsvDaxManager(window, live.backend, chunk_size=CHUNK)
    else:
        mgr = LinuxDaxManager(window, live.backend, range_shift=18)
    DaxChecker.for_manager(mgr, oracle=lambda n, o, s: live.data[n][o : o + s])
    with window:
        compared = 0
        for n, off, size in live.reads(150, seed=7):
            want = live.client.read(n, live.fh[n], off, size)  # FUSE_READ via virtiofsd
            got = b""
            while len(got) < len(want):  # the application's read loop (OSv reads short)
                res = mgr.read(n, off + len(got), size - len(got), fh=live.fh[n])
                assert not res.fell_back and not res.error
                if not res.data:
                    break
                got += bytes(res.data)
            assert got == want, (n, off, size)
            compared += len(want)
        assert compared > 1 * MiB and mgr.stats.dax_bytes == compared


def random_reads(data: dict, count: int, seed: int = 2):
    """(node id, offset, size) of ``count`` reads over the files ``data`` (node id -> bytes):
    offsets anywhere in a file and a little past its end, sizes from 1 byte to 600 KB."""
    rnd = random.Random(seed)
    ids = list(data)
    for _ in range(count):
        n = rnd.choice(ids)
        off = rnd.randrange(0, len(data[n]) + 10)
        yield n, off, rnd.choice([1, 100, 4096, 70_000, 600_000])
