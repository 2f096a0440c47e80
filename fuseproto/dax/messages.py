"""The two DAX messages a manager sends to a window device, built through the codec.

A manager never packs bytes itself: it builds a :class:`DaxMessage` (opcode, node id,
body as the codec's ``Container``) and the bytes are produced by
``fuseproto.wire.codec.encode_request`` the first time someone asks for ``.raw``. Devices
that work on bytes (model, mmap, virtiofsd) decode ``.raw`` with ``decode_request``, so
every message the reference managers send is also a codec round trip. The simulator's
counting device reads the fields directly and never pays for encoding.

Shapes (docs/CONTRACTS.md): SETUPMAPPING body ``Container(fh, foffset, len, flags,
moffset)``; REMOVEMAPPING body ``Container(count, entries=[Container(moffset, len)])``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from construct import Container, ListContainer

from fuseproto.wire.constants import (
    FUSE_REMOVEMAPPING_MAX_ENTRY,
    SetupmappingFlags,
    fuse_opcode,
)

FUSE_SETUPMAPPING = fuse_opcode.FUSE_SETUPMAPPING
FUSE_REMOVEMAPPING = fuse_opcode.FUSE_REMOVEMAPPING
FLAG_WRITE = int(SetupmappingFlags.FUSE_SETUPMAPPING_FLAG_WRITE)
FLAG_READ = int(SetupmappingFlags.FUSE_SETUPMAPPING_FLAG_READ)
# Linux sends fh = -1 ("no file handle": the daemon maps by node id). fs/fuse/dax.c
FH_NONE = 0xFFFF_FFFF_FFFF_FFFF
REMOVEMAPPING_MAX_ENTRY = FUSE_REMOVEMAPPING_MAX_ENTRY

__all__ = [
    "DaxMessage",
    "FH_NONE",
    "FLAG_READ",
    "FLAG_WRITE",
    "FUSE_REMOVEMAPPING",
    "FUSE_SETUPMAPPING",
    "REMOVEMAPPING_MAX_ENTRY",
    "removemapping",
    "setupmapping",
]


@dataclass(slots=True, eq=False)
class DaxMessage:
    """One SETUPMAPPING or REMOVEMAPPING request, as a manager sends it.

    ``raw`` is the wire form, encoded lazily through the codec (or given, for a message
    taken from a captured trace). ``sender`` names the manager (mount) that sent it, so
    the checks can tell two managers of one window apart.
    """

    opcode: int
    nodeid: int
    body: Any
    unique: int = 0
    sender: str = ""
    _raw: bytes | None = field(default=None, repr=False)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            from fuseproto.wire import codec

            self._raw = codec.encode_request(
                self.opcode, self.body, unique=self.unique, nodeid=self.nodeid
            )
        return self._raw

    @property
    def encoded(self) -> bytes | None:
        """The wire bytes if already known (given, or encoded by an earlier ``.raw``),
        else None: never encodes (a report keeps what exists without paying for, or
        failing on, encoding a deliberately broken message)."""
        return self._raw

    def ranges(self) -> list[tuple[int, int]]:
        """The window ranges ``(moffset, len)`` the message touches."""
        # item access: a Container's attributes go through Python code, its items do not
        if self.opcode == FUSE_SETUPMAPPING:
            return [(self.body["moffset"], self.body["len"])]
        if self.opcode == FUSE_REMOVEMAPPING:
            return [(e["moffset"], e["len"]) for e in self.body["entries"]]
        return []

    def describe(self) -> str:
        if self.opcode == FUSE_SETUPMAPPING:
            b = self.body
            return (
                f"SETUPMAPPING(nodeid={self.nodeid}, fh={b.fh:#x}, foffset={b.foffset:#x}, "
                f"len={b.len:#x}, flags={b.flags:#x}, moffset={b.moffset:#x})"
            )
        if self.opcode == FUSE_REMOVEMAPPING:
            ents = ", ".join(f"({e.moffset:#x}, {e.len:#x})" for e in self.body.entries)
            return f"REMOVEMAPPING(nodeid={self.nodeid}, count={self.body.count}, [{ents}])"
        return f"opcode {self.opcode} (nodeid={self.nodeid})"

    @classmethod
    def from_request(cls, request: Any, sender: str = "") -> DaxMessage:
        """Wrap a decoded ``codec.Request`` (e.g. from a captured trace)."""
        return cls(
            opcode=request.opcode,
            nodeid=request.nodeid,
            body=request.body,
            unique=request.unique,
            sender=sender,
            _raw=request.raw,
        )

    @classmethod
    def from_bytes(cls, data: bytes, sender: str = "") -> DaxMessage:
        from fuseproto.wire import codec

        return cls.from_request(codec.decode_request(data), sender=sender)


def setupmapping(
    nodeid: int,
    *,
    fh: int,
    foffset: int,
    length: int,
    flags: int,
    moffset: int,
    unique: int = 0,
    sender: str = "",
) -> DaxMessage:
    body = Container(fh=fh, foffset=foffset, len=length, flags=flags, moffset=moffset)
    return DaxMessage(FUSE_SETUPMAPPING, nodeid, body, unique, sender)


def removemapping(
    nodeid: int,
    entries: Iterable[tuple[int, int]] | Sequence[tuple[int, int]],
    *,
    unique: int = 0,
    sender: str = "",
    count: int | None = None,
) -> DaxMessage:
    """``entries`` are ``(moffset, len)``; ``count`` forces fuse_removemapping_in.count
    (only for building deliberately broken messages in tests and fuzzers)."""
    ents = ListContainer([Container(moffset=m, len=n) for m, n in entries])
    body = Container(count=len(ents) if count is None else count, entries=ents)
    return DaxMessage(FUSE_REMOVEMAPPING, nodeid, body, unique, sender)
