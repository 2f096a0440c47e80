"""Initramfs archives written directly: the "new" (SVR4, ``070701``) cpio format.

The kernel unpacks such an archive into its root file system before running ``/init``
(Documentation/driver-api/early-userspace/buffer-format.rst), and unpacks archives that
follow each other in one initrd file one after the other. So the cached base image (busybox,
modules, ``/init``) and a small per-run archive (the workload) are simply concatenated.

Writing the format here needs no ``cpio`` tool and no root: device nodes such as
``/dev/console`` are entries like any other.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``path`` without a leading ``/``; ``mode`` includes the file
    type bits (``stat.S_IFREG | 0o755``); ``data`` is a file's content or a symlink's
    target; ``rdev`` is a device node's (major, minor)."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> Entry:
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return cls(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name) + 1, 0,
    )
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def cpio_newc(entries: Iterable[Entry], *, first_ino: int = 1) -> bytes:
    """The archive holding ``entries`` in order (parents before children), then the
    trailer. Every member has one link, so inode numbers only need to differ within the
    archive (the kernel pairs hard links by them, nothing else)."""
    out = bytearray()
    ino = first_ino
    for entry in [*entries, Entry(TRAILER, 0)]:
        name = entry.path.lstrip("/").encode()
        head = _header(ino if entry.path != TRAILER else 0, entry, name)
        out += head + name + b"\0"
        out += _pad4(len(head) + len(name) + 1)
        out += entry.data + _pad4(len(entry.data))
        ino += 1
    return bytes(out)


def parse_newc(data: bytes) -> list[Entry]:
    """Read an archive written by :func:`cpio_newc` (or several concatenated) back into
    entries, trailers left out; checks the format as it goes (used by the tests and by
    ``fuseproto guest setup`` to describe the cached image)."""
    entries: list[Entry] = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 6] != MAGIC:
            if not data[pos:].strip(b"\0"):
                break  # padding after the last trailer
            raise ValueError(f"no cpio newc header at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_at = pos + 110
        name = data[name_at:name_at + namesize - 1].decode()
        body_at = name_at + namesize + (-(110 + namesize) % 4)
        body = data[body_at:body_at + size]
        if len(body) != size:
            raise ValueError(f"{name}: truncated ({len(body)} of {size} bytes)")
        pos = body_at + size + (-size % 4)
        if name != TRAILER:
            entries.append(Entry(name, mode, body, (rmaj, rmin)))
    return entries
