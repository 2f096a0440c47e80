"""A realistic virtio-fs conversation as encoded messages, for sample captures and tests.

:func:`sample_session` returns ``[(direction, queue, bytes), ...]`` built with the codec
(never by hand): INIT negotiating DAX mapping alignment, LOOKUP (found and -ENOENT),
GETATTR, OPEN, READ, SETUPMAPPING, REMOVEMAPPING with two entries, WRITE, OPENDIR,
READDIRPLUS with two entries, GETXATTR (size probe), FORGET (unanswered), RELEASE, and
notifications (INVAL_INODE, INVAL_ENTRY, DELETE). ``scripts/make_sample_captures.py``
writes it to ``corpus/captures/``.
"""

from __future__ import annotations

import errno
import stat

from construct import Container

from ..wire import codec
from ..wire.constants import InitFlags, fuse_notify_code
from ..wire.constants import fuse_opcode as op
from .frames import Direction

__all__ = ["sample_session", "write_sample"]

HIPRIO, REQUEST_QUEUE = 0, 1


def _attr(ino: int, mode: int, size: int) -> Container:
    return Container(
        ino=ino,
        size=size,
        blocks=(size + 511) // 512,
        atime=1_700_000_000,
        mtime=1_700_000_000,
        ctime=1_700_000_000,
        atimensec=0,
        mtimensec=0,
        ctimensec=0,
        mode=mode,
        nlink=1,
        uid=1000,
        gid=1000,
        rdev=0,
        blksize=4096,
        flags=0,
    )


def _entry(nodeid: int, mode: int, size: int) -> Container:
    return Container(
        nodeid=nodeid,
        generation=1,
        entry_valid=1,
        attr_valid=1,
        entry_valid_nsec=0,
        attr_valid_nsec=0,
        attr=_attr(nodeid, mode, size),
    )


def sample_session() -> list[tuple[Direction, int, bytes]]:
    """The messages of a short DAX-enabled virtio-fs session, in wire order."""
    out: list[tuple[Direction, int, bytes]] = []
    unique = [0]

    def req(opcode: int, body: object, nodeid: int = 0, queue: int = REQUEST_QUEUE) -> int:
        unique[0] += 2
        data = codec.encode_request(
            opcode, body, unique=unique[0], nodeid=nodeid, uid=1000, gid=1000, pid=4242
        )
        out.append((Direction.REQUEST, queue, data))
        return unique[0]

    def rep(
        u: int,
        opcode: int,
        body: object,
        error: int = 0,
        queue: int = REQUEST_QUEUE,
        request: object = None,
    ) -> None:
        data = codec.encode_reply(
            request if request is not None else opcode, body, unique=u, error=error
        )
        out.append((Direction.REPLY, queue, data))

    def notify(code: int, body: object) -> None:
        out.append((Direction.NOTIFICATION, 0, codec.encode_notification(code, body)))

    flags, _ = (
        InitFlags.FUSE_ASYNC_READ
        | InitFlags.FUSE_DO_READDIRPLUS
        | InitFlags.FUSE_MAP_ALIGNMENT
        | InitFlags.FUSE_INIT_EXT
    ).words()
    _, flags2 = InitFlags(InitFlags.FUSE_HAS_INODE_DAX).words()
    u = req(
        op.FUSE_INIT,
        Container(major=7, minor=46, max_readahead=131072, flags=flags, flags2=flags2),
        queue=HIPRIO,
    )
    rep(
        u,
        op.FUSE_INIT,
        Container(
            major=7,
            minor=46,
            max_readahead=131072,
            flags=flags,
            max_background=64,
            congestion_threshold=48,
            max_write=1 << 20,
            time_gran=1,
            max_pages=256,
            map_alignment=12,
            flags2=0,
            max_stack_depth=0,
            request_timeout=0,
        ),
        queue=HIPRIO,
    )

    u = req(op.FUSE_LOOKUP, Container(name=b"hello.txt"), nodeid=1)
    rep(u, op.FUSE_LOOKUP, _entry(2, stat.S_IFREG | 0o644, 5000))
    u = req(op.FUSE_LOOKUP, Container(name=b"missing"), nodeid=1)
    rep(u, op.FUSE_LOOKUP, None, error=-errno.ENOENT)
    u = req(op.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), nodeid=2)
    rep(
        u,
        op.FUSE_GETATTR,
        Container(
            attr_valid=1, attr_valid_nsec=0, dummy=0, attr=_attr(2, stat.S_IFREG | 0o644, 5000)
        ),
    )
    u = req(op.FUSE_OPEN, Container(flags=0o2, open_flags=0), nodeid=2)
    rep(u, op.FUSE_OPEN, Container(fh=7, open_flags=0, backing_id=0))

    read_body = Container(
        fh=7, offset=0, size=4096, read_flags=0, lock_owner=0, flags=0o2, padding=0
    )
    u = req(op.FUSE_READ, read_body, nodeid=2)
    rep(u, op.FUSE_READ, Container(data=b"hello, virtio-fs\n" * 8))

    u = req(
        op.FUSE_SETUPMAPPING, Container(fh=7, foffset=0, len=2 << 20, flags=3, moffset=0), nodeid=2
    )
    rep(u, op.FUSE_SETUPMAPPING, None)
    u = req(
        op.FUSE_SETUPMAPPING,
        Container(fh=7, foffset=2 << 20, len=2 << 20, flags=1, moffset=2 << 20),
        nodeid=2,
    )
    rep(u, op.FUSE_SETUPMAPPING, None)

    u = req(
        op.FUSE_WRITE,
        Container(
            fh=7, offset=5000, write_flags=0, lock_owner=0, flags=0o2, padding=0, data=b"appended\n"
        ),
        nodeid=2,
    )
    rep(u, op.FUSE_WRITE, Container(size=9, padding=0))
    notify(fuse_notify_code.FUSE_NOTIFY_INVAL_INODE, Container(ino=2, off=0, len=-1))

    u = req(
        op.FUSE_REMOVEMAPPING,
        Container(
            entries=[
                Container(moffset=0, len=2 << 20),
                Container(moffset=2 << 20, len=2 << 20),
            ]
        ),
        nodeid=2,
    )
    rep(u, op.FUSE_REMOVEMAPPING, None)

    u = req(op.FUSE_OPENDIR, Container(flags=0, open_flags=0), nodeid=1)
    rep(u, op.FUSE_OPENDIR, Container(fh=8, open_flags=0, backing_id=0))
    rdp = Container(fh=8, offset=0, size=4096, read_flags=0, lock_owner=0, flags=0, padding=0)
    u = req(op.FUSE_READDIRPLUS, rdp, nodeid=1)
    entries = [
        Container(
            entry_out=_entry(1, stat.S_IFDIR | 0o755, 4096),
            dirent=Container(ino=1, off=1, type=4, name=b"."),
        ),
        Container(
            entry_out=_entry(2, stat.S_IFREG | 0o644, 5009),
            dirent=Container(ino=2, off=2, type=8, name=b"hello.txt"),
        ),
    ]
    rep(u, op.FUSE_READDIRPLUS, Container(entries=entries))

    gx = Container(size=0, padding=0, name=b"user.comment")
    u = req(op.FUSE_GETXATTR, gx, nodeid=2)
    rep(
        u, op.FUSE_GETXATTR, Container(size=11, padding=0), request=codec.decode_request(out[-1][2])
    )

    notify(fuse_notify_code.FUSE_NOTIFY_INVAL_ENTRY, Container(parent=1, flags=0, name=b"old"))
    notify(
        fuse_notify_code.FUSE_NOTIFY_DELETE, Container(parent=1, child=3, padding=0, name=b"gone")
    )

    req(op.FUSE_FORGET, Container(nlookup=1), nodeid=3)
    u = req(op.FUSE_RELEASE, Container(fh=7, flags=0o2, release_flags=0, lock_owner=0), nodeid=2)
    rep(u, op.FUSE_RELEASE, None)
    return out


def write_sample(
    path: str, *, start_ns: int = 1_700_000_000_000_000_000, step_ns: int = 125_000
) -> int:
    """Write :func:`sample_session` to ``path`` with a recorder; returns the record count."""
    from .frames import CaptureRecorder

    with CaptureRecorder(path) as rec:
        for i, (direction, queue, data) in enumerate(sample_session()):
            rec(direction, queue, data, start_ns + i * step_ns)
        return rec.count


def sample_with_errors() -> list[tuple[Direction, int, bytes]]:
    """:func:`sample_session` with three faults inserted (for error reporting tests):

    * after the first LOOKUP request, a LOOKUP request whose ``len`` lies (decode error);
    * after the GETATTR reply, a reply to unique 9999, which nobody sent (protocol error);
    * the READ request's body cut short with ``len`` fixed up (decode error: truncated).
    """
    msgs = sample_session()
    out: list[tuple[Direction, int, bytes]] = []
    for direction, queue, data in msgs:
        if direction == Direction.REQUEST and data[4] == op.FUSE_READ:
            cut = data[:-8]
            data = len(cut).to_bytes(4, "little") + cut[4:]
        out.append((direction, queue, data))
        if direction == Direction.REQUEST and data[4] == op.FUSE_LOOKUP and len(out) == 3:
            bad = codec.encode_request(
                op.FUSE_LOOKUP, Container(name=b"liar"), unique=1001, nodeid=1, length=999
            )
            out.append((Direction.REQUEST, queue, bad))
        if direction == Direction.REPLY and len(data) == 16 + 104 and len(out) < 12:
            out.append(
                (
                    Direction.REPLY,
                    queue,
                    codec.encode_reply(op.FUSE_GETATTR, None, unique=9999, error=-5),
                )
            )
    return out


def write_sample_with_errors(
    path: str, *, start_ns: int = 1_700_000_000_000_000_000, step_ns: int = 125_000
) -> int:
    """Write :func:`sample_with_errors` to ``path``, plus one record with a bad
    pseudo-header at the end; returns the record count."""
    from .frames import CaptureRecorder

    with CaptureRecorder(path) as rec:
        msgs = sample_with_errors()
        for i, (direction, queue, data) in enumerate(msgs):
            rec(direction, queue, data, start_ns + i * step_ns)
        # A record of our link type whose pseudo-header has version 9.
        rec.write_frame(b"\x09" + b"\0" * 15 + b"junk", start_ns + len(msgs) * step_ns)
        return rec.count
