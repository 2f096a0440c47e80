"""A typed FUSE client over any transport.

Requests are built and replies decoded by a :class:`~fuseproto.session.Session` (so the
negotiated minor and flags apply); the transport only moves bytes. Every method returns
the decoded reply body (a ``construct.Container`` with fuse.h's field names, see
:mod:`fuseproto.wire.messages`) or a plain value where the body is one (``read`` ->
bytes); an error reply raises :class:`~fuseproto.errors.FuseError` carrying the errno.

The transport is anything that keeps the :class:`~fuseproto.transport.base.Transport`
protocol: ``submit(request, reply_size, *, hiprio, kick, tag) -> token``, ``wait(token,
timeout) -> bytes``, ``kick(queue)``, ``close()``. ``reply_size`` is the
size of the device-writable area; for READ/READDIR/READDIRPLUS it is exactly
``sizeof(fuse_out_header) + size`` (the C virtiofsd fills the whole area, the Rust one
answers EIO to a bigger one).

Asynchronous use: ``p = client.submit(opcode, body, ...)`` then ``client.result(p)``;
every typed method ``x(...)`` is ``result(submit(...))``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from construct import Container

from .errors import FuseError
from .session import Session
from .transport.base import Transport
from .wire import codec, structs
from .wire.constants import (
    FATTR,
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_KERNEL_VERSION,
    FUSE_ROOT_ID,
    GetattrFlags,
    InitFlags,
    fuse_opcode,
    opcode_name,
)

OUT_HEADER_SIZE = structs.FAST["fuse_out_header"].size
IN_HEADER_SIZE = structs.FAST["fuse_in_header"].size
WRITE_IN_SIZE = structs.FAST["fuse_write_in"].size
# The reply area of a request whose reply has no fixed size (the codec's policy).
DEFAULT_REPLY_SIZE = codec.DEFAULT_REPLY_AREA

# What we offer in INIT: roughly what Linux's virtio_fs offers, plus MAP_ALIGNMENT (DAX)
# and INIT_EXT (flags2 carries the high half).
DEFAULT_INIT_FLAGS = (
    InitFlags.FUSE_ASYNC_READ
    | InitFlags.FUSE_POSIX_LOCKS
    | InitFlags.FUSE_ATOMIC_O_TRUNC
    | InitFlags.FUSE_EXPORT_SUPPORT
    | InitFlags.FUSE_BIG_WRITES
    | InitFlags.FUSE_DONT_MASK
    | InitFlags.FUSE_FLOCK_LOCKS
    | InitFlags.FUSE_AUTO_INVAL_DATA
    | InitFlags.FUSE_DO_READDIRPLUS
    | InitFlags.FUSE_READDIRPLUS_AUTO
    | InitFlags.FUSE_ASYNC_DIO
    | InitFlags.FUSE_PARALLEL_DIROPS
    | InitFlags.FUSE_HANDLE_KILLPRIV
    | InitFlags.FUSE_MAX_PAGES
    | InitFlags.FUSE_CACHE_SYMLINKS
    | InitFlags.FUSE_EXPLICIT_INVAL_DATA
    | InitFlags.FUSE_MAP_ALIGNMENT
    | InitFlags.FUSE_HANDLE_KILLPRIV_V2
    | InitFlags.FUSE_SETXATTR_EXT
    | InitFlags.FUSE_INIT_EXT
)

_GETATTR = fuse_opcode.FUSE_GETATTR
_GETATTR_FH = int(GetattrFlags.FUSE_GETATTR_FH)
_NO_REPLY = frozenset({int(fuse_opcode.FUSE_FORGET), int(fuse_opcode.FUSE_BATCH_FORGET)})


@dataclass(slots=True)
class Pending:
    """A request in flight: what :meth:`Client.result` needs to finish it."""

    unique: int
    opcode: Any
    token: Any  # the transport's; None while only prepared
    checked: bool = True  # built by the session (False: submit_unchecked)
    # What send() hands the transport, kept while only prepared.
    out: Any = None
    reply_size: int = 0
    hiprio: bool = False


class Client:
    """FUSE operations over ``transport``; see the module docstring."""

    def __init__(self, transport: Transport, session: Session | None = None, *,
                 timeout: float = 5.0, uid: int | None = None, gid: int | None = None,
                 pid: int | None = None, split_writes: bool = True):
        self.transport = transport
        self.session = session or Session()
        self.timeout = timeout
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.pid = os.getpid() if pid is None else pid
        # Send WRITE the way Linux's virtio_fs lays it out: header, fuse_write_in, data in
        # separate descriptors (the C daemon's zero-copy write path expects exactly that).
        self.split_writes = split_writes
        # Uniques for submit_unchecked, far from the session's own range.
        self._unchecked_unique = 1 << 48

    # -- core ---------------------------------------------------------------------------
    def submit(self, opcode: Any, body: Any = None, *, nodeid: int = 0,
               reply_size: int | None = None, hiprio: bool = False,
               segments: Sequence[int] | None = None, kick: bool = True) -> Pending:
        """Build a request with the session and put it in flight.

        ``segments`` splits the request bytes into device-readable descriptors at these
        lengths (the remainder is the last descriptor). ``reply_size`` None: see
        :meth:`reply_area`."""
        unique, data = self._build(opcode, body, nodeid)
        if opcode in _NO_REPLY:
            reply_size = 0
        elif reply_size is None:
            reply_size = self.session.kind(opcode).reply_area(body)
        # The tag is formatted only if an error names it.
        try:
            token = self.transport.submit(_split(data, segments) if segments else data,
                                          reply_size, hiprio=hiprio, kick=kick,
                                          tag=(opcode, unique))
        except BaseException:
            self.session.cancel(unique)  # never sent: nothing will answer it
            raise
        return Pending(unique, opcode, token)

    def _build(self, opcode: Any, body: Any, nodeid: int) -> tuple[int, bytes]:
        """The session builds and registers the request (through the codec's kind)."""
        return self.session.build_request(
            opcode, Container() if body is None else body, nodeid=nodeid, uid=self.uid,
            gid=self.gid, pid=self.pid)

    def prepare(self, opcode: Any, body: Any = None, *, nodeid: int = 0,
                reply_size: int | None = None, hiprio: bool = False,
                segments: Sequence[int] | None = None) -> Pending:
        """Build a request with the session (registered as in flight) without sending it;
        :meth:`send` (or ``result(other, then=p)``) sends it. Lets a caller build the next
        request while the current one is with the daemon."""
        unique, data = self._build(opcode, body, nodeid)
        if opcode in _NO_REPLY:
            reply_size = 0
        elif reply_size is None:
            reply_size = self.session.kind(opcode).reply_area(body)
        return Pending(unique, opcode, None, True, _split(data, segments) if segments else data,
                       reply_size, hiprio)

    def send(self, pending: Pending, *, kick: bool = True) -> Pending:
        """Put a :meth:`prepare`-d request in flight."""
        if pending.token is not None or pending.out is None:
            raise ValueError(f"request unique {pending.unique} was already sent")
        pending.token = self.transport.submit(pending.out, pending.reply_size,
                                              hiprio=pending.hiprio, kick=kick,
                                              tag=(pending.opcode, pending.unique))
        pending.out = None
        return pending

    def submit_unchecked(self, opcode: Any, body: Any = None, *, nodeid: int = 0,
                         reply_size: int = DEFAULT_REPLY_SIZE, **hdr: Any) -> Pending:
        """Send a request the session would refuse to build (a count above the protocol
        maximum, a forced ``length`` ...): encoded by the codec as given, not registered
        with the session; its reply is decoded by the codec alone."""
        self._unchecked_unique += 2
        unique = self._unchecked_unique
        data = codec.encode_request(
            opcode, Container() if body is None else body, unique=unique, nodeid=nodeid,
            uid=self.uid, gid=self.gid, pid=self.pid, minor=self.session.minor,
            flags=int(self.session.flags), **hdr)
        token = self.transport.submit(data, reply_size,
                                      tag=f"{opcode_name(opcode)} unique {unique} (unchecked)")
        return Pending(unique, opcode, token, False)

    def result(self, pending: Pending, timeout: float | None = None, *,
               then: Pending | None = None) -> Any:
        """Wait for the reply; return its body or raise FuseError(errno).

        ``then`` (a :meth:`prepare`-d request) is sent as soon as this reply's bytes are
        in, before they are decoded: one request in flight at a time, with the decoding
        done while the daemon works on the next one."""
        raw = self.transport.wait(pending.token, self.timeout if timeout is None else timeout)
        if then is not None:
            self.send(then)
        if pending.checked:
            reply = self.session.feed_reply(raw)
        else:
            reply = codec.decode_reply(raw, pending.opcode, minor=self.session.minor)
        if reply.error:
            raise FuseError(-reply.error, pending.opcode, pending.unique)
        return reply.body

    def call(self, opcode: Any, body: Any = None, *, nodeid: int = 0,
             reply_size: int | None = None, **kw: Any) -> Any:
        """Send one request and return its reply body: ``result(submit(...))``."""
        if kw:
            return self.result(self.submit(opcode, body, nodeid=nodeid, reply_size=reply_size,
                                           **kw))
        return self.result(self.submit(opcode, body, nodeid=nodeid, reply_size=reply_size))

    def reply_area(self, opcode: Any, body: Any = None) -> int:
        """The device-writable area given to a request when ``reply_size`` is None: the
        codec's one policy (:meth:`~fuseproto.wire.codec.RequestKind.reply_area`) at the
        negotiated minor: exact for a fixed-size reply (as Linux's virtio_fs sizes its out
        arguments: GETATTR gets 16 + sizeof(fuse_attr_out)), header + ``size`` for
        READ-like requests, else 16 + 4096."""
        return self.session.kind(opcode).reply_area(body)

    def kick(self) -> None:
        """Notify the daemon after several ``submit(..., kick=False)``."""
        self.transport.kick(1)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- session ------------------------------------------------------------------------
    def init(self, *, flags: int = DEFAULT_INIT_FLAGS, max_readahead: int = 128 << 10,
             minor: int = FUSE_KERNEL_MINOR_VERSION) -> Any:
        """FUSE_INIT; returns fuse_init_out (``session.flags``/``minor`` learn from it).
        ``map_alignment`` is meaningful when FUSE_MAP_ALIGNMENT is in the reply's flags."""
        lo, hi = InitFlags(flags).words()
        return self.call(fuse_opcode.FUSE_INIT, Container(
            major=FUSE_KERNEL_VERSION, minor=minor, max_readahead=max_readahead,
            flags=lo, flags2=hi, unused=[0] * 11))

    def destroy(self) -> None:
        self.call(fuse_opcode.FUSE_DESTROY)

    # -- names and attributes -----------------------------------------------------------
    def lookup(self, parent: int, name: bytes | str) -> Any:
        return self.call(fuse_opcode.FUSE_LOOKUP, Container(name=_b(name)), nodeid=parent)

    def forget(self, nodeid: int, nlookup: int = 1) -> None:
        """FORGET on the hiprio queue (no reply)."""
        self.submit(fuse_opcode.FUSE_FORGET, Container(nlookup=nlookup), nodeid=nodeid,
                    hiprio=True)

    def batch_forget(self, items: Iterable[tuple[int, int]]) -> None:
        entries = [Container(nodeid=n, nlookup=k) for n, k in items]
        self.submit(fuse_opcode.FUSE_BATCH_FORGET, Container(count=None, dummy=0,
                    entries=entries), hiprio=True)

    def getattr(self, nodeid: int, fh: int | None = None) -> Any:
        if fh is None:
            body = Container(getattr_flags=0, dummy=0, fh=0)
        else:
            body = Container(getattr_flags=_GETATTR_FH, dummy=0, fh=fh)
        return self.call(_GETATTR, body, nodeid=nodeid)

    def setattr(self, nodeid: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None,
                atime: tuple[int, int] | None = None, mtime: tuple[int, int] | None = None,
                fh: int | None = None) -> Any:
        """SETATTR of the given attributes (``atime``/``mtime`` as (seconds, nanoseconds))."""
        valid = FATTR(0)
        b = Container()  # fields left out build as 0 (the codec's rule for absent ints)
        if mode is not None:
            valid |= FATTR.FATTR_MODE
            b.mode = mode
        if uid is not None:
            valid |= FATTR.FATTR_UID
            b.uid = uid
        if gid is not None:
            valid |= FATTR.FATTR_GID
            b.gid = gid
        if size is not None:
            valid |= FATTR.FATTR_SIZE
            b.size = size
        if atime is not None:
            valid |= FATTR.FATTR_ATIME
            b.atime, b.atimensec = atime
        if mtime is not None:
            valid |= FATTR.FATTR_MTIME
            b.mtime, b.mtimensec = mtime
        if fh is not None:
            valid |= FATTR.FATTR_FH
            b.fh = fh
        b.valid = int(valid)
        return self.call(fuse_opcode.FUSE_SETATTR, b, nodeid=nodeid)

    def statx(self, nodeid: int, *, mask: int = 0xFFF, sx_flags: int = 0,
              fh: int | None = None) -> Any:
        flags = _GETATTR_FH if fh is not None else 0
        return self.call(fuse_opcode.FUSE_STATX, Container(
            getattr_flags=flags, reserved=0, fh=fh or 0, sx_flags=sx_flags, sx_mask=mask),
            nodeid=nodeid)

    def access(self, nodeid: int, mask: int) -> None:
        self.call(fuse_opcode.FUSE_ACCESS, Container(mask=mask, padding=0), nodeid=nodeid)

    def statfs(self, nodeid: int = FUSE_ROOT_ID) -> Any:
        return self.call(fuse_opcode.FUSE_STATFS, nodeid=nodeid)

    # -- creating and removing ----------------------------------------------------------
    def mknod(self, parent: int, name: bytes | str, mode: int, rdev: int = 0,
              umask: int = 0) -> Any:
        return self.call(fuse_opcode.FUSE_MKNOD, Container(
            mode=mode, rdev=rdev, umask=umask, padding=0, name=_b(name)), nodeid=parent)

    def mkdir(self, parent: int, name: bytes | str, mode: int = 0o755, umask: int = 0) -> Any:
        return self.call(fuse_opcode.FUSE_MKDIR, Container(mode=mode, umask=umask,
                         name=_b(name)), nodeid=parent)

    def symlink(self, parent: int, name: bytes | str, target: bytes | str) -> Any:
        return self.call(fuse_opcode.FUSE_SYMLINK, Container(name=_b(name), link=_b(target)),
                         nodeid=parent)

    def readlink(self, nodeid: int) -> bytes:
        return bytes(self.call(fuse_opcode.FUSE_READLINK, nodeid=nodeid).link)

    def link(self, nodeid: int, new_parent: int, new_name: bytes | str) -> Any:
        return self.call(fuse_opcode.FUSE_LINK, Container(oldnodeid=nodeid,
                         name=_b(new_name)), nodeid=new_parent)

    def unlink(self, parent: int, name: bytes | str) -> None:
        self.call(fuse_opcode.FUSE_UNLINK, Container(name=_b(name)), nodeid=parent)

    def rmdir(self, parent: int, name: bytes | str) -> None:
        self.call(fuse_opcode.FUSE_RMDIR, Container(name=_b(name)), nodeid=parent)

    def rename(self, parent: int, name: bytes | str, new_parent: int,
               new_name: bytes | str) -> None:
        self.call(fuse_opcode.FUSE_RENAME, Container(newdir=new_parent, name=_b(name),
                  newname=_b(new_name)), nodeid=parent)

    def rename2(self, parent: int, name: bytes | str, new_parent: int,
                new_name: bytes | str, flags: int = 0) -> None:
        self.call(fuse_opcode.FUSE_RENAME2, Container(newdir=new_parent, flags=flags,
                  padding=0, name=_b(name), newname=_b(new_name)), nodeid=parent)

    def create(self, parent: int, name: bytes | str, mode: int = 0o644,
               flags: int = os.O_RDWR, umask: int = 0, open_flags: int = 0) -> Any:
        """CREATE: the reply has fuse_entry_out's fields then fh/open_flags."""
        return self.call(fuse_opcode.FUSE_CREATE, Container(
            flags=flags, mode=mode, umask=umask, open_flags=open_flags, name=_b(name)),
            nodeid=parent)

    def tmpfile(self, parent: int, mode: int = 0o644, flags: int = os.O_RDWR,
                umask: int = 0, name: bytes | str = b"/") -> Any:
        """TMPFILE: like CREATE with no visible name (Linux sends the dentry name "/")."""
        return self.call(fuse_opcode.FUSE_TMPFILE, Container(
            flags=flags, mode=mode, umask=umask, open_flags=0, name=_b(name)), nodeid=parent)

    # -- files --------------------------------------------------------------------------
    def open(self, nodeid: int, flags: int = os.O_RDONLY, open_flags: int = 0) -> Any:
        return self.call(fuse_opcode.FUSE_OPEN, Container(flags=flags, open_flags=open_flags),
                         nodeid=nodeid)

    def opendir(self, nodeid: int, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> Any:
        return self.call(fuse_opcode.FUSE_OPENDIR, Container(flags=flags, open_flags=0),
                         nodeid=nodeid)

    def submit_read(self, nodeid: int, fh: int, offset: int, size: int, *,
                    kick: bool = True) -> Pending:
        return self.submit(fuse_opcode.FUSE_READ, Container(
            fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0, padding=0),
            nodeid=nodeid, kick=kick)

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return bytes(self.result(self.submit_read(nodeid, fh, offset, size)).data)

    def write(self, nodeid: int, fh: int, offset: int, data: bytes, *,
              write_flags: int = 0, flags: int = 0) -> int:
        """WRITE; returns the count the daemon wrote."""
        segments = (IN_HEADER_SIZE, WRITE_IN_SIZE) if self.split_writes and data else None
        return int(self.call(fuse_opcode.FUSE_WRITE, Container(
            fh=fh, offset=offset, size=None, write_flags=write_flags, lock_owner=0,
            flags=flags, padding=0, data=bytes(data)), nodeid=nodeid,
            segments=segments).size)

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> None:
        self.call(fuse_opcode.FUSE_FLUSH, Container(fh=fh, unused=0, padding=0,
                  lock_owner=lock_owner), nodeid=nodeid)

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        self.call(fuse_opcode.FUSE_FSYNC, Container(fh=fh, fsync_flags=int(datasync),
                  padding=0), nodeid=nodeid)

    def fsyncdir(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        self.call(fuse_opcode.FUSE_FSYNCDIR, Container(fh=fh, fsync_flags=int(datasync),
                  padding=0), nodeid=nodeid)

    def release(self, nodeid: int, fh: int, flags: int = 0, release_flags: int = 0,
                lock_owner: int = 0) -> None:
        self.call(fuse_opcode.FUSE_RELEASE, Container(fh=fh, flags=flags,
                  release_flags=release_flags, lock_owner=lock_owner), nodeid=nodeid)

    def releasedir(self, nodeid: int, fh: int, flags: int = 0) -> None:
        self.call(fuse_opcode.FUSE_RELEASEDIR, Container(fh=fh, flags=flags, release_flags=0,
                  lock_owner=0), nodeid=nodeid)

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> list[Any]:
        return list(self.call(fuse_opcode.FUSE_READDIR, Container(
            fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0, padding=0),
            nodeid=nodeid).entries)

    def readdirplus(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> list[Any]:
        return list(self.call(fuse_opcode.FUSE_READDIRPLUS, Container(
            fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0, padding=0),
            nodeid=nodeid).entries)

    def fallocate(self, nodeid: int, fh: int, offset: int, length: int, mode: int = 0) -> None:
        self.call(fuse_opcode.FUSE_FALLOCATE, Container(fh=fh, offset=offset, length=length,
                  mode=mode, padding=0), nodeid=nodeid)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        return int(self.call(fuse_opcode.FUSE_LSEEK, Container(fh=fh, offset=offset,
                         whence=whence, padding=0), nodeid=nodeid).offset)

    def copy_file_range(self, nodeid_in: int, fh_in: int, off_in: int, nodeid_out: int,
                        fh_out: int, off_out: int, length: int, flags: int = 0) -> int:
        return int(self.call(fuse_opcode.FUSE_COPY_FILE_RANGE, Container(
            fh_in=fh_in, off_in=off_in, nodeid_out=nodeid_out, fh_out=fh_out, off_out=off_out,
            len=length, flags=flags), nodeid=nodeid_in).size)

    # -- locks --------------------------------------------------------------------------
    def getlk(self, nodeid: int, fh: int, owner: int, start: int, end: int, type: int,
              pid: int = 0) -> Any:
        """GETLK; returns the conflicting lock (fuse_file_lock) or type F_UNLCK."""
        return self.call(fuse_opcode.FUSE_GETLK, _lk(fh, owner, start, end, type, pid),
                         nodeid=nodeid).lk

    def setlk(self, nodeid: int, fh: int, owner: int, start: int, end: int, type: int,
              pid: int = 0, *, sleep: bool = False) -> None:
        op = fuse_opcode.FUSE_SETLKW if sleep else fuse_opcode.FUSE_SETLK
        self.call(op, _lk(fh, owner, start, end, type, pid), nodeid=nodeid)

    # -- extended attributes ------------------------------------------------------------
    def setxattr(self, nodeid: int, name: bytes | str, value: bytes, flags: int = 0) -> None:
        self.call(fuse_opcode.FUSE_SETXATTR, Container(size=None, flags=flags,
                  setxattr_flags=0, padding=0, name=_b(name), value=bytes(value)),
                  nodeid=nodeid)

    def getxattr(self, nodeid: int, name: bytes | str, size: int = 4096) -> bytes | int:
        """The value (``size`` > 0) or, with ``size`` 0, the value's length."""
        body = self.call(fuse_opcode.FUSE_GETXATTR, Container(size=size, padding=0,
                         name=_b(name)), nodeid=nodeid)
        return int(body.size) if size == 0 else bytes(body.value)

    def listxattr(self, nodeid: int, size: int = 4096) -> list[bytes] | int:
        """The attribute names (``size`` > 0) or, with ``size`` 0, the list's length."""
        body = self.call(fuse_opcode.FUSE_LISTXATTR, Container(size=size, padding=0),
                         nodeid=nodeid)
        if size == 0:
            return int(body.size)
        return [n for n in bytes(body.value).split(b"\0") if n]

    def removexattr(self, nodeid: int, name: bytes | str) -> None:
        self.call(fuse_opcode.FUSE_REMOVEXATTR, Container(name=_b(name)), nodeid=nodeid)

    # -- DAX window and sync ------------------------------------------------------------
    def setupmapping(self, nodeid: int, fh: int, foffset: int, length: int, moffset: int,
                     flags: int = 0) -> None:
        self.call(fuse_opcode.FUSE_SETUPMAPPING, Container(
            fh=fh, foffset=foffset, len=length, flags=flags, moffset=moffset), nodeid=nodeid)

    def removemapping(self, mappings: Sequence[tuple[int, int]], *, nodeid: int = 0,
                      count: int | None = None) -> None:
        """REMOVEMAPPING of ``(moffset, len)`` ranges; ``count`` forces the header count."""
        self.call(fuse_opcode.FUSE_REMOVEMAPPING, Container(
            count=count, entries=[Container(moffset=m, len=n) for m, n in mappings]),
            nodeid=nodeid)

    def syncfs(self, nodeid: int = FUSE_ROOT_ID) -> None:
        self.call(fuse_opcode.FUSE_SYNCFS, Container(padding=0), nodeid=nodeid)


def _split(data: bytes, segments: Sequence[int]) -> list[bytes]:
    """``data`` cut at these lengths (the remainder is the last part)."""
    parts, pos = [], 0
    for n in segments:
        parts.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        parts.append(data[pos:])
    return parts


def _lk(fh: int, owner: int, start: int, end: int, type: int, pid: int) -> Container:
    return Container(fh=fh, owner=owner, lk=Container(start=start, end=end, type=type,
                     pid=pid), lk_flags=0, padding=0)


def _b(name: bytes | str) -> bytes:
    return name.encode() if isinstance(name, str) else bytes(name)
