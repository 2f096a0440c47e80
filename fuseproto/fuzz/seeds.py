"""Seed messages for the fuzz corpora, every one built by the codec from a body.

One request per opcode (with plausible field values a guest kernel would send), a reply
to each where the protocol has one, every notification, and a few sessions. The node ids
and file handles are the ones :class:`~fuseproto.fuzz.harness.DaemonHarness` sets up
(``ROOT`` 1 and whatever LOOKUP returned are filled in at run time there), so the seeds
work against a real daemon too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from construct import Container as C

from ..wire import codec
from ..wire.constants import FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, InitFlags
from ..wire.constants import fuse_notify_code as N
from ..wire.constants import fuse_opcode as O
from .inputs import (
    WIRE_NOTIFICATION,
    WIRE_PAIR,
    WIRE_REPLY,
    WIRE_REQUEST,
    SessionRecord,
    build_session_input,
    build_wire_input,
)

__all__ = ["Seed", "request_seeds", "encode_seed_request", "notification_seeds", "wire_inputs",
           "session_inputs", "INIT_FLAGS"]

INIT_FLAGS = int(
    InitFlags.FUSE_ASYNC_READ | InitFlags.FUSE_POSIX_LOCKS | InitFlags.FUSE_BIG_WRITES
    | InitFlags.FUSE_DO_READDIRPLUS | InitFlags.FUSE_MAX_PAGES | InitFlags.FUSE_MAP_ALIGNMENT
    | InitFlags.FUSE_SETXATTR_EXT | InitFlags.FUSE_INIT_EXT
)
_INIT_WORDS = InitFlags(INIT_FLAGS).words()  # (flags, flags2) as fuse_init_in/out carry them
_NODE, _FH, _DIRFH = 2, 1, 2
_ATTR = C(ino=2, size=4096, blocks=8, mode=0o100644, nlink=1, uid=0, gid=0, blksize=4096)
_ENTRY = C(nodeid=2, generation=0, entry_valid=1, attr_valid=1, attr=_ATTR)


@dataclass(frozen=True)
class Seed:
    """A request body (and optionally its reply body) for one opcode."""

    opcode: int
    body: Any
    nodeid: int = 1
    reply: Any = None  # reply body; None: no reply seed


def _init_body(minor: int = FUSE_KERNEL_MINOR_VERSION) -> C:
    return C(major=FUSE_KERNEL_VERSION, minor=minor, max_readahead=131072,
             flags=_INIT_WORDS[0], flags2=_INIT_WORDS[1], unused=[0] * 11)


def _lk() -> C:
    return C(fh=_FH, owner=1, lk=C(start=0, end=4095, type=1, pid=1), lk_flags=0)


def request_seeds() -> list[Seed]:
    """One or more seeds per opcode (bodies as the codec's Containers)."""
    return [
        Seed(O.FUSE_INIT, _init_body(), 0, C(major=7, minor=38, max_readahead=131072,
             flags=_INIT_WORDS[0], max_background=16, congestion_threshold=12,
             max_write=1 << 20, time_gran=1, max_pages=256, map_alignment=12,
             flags2=_INIT_WORDS[1], max_stack_depth=0, request_timeout=0, unused=[0] * 11)),
        Seed(O.FUSE_LOOKUP, C(name=b"file"), 1, _ENTRY),
        Seed(O.FUSE_LOOKUP, C(name=b"dir"), 1, _ENTRY),
        Seed(O.FUSE_FORGET, C(nlookup=1), _NODE),
        Seed(O.FUSE_BATCH_FORGET, C(count=None, dummy=0, entries=[C(nodeid=_NODE, nlookup=1),
             C(nodeid=3, nlookup=2)]), 0),
        Seed(O.FUSE_GETATTR, C(getattr_flags=0, fh=0), _NODE, C(attr_valid=1, attr=_ATTR)),
        Seed(O.FUSE_SETATTR, C(valid=1 << 3, size=100, fh=0), _NODE,
             C(attr_valid=1, attr=_ATTR)),
        Seed(O.FUSE_READLINK, C(), 3, C(link=b"file")),
        Seed(O.FUSE_SYMLINK, C(name=b"lnk", link=b"file"), 1, _ENTRY),
        Seed(O.FUSE_MKNOD, C(mode=0o010644, rdev=0, umask=0o022, name=b"fifo"), 1, _ENTRY),
        Seed(O.FUSE_MKDIR, C(mode=0o755, umask=0o022, name=b"sub"), 1, _ENTRY),
        Seed(O.FUSE_UNLINK, C(name=b"gone"), 1, C()),
        Seed(O.FUSE_RMDIR, C(name=b"sub"), 1, C()),
        Seed(O.FUSE_RENAME, C(newdir=1, name=b"a", newname=b"b"), 1, C()),
        Seed(O.FUSE_RENAME2, C(newdir=1, flags=1, name=b"a", newname=b"b"), 1, C()),
        Seed(O.FUSE_LINK, C(oldnodeid=_NODE, name=b"hard"), 1, _ENTRY),
        Seed(O.FUSE_OPEN, C(flags=os.O_RDWR, open_flags=0), _NODE,
             C(fh=_FH, open_flags=0, backing_id=0)),
        Seed(O.FUSE_READ, C(fh=_FH, offset=0, size=4096, read_flags=0, lock_owner=0,
             flags=0), _NODE, C(data=b"hello world\n")),
        Seed(O.FUSE_WRITE, C(fh=_FH, offset=0, size=None, write_flags=0, lock_owner=0,
             flags=0, data=b"written by the fuzzer"), _NODE, C(size=21)),
        Seed(O.FUSE_STATFS, C(), 1, C(st=C(blocks=100, bfree=50, bavail=50, files=10,
             ffree=5, bsize=4096, namelen=255, frsize=4096))),
        Seed(O.FUSE_RELEASE, C(fh=_FH, flags=0, release_flags=0, lock_owner=0), _NODE, C()),
        Seed(O.FUSE_FSYNC, C(fh=_FH, fsync_flags=1), _NODE, C()),
        Seed(O.FUSE_SETXATTR, C(size=None, flags=0, name=b"user.fz", value=b"v" * 8),
             _NODE, C()),
        Seed(O.FUSE_GETXATTR, C(size=0, name=b"user.fz"), _NODE, C(size=8)),
        Seed(O.FUSE_GETXATTR, C(size=64, name=b"user.fz"), _NODE, C(value=b"v" * 8)),
        Seed(O.FUSE_LISTXATTR, C(size=0), _NODE, C(size=8)),
        Seed(O.FUSE_LISTXATTR, C(size=256), _NODE, C(value=b"user.fz\0")),
        Seed(O.FUSE_REMOVEXATTR, C(name=b"user.fz"), _NODE, C()),
        Seed(O.FUSE_FLUSH, C(fh=_FH, lock_owner=0), _NODE, C()),
        Seed(O.FUSE_OPENDIR, C(flags=os.O_RDONLY | os.O_DIRECTORY), 1,
             C(fh=_DIRFH, open_flags=0, backing_id=0)),
        Seed(O.FUSE_READDIR, C(fh=_DIRFH, offset=0, size=4096), 1,
             C(entries=[C(ino=1, off=1, type=4, name=b"."), C(ino=2, off=2, type=8,
               name=b"file")])),
        Seed(O.FUSE_READDIRPLUS, C(fh=_DIRFH, offset=0, size=4096), 1,
             C(entries=[C(entry_out=_ENTRY, dirent=C(ino=2, off=1, type=8, name=b"file"))])),
        Seed(O.FUSE_RELEASEDIR, C(fh=_DIRFH), 1, C()),
        Seed(O.FUSE_FSYNCDIR, C(fh=_DIRFH), 1, C()),
        Seed(O.FUSE_GETLK, _lk(), _NODE, C(lk=C(start=0, end=4095, type=2, pid=0))),
        Seed(O.FUSE_SETLK, _lk(), _NODE, C()),
        Seed(O.FUSE_ACCESS, C(mask=4), _NODE, C()),
        Seed(O.FUSE_CREATE, C(flags=os.O_RDWR | os.O_CREAT, mode=0o644, umask=0o022,
             name=b"created"), 1, C(**_ENTRY, fh=3, open_flags=0, backing_id=0)),
        Seed(O.FUSE_TMPFILE, C(flags=os.O_RDWR, mode=0o600, umask=0, name=b"tmp"), 1,
             C(**_ENTRY, fh=3, open_flags=0, backing_id=0)),
        Seed(O.FUSE_INTERRUPT, C(unique=2), 0),
        Seed(O.FUSE_BMAP, C(block=0, blocksize=4096), _NODE, C(block=0)),
        Seed(O.FUSE_IOCTL, C(fh=_FH, flags=0, cmd=0x80086601, arg=0, in_size=None,
             out_size=8, data=b""), _NODE, C(result=0, flags=0, in_iov=[], out_iov=[],
             data=b"\0" * 8)),
        Seed(O.FUSE_POLL, C(fh=_FH, kh=1, flags=1, events=1), _NODE, C(revents=1)),
        Seed(O.FUSE_NOTIFY_REPLY, C(offset=0, size=None, data=b"abcd"), _NODE),
        Seed(O.FUSE_FALLOCATE, C(fh=_FH, offset=0, length=4096, mode=0), _NODE, C()),
        Seed(O.FUSE_LSEEK, C(fh=_FH, offset=0, whence=3), _NODE, C(offset=0)),
        Seed(O.FUSE_COPY_FILE_RANGE, C(fh_in=_FH, off_in=0, nodeid_out=_NODE, fh_out=_FH,
             off_out=8192, len=4096, flags=0), _NODE, C(size=4096)),
        Seed(O.FUSE_COPY_FILE_RANGE_64, C(fh_in=_FH, off_in=0, nodeid_out=_NODE, fh_out=_FH,
             off_out=8192, len=4096, flags=0), _NODE, C(bytes_copied=4096)),
        Seed(O.FUSE_SETUPMAPPING, C(fh=_FH, foffset=0, len=2 << 20, flags=1, moffset=0),
             _NODE, C()),
        Seed(O.FUSE_REMOVEMAPPING, C(count=None, entries=[C(moffset=0, len=2 << 20),
             C(moffset=2 << 20, len=2 << 20)]), _NODE, C()),
        Seed(O.FUSE_SYNCFS, C(padding=0), 1, C()),
        Seed(O.FUSE_STATX, C(getattr_flags=0, fh=0, sx_flags=0, sx_mask=0xFFF), _NODE,
             C(attr_valid=1, flags=0, stat=C(mask=0xFFF, blksize=4096, nlink=1, mode=0o100644,
               ino=2, size=4096))),
        Seed(O.FUSE_DESTROY, C(), 0, C()),
    ]


def encode_seed_request(s: Seed, unique: int, *, nodeid: int | None = None,
                        flags: int = INIT_FLAGS) -> bytes:
    return codec.encode_request(s.opcode, s.body, unique=unique,
                                nodeid=s.nodeid if nodeid is None else nodeid,
                                uid=0, gid=0, pid=1, flags=flags)


def notification_seeds() -> list[bytes]:
    return [
        codec.encode_notification(N.FUSE_NOTIFY_POLL, C(kh=1)),
        codec.encode_notification(N.FUSE_NOTIFY_INVAL_INODE, C(ino=2, off=0, len=-1)),
        codec.encode_notification(N.FUSE_NOTIFY_INVAL_ENTRY, C(parent=1, namelen=None,
                                  flags=0, name=b"file")),
        codec.encode_notification(N.FUSE_NOTIFY_STORE, C(nodeid=2, offset=0, size=None,
                                  data=b"stored")),
        codec.encode_notification(N.FUSE_NOTIFY_RETRIEVE, C(notify_unique=9, nodeid=2,
                                  offset=0, size=4096)),
        codec.encode_notification(N.FUSE_NOTIFY_DELETE, C(parent=1, child=2, namelen=None,
                                  name=b"file")),
        codec.encode_notification(N.FUSE_NOTIFY_RESEND, C()),
        codec.encode_notification(N.FUSE_NOTIFY_PRUNE, C(count=None, entries=[2, 3])),
    ]


def wire_inputs() -> Iterator[tuple[str, bytes]]:
    """(name, input) for the wire_decode corpus."""
    for i, s in enumerate(request_seeds()):
        name = O(s.opcode).name.lower()
        req = encode_seed_request(s, unique=2 * i + 2)
        ext = s.opcode == O.FUSE_SETXATTR
        yield f"req-{name}-{i}", build_wire_input(WIRE_REQUEST, req, setxattr_ext=ext)
        if s.reply is not None:
            decoded = codec.decode_request(req, flags=INIT_FLAGS)
            rep = codec.encode_reply(decoded, s.reply, unique=2 * i + 2)
            yield f"rep-{name}-{i}", build_wire_input(WIRE_REPLY, rep, opcode=s.opcode)
            yield f"pair-{name}-{i}", build_wire_input(WIRE_PAIR, rep, request=req,
                                                        opcode=s.opcode, setxattr_ext=ext)
            err = codec.encode_reply(s.opcode, None, unique=2 * i + 2, error=-2)
            yield f"err-{name}-{i}", build_wire_input(WIRE_REPLY, err, opcode=s.opcode)
    # An older minor and an extension area (supplementary groups), as 7.36 / 7.46 peers send.
    look = codec.encode_request(O.FUSE_LOOKUP, C(name=b"file"), unique=900, nodeid=1,
                                ext=[C(type=32, groups=[100, 200])])
    yield "req-lookup-ext", build_wire_input(WIRE_REQUEST, look)
    old = codec.encode_request(O.FUSE_WRITE, C(fh=1, offset=0, size=None, write_flags=0,
                               data=b"x"), unique=902, nodeid=2, minor=8)
    yield "req-write-minor8", build_wire_input(WIRE_REQUEST, old, minor=8)
    for j, n in enumerate(notification_seeds()):
        yield f"notify-{j}", build_wire_input(WIRE_NOTIFICATION, n)


def session_inputs() -> Iterator[tuple[str, bytes]]:
    """(name, input) for the session corpus: INIT first, then request/reply pairs."""
    seeds = request_seeds()
    init = seeds[0]
    init_req = encode_seed_request(init, 2, flags=0)
    init_rep = codec.encode_reply(O.FUSE_INIT, init.reply, unique=2)
    head = [SessionRecord(False, init_req), SessionRecord(True, init_rep)]
    yield "init", build_session_input(head)
    recs = list(head)
    for i, s in enumerate(seeds[1:], start=2):
        unique = 2 * i
        req = encode_seed_request(s, unique)
        pair = [SessionRecord(False, req)]
        if s.reply is not None:
            decoded = codec.decode_request(req, flags=INIT_FLAGS)
            pair.append(SessionRecord(True, codec.encode_reply(decoded, s.reply, unique=unique)))
        yield f"session-{O(s.opcode).name.lower()}-{i}", build_session_input(head + pair)
        if len(recs) < 24:
            recs += pair
    yield "session-long", build_session_input(recs)
    # Interleaved: two requests in flight, answered out of order, an interrupt between.
    a = encode_seed_request(seeds[1], 100)
    b = encode_seed_request(seeds[5], 102)
    intr = codec.encode_request(O.FUSE_INTERRUPT, C(unique=100), unique=101)
    ra = codec.encode_reply(O.FUSE_LOOKUP, None, unique=100, error=-4)
    rb = codec.encode_reply(O.FUSE_GETATTR, C(attr_valid=1, attr=_ATTR), unique=102)
    note = codec.encode_notification(N.FUSE_NOTIFY_INVAL_INODE, C(ino=2, off=0, len=-1))
    yield "session-interleaved", build_session_input(head + [
        SessionRecord(False, a), SessionRecord(False, b), SessionRecord(False, intr),
        SessionRecord(True, rb), SessionRecord(True, note), SessionRecord(True, ra)])
