"""Pure-Python pcap/pcapng container I/O (no scapy): read classic pcap and pcapng, write
classic pcap. Link-type agnostic; the FUSE pseudo-header lives in :mod:`.frames`.

Reading
-------
:func:`read_records` takes a path, ``bytes`` or a binary file object and yields
:class:`PcapRecord` (timestamp in integer nanoseconds, link type, captured bytes,
original length, interface, file offset). The format is recognised by its magic:

* classic pcap: ``a1b2c3d4`` (microsecond) or ``a1b23c4d`` (nanosecond) timestamps, in
  either byte order; the link type is the low 28 bits of the header's ``network`` field
  (the top bits carry FCS information);
* pcapng: Section Header Blocks (either byte order, several sections), Interface
  Description Blocks (``if_tsresol`` and ``if_tsoffset`` are honoured), Enhanced Packet
  Blocks, Simple Packet Blocks and the obsolete Packet Block. Every other block type is
  skipped by its length.

Contract: whatever the bytes, the reader yields records and then either stops or raises
:class:`PcapError` (a :class:`~fuseproto.errors.DecodeError`), with ``offset`` the file
offset of the problem. Every length read from the file is checked against the bytes that
remain (when the source's size is known) and against ``max_caplen`` *before* anything is
read or allocated from it, and every loop advances by at least one header, so a hostile
file can neither exhaust memory nor hang the reader.

Writing
-------
:class:`PcapWriter` writes classic pcap, little-endian, nanosecond magic by default
(``nanosecond=False`` for microseconds), one link type per file.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import DecodeError, LengthMismatchError, LimitExceededError, TruncatedError

__all__ = [
    "DEFAULT_MAX_CAPLEN",
    "FILE_HEADER",
    "RECORD_FIELDS",
    "RECORD_HEADER",
    "PcapError",
    "PcapFormatError",
    "PcapLimitError",
    "PcapRecord",
    "PcapTruncatedError",
    "PcapWriter",
    "field_layout",
    "read_records",
]

# Larger than any FUSE message a kernel sends (max_pages is a u16 of 4 KiB pages, and
# real kernels cap it at FUSE_MAX_MAX_PAGES = 256 -> 1 MiB of data), small enough that a
# lying length cannot make us allocate much.
DEFAULT_MAX_CAPLEN = 16 << 20

# A classic pcap file header (magic, version, zone, sigfigs, snaplen, link type) and
# record header (what PcapWriter writes before each record's bytes).
FILE_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
RECORD_FIELDS = ("ts_sec", "ts_frac", "caplen", "orig_len")

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14


class PcapError(DecodeError):
    """A pcap/pcapng file that cannot be read (``offset`` is the file offset)."""


class PcapFormatError(PcapError):
    """A bad magic, version, block type or field value."""


class PcapTruncatedError(PcapError, TruncatedError):
    """The file ends inside a header, record or block."""


class PcapLimitError(PcapError, LimitExceededError):
    """A record or block length above ``max_caplen`` (an absurd length)."""


class _LengthError(PcapError, LengthMismatchError):
    """Two lengths that must agree do not (a pcapng block's leading and trailing length)."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One captured packet."""

    index: int  # 0-based, in file order, counting packets only
    offset: int  # file offset of the record header / block
    ts_ns: int  # nanoseconds since the epoch (after if_tsoffset)
    linktype: int
    data: bytes  # the captured bytes (``caplen`` of them)
    orig_len: int  # the packet's length on the wire (> len(data) if snaplen cut it)
    interface: int = 0  # pcapng interface id (0 for classic pcap)

    @property
    def time(self) -> float:
        return self.ts_ns / 1e9

    @property
    def truncated(self) -> bool:
        return self.orig_len > len(self.data)


class _Source:
    """A binary stream that reads exactly, knows its offset and (if it can) its size."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.pos = 0
        self.size: int | None = None
        try:
            if f.seekable():
                here = f.tell()
                self.size = f.seek(0, os.SEEK_END)
                f.seek(here)
                self.pos = here
        except (OSError, ValueError):
            self.size = None

    def left(self) -> int | None:
        return None if self.size is None else self.size - self.pos

    def read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes; raises PcapTruncatedError without reading if they can't be."""
        left = self.left()
        if left is not None and n > left:
            raise PcapTruncatedError(
                f"{what} needs {n} bytes, {left} left in the file", offset=self.pos, path=what
            )
        b = self.f.read(n)
        if len(b) != n:
            raise PcapTruncatedError(
                f"{what} needs {n} bytes, the file ends after {len(b)}", offset=self.pos, path=what
            )
        self.pos += n
        return b

    def at_eof(self) -> bool:
        left = self.left()
        if left is not None:
            return left <= 0
        peek = getattr(self.f, "peek", None)
        if peek is None:
            raise AssertionError("unseekable sources are wrapped in a BufferedReader")
        return not peek(1)


def read_records(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    *,
    max_caplen: int = DEFAULT_MAX_CAPLEN,
) -> Iterator[PcapRecord]:
    """Yield the packets of a classic pcap or pcapng file (see the module docstring)."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield from _read_stream(_Source(io.BytesIO(bytes(source))), max_caplen)
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield from _read_stream(_Source(f), max_caplen)
    else:
        stream: BinaryIO = source
        try:
            seekable = stream.seekable()
        except (AttributeError, OSError, ValueError):
            seekable = False
        if not seekable and not hasattr(stream, "peek"):
            # A pipe or socket file: raw reads with readinto(), which BinaryIO's type
            # does not declare.
            stream = io.BufferedReader(stream)  # type: ignore[type-var]
        yield from _read_stream(_Source(stream), max_caplen)


def _read_stream(src: _Source, max_caplen: int) -> Iterator[PcapRecord]:
    start = src.pos
    head = src.read(4, "magic")
    (le,) = struct.unpack("<I", head)
    (be,) = struct.unpack(">I", head)
    if le == _PCAPNG_SHB:
        yield from _read_pcapng(src, head, max_caplen)
    elif le in (_MAGIC_US, _MAGIC_NS):
        yield from _read_classic(src, "<", le == _MAGIC_NS, max_caplen)
    elif be in (_MAGIC_US, _MAGIC_NS):
        yield from _read_classic(src, ">", be == _MAGIC_NS, max_caplen)
    else:
        raise PcapFormatError(
            f"not a pcap or pcapng file (magic {head.hex()})", offset=start, path="magic"
        )


# --- classic pcap ------------------------------------------------------------------------


def _read_classic(src: _Source, bo: str, nano: bool, max_caplen: int) -> Iterator[PcapRecord]:
    hdr_off = src.pos
    major, minor, _zone, _sigfigs, _snaplen, network = struct.unpack(
        bo + "HHiIII", src.read(20, "pcap header")
    )
    if major != 2:
        raise PcapFormatError(
            f"pcap version {major}.{minor} (only 2.x exists)", offset=hdr_off, path="version"
        )
    linktype = network & 0x0FFFFFFF
    rec = struct.Struct(bo + "IIII")
    scale = 1 if nano else 1000
    index = 0
    while not src.at_eof():
        off = src.pos
        sec, frac, caplen, orig_len = rec.unpack(src.read(16, "record header"))
        if caplen > max_caplen:
            raise PcapLimitError(
                f"record caplen {caplen} above the limit {max_caplen}", offset=off, path="caplen"
            )
        if frac >= 1_000_000_000 // scale:
            raise PcapFormatError(
                f"timestamp fraction {frac} out of range", offset=off + 4, path="ts_frac"
            )
        data = src.read(caplen, "record data")
        yield PcapRecord(index, off, sec * 1_000_000_000 + frac * scale, linktype, data, orig_len)
        index += 1


# --- pcapng ------------------------------------------------------------------------------


@dataclass
class _Iface:
    linktype: int
    snaplen: int
    tsresol: int = 6  # if_tsresol: 10^-6 unless told otherwise
    tsbase2: bool = False  # if_tsresol with the top bit set: 2^-n
    tsoffset: int = 0  # seconds

    def ts_ns(self, units: int) -> int:
        if self.tsbase2:
            ns = (units * 1_000_000_000) >> self.tsresol
        elif self.tsresol <= 9:
            ns = units * 10 ** (9 - self.tsresol)
        else:
            ns = units // 10 ** (self.tsresol - 9)
        return ns + self.tsoffset * 1_000_000_000


def _read_pcapng(src: _Source, first: bytes, max_caplen: int) -> Iterator[PcapRecord]:
    bo = "<"
    ifaces: list[_Iface] = []
    index = 0
    pending: bytes | None = first  # the block type already read, for the first block
    # A block is at least 12 bytes (type, length, trailing length), so every iteration
    # consumes >= 12 bytes: no hang.
    max_block = max_caplen + 64 * 1024
    while pending is not None or not src.at_eof():
        off = src.pos - (4 if pending is not None else 0)
        raw_type = pending if pending is not None else src.read(4, "block type")
        pending = None
        raw_len = src.read(4, "block length")
        if struct.unpack("<I", raw_type)[0] == _PCAPNG_SHB:
            # The byte order of a section is given by its SHB's byte-order magic.
            bom_raw = src.read(4, "byte-order magic")
            if struct.unpack("<I", bom_raw)[0] == _PCAPNG_BOM:
                bo = "<"
            elif struct.unpack(">I", bom_raw)[0] == _PCAPNG_BOM:
                bo = ">"
            else:
                raise PcapFormatError(
                    f"bad section byte-order magic {bom_raw.hex()}", offset=off + 8, path="shb.bom"
                )
            (length,) = struct.unpack(bo + "I", raw_len)
            _check_block_len(length, 28, max_block, off)
            body = bom_raw + src.read(length - 12 - 4, "section header block")
            major, _minor = struct.unpack_from(bo + "HH", body, 4)
            if major != 1:
                raise PcapFormatError(
                    f"pcapng version {major} (only 1.x exists)", offset=off + 12, path="shb.version"
                )
            ifaces = []
        else:
            (btype,) = struct.unpack(bo + "I", raw_type)
            (length,) = struct.unpack(bo + "I", raw_len)
            _check_block_len(length, 12, max_block, off)
            body = src.read(length - 12, "block body")
            if btype == _IDB:
                ifaces.append(_parse_idb(body, bo, off))
            elif btype in (_EPB, _PB, _SPB):
                yield _parse_packet(btype, body, bo, off, ifaces, index, max_caplen)
                index += 1
            # Any other block (name resolution, statistics, custom ...) is skipped.
        (trailer,) = struct.unpack(bo + "I", src.read(4, "block trailing length"))
        if trailer != length:
            raise _LengthError(
                f"block length {length} but trailing length {trailer}",
                offset=src.pos - 4,
                path="block.trailing_length",
            )


def _check_block_len(length: int, minimum: int, max_block: int, off: int) -> None:
    if length % 4 or length < minimum:
        raise PcapFormatError(
            f"block length {length} (must be a multiple of 4, at least {minimum})",
            offset=off + 4,
            path="block.length",
        )
    if length > max_block:
        raise PcapLimitError(
            f"block length {length} above the limit {max_block}",
            offset=off + 4,
            path="block.length",
        )


def _options(body: bytes, pos: int, bo: str, off: int) -> Iterator[tuple[int, bytes]]:
    while pos + 4 <= len(body):
        code, n = struct.unpack_from(bo + "HH", body, pos)
        pos += 4
        if code == 0:  # opt_endofopt
            return
        if pos + n > len(body):
            raise PcapTruncatedError(
                f"option {code} of {n} bytes runs past its block",
                offset=off + 8 + pos,
                path="option",
            )
        yield code, body[pos : pos + n]
        pos += (n + 3) & ~3


def _parse_idb(body: bytes, bo: str, off: int) -> _Iface:
    if len(body) < 8:
        raise PcapTruncatedError("interface description block too short", offset=off, path="idb")
    linktype, _reserved, snaplen = struct.unpack_from(bo + "HHI", body, 0)
    iface = _Iface(linktype, snaplen)
    for code, value in _options(body, 8, bo, off):
        if code == _OPT_TSRESOL and len(value) >= 1:
            iface.tsbase2 = bool(value[0] & 0x80)
            iface.tsresol = value[0] & 0x7F
        elif code == _OPT_TSOFFSET and len(value) >= 8:
            (iface.tsoffset,) = struct.unpack(bo + "q", value[:8])
    return iface


def _iface(ifaces: list[_Iface], i: int, off: int) -> _Iface:
    if i >= len(ifaces):
        raise PcapFormatError(
            f"packet on interface {i}, but only {len(ifaces)} interface(s) described",
            offset=off + 8,
            path="interface_id",
        )
    return ifaces[i]


def _parse_packet(
    btype: int,
    body: bytes,
    bo: str,
    off: int,
    ifaces: list[_Iface],
    index: int,
    max_caplen: int,
) -> PcapRecord:
    if btype == _SPB:
        if len(body) < 4:
            raise PcapTruncatedError("simple packet block too short", offset=off, path="spb")
        iface = _iface(ifaces, 0, off)
        (orig_len,) = struct.unpack_from(bo + "I", body, 0)
        caplen = min(orig_len, len(body) - 4)
        if iface.snaplen:
            caplen = min(caplen, iface.snaplen)
        return PcapRecord(index, off, 0, iface.linktype, body[4 : 4 + caplen], orig_len, 0)
    if len(body) < 20:
        raise PcapTruncatedError("packet block too short", offset=off, path="epb")
    if btype == _EPB:
        iid, hi, lo, caplen, orig_len = struct.unpack_from(bo + "IIIII", body, 0)
    else:  # obsolete Packet Block: interface id is 16 bits, then a drops count
        iid, _drops, hi, lo, caplen, orig_len = struct.unpack_from(bo + "HHIIII", body, 0)
    if caplen > max_caplen:
        raise PcapLimitError(
            f"packet caplen {caplen} above the limit {max_caplen}", offset=off + 20, path="caplen"
        )
    if caplen > len(body) - 20:
        raise PcapTruncatedError(
            f"caplen {caplen} runs past its block ({len(body) - 20} bytes)",
            offset=off + 20,
            path="caplen",
        )
    iface = _iface(ifaces, iid, off)
    ts = iface.ts_ns((hi << 32) | lo)
    return PcapRecord(index, off, ts, iface.linktype, body[20 : 20 + caplen], orig_len, iid)


# --- writing -----------------------------------------------------------------------------


def field_layout(st: struct.Struct, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """``{name: (offset, size)}`` of the fields of a standard-size (``<``/``>``/``=``/``!``)
    struct format without repeat counts, one name per field in order: for code that fills
    such a header itself (the capture proxy's relay) and must not lay it out again."""
    fmt = st.format
    order, codes = fmt[0], fmt[1:]
    if order not in "<>=!" or len(codes) != len(names) or not codes.isalpha():
        raise ValueError(f"format {fmt!r} does not name {len(names)} fields")
    out: dict[str, tuple[int, int]] = {}
    off = 0
    for name, code in zip(names, codes, strict=True):
        size = struct.calcsize(order + code)
        out[name] = (off, size)
        off += size
    return out


class PcapWriter:
    """Write a classic pcap file of one link type.

    ``dest`` is a path (created/truncated) or a writable binary file object (not closed
    by :meth:`close` unless ``close_dest=True``). Records longer than ``snaplen`` are cut
    to ``snaplen`` bytes with their original length kept, as pcap does. ``header=False``
    appends records to a file whose header is already written (same settings).
    """

    def __init__(
        self,
        dest: str | os.PathLike[str] | BinaryIO,
        linktype: int,
        *,
        snaplen: int = DEFAULT_MAX_CAPLEN,
        nanosecond: bool = True,
        close_dest: bool | None = None,
        header: bool = True,
    ):
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise ValueError("snaplen must be 1..2**32-1")
        if isinstance(dest, str | os.PathLike):
            self._f: BinaryIO = open(dest, "wb")  # noqa: SIM115 -- closed by close()
            self._close = True if close_dest is None else close_dest
        else:
            self._f = dest
            self._close = bool(close_dest)
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self._rec = RECORD_HEADER
        magic = _MAGIC_NS if nanosecond else _MAGIC_US
        if header:
            self._f.write(FILE_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype))
        self.count = 0

    def write(self, data: bytes, ts_ns: int, *, orig_len: int | None = None) -> None:
        """Append one record captured at ``ts_ns`` (nanoseconds since the epoch).
        ``orig_len``: the packet's length on the wire when ``data`` is only its first
        bytes (a recorder that never read the rest)."""
        sec, ns = divmod(int(ts_ns), 1_000_000_000)
        frac = ns if self.nanosecond else ns // 1000
        cap = bytes(data[: self.snaplen])
        orig = len(data) if orig_len is None else max(orig_len, len(data))
        self._f.write(self._rec.pack(sec & 0xFFFFFFFF, frac, len(cap), orig) + cap)
        self.count += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._close:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
