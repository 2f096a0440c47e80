"""Host safety for the live-daemon fuzzers: :func:`sanitize` defuses a request's bytes.

The daemons run as root and serve a scratch directory. :func:`sanitize` rewrites, at the
byte level (so it also holds for requests our codec would reject), the few fields that
could reach outside that directory's contents: MKNOD never creates a device node or FIFO
(a block device node plus WRITE could reach a host disk; opening a FIFO blocks by
design), and FALLOCATE / COPY_FILE_RANGE lengths and offsets are capped so the disk
cannot be filled. The rest of the protection is the daemon's chroot sandbox
(:class:`~fuseproto.fuzz.harness.SandboxedDaemon`) and that all traffic is a UNIX socket
and shared memory on this machine.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire import structs
from ..wire.constants import fuse_opcode as _OP

__all__ = ["sanitize", "FILE_BYTES_CAP"]

_IN = structs.FAST["fuse_in_header"]
_S_IFMT, _S_IFREG, _S_IFCHR, _S_IFBLK, _S_IFIFO = 0o170000, 0o100000, 0o020000, 0o060000, 0o010000
#: FALLOCATE / COPY_FILE_RANGE bytes and offsets are taken modulo this.
FILE_BYTES_CAP = 64 << 20


def _cap(v: int) -> int:
    return v % FILE_BYTES_CAP


def _regular_mode(m: int) -> int:
    return (m & ~_S_IFMT) | _S_IFREG if (m & _S_IFMT) in (_S_IFCHR, _S_IFBLK, _S_IFIFO) else m


# opcode -> (the struct right after fuse_in_header, {field: fixer})
_RULES: dict[int, tuple[str, dict[str, Callable[[int], int]]]] = {
    _OP.FUSE_MKNOD: ("fuse_mknod_in", {"mode": _regular_mode, "rdev": lambda r: 0}),
    _OP.FUSE_FALLOCATE: ("fuse_fallocate_in", {"offset": _cap, "length": _cap}),
    _OP.FUSE_COPY_FILE_RANGE: ("fuse_copy_file_range_in",
                               {"off_in": _cap, "off_out": _cap, "len": _cap}),
    _OP.FUSE_COPY_FILE_RANGE_64: ("fuse_copy_file_range_in",
                                  {"off_in": _cap, "off_out": _cap, "len": _cap}),
}


def sanitize(data: bytes) -> bytes:
    """``data`` with the host-harming fields defused (see the module docstring)."""
    if len(data) < _IN.size:
        return data
    rule = _RULES.get(_IN.parse(data, 0)["opcode"])
    if rule is None:
        return data
    name, fixers = rule
    fl = structs.FAST[name]
    if len(data) < _IN.size + fl.size:
        return data
    body = dict(fl.parse(data, _IN.size))
    for k, fix in fixers.items():
        body[k] = fix(body[k])
    return data[:_IN.size] + fl.build(body) + data[_IN.size + fl.size:]
