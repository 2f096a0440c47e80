"""The differential target's allow-list: known, explained differences between QEMU 7.2's
C virtiofsd and virtiofsd 1.13 (Rust) that are not findings.

Each entry matches a divergence (:class:`.diff.Divergence`) by opcode, kind and errno
pair (``None``: any) and, optionally, by the state it happened in; it says *why* the two
daemons may differ there. The errno pair is (C daemon, Rust daemon): the differential
target always runs the C-kind daemon as side ``a``. A divergence no entry matches is a
finding. Allowed divergences are still counted and listed in the report (with the
reason), so the table can be audited against what a run saw.

``when`` values: ``before-init`` (no INIT of major 7 was accepted by both daemons yet),
``after-destroy`` (a DESTROY was accepted earlier in the program), ``bad-name`` (the
request's name or newname is not one path component: ``/`` in it, ``.``, ``..``),
``guessed-id`` (the request's node id is a literal other than the root's 1, not one a
reply gave, on a request that names a node), ``over-rust-limit`` (the request is over one
of the Rust daemon's size limits, :data:`RUST_MAX_REQUEST` and :data:`RUST_MAX_BUFFER`: a
forced header length above the first, or a GETXATTR / LISTXATTR / READDIR / READDIRPLUS
``size``, or a BATCH_FORGET's entries, above the second), ``forgotten-id`` (a node id
a daemon was sent -- the header's on a request that names a node, LINK's ``oldnodeid``,
RENAME's ``newdir`` -- is one an earlier FORGET or BATCH_FORGET of the program named; the
root's 1 once they forgot both its lookups), ``dir-open-flags`` (an OPENDIR
whose flags have a bit of :data:`DIR_OPEN_REFUSED`: no kernel sends one, its VFS refuses
such an open of a directory first); and, for a request that carries an ``fh``
(:func:`.sequences.handle_tags`), ``guessed-fh`` (a literal, not a handle a reply gave),
``fh-other-kind`` (a directory's handle on a file request, or a file's on a directory
request) and ``fh-other-node`` (a handle opened for another node id); and from a WRITE
both accepted whose ``flags`` have O_APPEND where its handle was opened without it, or the
other way round, on: ``append-differs``; ``zero-length`` (a READ of ``size`` 0, or a
WRITE of no data); ``reinit-refused`` (after an INIT, sent while a session was up, that
the C daemon refused, until an INIT both accept).
"""

from __future__ import annotations

import errno as E
import os
from dataclasses import dataclass

__all__ = ["AllowEntry", "ALLOW", "WHENS", "explain", "RUST_MAX_BUFFER", "RUST_MAX_REQUEST",
           "RUST_SIZE_CHECKED", "RUST_FORGET_ONE", "DIR_OPEN_REFUSED"]

WHENS = ("before-init", "after-destroy", "bad-name", "guessed-id", "over-rust-limit",
         "forgotten-id", "dir-open-flags", "guessed-fh", "fh-other-kind", "fh-other-node",
         "append-differs", "zero-length", "reinit-refused")

#: OPENDIR flag bits a kernel never sends (open(2) of a directory with write access,
#: O_CREAT, O_TRUNC or O_TMPFILE's own bit fails in the VFS, EISDIR / EINVAL, before FUSE
#: is asked): the state ``dir-open-flags``.
DIR_OPEN_REFUSED = (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC
                    | (getattr(os, "O_TMPFILE", 0) & ~os.O_DIRECTORY))

# The Rust daemon's request limits (virtiofsd 1.13.2 src/server.rs: MAX_BUFFER_SIZE, and
# FUSE_BUFFER_HEADER_SIZE above it for the header): it refuses with ENOMEM, before it looks
# at anything else, a request whose fuse_in_header.len is above RUST_MAX_REQUEST (in
# handle_message), a request of RUST_SIZE_CHECKED whose ``size`` is above RUST_MAX_BUFFER
# (getxattr, listxattr, readdir, readdirplus) and a BATCH_FORGET whose entries
# (RUST_FORGET_ONE bytes each: fuse_forget_one) take more than RUST_MAX_BUFFER
# (batch_forget). The C daemon has none of these limits.
RUST_MAX_BUFFER = 1 << 20
RUST_MAX_REQUEST = RUST_MAX_BUFFER + 0x1000
RUST_SIZE_CHECKED = ("FUSE_GETXATTR", "FUSE_LISTXATTR", "FUSE_READDIR", "FUSE_READDIRPLUS")
RUST_FORGET_ONE = 16


@dataclass(frozen=True)
class AllowEntry:
    op: str | None  # opcode name, e.g. "FUSE_LOOKUP"; None: any
    kind: str | None  # divergence kind (accepted-vs-refused, errno, data, attr.size, ...)
    errnos: tuple[int | None, int | None] | None  # (C, Rust), negative errno; None: any
    reason: str
    when: str | None = None  # one of WHENS, or None: any state

    def matches(self, op: str, kind: str, errnos: tuple[int | None, int | None],
                state: set[str]) -> bool:
        if self.op is not None and self.op != op:
            return False
        if self.kind is not None and self.kind != kind:
            return False
        if self.when is not None and self.when not in state:
            return False
        if self.errnos is None:
            return True
        return all(want is None or want == got for want, got in zip(self.errnos, errnos,
                                                                    strict=True))


def _e(n: int) -> int:
    return -n


#: The known differences, each with its reason (see the module docstring).
ALLOW: tuple[AllowEntry, ...] = (
    AllowEntry("FUSE_INIT", "accepted-vs-refused", (_e(E.EPROTO), 0),
               reason="protocol floor: QEMU 7.2's C daemon refuses INIT below 7.31 "
               "(fuse_lowlevel.c do_init: 'unsupported protocol version', EPROTO); the "
               "Rust one negotiates older minors"),
    AllowEntry(None, "errno", (_e(E.EIO), None), when="before-init",
               reason="before a successful INIT the C daemon answers every request EIO "
               "(fuse_lowlevel.c: requests before init are refused); the Rust one refuses "
               "them with errors of its own (EBADF, ENOSYS, ...)"),
    AllowEntry(None, "errno", (None, _e(E.EBADF)), when="guessed-id",
               reason="a node id the program guessed (a literal, 0 included, not one a "
               "reply gave): the daemons number inodes differently; Rust refuses an id it "
               "never handed out with EBADF, C answers what its own inode map gives "
               "(ENOENT, ...)"),
    AllowEntry("FUSE_RENAME", None, (_e(E.EIO), None),
               reason="the C daemon renames only a name it has handed out an inode for "
               "(passthrough_ll.c lo_rename: lookup_name() finds no inode -> EIO, before "
               "any other check); a kernel always LOOKUPs first; the Rust one renames by "
               "name (or says why not: ENOTDIR, ...)"),
    AllowEntry("FUSE_RELEASE", "accepted-vs-refused", (0, _e(E.EBADF)),
               reason="the C daemon's RELEASE ignores the node id and answers 0 whatever "
               "the fh (passthrough_ll.c lo_release: (void)ino, reply 0 even when the fh is "
               "not open); the Rust one refuses a handle it does not hold for that inode"),
    *(AllowEntry(op, "accepted-vs-refused", (0, _e(E.EBADF)),
                 reason="the C daemon takes the open file from fh alone (passthrough_ll.c "
                 "lo_fi_fd; the node id is not checked), the Rust one looks the handle up "
                 "under the node id and refuses a pair that does not match (EBADF): another "
                 "file's node id with a valid fh is served by C")
      for op in ("FUSE_READ", "FUSE_WRITE", "FUSE_FLUSH", "FUSE_FSYNC")),
    AllowEntry(None, "errno", (_e(E.EINVAL), None), when="bad-name",
               reason="a name that is not one path component ('/' in it, '.', '..'): the "
               "C daemon refuses it with EINVAL before touching the file system "
               "(passthrough_ll.c is_safe_path_component, or strchr '/' in lookup), the "
               "Rust one hands it to the kernel beneath the share and reports what is not "
               "there (ENOENT, ENOTDIR, EISDIR, EBUSY); the escape canaries check that "
               "neither gets out"),
    AllowEntry(None, None, (None, _e(E.ENOMEM)), when="over-rust-limit",
               reason="a request over the Rust daemon's size limits (a header length above "
               "1 MiB + 4 KiB, a GETXATTR / LISTXATTR / READDIR / READDIRPLUS size or a "
               "BATCH_FORGET's entries above 1 MiB): the Rust one refuses it with ENOMEM "
               "before anything else (server.rs handle_message, getxattr, listxattr, "
               "readdir, readdirplus, batch_forget); the C one has no such limits (it goes "
               "by the descriptors, not the header length) and answers as it would any "
               "request: 0, or its own errno (ENODATA for an xattr it looks up first, ...)"),
    *(AllowEntry(op, None, (_e(E.EIO), None),
                 reason=f"the C daemon removes only a name it has handed out an inode for "
                 f"(passthrough_ll.c lo_{op[5:].lower()}: lookup_name() finds no inode -> "
                 f"EIO, whether the name is not there, too long (ENAMETOOLONG underneath) or "
                 f"never looked up); the Rust one unlinks by name and answers the real errno "
                 f"(passthrough do_unlink: ENOENT, ENAMETOOLONG, ...)")
      for op in ("FUSE_UNLINK", "FUSE_RMDIR")),
    AllowEntry("FUSE_DESTROY", "reply-vs-none", None,
               reason="the Rust daemon never answers DESTROY (server.rs destroy: the request "
               "is consumed with no reply written); the C one replies (fuse_lowlevel.c "
               "do_destroy: 0; EIO before an INIT, as fuse_session_process_buf answers "
               "every request then)"),
    AllowEntry("FUSE_OPENDIR", None, None, when="dir-open-flags",
               reason="OPENDIR with flags no kernel sends (write access, O_CREAT, O_TRUNC, "
               "O_TMPFILE): the C daemon ignores the flags and opens '.' read-only "
               "(passthrough_ll.c lo_opendir), the Rust one opens the directory with the "
               "request's flags | O_DIRECTORY (passthrough opendir -> do_open), which the "
               "kernel refuses (EISDIR, EINVAL); so the answers differ whatever the area "
               "(a header-only area: C's success does not fit, Rust's error does)"),
    AllowEntry(None, None, None, when="forgotten-id",
               reason="a node id (the header's, LINK's oldnodeid or RENAME's newdir) used "
               "after a FORGET / BATCH_FORGET named it (a kernel never does): the C daemon "
               "frees the id and hands it to the next new inode (passthrough_ll.c "
               "unref_inode -> lo_map_remove, its free list reused by lo_add_inode_mapping), "
               "so the id may name another file and be served, or name nothing (EBADF, "
               "also for a FLUSH through a handle that is still open: lo_flush looks the "
               "inode up); the Rust one never reuses ids (passthrough next_inode), refuses "
               "one it forgot (EBADF) and serves what goes by the handle alone. The root "
               "counts once both its lookups are forgotten: a later INIT opens it again on "
               "Rust only (passthrough init -> open_root_node)"),
    AllowEntry(None, None, None, when="guessed-fh",
               reason="an fh the program guessed (a literal, not one a reply gave): the "
               "daemons number handles differently. Rust gives OPEN, CREATE and OPENDIR "
               "handles from one counter from 0 and never reuses one (passthrough "
               "next_handle); C keeps two maps from 0, fd_map for OPEN / CREATE and "
               "dirp_map for OPENDIR, and reuses freed numbers first (passthrough_ll.c "
               "lo_add_fd_mapping, lo_add_dirp_mapping -> lo_map_alloc_elem's free list). "
               "So one number names another handle, or none, on each: e.g. a READ of fh 0 "
               "and size 0 after an OPENDIR is 0 on Rust (its handle 0 is that directory's, "
               "and a read of nothing is not made) and EBADF on C (no file handle 0)"),
    AllowEntry(None, None, None, when="fh-other-kind",
               reason="a directory's handle on a file request (READ, WRITE, FLUSH, ...) or a "
               "file's on a directory request (READDIR, RELEASEDIR, ...), which a kernel "
               "never sends: Rust keeps both kinds in one table looked up by (fh, node id) "
               "(passthrough find_handle) and serves the request through the other kind's "
               "file (a READ of a directory: EISDIR; of size 0: 0; a READDIR of a file: "
               "ENOTDIR); C looks file requests up in fd_map and directory ones in "
               "dirp_map (passthrough_ll.c lo_fi_fd, lo_dirp), where the number names "
               "nothing (EBADF) or another open file or directory"),
    AllowEntry(None, None, (None, _e(E.EBADF)), when="fh-other-node",
               reason="a handle opened for another node id (a kernel sends a file's handle "
               "with its own node id): Rust looks the handle up under the request's node id "
               "and refuses the pair (passthrough find_handle: EBADF); C takes the open "
               "file from fh alone (passthrough_ll.c lo_fi_fd, the node id unused) and "
               "answers what that file gives (EISDIR when the handle is a directory opened "
               "with OPEN, the data, ...)"),
    *(AllowEntry(None, kind, None, when="append-differs",
                 reason="a WRITE whose flags disagree with its handle's O_APPEND (a kernel "
                 "copies the file's flags into every WRITE): the C daemon keeps O_APPEND on "
                 "the file it opened and every write appends (passthrough_ll.c lo_open; "
                 "without -o writeback it is not cleared); the Rust one clears O_APPEND at "
                 "OPEN and appends only a WRITE whose own flags say O_APPEND (passthrough "
                 "do_open, write: RWF_APPEND). One write lands at the end, the other at its "
                 "offset: the file's size and data differ from then on")
      for kind in ("attr.size", "data", "offset")),
    AllowEntry(None, None, (_e(E.EIO), None), when="reinit-refused",
               reason="an INIT while a session is up, refused by the C daemon (a major other "
               "than 7, a minor below its 7.31 floor, a short body): C has torn its session "
               "down before looking at it (fuse_lowlevel.c fuse_session_process_buf_int: "
               "'reinit', got_init = 0 and the file system's destroy) and answers every "
               "request EIO until a new INIT succeeds; the Rust one refuses the INIT and "
               "serves on with the session it had (server.rs init returns before touching "
               "it)"),
    AllowEntry("FUSE_OPENDIR", "errno", (_e(E.ENOTDIR), _e(E.EBADF)),
               reason="OPENDIR of a node that is neither a directory nor a regular file (a "
               "symlink, FIFO, socket, device node): the Rust daemon opens only regular "
               "files and directories (passthrough util.rs is_safe_inode -> EBADF, in "
               "InodeData::open_file); the C one opens '.' under the node's O_PATH fd "
               "(passthrough_ll.c lo_opendir: openat(fd, \".\", O_RDONLY)), which the "
               "kernel refuses with ENOTDIR. (Of a regular file both say ENOTDIR.)"),
    *(AllowEntry(op, "accepted-vs-refused", (_e(E.EBADF), 0), when="zero-length",
                 reason="a READ of size 0 or a WRITE of no data through a handle not open "
                 "for it (write-only, read-only): the Rust daemon makes no read or write "
                 "for 0 bytes (descriptor_utils.rs consume: no buffer, Ok(0)) and answers "
                 "0; the C one calls preadv / pwrite all the same (fuse_virtio.c "
                 "virtio_send_data_iov, lo_write_buf -> fuse_buf_copy) and the kernel "
                 "refuses a handle without that access before it looks at the length "
                 "(EBADF)")
      for op in ("FUSE_READ", "FUSE_WRITE")),
)


def explain(op: str, kind: str, errnos: tuple[int | None, int | None],
            state: set[str]) -> AllowEntry | None:
    """The first entry of :data:`ALLOW` that explains a divergence (None: a finding)."""
    return next((e for e in ALLOW if e.matches(op, kind, errnos, state)), None)
