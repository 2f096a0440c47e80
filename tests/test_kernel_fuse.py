"""Real traffic: a kernel FUSE mount served through fuseproto's codec and Session.

The test mounts /dev/fuse (root), serves it with a tiny in-memory file system built on the
schema (:class:`MemFS`: files, directories, symlinks, hard links, xattrs, locks), drives it
with ordinary system calls from a worker thread, and checks three things:

* every request the kernel sent decodes, with a known opcode, losslessly
  (``encode_request(decode_request(b)) == b``);
* every reply and notification we wrote was accepted by the kernel (no EINVAL from the
  device) and itself decodes and re-encodes to the same bytes;
* the system calls return what the file system holds, and the opcodes seen cover the
  operations driven, as far as the kernel's protocol minor can send them (SINCE_MINOR).

Every blocking call has a deadline: on timeout the connection is aborted (which fails the
stuck call) and the test fails; the mount, threads and directories are always cleaned up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import os
import select
import shutil
import signal
import stat
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from construct import Container

from fuseproto import Session
from fuseproto.fuseserver import DEFER, DevFuseServer
from fuseproto.transport.devfuse import DevFuseMount, find_mount_device, unavailable_reason
from fuseproto.wire import codec
from fuseproto.wire.constants import (
    FATTR,
    FUSE_DIRENT_SIZE,
    FUSE_DIRENTPLUS_SIZE,
    FUSE_ROOT_ID,
    InitFlags,
    fuse_notify_code,
    fuse_opcode,
)

OP = fuse_opcode
CALL_TIMEOUT = 10.0
MAX_WRITE = 128 * 1024


_SKIP = unavailable_reason()
pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

# The INIT flags the file system asks for (the kernel grants the intersection with what it
# offers). READDIRPLUS_AUTO makes the kernel use both READDIRPLUS and READDIR; SECURITY_CTX
# and CREATE_SUPP_GROUP make it append request extensions to CREATE/MKDIR/MKNOD/SYMLINK;
# SETXATTR_EXT selects the 16-byte fuse_setxattr_in.
WANTED_FLAGS = (
    InitFlags.FUSE_ASYNC_READ
    | InitFlags.FUSE_POSIX_LOCKS
    | InitFlags.FUSE_FLOCK_LOCKS
    | InitFlags.FUSE_BIG_WRITES
    | InitFlags.FUSE_DONT_MASK
    | InitFlags.FUSE_HAS_IOCTL_DIR
    | InitFlags.FUSE_DO_READDIRPLUS
    | InitFlags.FUSE_READDIRPLUS_AUTO
    | InitFlags.FUSE_PARALLEL_DIROPS
    | InitFlags.FUSE_MAX_PAGES
    | InitFlags.FUSE_SETXATTR_EXT
    | InitFlags.FUSE_INIT_EXT
    | InitFlags.FUSE_SECURITY_CTX
    | InitFlags.FUSE_CREATE_SUPP_GROUP
)

# A private ioctl the file system answers with 8 bytes: _IOR('E', 0x42, u64).
IOCTL_CMD = (2 << 30) | (8 << 16) | (ord("E") << 8) | 0x42
IOCTL_REPLY = b"fuseprot"

# linux/fs.h: renameat2 flags; fcntl.h: O_TMPFILE (with O_DIRECTORY).
RENAME_NOREPLACE = 1
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
# linux/stat.h: statx masks; the birth time MemFS reports for every node.
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800
BTIME = (1_234_567_890, 987_654_321)

# The protocol minor each opcode this test drives arrived with, from the changelog comment
# of linux/fuse.h (opcodes not listed are 7.1 or older). A kernel sends only what its own
# minor knows, and says that minor in its INIT request: Debian 12's 6.1 kernel speaks
# 7.38, which has FUSE_TMPFILE (7.37) but not FUSE_STATX (7.39); newer kernels send both.
SINCE_MINOR = {
    OP.FUSE_FSYNCDIR: 2,
    OP.FUSE_ACCESS: 3,
    OP.FUSE_CREATE: 3,
    OP.FUSE_GETLK: 7,  # 7.7: POSIX file lock support
    OP.FUSE_SETLK: 7,
    OP.FUSE_SETLKW: 7,
    OP.FUSE_IOCTL: 11,
    OP.FUSE_POLL: 11,
    OP.FUSE_BATCH_FORGET: 16,
    OP.FUSE_FALLOCATE: 19,
    OP.FUSE_READDIRPLUS: 21,
    OP.FUSE_RENAME2: 23,
    OP.FUSE_LSEEK: 24,
    OP.FUSE_COPY_FILE_RANGE: 28,
    OP.FUSE_TMPFILE: 37,
    OP.FUSE_STATX: 39,
    OP.FUSE_COPY_FILE_RANGE_64: 45,
}


def sendable(opcodes: set[fuse_opcode], kernel_minor: int) -> set[fuse_opcode]:
    """The opcodes of ``opcodes`` a kernel speaking 7.``kernel_minor`` can send."""
    return {op for op in opcodes if SINCE_MINOR.get(op, 1) <= kernel_minor}


# --- the in-memory file system ----------------------------------------------------------


@dataclass
class Node:
    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    atime: int = 0  # ns
    mtime: int = 0
    ctime: int = 0
    nlookup: int = 0

    def __post_init__(self) -> None:
        now = time.time_ns()
        self.atime = self.mtime = self.ctime = now


def _split_ns(ns: int) -> tuple[int, int]:
    return ns // 1_000_000_000, ns % 1_000_000_000


class MemFS:
    """A FUSE file system in a dict, answering decoded requests with schema bodies."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {
            FUSE_ROOT_ID: Node(FUSE_ROOT_ID, stat.S_IFDIR | 0o755, nlink=2)
        }
        self.next_ino = FUSE_ROOT_ID + 1
        self.handles: dict[int, int] = {}  # fh -> ino
        self.next_fh = 1
        self.seen: Counter[Any] = Counter()
        self.requests: list[Any] = []
        self.lock_flags: list[int] = []
        self.deferred: list[Any] = []  # SETLKW requests to answer later
        self.defer_setlkw = False
        self.poll_kh: int | None = None
        self.forgotten = 0
        self.lock = threading.Lock()

    # -- helpers --------------------------------------------------------------------------

    def node(self, nodeid: int) -> Node:
        try:
            return self.nodes[nodeid]
        except KeyError:
            raise OSError(errno.ENOENT, "stale node id") from None

    def dir(self, nodeid: int) -> Node:
        node = self.node(nodeid)
        if not stat.S_ISDIR(node.mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        return node

    def new_node(self, mode: int, **kw: Any) -> Node:
        node = Node(self.next_ino, mode, **kw)
        self.nodes[node.ino] = node
        self.next_ino += 1
        return node

    def attr(self, node: Node) -> Container:
        size = len(node.target) if stat.S_ISLNK(node.mode) else len(node.data)
        a_s, a_ns = _split_ns(node.atime)
        m_s, m_ns = _split_ns(node.mtime)
        c_s, c_ns = _split_ns(node.ctime)
        return Container(
            ino=node.ino,
            size=size,
            blocks=(size + 511) // 512,
            atime=a_s,
            mtime=m_s,
            ctime=c_s,
            atimensec=a_ns,
            mtimensec=m_ns,
            ctimensec=c_ns,
            mode=node.mode,
            nlink=node.nlink,
            uid=node.uid,
            gid=node.gid,
            rdev=node.rdev,
            blksize=4096,
            flags=0,
        )

    def entry(self, node: Node) -> Container:
        node.nlookup += 1
        # Zero timeouts: the kernel asks again every time, which makes more traffic.
        return Container(
            nodeid=node.ino,
            generation=1,
            entry_valid=0,
            attr_valid=0,
            entry_valid_nsec=0,
            attr_valid_nsec=0,
            attr=self.attr(node),
        )

    def attr_out(self, node: Node) -> Container:
        return Container(attr_valid=0, attr_valid_nsec=0, dummy=0, attr=self.attr(node))

    def new_fh(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    def link_child(self, parent: Node, name: bytes, node: Node) -> None:
        if name in parent.children:
            raise OSError(errno.EEXIST, "exists")
        parent.children[name] = node.ino
        parent.mtime = parent.ctime = time.time_ns()

    def unlink_child(self, parent: Node, name: bytes) -> Node:
        ino = parent.children.pop(name, None)
        if ino is None:
            raise OSError(errno.ENOENT, "no such entry")
        node = self.nodes[ino]
        node.nlink -= 2 if stat.S_ISDIR(node.mode) else 1
        if stat.S_ISDIR(node.mode):
            parent.nlink -= 1
        node.ctime = time.time_ns()
        return node

    # -- dispatch ---------------------------------------------------------------------------

    def __call__(self, req: Any) -> Any:
        with self.lock:
            self.seen[req.opcode] += 1
            self.requests.append(req)
            name = getattr(req.opcode, "name", None)
            method: Callable[[Any, Any], Any] | None = None
            if name is not None:
                method = getattr(self, "op_" + name.removeprefix("FUSE_").lower(), None)
            if method is None:
                raise OSError(errno.ENOSYS, f"{req.opcode} not implemented")
            return method(req, req.body)

    # -- operations -------------------------------------------------------------------------

    def op_init(self, req: Any, body: Any) -> Any:
        offered = InitFlags.from_words(body.flags, body.get("flags2", 0))
        lo, hi = InitFlags(offered & WANTED_FLAGS).words()
        return Container(
            major=7,
            minor=46,
            max_readahead=body.max_readahead,
            flags=lo,
            max_background=16,
            congestion_threshold=12,
            max_write=MAX_WRITE,
            time_gran=1,
            max_pages=MAX_WRITE // 4096,
            map_alignment=0,
            flags2=hi,
            max_stack_depth=0,
            request_timeout=0,
            unused=[0] * 11,
        )

    def op_destroy(self, req: Any, body: Any) -> Any:
        return Container()

    def op_lookup(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        ino = parent.children.get(body.name)
        if ino is None:
            raise OSError(errno.ENOENT, "no such entry")
        return self.entry(self.nodes[ino])

    def op_forget(self, req: Any, body: Any) -> None:
        self._forget(req.nodeid, body.nlookup)

    def op_batch_forget(self, req: Any, body: Any) -> None:
        for one in body.entries:
            self._forget(one.nodeid, one.nlookup)

    def _forget(self, nodeid: int, nlookup: int) -> None:
        self.forgotten += 1
        node = self.nodes.get(nodeid)
        if node is None:
            return
        node.nlookup -= nlookup
        if node.nlookup <= 0 and node.nlink <= 0 and nodeid != FUSE_ROOT_ID:
            del self.nodes[nodeid]

    def op_getattr(self, req: Any, body: Any) -> Any:
        return self.attr_out(self.node(req.nodeid))

    def op_setattr(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        valid = FATTR(body.valid)
        now = time.time_ns()
        if valid & FATTR.FATTR_MODE:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(body.mode)
        if valid & FATTR.FATTR_UID:
            node.uid = body.uid
        if valid & FATTR.FATTR_GID:
            node.gid = body.gid
        if valid & FATTR.FATTR_SIZE:
            if stat.S_ISDIR(node.mode):
                raise OSError(errno.EISDIR, "directory")
            del node.data[body.size :]
            node.data.extend(bytes(body.size - len(node.data)))
            node.mtime = now
        if valid & FATTR.FATTR_ATIME:
            node.atime = body.atime * 1_000_000_000 + body.atimensec
        if valid & FATTR.FATTR_ATIME_NOW:
            node.atime = now
        if valid & FATTR.FATTR_MTIME:
            node.mtime = body.mtime * 1_000_000_000 + body.mtimensec
        if valid & FATTR.FATTR_MTIME_NOW:
            node.mtime = now
        node.ctime = now
        return self.attr_out(node)

    def op_readlink(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        if not stat.S_ISLNK(node.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return Container(link=node.target)

    def op_symlink(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        node = self.new_node(stat.S_IFLNK | 0o777, target=body.link)
        self.link_child(parent, body.name, node)
        return self.entry(node)

    def op_mknod(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        node = self.new_node(body.mode, rdev=body.rdev)
        self.link_child(parent, body.name, node)
        return self.entry(node)

    def op_mkdir(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        node = self.new_node(stat.S_IFDIR | stat.S_IMODE(body.mode), nlink=2)
        self.link_child(parent, body.name, node)
        parent.nlink += 1
        return self.entry(node)

    def op_unlink(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        ino = parent.children.get(body.name)
        if ino is not None and stat.S_ISDIR(self.nodes[ino].mode):
            raise OSError(errno.EISDIR, "is a directory")
        self.unlink_child(parent, body.name)
        return Container()

    def op_rmdir(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        ino = parent.children.get(body.name)
        if ino is None:
            raise OSError(errno.ENOENT, "no such entry")
        if self.dir(ino).children:
            raise OSError(errno.ENOTEMPTY, "not empty")
        self.unlink_child(parent, body.name)
        return Container()

    def _rename(self, req: Any, body: Any, flags: int) -> Any:
        old_parent = self.dir(req.nodeid)
        new_parent = self.dir(body.newdir)
        ino = old_parent.children.get(body.name)
        if ino is None:
            raise OSError(errno.ENOENT, "no such entry")
        if body.newname in new_parent.children:
            if flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, "exists")
            self.unlink_child(new_parent, body.newname)
        del old_parent.children[body.name]
        new_parent.children[body.newname] = ino
        if stat.S_ISDIR(self.nodes[ino].mode) and old_parent is not new_parent:
            old_parent.nlink -= 1
            new_parent.nlink += 1
        return Container()

    def op_rename(self, req: Any, body: Any) -> Any:
        return self._rename(req, body, 0)

    def op_rename2(self, req: Any, body: Any) -> Any:
        if body.flags & ~RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "unsupported rename flags")
        return self._rename(req, body, body.flags)

    def op_link(self, req: Any, body: Any) -> Any:
        parent = self.dir(req.nodeid)
        node = self.node(body.oldnodeid)
        self.link_child(parent, body.name, node)
        node.nlink += 1
        node.ctime = time.time_ns()
        return self.entry(node)

    def op_open(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        return Container(fh=self.new_fh(node.ino), open_flags=0, backing_id=0)

    op_opendir = op_open

    def op_read(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        node.atime = time.time_ns()
        return Container(data=bytes(node.data[body.offset : body.offset + body.size]))

    def op_write(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        end = body.offset + len(body.data)
        if len(node.data) < body.offset:
            node.data.extend(bytes(body.offset - len(node.data)))
        node.data[body.offset : end] = body.data
        node.mtime = node.ctime = time.time_ns()
        return Container(size=len(body.data), padding=0)

    def op_statfs(self, req: Any, body: Any) -> Any:
        return Container(
            st=Container(
                blocks=1 << 20,
                bfree=1 << 19,
                bavail=1 << 18,
                files=1 << 16,
                ffree=(1 << 16) - len(self.nodes),
                bsize=4096,
                namelen=255,
                frsize=4096,
                padding=0,
                spare=[0] * 6,
            )
        )

    def _release(self, req: Any, body: Any) -> Any:
        self.handles.pop(body.fh, None)
        return Container()

    op_release = _release
    op_releasedir = _release

    def op_flush(self, req: Any, body: Any) -> Any:
        return Container()

    op_fsync = op_flush
    op_fsyncdir = op_flush
    op_access = op_flush

    def op_setxattr(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        exists = body.name in node.xattrs
        if body.flags & os.XATTR_CREATE and exists:
            raise OSError(errno.EEXIST, "xattr exists")
        if body.flags & os.XATTR_REPLACE and not exists:
            raise OSError(errno.ENODATA, "no such xattr")
        node.xattrs[body.name] = bytes(body.value)
        return Container()

    def _xattr_reply(self, size: int, value: bytes) -> Any:
        if size == 0:
            return Container(size=len(value), padding=0)
        if size < len(value):
            raise OSError(errno.ERANGE, "buffer too small")
        return Container(value=value)

    def op_getxattr(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        if body.name not in node.xattrs:
            raise OSError(errno.ENODATA, "no such xattr")
        return self._xattr_reply(body.size, node.xattrs[body.name])

    def op_listxattr(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        return self._xattr_reply(body.size, b"".join(n + b"\0" for n in node.xattrs))

    def op_removexattr(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        if node.xattrs.pop(body.name, None) is None:
            raise OSError(errno.ENODATA, "no such xattr")
        return Container()

    def _listing(self, dirnode: Node) -> list[tuple[bytes, Node]]:
        return [(b".", dirnode), (b"..", dirnode)] + [
            (name, self.nodes[ino]) for name, ino in dirnode.children.items()
        ]

    def op_readdir(self, req: Any, body: Any) -> Any:
        entries, used = [], 0
        for index, (name, node) in enumerate(self._listing(self.dir(req.nodeid))):
            if index < body.offset:
                continue
            size = FUSE_DIRENT_SIZE(len(name))
            if used + size > body.size:
                break
            used += size
            entries.append(
                Container(
                    ino=node.ino,
                    off=index + 1,
                    namelen=len(name),
                    type=stat.S_IFMT(node.mode) >> 12,
                    name=name,
                )
            )
        return Container(entries=entries)

    def op_readdirplus(self, req: Any, body: Any) -> Any:
        entries, used = [], 0
        for index, (name, node) in enumerate(self._listing(self.dir(req.nodeid))):
            if index < body.offset:
                continue
            size = FUSE_DIRENTPLUS_SIZE(len(name))
            if used + size > body.size:
                break
            used += size
            if name in (b".", b".."):
                # nodeid 0: no entry for the kernel to instantiate (and no lookup count).
                entry_out = Container(nodeid=0, attr=Container())
            else:
                entry_out = self.entry(node)
            dirent = Container(
                ino=node.ino,
                off=index + 1,
                namelen=len(name),
                type=stat.S_IFMT(node.mode) >> 12,
                name=name,
            )
            entries.append(Container(entry_out=entry_out, dirent=dirent))
        return Container(entries=entries)

    def op_getlk(self, req: Any, body: Any) -> Any:
        return Container(lk=Container(start=0, end=0, type=fcntl.F_UNLCK, pid=0))

    def op_setlk(self, req: Any, body: Any) -> Any:
        self.lock_flags.append(body.lk_flags)
        return Container()

    def op_setlkw(self, req: Any, body: Any) -> Any:
        self.lock_flags.append(body.lk_flags)
        if self.defer_setlkw:
            self.defer_setlkw = False
            self.deferred.append(req)
            return DEFER
        return Container()

    def op_interrupt(self, req: Any, body: Any) -> None:
        return None

    def op_notify_reply(self, req: Any, body: Any) -> None:
        return None

    def _create(self, req: Any, body: Any, *, link: bool) -> Any:
        parent = self.dir(req.nodeid)
        node = self.new_node(stat.S_IFREG | stat.S_IMODE(body.mode), nlink=1 if link else 0)
        if link:
            self.link_child(parent, body.name, node)
        out = self.entry(node)
        out.update({"fh": self.new_fh(node.ino), "open_flags": 0, "backing_id": 0})
        return out

    def op_create(self, req: Any, body: Any) -> Any:
        # The kernel looks the name up first and sends CREATE only for a new name (or
        # with O_EXCL); an existing one is EEXIST either way.
        if body.name in self.dir(req.nodeid).children:
            raise OSError(errno.EEXIST, "exists")
        return self._create(req, body, link=True)

    def op_tmpfile(self, req: Any, body: Any) -> Any:
        return self._create(req, body, link=False)

    def op_fallocate(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        if body.mode != 0:
            raise OSError(errno.EOPNOTSUPP, "only plain allocation")
        end = body.offset + body.length
        if len(node.data) < end:
            node.data.extend(bytes(end - len(node.data)))
        return Container()

    def op_lseek(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        if body.offset >= len(node.data):
            raise OSError(errno.ENXIO, "beyond the end")
        if body.whence == SEEK_DATA:
            return Container(offset=body.offset)
        if body.whence == SEEK_HOLE:
            return Container(offset=len(node.data))
        raise OSError(errno.EINVAL, "whence")

    def _copy(self, req: Any, body: Any) -> int:
        src = self.node(req.nodeid)
        dst = self.node(body.nodeid_out)
        chunk = bytes(src.data[body.off_in : body.off_in + body.len])
        if len(dst.data) < body.off_out:
            dst.data.extend(bytes(body.off_out - len(dst.data)))
        dst.data[body.off_out : body.off_out + len(chunk)] = chunk
        return len(chunk)

    def op_copy_file_range(self, req: Any, body: Any) -> Any:
        return Container(size=self._copy(req, body), padding=0)

    def op_copy_file_range_64(self, req: Any, body: Any) -> Any:
        return Container(bytes_copied=self._copy(req, body))

    def op_ioctl(self, req: Any, body: Any) -> Any:
        if body.cmd != IOCTL_CMD:
            raise OSError(errno.ENOTTY, "unknown ioctl")
        return Container(result=0, flags=0, in_iov=[], out_iov=[], data=IOCTL_REPLY)

    def op_statx(self, req: Any, body: Any) -> Any:
        node = self.node(req.nodeid)
        a = self.attr(node)

        def sx_time(sec: int, nsec: int) -> Container:
            return Container(tv_sec=sec, tv_nsec=nsec)

        return Container(
            attr_valid=0,
            attr_valid_nsec=0,
            flags=0,
            spare=[0, 0],
            stat=Container(
                mask=STATX_BASIC_STATS | STATX_BTIME,
                blksize=a.blksize,
                attributes=0,
                nlink=a.nlink,
                uid=a.uid,
                gid=a.gid,
                mode=a.mode,
                ino=a.ino,
                size=a.size,
                blocks=a.blocks,
                attributes_mask=0,
                atime=sx_time(a.atime, a.atimensec),
                btime=sx_time(*BTIME),
                ctime=sx_time(a.ctime, a.ctimensec),
                mtime=sx_time(a.mtime, a.mtimensec),
                rdev_major=os.major(a.rdev),
                rdev_minor=os.minor(a.rdev),
                dev_major=0,
                dev_minor=0,
            ),
        )

    def op_poll(self, req: Any, body: Any) -> Any:
        self.poll_kh = body.kh
        return Container(revents=select.POLLIN | select.POLLOUT, padding=0)


# --- the harness ---------------------------------------------------------------------------


class Harness:
    """A mounted MemFS with a server thread and a deadline for every driven call."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.fs = MemFS()
        self.session = Session()
        self.mount = DevFuseMount(mountpoint)
        self.server = DevFuseServer(self.mount, self.fs, session=self.session,
                                    keep_messages=1 << 20)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fs-call")
        self.timed_out: list[str] = []

    def start(self) -> None:
        self.mount.open()
        self.server.start()

    def path(self, *names: str) -> str:
        return os.path.join(self.mountpoint, *names)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking call in the worker thread; abort the connection on timeout."""
        timeout = CALL_TIMEOUT
        future = self.pool.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.timed_out.append(getattr(fn, "__name__", repr(fn)))
            self.mount.abort()
            pytest.fail(f"{fn!r}{args!r} did not return within {timeout}s; connection aborted")

    def close(self) -> None:
        try:
            self.mount.unmount()
        finally:
            try:
                self.server.stop()
            finally:
                self.mount.close()
                self.pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def scratch_mountpoint() -> Iterator[str]:
    """A fresh directory to mount on, removed afterwards (only once nothing is mounted on
    it: removing through a live mount would reach into the file system)."""
    top = tempfile.mkdtemp(prefix="fuseproto-kernel-")
    mountpoint = os.path.join(top, "mnt")
    os.mkdir(mountpoint)
    try:
        yield mountpoint
    finally:
        still_mounted = find_mount_device(mountpoint) is not None
        if not still_mounted:
            shutil.rmtree(top, ignore_errors=True)
    assert not still_mounted, f"mount left behind on {mountpoint}"


@pytest.fixture
def harness() -> Iterator[Harness]:
    with scratch_mountpoint() as mountpoint:
        h = Harness(mountpoint)
        h.start()
        try:
            yield h
        finally:
            h.close()


def check_traffic(h: Harness) -> None:
    """Every request decoded losslessly, every reply was accepted and roundtrips."""
    stats = h.server.stats
    assert not stats.failures, stats.failures[:5]
    session = Session()  # an independent observer replaying the traffic
    for msg in stats.messages:
        assert msg.request is not None, msg.raw[:64].hex()
        req = msg.request
        assert isinstance(req.opcode, fuse_opcode), f"unknown opcode {req.opcode}"
        hdr = req.header
        again = codec.encode_request(
            req.opcode,
            req.body,
            unique=hdr.unique,
            nodeid=hdr.nodeid,
            uid=hdr.uid,
            gid=hdr.gid,
            pid=hdr.pid,
            minor=session.minor,
            flags=int(session.flags),
            ext=req.ext or None,
            padding=hdr.padding,
        )
        assert again == msg.raw, f"{req!r} does not re-encode to the bytes the kernel sent"
        observed = session.feed_request(msg.raw)
        assert observed == req
        if msg.reply_raw is None:
            continue
        assert msg.accepted is not False or req.opcode == OP.FUSE_INTERRUPT, req
        reply = session.feed_reply(msg.reply_raw)
        assert reply.request == req
        if reply.error == 0:
            rebuilt = codec.encode_reply(req, reply.body, unique=reply.unique, minor=session.minor)
            assert rebuilt == msg.reply_raw, f"reply to {req!r} does not roundtrip"
    for raw in stats.notifications:
        note = codec.decode_notification(raw)
        assert codec.encode_notification(note.code, note.body) == raw


# --- driving it ------------------------------------------------------------------------------


def _renameat2(old: str, new: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


def _statx_btime(path: str) -> tuple[int, int, int]:
    """statx(2) asking for the birth time: (stx_mask, btime sec, btime nsec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # sizeof(struct statx)
    at_fdcwd = -100
    if libc.statx(at_fdcwd, os.fsencode(path), 0, STATX_BASIC_STATS | STATX_BTIME, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    # struct statx: stx_mask at 0, stx_btime (s64 tv_sec, u32 tv_nsec) at 80.
    (mask,) = struct.unpack_from("<I", buf.raw, 0)
    sec, nsec = struct.unpack_from("<qI", buf.raw, 80)
    return mask, sec, nsec


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_file(path: str, data: bytes, mode: str = "wb") -> int:
    with open(path, mode) as f:
        n = f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return n


def _getlk(path: str) -> int:
    fd = os.open(path, os.O_RDWR)
    try:
        # struct flock (x86_64/aarch64): short l_type, short l_whence, off_t l_start,
        # off_t l_len, pid_t l_pid, + padding.
        req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        out = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        return struct.unpack("hhqqi4x", out)[0]
    finally:
        os.close(fd)


def _locks(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # SETLK
        fcntl.lockf(fd, fcntl.LOCK_UN)
        fcntl.lockf(fd, fcntl.LOCK_SH)  # SETLKW
        fcntl.lockf(fd, fcntl.LOCK_UN)
        fcntl.flock(fd, fcntl.LOCK_EX)  # SETLKW with FUSE_LK_FLOCK
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fd_ops(path: str) -> tuple[int, int, bytes, bool]:
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 8192)  # FALLOCATE
        data_at = os.lseek(fd, 0, SEEK_DATA)  # LSEEK
        buf = bytearray(8)
        fcntl.ioctl(fd, IOCTL_CMD, buf)  # IOCTL
        readable, _, _ = select.select([fd], [], [], 0)  # POLL
        size = os.fstat(fd).st_size
        return data_at, size, bytes(buf), bool(readable)
    finally:
        os.close(fd)


def _copy_range(src: str, dst: str, n: int) -> int:
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        return os.copy_file_range(fin, fout, n, 0, 0)
    finally:
        os.close(fin)
        os.close(fout)


def _tmpfile(dirpath: str) -> int:
    fd = os.open(dirpath, O_TMPFILE | os.O_RDWR, 0o600)
    try:
        return os.write(fd, b"anonymous")
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_excl(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
    except FileExistsError:
        return 0, errno.EEXIST
    return 0, 0


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        return True
    except OSError:
        return False


def test_kernel_traffic_decodes_and_replies_are_accepted(harness: Harness) -> None:
    h = harness
    p = h.path
    call = h.call

    assert call(os.listdir, h.mountpoint) == []
    st = call(os.stat, h.mountpoint)
    assert stat.S_ISDIR(st.st_mode)
    # INIT is answered by now; its request carries the kernel's own protocol minor.
    kernel_minor = next(r for r in h.fs.requests if r.opcode == OP.FUSE_INIT).body.minor

    # Files: create, write, read, append, truncate, fsync.
    assert call(_write_file, p("hello.txt"), b"hello, fuse\n") == 12
    assert call(_read_file, p("hello.txt")) == b"hello, fuse\n"
    assert call(_write_file, p("hello.txt"), b"more\n", "ab") == 5
    assert call(_read_file, p("hello.txt")) == b"hello, fuse\nmore\n"
    big = bytes(range(256)) * 1024  # 256 KiB: several WRITEs of up to max_write
    assert call(_write_file, p("big.bin"), big) == len(big)
    assert call(_read_file, p("big.bin")) == big
    call(os.truncate, p("big.bin"), 1000)
    assert call(os.stat, p("big.bin")).st_size == 1000
    assert call(_read_file, p("big.bin")) == big[:1000]
    assert call(_create_excl, p("excl")) == (0, errno.EEXIST)

    # Directories, renames, links, symlinks.
    call(os.mkdir, p("d"), 0o750)
    assert stat.S_IMODE(call(os.stat, p("d")).st_mode) == 0o750
    call(os.rename, p("hello.txt"), p("d", "greeting.txt"))
    assert call(os.listdir, p("d")) == ["greeting.txt"]
    call(_renameat2, p("d", "greeting.txt"), p("d", "g2.txt"), RENAME_NOREPLACE)
    call(_write_file, p("d", "other"), b"x")
    with pytest.raises(FileExistsError):
        call(_renameat2, p("d", "g2.txt"), p("d", "other"), RENAME_NOREPLACE)
    call(os.link, p("d", "g2.txt"), p("hardlink"))
    assert call(os.stat, p("hardlink")).st_nlink == 2
    call(os.symlink, "d/g2.txt", p("sym"))
    assert call(os.readlink, p("sym")) == "d/g2.txt"
    assert call(_read_file, p("sym")) == b"hello, fuse\nmore\n"
    call(os.mknod, p("fifo"), stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(call(os.lstat, p("fifo")).st_mode)

    # A directory big enough for several READDIRPLUS/READDIR rounds.
    call(os.mkdir, p("many"))
    for i in range(60):
        call(os.mknod, p("many", f"entry-{i:03d}-with-a-longish-name"), stat.S_IFREG | 0o644)
    assert len(call(os.listdir, p("many"))) == 60
    assert len(call(os.listdir, p("many"))) == 60

    # Attributes.
    call(os.chmod, p("big.bin"), 0o600)
    assert stat.S_IMODE(call(os.stat, p("big.bin")).st_mode) == 0o600
    call(os.utime, p("big.bin"), ns=(1_000_000_123, 2_000_000_456))
    st = call(os.stat, p("big.bin"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    call(os.utime, p("big.bin"))
    assert call(os.access, p("big.bin"), os.R_OK)

    # Extended attributes.
    call(os.setxattr, p("big.bin"), "user.color", b"blue")
    call(os.setxattr, p("big.bin"), "user.empty", b"")
    assert call(os.getxattr, p("big.bin"), "user.color") == b"blue"
    assert sorted(call(os.listxattr, p("big.bin"))) == ["user.color", "user.empty"]
    with pytest.raises(FileExistsError):
        call(os.setxattr, p("big.bin"), "user.color", b"red", os.XATTR_CREATE)
    call(os.removexattr, p("big.bin"), "user.color")
    with pytest.raises(OSError) as excinfo:
        call(os.getxattr, p("big.bin"), "user.color")
    assert excinfo.value.errno == errno.ENODATA
    big_value = b"v" * 60000
    call(os.setxattr, p("big.bin"), "user.big", big_value)
    assert call(os.getxattr, p("big.bin"), "user.big") == big_value

    # Locks, fsync, fd operations.
    call(_locks, p("big.bin"))
    assert call(_getlk, p("big.bin")) == fcntl.F_UNLCK
    call(_fsync_dir, p("d"))
    data_at, size, ioctl_out, readable = call(_fd_ops, p("big.bin"))
    assert (data_at, size, ioctl_out, readable) == (0, 8192, IOCTL_REPLY, True)
    assert call(_copy_range, p("d", "g2.txt"), p("copy"), 100) == 17
    assert call(_read_file, p("copy")) == b"hello, fuse\nmore\n"
    if kernel_minor >= SINCE_MINOR[OP.FUSE_TMPFILE]:
        assert call(_tmpfile, h.mountpoint) == 9
    else:  # the VFS refuses O_TMPFILE on a directory without a tmpfile operation
        with pytest.raises(OSError) as excinfo:
            call(_tmpfile, h.mountpoint)
        assert excinfo.value.errno == errno.EOPNOTSUPP

    mask, *btime = call(_statx_btime, p("big.bin"))
    if kernel_minor >= SINCE_MINOR[OP.FUSE_STATX]:
        assert mask & STATX_BTIME and tuple(btime) == BTIME
    else:  # without FUSE_STATX the kernel has no birth time to report
        assert not mask & STATX_BTIME

    svfs = call(os.statvfs, h.mountpoint)
    assert (svfs.f_bsize, svfs.f_blocks, svfs.f_namemax) == (4096, 1 << 20, 255)

    # Removal.
    call(os.unlink, p("hardlink"))
    call(os.unlink, p("sym"))
    with pytest.raises(OSError) as excinfo:
        call(os.rmdir, p("d"))
    assert excinfo.value.errno == errno.ENOTEMPTY
    for name in ("g2.txt", "other"):
        call(os.unlink, p("d", name))
    call(os.rmdir, p("d"))
    assert sorted(call(os.listdir, h.mountpoint)) == [
        "big.bin",
        "copy",
        "excl",
        "fifo",
        "many",
    ]
    dropped = _drop_caches()
    if dropped:
        # Evicted inodes are forgotten asynchronously; give the kernel a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            h.fs.seen[OP.FUSE_FORGET] or h.fs.seen[OP.FUSE_BATCH_FORGET]
        ):
            time.sleep(0.05)

    check_traffic(h)
    seen = set(h.fs.seen)
    driven = {
        OP.FUSE_INIT,
        OP.FUSE_LOOKUP,
        OP.FUSE_GETATTR,
        OP.FUSE_SETATTR,
        OP.FUSE_READLINK,
        OP.FUSE_SYMLINK,
        OP.FUSE_MKNOD,
        OP.FUSE_MKDIR,
        OP.FUSE_UNLINK,
        OP.FUSE_RMDIR,
        OP.FUSE_RENAME,
        OP.FUSE_RENAME2,
        OP.FUSE_LINK,
        OP.FUSE_OPEN,
        OP.FUSE_READ,
        OP.FUSE_WRITE,
        OP.FUSE_STATFS,
        OP.FUSE_RELEASE,
        OP.FUSE_FSYNC,
        OP.FUSE_SETXATTR,
        OP.FUSE_GETXATTR,
        OP.FUSE_LISTXATTR,
        OP.FUSE_REMOVEXATTR,
        OP.FUSE_FLUSH,
        OP.FUSE_OPENDIR,
        OP.FUSE_READDIRPLUS,
        OP.FUSE_RELEASEDIR,
        OP.FUSE_FSYNCDIR,
        OP.FUSE_GETLK,
        OP.FUSE_SETLK,
        OP.FUSE_SETLKW,
        OP.FUSE_ACCESS,
        OP.FUSE_CREATE,
        OP.FUSE_IOCTL,
        OP.FUSE_POLL,
        OP.FUSE_FALLOCATE,
        OP.FUSE_LSEEK,
        OP.FUSE_TMPFILE,
        OP.FUSE_STATX,
    }
    expected = sendable(driven, kernel_minor)
    assert OP.FUSE_INIT in expected
    assert expected <= seen, f"not seen: {sorted(op.name for op in expected - seen)}"
    # Nothing the kernel's minor cannot send arrived (the table above is not too generous).
    assert not (seen - sendable(seen, kernel_minor))
    # copy_file_range(2) arrives as COPY_FILE_RANGE_64 (7.45) or COPY_FILE_RANGE.
    assert seen & sendable({OP.FUSE_COPY_FILE_RANGE, OP.FUSE_COPY_FILE_RANGE_64}, kernel_minor)
    if dropped:
        assert seen & {OP.FUSE_FORGET, OP.FUSE_BATCH_FORGET}
    # flock() arrives as SETLKW with FUSE_LK_FLOCK.
    assert any(flags & 1 for flags in h.fs.lock_flags)
    assert h.session.initialized and h.session.minor == min(kernel_minor, 46)
    assert h.session.max_write == MAX_WRITE
    # Only requests the kernel is still waiting for may be pending (none, here).
    assert not h.session.pending


def test_interrupt_of_a_blocked_lock(harness: Harness) -> None:
    """A signal to a thread blocked in SETLKW makes the kernel send INTERRUPT; the
    deferred request is answered -EINTR and the (restarted) lock then succeeds."""
    h = harness
    h.call(_write_file, h.path("f"), b"data")
    h.fs.defer_setlkw = True
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    worker: list[int] = []
    try:

        def lock_it() -> None:
            worker.append(threading.get_ident())
            fd = os.open(h.path("f"), os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)  # blocks until we answer
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

        future = h.pool.submit(lock_it)
        deadline = time.monotonic() + CALL_TIMEOUT
        while not h.fs.deferred and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.fs.deferred, "SETLKW never arrived"
        blocked = h.fs.deferred[0]
        # Keep signalling until the kernel turns it into an INTERRUPT request.
        while not h.fs.seen[OP.FUSE_INTERRUPT] and time.monotonic() < deadline:
            signal.pthread_kill(worker[0], signal.SIGUSR1)
            time.sleep(0.05)
        assert h.fs.seen[OP.FUSE_INTERRUPT], "no INTERRUPT"
        interrupt = next(r for r in h.fs.requests if r.opcode == OP.FUSE_INTERRUPT)
        assert interrupt.body.unique == blocked.unique
        assert h.session.interrupts == {blocked.unique: interrupt.unique}
        assert h.server.complete(blocked, None, -errno.EINTR)
        try:
            future.result(CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            h.mount.abort()
            pytest.fail("lockf did not return after the interrupted request was answered")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert h.fs.seen[OP.FUSE_SETLKW] >= 2  # restarted after EINTR
    assert not h.session.pending and not h.session.interrupts
    check_traffic(h)


def test_notifications_are_accepted(harness: Harness) -> None:
    """Notifications built by the schema are taken by the kernel; RETRIEVE is answered
    with a NOTIFY_REPLY request that decodes."""
    h = harness
    content = b"0123456789" * 500
    h.call(_write_file, h.path("f"), content)
    h.call(os.mkdir, h.path("dir"))
    h.call(_write_file, h.path("dir", "child"), b"c")
    ino = h.call(os.stat, h.path("f")).st_ino
    dir_ino = h.call(os.stat, h.path("dir")).st_ino
    # Keep the inode and its page cache alive while notifying.
    fd = h.call(os.open, h.path("f"), os.O_RDONLY)
    try:
        assert h.call(os.pread, fd, 4096, 0) == content[:4096]
        server = h.server
        server.notify(
            fuse_notify_code.FUSE_NOTIFY_STORE,
            Container(nodeid=ino, offset=0, size=None, padding=0, data=content[:4096]),
        )
        server.notify(
            fuse_notify_code.FUSE_NOTIFY_RETRIEVE,
            Container(notify_unique=4242, nodeid=ino, offset=0, size=4096, padding=0),
        )
        deadline = time.monotonic() + CALL_TIMEOUT
        while not h.fs.seen[OP.FUSE_NOTIFY_REPLY] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.fs.seen[OP.FUSE_NOTIFY_REPLY]
        reply = next(r for r in h.fs.requests if r.opcode == OP.FUSE_NOTIFY_REPLY)
        assert reply.unique == 4242 and reply.body.data == content[: len(reply.body.data)]
        server.notify(fuse_notify_code.FUSE_NOTIFY_INVAL_INODE, Container(ino=ino, off=0, len=0))
        server.notify(
            fuse_notify_code.FUSE_NOTIFY_INVAL_ENTRY,
            Container(parent=dir_ino, namelen=None, flags=0, name=b"child"),
        )
        h.fs.node(dir_ino).children.pop(b"child")
        # DELETE may find the dentry already gone from the cache (False: ENOENT).
        server.notify(
            fuse_notify_code.FUSE_NOTIFY_DELETE,
            Container(parent=FUSE_ROOT_ID, child=dir_ino, namelen=None, padding=0, name=b"dir"),
        )
        # Newer notifications: PRUNE names a node id in use (the kernel keeps it), RESEND
        # with nothing in flight and INC_EPOCH are accepted as no-ops for us.
        assert server.notify(fuse_notify_code.FUSE_NOTIFY_PRUNE, Container(entries=[ino]))
        assert server.notify(fuse_notify_code.FUSE_NOTIFY_INC_EPOCH, Container())
        assert server.notify(fuse_notify_code.FUSE_NOTIFY_RESEND, Container())
        if h.fs.poll_kh is not None:
            server.notify(fuse_notify_code.FUSE_NOTIFY_POLL, Container(kh=h.fs.poll_kh))
        assert h.call(os.pread, fd, 10, 0) == content[:10]
    finally:
        h.call(os.close, fd)
    check_traffic(h)


def test_unmount_with_a_hung_request_is_cleaned_up() -> None:
    """A request the server never answers must not hang the suite: aborting the
    connection fails the stuck system call and unmount still succeeds."""
    with scratch_mountpoint() as mountpoint:
        h = Harness(mountpoint)
        hang = threading.Event()

        def handler(req: Any) -> Any:
            if req.opcode == OP.FUSE_MKDIR:
                hang.set()
                return DEFER  # never answered
            return h.fs(req)

        h.server.handler = handler
        h.start()
        try:
            future = h.pool.submit(os.mkdir, h.path("never"))
            assert hang.wait(CALL_TIMEOUT)
            with pytest.raises(concurrent.futures.TimeoutError):
                future.result(0.3)
            h.mount.abort()
            with pytest.raises(OSError) as excinfo:
                future.result(CALL_TIMEOUT)
            assert excinfo.value.errno in (errno.ECONNABORTED, errno.ENOTCONN)
        finally:
            h.close()
        assert find_mount_device(mountpoint) is None
        assert h.server._thread is None and h.mount.fd is None
