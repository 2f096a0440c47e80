"""Escape canaries: files and a directory planted *beside* a daemon's shared directory,
and symlinks inside the share that point out at them, checked after every input.

A virtio-fs daemon must never let a guest reach outside its shared directory. Each live
fuzz target's scratch directory ``base/`` holds the share (``base/shared/``) and, with
:meth:`Canaries.plant`, next to it:

* ``base/canary`` -- a file whose content is a unique random token (repeated, so any
  read of at least two tokens' worth of it carries a whole one);
* ``base/canary-dir/`` with ``canary-dir/canary`` (its own token) inside;
* in the share, ``escape -> ../canary``, ``escape-dir -> ../canary-dir`` and
  ``escape-abs -> <absolute path of base>/canary``: symlinks out.

:meth:`Canaries.check` says what happened to them since they were armed: **read** (the
access time moved: canaries are armed with an atime a day older than their mtime, so
``relatime`` -- this machine's ext4 -- updates it on the next read; our own checks read
with ``O_NOATIME``; :attr:`Canaries.atime_works` says whether this file system updates
atimes at all), **written** (size, mtime, ctime or content changed; a directory's
entries), **linked** (nlink changed: a hard link made to it), **renamed** (gone, and an
entry with its inode appeared beside the share), **deleted** (gone), **created** (a new
entry beside the share or in the canary directory). :meth:`Canaries.scan` says whether a
reply carries a canary's token. Breaches are reported once: :meth:`Canaries.rearm`
takes a fresh snapshot (and moves atimes back).

The generators of :mod:`.sequences` use :data:`ESCAPE_NAMES` and :data:`SYMLINK_TARGETS`
(``..``, absolute names, names with ``/``, the symlinks out); the harness
(:class:`~fuseproto.fuzz.harness.DaemonHarness`) plants the canaries for every daemon it
starts and turns breaches into ``escape`` findings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import secrets
import stat
from dataclasses import dataclass, field
from typing import Any

from construct import Container

from ..wire.constants import fuse_opcode as O

__all__ = ["Canaries", "Breach", "ESCAPE_NAMES", "SYMLINK_TARGETS", "CANARY_FILE",
           "CANARY_DIR", "ESCAPE_LINKS", "escape_request"]

CANARY_FILE = "canary"
CANARY_DIR = "canary-dir"
#: The symlinks planted in the share: name -> where it points (``{base}``: the absolute
#: path of the share's parent).
ESCAPE_LINKS = {"escape": "../" + CANARY_FILE, "escape-dir": "../" + CANARY_DIR,
                "escape-abs": "{base}/" + CANARY_FILE}
#: Names a program tries in LOOKUP / CREATE / MKDIR / RENAME / UNLINK / LINK: the parent,
#: absolute names, names with ``/``, the symlinks out, and what lies beside the share.
ESCAPE_NAMES = (b"..", b".", b"../" + CANARY_FILE.encode(), b"/" + CANARY_FILE.encode(),
                CANARY_FILE.encode(), b"escape", b"escape-dir", b"escape-abs",
                b"dir/../../" + CANARY_FILE.encode(), b"../" + CANARY_DIR.encode(),
                b"escape/", b"escape-dir/" + CANARY_FILE.encode(), b"/", b"/etc/passwd",
                b"../../../../../../etc/passwd", b"dir/..", b"../shared/file")
#: What SYMLINK steps point new links at (following one must stay inside the share).
SYMLINK_TARGETS = (b"../" + CANARY_FILE.encode(), b"/etc/passwd", b"..", b"/",
                   b"../../" + CANARY_FILE.encode(), b"escape")
# How many times a token is repeated in its canary file: any window of 2 x (len + 1)
# bytes holds a whole token.
_REPEAT = 16
_OLD = 24 * 3600  # an atime this much older than the mtime: relatime updates it on read


@dataclass
class Breach:
    """Something a daemon did to a canary (or a reply that carries one)."""

    kind: str  # read | written | linked | renamed | deleted | created | reply
    canary: str  # the canary's path relative to base (or the new entry's)
    detail: str


@dataclass
class _Snap:
    ino: int
    mode: int
    nlink: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    digest: str  # content sha1 (a file) or the sorted entry names (a directory)


@dataclass
class Canaries:
    """The canaries beside one share (see the module docstring)."""

    base: str
    shared: str
    tokens: dict[str, bytes] = field(default_factory=dict)  # canary path -> its token
    _snaps: dict[str, _Snap] = field(default_factory=dict)
    _beside: set[str] = field(default_factory=set)  # base's entries when armed
    _base_mtime: int = 0
    _quick: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # path, stat
    # Whether a read moves an aged atime here (False on a noatime mount: then only the
    # reply scan sees a canary read). Tried once at plant().
    atime_works: bool = True

    @classmethod
    def plant(cls, base: str, shared: str, *, links: bool = True) -> Canaries:
        """Create the canaries in ``base`` (the share's parent; for a test, the share
        itself) and the symlinks out in ``shared``; armed at once."""
        c = cls(os.path.abspath(base), os.path.abspath(shared))
        os.makedirs(os.path.join(c.base, CANARY_DIR), exist_ok=True)
        for rel in (CANARY_FILE, os.path.join(CANARY_DIR, CANARY_FILE)):
            tok = b"CANARY-" + secrets.token_hex(16).encode()
            c.tokens[rel] = tok
            with open(os.path.join(c.base, rel), "wb") as f:
                f.write((tok + b"\n") * _REPEAT)
        c.atime_works = c._atime_moves(os.path.join(c.base, CANARY_FILE))
        if links:
            for name, target in ESCAPE_LINKS.items():
                with contextlib.suppress(FileExistsError):
                    os.symlink(target.format(base=c.base), os.path.join(c.shared, name))
        c.rearm()
        return c

    @staticmethod
    def _atime_moves(path: str) -> bool:
        """Age ``path``'s atime, read it, see whether the atime moved (rearm ages it
        again)."""
        st = os.stat(path)
        os.utime(path, ns=(st.st_mtime_ns - _OLD * 10**9, st.st_mtime_ns))
        before = os.stat(path).st_atime_ns
        with open(path, "rb") as f:
            f.read(1)
        return os.stat(path).st_atime_ns != before

    @property
    def paths(self) -> list[str]:
        """The canaries, relative to ``base``."""
        return [CANARY_FILE, CANARY_DIR, os.path.join(CANARY_DIR, CANARY_FILE)]

    def rearm(self) -> None:
        """Age the canaries' access times again and take a fresh snapshot (after a breach
        was reported, or to start over)."""
        for rel in self.paths:
            p = os.path.join(self.base, rel)
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                os.utime(p, ns=(st.st_mtime_ns - _OLD * 10**9, st.st_mtime_ns),
                         follow_symlinks=False)
        self._snaps = {}
        for rel in self.paths:
            s = self._snap(rel)
            if s is not None:
                self._snaps[rel] = s
        self._beside = set(self._entries(self.base))
        self._base_mtime = os.stat(self.base).st_mtime_ns
        self._quick = [(p, self._key(p)) for p in
                       (os.path.join(self.base, rel) for rel in self._snaps)]

    @staticmethod
    def _key(path: str) -> tuple[int, ...]:
        try:
            st = os.lstat(path)
        except OSError:
            return ()
        return (st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns,
                st.st_ctime_ns, st.st_atime_ns)

    # -- reading without touching ------------------------------------------------------
    @staticmethod
    def _entries(path: str) -> list[str]:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def _snap(self, rel: str, deep: bool = True) -> _Snap | None:
        p = os.path.join(self.base, rel)
        try:
            st = os.lstat(p)
        except OSError:
            return None
        digest = ""
        if deep:
            try:
                if stat.S_ISDIR(st.st_mode):
                    digest = "\0".join(self._entries(p))
                else:
                    fd = os.open(p, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW)
                    try:
                        digest = hashlib.sha1(os.read(fd, 1 << 20)).hexdigest()
                    finally:
                        os.close(fd)
            except OSError as e:
                digest = f"unreadable: {e}"
        return _Snap(st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns,
                     st.st_ctime_ns, st.st_atime_ns, digest)

    # -- the checks -----------------------------------------------------------------------
    def check(self) -> list[Breach]:
        """What happened to the canaries since they were armed (empty: nothing). Cheap
        when nothing did (a few ``lstat``): contents and listings are read only when a
        time or size moved."""
        out: list[Breach] = []
        try:
            base_mtime = os.stat(self.base).st_mtime_ns
        except OSError as e:
            return [Breach("deleted", ".", f"the share's parent is gone: {e}")]
        if base_mtime == self._base_mtime and all(self._key(p) == k for p, k in self._quick):
            return out  # nothing moved (the common case: one stat per canary)
        now_beside = self._entries(self.base) if base_mtime != self._base_mtime \
            else sorted(self._beside)
        new_beside = [n for n in now_beside if n not in self._beside]
        moved_to: dict[tuple[int, int], str] = {}  # (inode, type) -> new entry
        for n in new_beside:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(self.base, n))
                moved_to[(st.st_ino, stat.S_IFMT(st.st_mode))] = n
        for rel, old in self._snaps.items():
            cur = self._snap(rel, deep=False)
            if cur is None:
                key = (old.ino, stat.S_IFMT(old.mode))  # a reused inode number is not enough
                if key in moved_to:
                    out.append(Breach("renamed", rel, f"{rel} was renamed to "
                                      f"{moved_to.pop(key)} (inode {old.ino})"))
                else:
                    out.append(Breach("deleted", rel, f"{rel} is gone"))
                continue
            if cur.ino != old.ino:
                out.append(Breach("renamed", rel, f"{rel} was replaced: inode {old.ino} -> "
                                  f"{cur.ino}"))
                continue
            if cur.nlink != old.nlink and not stat.S_ISDIR(old.mode):
                out.append(Breach("linked", rel, f"{rel}: nlink {old.nlink} -> {cur.nlink} "
                                  "(a hard link to it was made or removed)"))
            changed = [k for k in ("size", "mtime_ns", "ctime_ns", "mode")
                       if getattr(cur, k) != getattr(old, k)]
            if changed:
                deep = self._snap(rel)
                what = ", ".join(changed)
                if deep is not None and deep.digest != old.digest:
                    what += ", " + ("entries" if stat.S_ISDIR(old.mode) else "content")
                if stat.S_ISDIR(old.mode) and deep is not None and deep.digest != old.digest:
                    added = sorted(set(deep.digest.split("\0")) - set(old.digest.split("\0"))
                                   - {""})
                    for n in added:
                        out.append(Breach("created", os.path.join(rel, n),
                                          f"{n} appeared in the canary directory {rel}"))
                out.append(Breach("written", rel, f"{rel} changed: {what}"))
            elif cur.atime_ns != old.atime_ns:
                out.append(Breach("read", rel, f"{rel} was read: atime "
                                  f"{old.atime_ns} -> {cur.atime_ns}"))
        left = set(moved_to.values())
        for n in new_beside:
            if n in left:
                out.append(Breach("created", n, f"{n} appeared beside the share"))
        return out

    def scan(self, data: bytes) -> Breach | None:
        """A canary's token in ``data`` (a reply), or None."""
        for rel, tok in self.tokens.items():
            if tok in data:
                return Breach("reply", rel, f"a reply carries the token of {rel} "
                              f"(at byte {data.find(tok)})")
        return None

    def normalize(self, data: bytes) -> bytes:
        """``data`` with this base's absolute path replaced by ``$BASE`` (so the same
        symlink in two shares reads the same)."""
        return data.replace(self.base.encode(), b"$BASE")


# -- what programs try ---------------------------------------------------------------------

_RW = os.O_RDWR
# Node ids and handles a program did not get from a reply: small numbers both daemons
# hand out (C: indexes into its inode and fd maps; Rust: counters), and far ones.
_GUESSES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 1 << 32, (1 << 64) - 1)


def escape_request(rng: random.Random) -> tuple[int, Any, int]:
    """One escape attempt for a sequence program, as ``(opcode, body, node)`` (node and
    ``fh`` < 0 are references into what the program got so far, as in :mod:`.sequences`):
    a LOOKUP of :data:`ESCAPE_NAMES` (``..``, absolute names, names with ``/``, the
    symlinks out) from the root or the newest node; OPEN / READ / READLINK / SETATTR /
    GETXATTR of whatever the newest node is (a symlink out after such a LOOKUP); CREATE,
    MKDIR, MKNOD, SYMLINK (pointing out), LINK, RENAME, UNLINK and RMDIR with those names;
    READ / WRITE / GETATTR / RELEASE through a handle or node id of *another* file (an older
    pool entry) or a guessed one."""
    name = rng.choice(ESCAPE_NAMES)
    r = rng.random()
    parent = rng.choice((1, 1, 1, -1, -2))
    if r < 0.25:
        return O.FUSE_LOOKUP, Container(name=name), parent
    if r < 0.32:
        return O.FUSE_OPEN, Container(flags=rng.choice((os.O_RDONLY, _RW, os.O_WRONLY | os.O_APPEND,
                                                        _RW | os.O_TRUNC)), open_flags=0), -1
    if r < 0.36:
        return O.FUSE_READLINK, Container(), -1
    if r < 0.44:  # another file's handle (or a guessed one) with this node, and vice versa
        fh = rng.choice((-2, -3, rng.choice(_GUESSES)))
        node = rng.choice((-1, -2, rng.choice(_GUESSES)))
        if rng.random() < 0.5:
            return O.FUSE_READ, Container(fh=fh, offset=0, size=4096, read_flags=0,
                                          lock_owner=0, flags=0), node
        return O.FUSE_WRITE, Container(fh=fh, offset=0, size=None, write_flags=0,
                                       lock_owner=0, flags=0, data=b"escape"), node
    if r < 0.48:
        return O.FUSE_GETATTR, Container(getattr_flags=rng.choice((0, 1)),
                                         fh=rng.choice((0, -1, -2)), dummy=0), \
            rng.choice((-1, rng.choice(_GUESSES)))
    if r < 0.52:
        return O.FUSE_SETATTR, Container(valid=rng.choice((1 << 3, 1 << 0, (1 << 3) | (1 << 4))),
                                         padding=0, fh=0, size=0, lock_owner=0, atime=0,
                                         mtime=0, ctime=0, atimensec=0, mtimensec=0,
                                         ctimensec=0, mode=0o100777, unused4=0, uid=0, gid=0,
                                         unused5=0), -1
    if r < 0.56:
        return O.FUSE_GETXATTR, Container(size=256, padding=0, name=b"user.x"), -1
    if r < 0.64:
        return O.FUSE_CREATE, Container(flags=_RW | os.O_CREAT, mode=0o100644, umask=0o022,
                                        open_flags=0, name=name), parent
    if r < 0.68:
        return O.FUSE_MKDIR, Container(mode=0o755, umask=0o022, name=name), parent
    if r < 0.72:
        return O.FUSE_MKNOD, Container(mode=0o100644, rdev=0, umask=0o022, name=name), parent
    if r < 0.78:
        return O.FUSE_SYMLINK, Container(name=b"out%d" % rng.randrange(3),
                                         link=rng.choice(SYMLINK_TARGETS)), 1
    if r < 0.83:
        return O.FUSE_LINK, Container(oldnodeid=rng.choice((-1, -2, rng.choice(_GUESSES))),
                                      name=rng.choice((name, b"hard%d" % rng.randrange(2)))), 1
    if r < 0.90:
        old, new = (name, b"moved") if rng.random() < 0.5 else (
            rng.choice((b"escape", b"file", b"dir")), name)
        return O.FUSE_RENAME, Container(newdir=rng.choice((1, -1)), name=old, newname=new), 1
    if r < 0.95:
        return O.FUSE_UNLINK, Container(name=name), parent
    return O.FUSE_RMDIR, Container(name=name), parent
