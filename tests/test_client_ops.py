"""Every client operation against both real daemons, checked against the host file system.

Each test gets its own daemon on a fresh shared directory (one daemon per session), and
what a daemon cannot do is asserted as what it answers (ENOSYS ...), so a daemon that
changes behaviour shows up here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

import pytest
from construct import Container

from fuseproto.client import Client
from fuseproto.errors import DecodeError, FuseError
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire.constants import (
    FUSE_REMOVEMAPPING_MAX_ENTRY,
    FUSE_ROOT_ID,
    InitFlags,
    fuse_opcode,
)

pytestmark = pytest.mark.daemon
ROOT = FUSE_ROOT_ID
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
SEEK_DATA, SEEK_HOLE = 3, 4


class FS:
    """A connected, initialised client plus the host path of its shared directory."""

    def __init__(self, client: Client, root: str, kind: str, init):
        self.c, self.root, self.kind, self.init = client, root, kind, init

    def host(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    def write_host(self, name: str, data: bytes) -> str:
        p = self.host(name)
        with open(p, "wb") as f:
            f.write(data)
        return p


def _fs(installation, shared_dir, daemon_args=None):
    t = VhostUserTransport.spawn(installation, shared_dir, daemon_args=daemon_args)
    c = Client(t)
    return FS(c, shared_dir, installation.kind, c.init())


@pytest.fixture
def fs(no_leaks, installation, shared_dir):
    f = _fs(installation, shared_dir)
    try:
        yield f
    finally:
        f.c.close()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _errno(fn, *args, **kw) -> int:
    with pytest.raises(FuseError) as ei:
        fn(*args, **kw)
    return ei.value.errno


def _same_attr(attr, st: os.stat_result) -> None:
    assert attr.ino == st.st_ino
    assert attr.mode == st.st_mode
    assert attr.size == st.st_size
    assert attr.nlink == st.st_nlink
    assert (attr.uid, attr.gid) == (st.st_uid, st.st_gid)
    assert attr.mtime == int(st.st_mtime) and attr.mtimensec == st.st_mtime_ns % 10**9


# -- session ----------------------------------------------------------------------------

def test_init_negotiation(fs):
    init = fs.init
    assert init.major == 7
    assert init.minor == {"c": 36, "rust": 38}[fs.kind]
    assert fs.c.session.minor == init.minor
    flags = InitFlags.from_words(init.flags, init.flags2 if init.flags & InitFlags.FUSE_INIT_EXT else 0)
    assert flags & InitFlags.FUSE_DO_READDIRPLUS
    # Neither released daemon does DAX: no MAP_ALIGNMENT, so map_alignment means nothing.
    assert not flags & InitFlags.FUSE_MAP_ALIGNMENT
    assert fs.c.session.map_alignment is None
    assert init.max_write >= 4096


def test_destroy(fs):
    if fs.kind == "c":
        fs.c.destroy()
        assert _errno(fs.c.getattr, ROOT) == errno.EIO
    else:
        # virtiofsd 1.13 completes DESTROY without writing a reply at all.
        with pytest.raises(DecodeError, match="shorter than fuse_out_header"):
            fs.c.destroy()
        assert _errno(fs.c.getattr, ROOT) == errno.EBADF


# -- names and attributes ---------------------------------------------------------------

def test_lookup_and_getattr(fs):
    fs.write_host("f", b"hello")
    os.mkdir(fs.host("d"))
    e = fs.c.lookup(ROOT, "f")
    _same_attr(e.attr, os.stat(fs.host("f")))
    _same_attr(fs.c.getattr(e.nodeid).attr, os.stat(fs.host("f")))
    d = fs.c.lookup(ROOT, "d")
    assert stat.S_ISDIR(d.attr.mode) and d.attr.ino == os.stat(fs.host("d")).st_ino
    assert fs.c.getattr(ROOT).attr.ino == os.stat(fs.root).st_ino
    assert _errno(fs.c.lookup, ROOT, "missing") == errno.ENOENT
    o = fs.c.open(e.nodeid)
    assert fs.c.getattr(e.nodeid, fh=o.fh).attr.size == 5


def test_prepare_send_and_chained_result(fs):
    """A prepared request is registered but not sent; result(p, then=q) sends q once p's
    reply is in, so the daemon holds one request at a time."""
    fs.write_host("f", b"hello")
    e = fs.c.lookup(ROOT, "f")
    body = Container(getattr_flags=0, dummy=0, fh=0)
    p = fs.c.prepare(fuse_opcode.FUSE_GETATTR, body, nodeid=ROOT)
    assert p.token is None and p.unique in fs.c.session.pending
    fs.c.send(p)
    with pytest.raises(ValueError):
        fs.c.send(p)
    for _ in range(3):
        q = fs.c.prepare(fuse_opcode.FUSE_GETATTR, body, nodeid=e.nodeid)
        assert fs.c.transport.queues[1].inflight.keys() == {p.token.head}
        assert fs.c.result(p, then=q).attr.ino in (os.stat(fs.root).st_ino,
                                                   os.stat(fs.host("f")).st_ino)
        p = q
    assert fs.c.result(p).attr.size == 5
    assert not fs.c.session.pending


def test_forget_and_batch_forget(fs):
    fs.write_host("f", b"")
    ids = [fs.c.lookup(ROOT, "f").nodeid for _ in range(3)]
    assert len(set(ids)) == 1
    fs.c.forget(ids[0], 1)
    fs.c.batch_forget([(ids[0], 2)])
    # The inode is forgotten; a new lookup works (and may get a new nodeid).
    assert fs.c.lookup(ROOT, "f").attr.ino == os.stat(fs.host("f")).st_ino


def test_setattr(fs):
    p = fs.write_host("f", b"0123456789")
    n = fs.c.lookup(ROOT, "f").nodeid
    a = fs.c.setattr(n, mode=0o100640).attr
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640 == stat.S_IMODE(a.mode)
    a = fs.c.setattr(n, size=4).attr
    assert os.path.getsize(p) == 4 == a.size
    fs.c.setattr(n, mtime=(1_000_000_000, 5), atime=(1_000_000_001, 0))
    st = os.stat(p)
    assert (st.st_mtime_ns, st.st_atime_ns) == (1_000_000_000 * 10**9 + 5, 1_000_000_001 * 10**9)
    fs.c.setattr(n, uid=1234, gid=4321)
    assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 4321)
    o = fs.c.open(n, os.O_RDWR)
    fs.c.setattr(n, size=0, fh=o.fh)
    assert os.path.getsize(p) == 0


def test_statx_not_implemented(fs):
    fs.write_host("f", b"")
    n = fs.c.lookup(ROOT, "f").nodeid
    # C virtiofsd speaks 7.36 (STATX is 7.39); virtiofsd 1.13 does not implement it.
    assert _errno(fs.c.statx, n) == errno.ENOSYS


def test_access(fs):
    fs.write_host("f", b"")
    n = fs.c.lookup(ROOT, "f").nodeid
    if fs.kind == "c":
        assert _errno(fs.c.access, n, os.R_OK) == errno.ENOSYS  # leaves it to the kernel
    else:
        fs.c.access(n, os.R_OK | os.W_OK)
        fs.c.access(ROOT, os.X_OK)


def test_statfs(fs):
    st = fs.c.statfs().st
    host = os.statvfs(fs.root)
    assert (st.bsize, st.frsize, st.namelen) == (host.f_bsize, host.f_frsize, host.f_namemax)
    assert st.blocks == host.f_blocks and st.files == host.f_files


# -- creating and removing --------------------------------------------------------------

def test_mkdir_rmdir(fs):
    e = fs.c.mkdir(ROOT, "d", 0o750)
    assert os.path.isdir(fs.host("d"))
    assert stat.S_IMODE(os.stat(fs.host("d")).st_mode) == 0o750
    _same_attr(e.attr, os.stat(fs.host("d")))
    assert _errno(fs.c.mkdir, ROOT, "d") == errno.EEXIST
    fs.write_host("d/inner", b"")
    assert _errno(fs.c.rmdir, ROOT, "d") == errno.ENOTEMPTY
    os.unlink(fs.host("d/inner"))
    fs.c.rmdir(ROOT, "d")
    assert not os.path.exists(fs.host("d"))


def test_mknod(fs):
    fifo = fs.c.mknod(ROOT, "p", stat.S_IFIFO | 0o644)
    assert stat.S_ISFIFO(os.stat(fs.host("p")).st_mode) and stat.S_ISFIFO(fifo.attr.mode)
    reg = fs.c.mknod(ROOT, "r", stat.S_IFREG | 0o600)
    assert os.path.isfile(fs.host("r")) and reg.attr.size == 0
    assert stat.S_IMODE(os.stat(fs.host("r")).st_mode) == 0o600


def test_symlink_readlink(fs):
    e = fs.c.symlink(ROOT, "l", "target/elsewhere")
    assert os.readlink(fs.host("l")) == "target/elsewhere" and stat.S_ISLNK(e.attr.mode)
    assert fs.c.readlink(e.nodeid) == b"target/elsewhere"
    os.symlink("/abs/path", fs.host("hostlink"))
    assert fs.c.readlink(fs.c.lookup(ROOT, "hostlink").nodeid) == b"/abs/path"


def test_unlink(fs):
    fs.write_host("f", b"x")
    if fs.kind == "c":
        # QEMU 7.2's virtiofsd only unlinks/renames names whose inode it already knows
        # (the kernel always looks a name up first); otherwise EIO.
        assert _errno(fs.c.unlink, ROOT, "f") == errno.EIO
    fs.c.lookup(ROOT, "f")
    fs.c.unlink(ROOT, "f")
    assert not os.path.exists(fs.host("f"))
    assert _errno(fs.c.unlink, ROOT, "f") == {"c": errno.EIO, "rust": errno.ENOENT}[fs.kind]


def test_link(fs):
    fs.write_host("f", b"data")
    n = fs.c.lookup(ROOT, "f").nodeid
    e = fs.c.link(n, ROOT, "g")
    assert os.path.samefile(fs.host("f"), fs.host("g")) and e.attr.nlink == 2
    assert os.stat(fs.host("f")).st_nlink == 2


def test_rename_and_rename2(fs):
    fs.write_host("a", b"A")
    fs.write_host("b", b"B")
    os.mkdir(fs.host("d"))
    d = fs.c.lookup(ROOT, "d").nodeid
    if fs.kind == "c":
        # As for unlink: the C daemon wants the source looked up first.
        assert _errno(fs.c.rename, ROOT, "a", d, "a2") == errno.EIO
    fs.c.lookup(ROOT, "a")
    fs.c.lookup(ROOT, "b")
    fs.c.rename(ROOT, "a", d, "a2")
    assert _read(fs.host("d", "a2")) == b"A" and not os.path.exists(fs.host("a"))
    assert _errno(fs.c.rename2, ROOT, "b", d, "a2", RENAME_NOREPLACE) == errno.EEXIST
    fs.c.lookup(d, "a2")
    fs.c.rename2(ROOT, "b", d, "a2", RENAME_EXCHANGE)
    assert _read(fs.host("d", "a2")) == b"B"
    assert _read(fs.host("b")) == b"A"
    fs.c.lookup(ROOT, "b")
    fs.c.rename2(ROOT, "b", ROOT, "c", 0)
    assert os.path.exists(fs.host("c"))


def test_create(fs):
    r = fs.c.create(ROOT, "new", 0o640, os.O_RDWR)
    assert os.path.isfile(fs.host("new"))
    assert stat.S_IMODE(os.stat(fs.host("new")).st_mode) == 0o640
    assert r.attr.ino == os.stat(fs.host("new")).st_ino
    assert fs.c.write(r.nodeid, r.fh, 0, b"created") == 7
    fs.c.release(r.nodeid, r.fh)
    assert _read(fs.host("new")) == b"created"
    assert _errno(fs.c.create, ROOT, "new", 0o600, os.O_RDWR | os.O_CREAT | os.O_EXCL) \
        == errno.EEXIST


def test_tmpfile_not_implemented(fs):
    # TMPFILE is protocol 7.37: above C virtiofsd's 7.36; virtiofsd 1.13 lacks it too.
    assert _errno(fs.c.tmpfile, ROOT) == errno.ENOSYS


# -- file I/O ---------------------------------------------------------------------------

def test_open_read_release(fs):
    content = os.urandom(300_000)
    fs.write_host("f", content)
    n = fs.c.lookup(ROOT, "f").nodeid
    o = fs.c.open(n, os.O_RDONLY)
    assert fs.c.read(n, o.fh, 0, 10) == content[:10]
    assert fs.c.read(n, o.fh, 1000, 128 << 10) == content[1000:1000 + (128 << 10)]
    assert fs.c.read(n, o.fh, len(content) - 5, 4096) == content[-5:]
    assert fs.c.read(n, o.fh, len(content) + 10, 4096) == b""
    # Several reads in flight, completed in any order.
    pend = [fs.c.submit_read(n, o.fh, off, 65536, kick=False) for off in range(0, 262144, 65536)]
    fs.c.kick()
    got = b"".join(bytes(fs.c.result(p).data) for p in pend)
    assert got == content[:262144]
    fs.c.flush(n, o.fh)
    fs.c.release(n, o.fh)


def test_write_split_and_whole(fs):
    p = fs.write_host("f", b"")
    n = fs.c.lookup(ROOT, "f").nodeid
    o = fs.c.open(n, os.O_RDWR)
    data = os.urandom(200_000)
    assert fs.c.write(n, o.fh, 0, data[:100_000]) == 100_000  # header | write_in | data
    fs.c.split_writes = False
    assert fs.c.write(n, o.fh, 100_000, data[100_000:]) == 100_000  # one descriptor
    fs.c.fsync(n, o.fh)
    fs.c.fsync(n, o.fh, datasync=True)
    fs.c.release(n, o.fh)
    assert _read(p) == data
    assert fs.c.getattr(n).attr.size == len(data)


def test_fallocate_lseek_copy_file_range(fs):
    p = fs.write_host("src", b"")
    fs.write_host("dst", b"")
    s = fs.c.lookup(ROOT, "src").nodeid
    d = fs.c.lookup(ROOT, "dst").nodeid
    so = fs.c.open(s, os.O_RDWR)
    do = fs.c.open(d, os.O_RDWR)
    fs.c.fallocate(s, so.fh, 0, 1 << 20)
    assert os.path.getsize(p) == 1 << 20
    fs.c.write(s, so.fh, 0, b"Z" * 8192)
    fs.c.setattr(s, size=4 << 20)  # a hole after the first MiB
    assert fs.c.lseek(s, so.fh, 0, SEEK_DATA) == 0
    hole = fs.c.lseek(s, so.fh, 0, SEEK_HOLE)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert hole == os.lseek(fd, 0, SEEK_HOLE)
    finally:
        os.close(fd)
    assert fs.c.copy_file_range(s, so.fh, 0, d, do.fh, 100, 8192) == 8192
    assert _read(fs.host("dst")) == bytes(100) + b"Z" * 8192


def test_locks_not_implemented_by_default(fs):
    fs.write_host("f", b"")
    n = fs.c.lookup(ROOT, "f").nodeid
    o = fs.c.open(n, os.O_RDWR)
    assert _errno(fs.c.getlk, n, o.fh, 1, 0, 100, fcntl.F_WRLCK) == errno.ENOSYS
    assert _errno(fs.c.setlk, n, o.fh, 1, 0, 100, fcntl.F_WRLCK) == errno.ENOSYS


def test_locks_with_c_posix_lock(no_leaks, daemon_installations, shared_dir):
    f = _fs(daemon_installations["c"], shared_dir, ["-o", "posix_lock"])
    try:
        f.write_host("f", b"")
        n = f.c.lookup(ROOT, "f").nodeid
        o = f.c.open(n, os.O_RDWR)
        assert f.c.getlk(n, o.fh, 1, 0, 100, fcntl.F_WRLCK).type == fcntl.F_UNLCK
        f.c.setlk(n, o.fh, 1, 0, 100, fcntl.F_WRLCK, pid=os.getpid())
        f.c.setlk(n, o.fh, 1, 0, 100, fcntl.F_UNLCK, pid=os.getpid())
    finally:
        f.c.close()


# -- directories ------------------------------------------------------------------------

def _names(entries, plus: bool) -> list[bytes]:
    return [bytes(e.dirent.name if plus else e.name) for e in entries]


@pytest.mark.parametrize("plus", [False, True], ids=["readdir", "readdirplus"])
def test_readdir(fs, plus):
    names = {f"file{i:03}".encode() for i in range(60)}
    for name in names:
        fs.write_host(name.decode(), b"x" * (len(name)))
    h = fs.c.opendir(ROOT)
    op = fs.c.readdirplus if plus else fs.c.readdir
    seen, off = [], 0
    while True:  # small buffers: several calls, each continuing at the last entry's off
        batch = op(ROOT, h.fh, off, 512)
        if not batch:
            break
        seen += _names(batch, plus)
        off = (batch[-1].dirent if plus else batch[-1]).off
    assert set(seen) == names | {b".", b".."} and len(seen) == len(set(seen))
    if plus:
        for e in op(ROOT, h.fh, 0, 65536):
            if e.dirent.name.startswith(b"file"):
                _same_attr(e.entry_out.attr, os.stat(fs.host(e.dirent.name.decode())))
    fs.c.fsyncdir(ROOT, h.fh)
    fs.c.releasedir(ROOT, h.fh)


# -- extended attributes ----------------------------------------------------------------

def test_xattrs(fs):
    p = fs.write_host("f", b"")
    n = fs.c.lookup(ROOT, "f").nodeid
    fs.c.setxattr(n, "user.one", b"value-1")
    assert os.getxattr(p, "user.one") == b"value-1"
    os.setxattr(p, "user.two", b"2")
    assert fs.c.getxattr(n, "user.one") == b"value-1"
    assert fs.c.getxattr(n, "user.one", 0) == 7
    assert sorted(fs.c.listxattr(n)) == sorted(n.encode() for n in os.listxattr(p))
    assert fs.c.listxattr(n, 0) == sum(len(x) + 1 for x in os.listxattr(p))
    assert _errno(fs.c.getxattr, n, "user.one", 3) == errno.ERANGE
    fs.c.removexattr(n, "user.one")
    assert "user.one" not in os.listxattr(p)
    assert _errno(fs.c.getxattr, n, "user.one") == errno.ENODATA


# -- DAX window and sync ----------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 1, FUSE_REMOVEMAPPING_MAX_ENTRY])
def test_removemapping_not_implemented(fs, count):
    assert _errno(fs.c.removemapping, [(i * 4096, 4096) for i in range(count)]) == errno.ENOSYS


def test_removemapping_above_maximum(fs):
    # The session refuses to build it; sent unchecked, the daemons still answer ENOSYS
    # (they reject the opcode before looking at the count).
    entries = [Container(moffset=0, len=4096)] * (FUSE_REMOVEMAPPING_MAX_ENTRY + 1)
    p = fs.c.submit_unchecked(fuse_opcode.FUSE_REMOVEMAPPING,
                              Container(count=None, entries=entries))
    assert _errno(fs.c.result, p) == errno.ENOSYS


def test_setupmapping_not_implemented(fs):
    fs.write_host("f", b"x" * 8192)
    n = fs.c.lookup(ROOT, "f").nodeid
    o = fs.c.open(n, os.O_RDWR)
    for flags in (0, 1, 3):  # read, write, read|write
        assert _errno(fs.c.setupmapping, n, o.fh, 0, 4096, 0, flags) == errno.ENOSYS


def test_syncfs(fs):
    # On the wire: FUSE_SYNCFS on the root with a zeroed fuse_syncfs_in, answered by a
    # bare success header carrying the same unique.
    crossed = []
    fs.c.transport.tap = lambda direction, queue, data: crossed.append((direction, bytes(data)))
    try:
        assert fs.c.syncfs() is None
    finally:
        fs.c.transport.tap = None
    (d_req, req), (d_rep, rep) = crossed
    length, opcode, unique, nodeid = struct.unpack_from("<IIQQ", req)
    assert (d_req, length, opcode, nodeid, req[40:]) == (0, 48, fuse_opcode.FUSE_SYNCFS, ROOT, bytes(8))
    assert (d_rep, rep) == (1, struct.pack("<IiQ", 16, 0, unique))
    # Both daemons sync the file system of the node they are given: any known node does,
    # an unknown nodeid is EBADF -- the request reached their SYNCFS handler.
    fs.write_host("f", b"x")
    assert fs.c.syncfs(fs.c.lookup(ROOT, "f").nodeid) is None
    assert _errno(fs.c.syncfs, 12345) == errno.EBADF
