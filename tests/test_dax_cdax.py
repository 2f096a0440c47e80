"""DAX against a real daemon: ``c-dax`` (QEMU 7.2's virtiofsd with our DAX patch, ``-o dax``).

* The build is cached, keeps the plain source untouched, and without ``-o dax`` the
  daemon answers SETUPMAPPING / REMOVEMAPPING with ENOSYS like c-src.
* The OSv manager (default and aggressive) and the Linux manager serve reads through the
  real window, which the daemon fills over the backend channel (FS_MAP with its fd): the
  bytes equal the host file and FUSE_READ, also for a file larger than the window; the
  invariants run on the backend-channel record (the daemon's actual mappings).
* Refused requests get the right errno and map nothing; DESTROY unmaps everything.
* Every record invariant can fail (fed a violation, it reports it).
"""

from __future__ import annotations

import errno
import os
import random

import pytest
from fixtures_daemons import built_installation
from test_dax_live import random_reads

from fuseproto.client import Client
from fuseproto.daemons.variants import SOURCE_VERSION, builds_dir, recipe
from fuseproto.dax.device import MmapDevice
from fuseproto.dax.forbidden import FORBIDDEN, Where
from fuseproto.dax.invariants import DaxChecker, TraceRecord, check_trace
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.messages import FLAG_READ, FLAG_WRITE, removemapping, setupmapping
from fuseproto.dax.osv import OsvDaxManager
from fuseproto.dax.virtiofsd import (
    RECORD_INVARIANTS,
    ClientBackend,
    RecordEntry,
    check_backend_record,
    open_dax_daemon,
)
from fuseproto.errors import FuseError
from fuseproto.transport.backend import ALL_ONES, BackendEvent
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.transport.vhost_user_proto import (
    VHOST_USER_FS_FLAG_MAP_R,
    VHOST_USER_FS_FLAG_MAP_W,
    VhostUserBackendRequest,
    VhostUserFSBackendMsg,
)
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

pytestmark = pytest.mark.daemon

MiB = 1 << 20
WINDOW = 4 * MiB
CHUNK = 256 * 1024
R = VhostUserBackendRequest


@pytest.fixture(scope="module")
def cdax():
    return built_installation("c-dax")


class Files:
    """Random files in ``shared_dir`` (one larger than the window), looked up and opened."""

    def __init__(self, live, shared_dir: str, seed: int = 1):
        rnd = random.Random(seed)
        self.data: dict[int, bytes] = {}
        self.fh: dict[int, int] = {}
        self.live = live
        sizes = [1, 4095, 100_000, 3 * MiB + 17, WINDOW + 2 * MiB + 5]
        for i, size in enumerate(sizes):
            path = os.path.join(shared_dir, f"file{i}")
            with open(path, "wb") as f:
                f.write(rnd.randbytes(size))
            entry = live.client.lookup(FUSE_ROOT_ID, f"file{i}")
            with open(path, "rb") as f:
                self.data[entry.nodeid] = f.read()
            self.fh[entry.nodeid] = live.client.open(entry.nodeid).fh
        self.backend = ClientBackend(live.client)

    def reads(self, count: int, seed: int = 2):
        return random_reads(self.data, count, seed)


@pytest.fixture
def live(no_leaks, cdax, shared_dir):
    lv = open_dax_daemon(cdax, shared_dir, WINDOW)
    try:
        yield lv
    finally:
        lv.close()


def _errno(fn) -> int:
    try:
        fn()
    except FuseError as e:
        return e.errno
    return 0


def test_build_is_cached_and_the_plain_source_untouched(cdax):
    assert cdax.variant == "c-dax"
    rec = recipe("c-dax")
    assert rec is not None and rec["patches"] and len(rec["patch_sha256"]) == 64
    assert built_installation("c-dax") is cdax
    version = SOURCE_VERSION.split(":", 1)[-1]
    plain = builds_dir() / "source" / f"qemu-{version}" / "tools/virtiofsd/fuse_lowlevel.c"
    patched = plain.parents[2].with_name(f"qemu-{version}+c-dax") / "tools/virtiofsd"
    assert "fuseproto c-dax" not in plain.read_text()
    assert "fuseproto c-dax" in (patched / "fuse_lowlevel.c").read_text()


def test_without_the_option_it_answers_enosys_like_c_src(no_leaks, cdax, shared_dir):
    with open(os.path.join(shared_dir, "f"), "wb") as f:
        f.write(bytes(8192))
    client = Client(VhostUserTransport.spawn(cdax, shared_dir))
    try:
        from fuseproto.client import DEFAULT_INIT_FLAGS
        from fuseproto.wire.constants import InitFlags

        out = client.init(flags=DEFAULT_INIT_FLAGS | InitFlags.FUSE_MAP_ALIGNMENT)
        assert not out.flags & InitFlags.FUSE_MAP_ALIGNMENT
        n = client.lookup(FUSE_ROOT_ID, "f").nodeid
        fh = client.open(n).fh
        msg = setupmapping(n, fh=fh, foffset=0, length=4096, moffset=0, flags=FLAG_READ)
        assert _errno(lambda: client.call(msg.opcode, msg.body, nodeid=n)) == errno.ENOSYS
        rm = removemapping(0, [(0, 4096)])
        assert _errno(lambda: client.call(rm.opcode, rm.body)) == errno.ENOSYS
    finally:
        client.close()


@pytest.mark.parametrize("config", ["osv", "osv-aggressive", "linux"])
def test_managers_read_through_the_real_window(live, shared_dir, config):
    files = Files(live, shared_dir)
    if config == "linux":
        mgr = LinuxDaxManager(live.device, files.backend, range_shift=18)
    else:
        mgr = OsvDaxManager(live.device, files.backend, chunk_size=CHUNK,
                            aggressive=config == "osv-aggressive")
    checker = DaxChecker.for_manager(mgr, oracle=lambda n, o, s: files.data[n][o : o + s])
    compared = 0
    for n, off, size in files.reads(300, seed=7):
        want = files.data[n][off : off + size]
        assert live.client.read(n, files.fh[n], off, size) == want  # FUSE_READ agrees
        got = b""
        while len(got) < len(want):  # the application's read loop (OSv reads short)
            res = mgr.read(n, off + len(got), size - len(got), fh=files.fh[n])
            assert not res.fell_back and not res.error, res
            if not res.data:
                break
            got += bytes(res.data)
        assert got == want, (n, off, size)
        compared += len(want)
    checker.check_state()
    assert compared > MiB and mgr.stats.dax_bytes == compared
    assert set(live.device.replies) == {0}
    maps = [e for e in live.handler.events if e.request == R.FS_MAP]
    assert maps and all(e.result == 0 and e.fd_access == os.O_RDONLY for e in maps)
    assert live.violations(handle_access={fh: os.O_RDONLY for fh in files.fh.values()}) == []
    # The device's extent map is the record's: what the manager believes is mapped is.
    for v in mgr.view() if hasattr(mgr, "view") else []:
        assert live.window.mapping_at(v.moffset) is not None


def test_refused_requests_get_the_right_errno_and_map_nothing(live, shared_dir):
    with open(os.path.join(shared_dir, "f"), "wb") as f:
        f.write(os.urandom(64 * 1024))
    c = live.client
    n = c.lookup(FUSE_ROOT_ID, "f").nodeid
    ro = c.open(n, os.O_RDONLY).fh

    def setup(**kw):
        args = dict(fh=ro, foffset=0, length=4096, moffset=0, flags=FLAG_READ) | kw
        msg = setupmapping(n, **args)
        return _errno(lambda: c.call(msg.opcode, msg.body, nodeid=n))

    # every forbidden shape (the one table), each at the window's start and end
    for row in FORBIDDEN:
        for at in (0, WINDOW - 2 * 4096):
            msg = row.build(Where(4096, WINDOW, at, n, ro))
            assert msg is not None
            assert _errno(lambda m=msg: c.result(c.submit_unchecked(
                m.opcode, m.body, nodeid=m.nodeid))) == row.errno, row.name
    assert setup(foffset=100) == errno.EINVAL  # misaligned file offset
    assert setup(fh=0xDEAD) == errno.EBADF  # no such handle

    def remove(entries, count=None):
        msg = removemapping(0, entries, count=count)
        if count is None and len(entries) <= 256:
            return _errno(lambda: c.call(msg.opcode, msg.body))
        return _errno(lambda: c.result(c.submit_unchecked(msg.opcode, msg.body)))

    assert remove([(0, 4096)], count=2) == errno.EINVAL  # count says more than follows
    assert remove([(0, 4096)] * 257) == errno.EINVAL  # more than one page of entries
    assert live.handler.events == []  # nothing reached the frontend
    # A read-write handle may map writable; the fd the frontend receives is O_RDWR, and a
    # store through the window reaches the host file.
    rw = c.open(n, os.O_RDWR).fh
    assert setup(fh=rw, flags=FLAG_READ | FLAG_WRITE, moffset=8192) == 0
    assert setup(fh=rw, flags=FLAG_READ, moffset=16384) == 0  # read-only asked: O_RDONLY
    assert [e.fd_access for e in live.handler.events] == [os.O_RDWR, os.O_RDONLY]
    live.window.write(8192 + 10, b"through DAX")
    with open(os.path.join(shared_dir, "f"), "rb") as f:
        assert f.read()[10:21] == b"through DAX"
    assert remove([(8192, 4096), (16384, 4096)]) == 0
    assert live.window.mappings() == []
    assert live.violations(handle_access={ro: os.O_RDONLY, rw: os.O_RDWR}) == []


def test_destroy_unmaps_everything(live, shared_dir):
    with open(os.path.join(shared_dir, "f"), "wb") as f:
        f.write(os.urandom(1 * MiB))
    c = live.client
    n = c.lookup(FUSE_ROOT_ID, "f").nodeid
    fh = c.open(n).fh
    for i in range(4):
        msg = setupmapping(n, fh=fh, foffset=i * 65536, length=65536, moffset=i * MiB,
                           flags=FLAG_READ)
        assert live.device.submit(msg) == 0
    assert len(live.window.mappings()) == 4 and live.window.window.mapped_pages() == 64
    c.destroy()
    assert live.window.mappings() == [] and live.window.window.mapped_pages() == 0
    last = live.handler.events[-1]
    assert last.request == R.FS_UNMAP and last.payload.len[0] == ALL_ONES
    assert live.violations(expect_empty=True) == []


# ---- every record invariant can fail ----------------------------------------------------
def _ev(request, entries, result=0, fd_access=None):
    cols = [[0] * 8 for _ in range(4)]
    for i, entry in enumerate(entries):
        for col, v in zip(cols, entry, strict=True):
            col[i] = v
    msg = VhostUserFSBackendMsg(*(tuple(c) for c in cols))
    return BackendEvent(request, msg, result, fd_access)


MAP_R, MAP_RW = VHOST_USER_FS_FLAG_MAP_R, VHOST_USER_FS_FLAG_MAP_R | VHOST_USER_FS_FLAG_MAP_W


FAILING_CASES = [
    ("alignment", [_ev(R.FS_MAP, [(100, 0, 4096, MAP_R)], fd_access=os.O_RDONLY)], {}),
    ("inside_window", [_ev(R.FS_MAP, [(0, WINDOW, 4096, MAP_R)], fd_access=os.O_RDONLY)], {}),
    ("exact_ranges", [_ev(R.FS_MAP, [(0, 4096, 4096, MAP_R)], fd_access=os.O_RDONLY)],
     {"log": [RecordEntry(setupmapping(5, fh=7, foffset=0, length=4096, moffset=0, flags=0),
                          0, (_ev(R.FS_MAP, [(0, 4096, 4096, MAP_R)],
                                  fd_access=os.O_RDONLY),))]}),
    ("accounting", [_ev(R.FS_MAP, [(0, 0, 8192, MAP_R)], fd_access=os.O_RDONLY)],
     {"mapped_bytes": 4096}),
    ("unmap_all", [_ev(R.FS_MAP, [(0, 0, 8192, MAP_R)], fd_access=os.O_RDONLY)],
     {"expect_empty": True}),
    ("handle_access", [_ev(R.FS_MAP, [(0, 0, 4096, MAP_RW)], fd_access=os.O_RDONLY)], {}),
]


def test_every_record_invariant_has_a_failing_case():
    assert {c[0] for c in FAILING_CASES} == set(RECORD_INVARIANTS)


@pytest.mark.parametrize("name,events,kw", FAILING_CASES)
def test_each_record_invariant_can_fail(name, events, kw):
    found = check_backend_record(events, WINDOW, 12, **kw)
    assert [v.invariant for v in found] == [name], found
    # ... and the unmap that follows clears what only the live state made wrong.
    if name in ("accounting", "unmap_all"):
        events = [*events, _ev(R.FS_UNMAP, [(0, 0, ALL_ONES, 0)])]
        assert check_backend_record(events, WINDOW, 12, **kw | {"mapped_bytes": 0}) == []


def test_a_writable_mapping_of_a_read_only_handle_is_reported():
    """The daemon-side check: a SETUPMAPPING on a read-only handle that the daemon served
    with a writable map (even with an O_RDWR fd it opened itself) is a violation."""
    msg = setupmapping(5, fh=7, foffset=0, length=4096, moffset=0, flags=FLAG_READ | FLAG_WRITE)
    ev = _ev(R.FS_MAP, [(0, 0, 4096, MAP_RW)], fd_access=os.O_RDWR)
    log = [RecordEntry(msg, 0, (ev,))]
    found = check_backend_record([ev], WINDOW, 12, log=log, handle_access={7: os.O_RDONLY})
    assert [v.invariant for v in found] == ["handle_access"]
    assert check_backend_record([ev], WINDOW, 12, log=log, handle_access={7: os.O_RDWR}) == []
    # Refused (EACCES, nothing sent): fine.
    refused = [RecordEntry(msg, errno.EACCES, ())]
    assert check_backend_record([], WINDOW, 12, log=refused,
                                handle_access={7: os.O_RDONLY}) == []
    assert msg.opcode == fuse_opcode.FUSE_SETUPMAPPING


def test_disconnect_drops_every_mapping(no_leaks, cdax, shared_dir):
    """No DESTROY: the connection ends with mappings live; the daemon exits cleanly and
    the frontend's window is left with nothing mapped."""
    with open(os.path.join(shared_dir, "f"), "wb") as f:
        f.write(os.urandom(MiB))
    live = open_dax_daemon(cdax, shared_dir, WINDOW)
    try:
        n = live.client.lookup(FUSE_ROOT_ID, "f").nodeid
        fh = live.client.open(n).fh
        msg = setupmapping(n, fh=fh, foffset=0, length=65536, moffset=MiB, flags=FLAG_READ)
        assert live.device.submit(msg) == 0 and live.window.window.mapped_pages() == 16
        live.client.close()
        assert live.window.window.mapped_pages() == 0 and live.window.mappings() == []
    finally:
        live.close()


def test_instrumented_build_serves_dax(no_leaks, shared_dir):
    """c-dax-asan-cov (the patch under ASan + UBSan + coverage): the OSv manager's reads
    through the real window, a refused request, DESTROY; no sanitizer report (the
    daemon exits 0)."""
    inst = built_installation("c-dax-asan-cov")
    assert inst.instrumentation
    live = open_dax_daemon(inst, shared_dir, WINDOW)
    try:
        files = Files(live, shared_dir)
        mgr = OsvDaxManager(live.device, files.backend, chunk_size=CHUNK)
        for n, off, size in files.reads(80, seed=3):
            res = mgr.read(n, off, size, fh=files.fh[n])
            assert not res.error and res.data == files.data[n][off : off + len(res.data)]
        n = next(iter(files.fh))
        bad = setupmapping(n, fh=files.fh[n], foffset=1, length=4096, moffset=0, flags=0)
        assert live.device.submit(bad) == errno.EINVAL
        live.client.destroy()
        assert live.violations(expect_empty=True) == []
        daemon = live.client.transport.daemon
    finally:
        live.close()
    assert daemon.proc.returncode == 0


def test_files_changed_on_the_host(live, shared_dir):
    """Documented outcome: the window maps the host file (MAP_SHARED), so an overwrite on
    the host is visible through DAX at once, with no new mapping; after the host shrinks
    the file, a read past the new end is not served from the window (EFAULT, never
    SIGBUS) and falls back to FUSE_READ, which returns what the file now holds."""
    path = os.path.join(shared_dir, "f")
    with open(path, "wb") as f:
        f.write(os.urandom(MiB))
    n = live.client.lookup(FUSE_ROOT_ID, "f").nodeid
    fh = live.client.open(n).fh
    mgr = OsvDaxManager(live.device, ClientBackend(live.client), chunk_size=CHUNK)
    assert not mgr.read(n, 0, 4096, fh=fh).error and mgr.stats.setupmapping == 1
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"X" * 50)
    res = mgr.read(n, 0, 4096, fh=fh)
    assert res.data[100:150] == b"X" * 50 and not res.fell_back
    assert mgr.stats.setupmapping == 1
    assert bytes(res.data) == live.client.read(n, fh, 0, 4096)
    os.truncate(path, 8192)
    res = mgr.read(n, 10000, 100, fh=fh)
    assert res.fell_back and res.error == errno.EFAULT and res.data == b""
    assert live.violations() == []


def test_several_mounts_sharing_one_window(no_leaks, cdax, shared_dir):
    """Documented outcome: two connections (two daemons, two managers) on one window,
    each believing the whole window its own, map over each other: the record shows both
    daemons' maps, check_trace on the two senders' messages reports the clash, and the
    first mount then reads the second one's file through its stale belief."""
    for name in ("a", "b"):
        with open(os.path.join(shared_dir, name), "wb") as f:
            f.write(os.urandom(MiB))
    window = MmapDevice(WINDOW)
    lives = []
    try:
        for _ in range(2):
            lives.append(open_dax_daemon(cdax, shared_dir, WINDOW, window=window))
        mgrs, nodes = [], []
        for live, name in zip(lives, ("a", "b"), strict=True):
            n = live.client.lookup(FUSE_ROOT_ID, name).nodeid
            nodes.append((n, live.client.open(n).fh))
            mgrs.append(OsvDaxManager(live.device, ClientBackend(live.client),
                                      chunk_size=CHUNK, sender=f"mount-{name}"))
        for mgr, (n, fh) in zip(mgrs, nodes, strict=True):
            assert not mgr.read(n, 0, 4096, fh=fh).error
        assert all(any(e.request == R.FS_MAP for e in lv.handler.events) for lv in lives)
        records = [TraceRecord(e.msg.sender, e.msg.raw, e.error)
                   for lv in lives for e in lv.device.log]
        found = check_trace(records, WINDOW, 12)
        assert [v.invariant for v in found] == ["cross_manager_overlap"], found
        # ... and mount a, re-reading, is served mount b's file: the window is b's now.
        (na, fha), (nb, fhb) = nodes
        with open(os.path.join(shared_dir, "b"), "rb") as f:
            assert bytes(mgrs[0].read(na, 0, 4096, fh=fha).data) == f.read(4096)
    finally:
        for live in lives:
            live.close()
        window.close()


# ---- planted daemon-side bugs: each caught by the record invariants ------------------------
def _bug_scenario(live, shared_dir, bug):
    with open(os.path.join(shared_dir, "f"), "wb") as f:
        f.write(os.urandom(MiB))
    c = live.client
    n = c.lookup(FUSE_ROOT_ID, "f").nodeid
    ro = c.open(n, os.O_RDONLY).fh

    def setup(**kw):
        args = dict(fh=ro, foffset=0, length=65536, moffset=0, flags=FLAG_READ) | kw
        return live.device.submit(setupmapping(n, **args))

    if bug == "align":
        setup(foffset=100)
    elif bug == "window-end":
        setup(moffset=WINDOW - 4096, length=8192)
    elif bug == "count":
        setup(moffset=0)
        setup(moffset=MiB)
        msg = removemapping(0, [(0, 65536), (MiB, 65536)], count=1)
        first = len(live.handler.events)  # sent unchecked: logged here, not by the device
        err = _errno(lambda: c.result(c.submit_unchecked(msg.opcode, msg.body)))
        live.device.log.append(RecordEntry(msg, err, tuple(live.handler.events[first:])))
    elif bug == "access":
        setup(flags=FLAG_READ | FLAG_WRITE)
    elif bug == "unmap":
        setup()
        live.device.submit(removemapping(0, [(0, 65536)]))
    return live.violations(handle_access={ro: os.O_RDONLY})


BUG_CAUGHT_BY = {"align": "alignment", "window-end": "inside_window", "count": "exact_ranges",
                 "access": "handle_access", "unmap": "exact_ranges"}


@pytest.mark.parametrize("bug", sorted(BUG_CAUGHT_BY))
def test_planted_daemon_bug_is_caught(no_leaks, cdax, shared_dir, bug):
    from fuseproto.daemons.variants import DAX_BUGS

    assert set(DAX_BUGS) == set(BUG_CAUGHT_BY)
    buggy = built_installation(f"c-dax-bug-{bug}")
    live = open_dax_daemon(buggy, shared_dir, WINDOW)
    try:
        found = {v.invariant for v in _bug_scenario(live, shared_dir, bug)}
    finally:
        live.close()
    assert BUG_CAUGHT_BY[bug] in found, found
    for name in os.listdir(shared_dir):
        os.unlink(os.path.join(shared_dir, name))
    live = open_dax_daemon(cdax, shared_dir, WINDOW)  # the same scenario on c-dax: clean
    try:
        assert _bug_scenario(live, shared_dir, bug) == []
    finally:
        live.close()
