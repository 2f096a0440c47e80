"""fuseproto's pcap link type for FUSE: a 16-byte pseudo-header, then one FUSE message.

There is no registered link type for FUSE, so captures use a DLT_USER type,
``LINKTYPE_USER0`` (147) unless told otherwise (every reader and writer here takes a
``linktype``; the scapy layers register for whichever one you pass). Each packet is::

    offset size  field      (all little-endian)
      0     1    version    FRAME_VERSION (1)
      1     1    direction  0 REQUEST      to the daemon (fuse_in_header ...)
                            1 REPLY        from the daemon (fuse_out_header, unique != 0)
                            2 NOTIFICATION from the daemon (fuse_out_header, unique 0)
                            3 ANNOTATION   not a FUSE message: UTF-8 text from the
                                           recorder (what the recording proxy saw but could
                                           not parse, backend-channel messages, ...)
      2     2    queue      virtqueue index the message used (0 hiprio, 1.. request
                            queues; /dev/fuse captures use 0)
      4     1    flags      bit 0 OPCODE_VALID: ``opcode`` holds the opcode of the
                                  request this reply answers (for a request: its own)
                            bit 1 MINOR_VALID: ``minor`` is the negotiated protocol minor
                            bit 2 INJECTED: written by a fuzzer, malformed on purpose
                            other bits reserved, 0
      5     1    minor      protocol minor in force (when MINOR_VALID)
      6     2    reserved   0
      8     4    opcode     see OPCODE_VALID
     12     4    reserved   0
     16     ...  the FUSE message, byte for byte as on the wire

The ``opcode``/``minor`` hints exist for stateless dissectors (scapy, Wireshark): a
reply's body layout depends on its request's opcode, which the reply does not carry.
:func:`fuseproto.capture.decode_capture` does not need them (it pairs replies through a
:class:`~fuseproto.session.Session`); it uses them only with ``pair=False``.

The recorder
------------
:class:`CaptureRecorder` is the tap a transport calls for every message it moves::

    rec = CaptureRecorder("session.pcap")
    transport = SomeTransport(..., tap=rec)      # transport calls
    rec(Direction.REQUEST, queue, request_bytes)  # on submit
    rec(Direction.REPLY, queue, reply_bytes)      # when the reply arrives
    rec.close()

``tap(direction, queue, data, timestamp_ns=None)``: ``timestamp_ns`` defaults to
``time.time_ns()``. The recorder never parses beyond the fixed header fields
(``opcode``/``unique`` of a request, ``unique`` of a reply) to fill the opcode hint, never
raises on malformed messages, is thread-safe, and remembers at most ``max_pending``
uniques.
"""

from __future__ import annotations

import enum
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import DecodeError, TruncatedError
from ..wire import structs
from .pcap import DEFAULT_MAX_CAPLEN, PcapWriter

__all__ = [
    "FLAG_INJECTED",
    "FLAG_MINOR_VALID",
    "FLAG_OPCODE_VALID",
    "FRAME_FIELDS",
    "FRAME_HEADER",
    "FRAME_VERSION",
    "LINKTYPE_FUSE",
    "LINKTYPE_USER0",
    "CaptureRecorder",
    "Direction",
    "Frame",
    "FrameError",
    "pack_frame",
    "unpack_frame",
]

LINKTYPE_USER0 = 147  # DLT_USER0..DLT_USER15 are 147..162, reserved for private use
LINKTYPE_FUSE = LINKTYPE_USER0
FRAME_VERSION = 1
FRAME_HEADER = struct.Struct("<BBHBBHII")
FRAME_FIELDS = ("version", "direction", "queue", "flags", "minor", "reserved1", "opcode",
                "reserved2")
FLAG_OPCODE_VALID = 0x01
FLAG_MINOR_VALID = 0x02
FLAG_INJECTED = 0x04


class Direction(enum.IntEnum):
    REQUEST = 0
    REPLY = 1
    NOTIFICATION = 2
    ANNOTATION = 3


class FrameError(DecodeError):
    """A capture record whose pseudo-header is missing or invalid."""


class _FrameTruncated(FrameError, TruncatedError):
    pass


@dataclass(frozen=True, slots=True)
class Frame:
    """One unpacked capture record: the pseudo-header's fields and the FUSE message."""

    direction: Direction | int
    queue: int
    data: bytes
    flags: int = 0
    minor: int = 0
    opcode: int = 0

    @property
    def opcode_hint(self) -> int | None:
        return self.opcode if self.flags & FLAG_OPCODE_VALID else None

    @property
    def minor_hint(self) -> int | None:
        return self.minor if self.flags & FLAG_MINOR_VALID else None


def pack_frame(
    direction: int,
    queue: int,
    data: bytes,
    *,
    opcode: int | None = None,
    minor: int | None = None,
    injected: bool = False,
) -> bytes:
    """The pseudo-header and ``data`` as one capture record."""
    flags = (
        (FLAG_OPCODE_VALID if opcode is not None else 0)
        | (FLAG_MINOR_VALID if minor is not None else 0)
        | (FLAG_INJECTED if injected else 0)
    )
    hdr = FRAME_HEADER.pack(
        FRAME_VERSION,
        int(direction),
        queue & 0xFFFF,
        flags,
        (minor or 0) & 0xFF,
        0,
        (opcode or 0) & 0xFFFFFFFF,
        0,
    )
    return hdr + bytes(data)


def unpack_frame(record: bytes) -> Frame:
    """Split a capture record; raises :class:`FrameError` if the pseudo-header is bad."""
    n = FRAME_HEADER.size
    if len(record) < n:
        raise _FrameTruncated(
            f"{len(record)} bytes, the capture pseudo-header needs {n}",
            offset=len(record),
            path="capture.header",
        )
    version, direction, queue, flags, minor, _r1, opcode, _r2 = FRAME_HEADER.unpack_from(record)
    if version != FRAME_VERSION:
        raise FrameError(
            f"capture pseudo-header version {version} (expected {FRAME_VERSION})",
            offset=0,
            path="capture.version",
        )
    try:
        d: Direction | int = Direction(direction)
    except ValueError:
        raise FrameError(
            f"capture direction {direction} is not 0, 1, 2 or 3", offset=1,
            path="capture.direction"
        ) from None
    return Frame(d, queue, record[n:], flags, minor, opcode)


_IN = structs.FAST["fuse_in_header"]
_OUT = structs.FAST["fuse_out_header"]
# Positions of the hint fields in the schema's own fast layouts (no second layout here).
_IN_OPCODE = _IN.fields.index("opcode")
_IN_UNIQUE = _IN.fields.index("unique")
_OUT_UNIQUE = _OUT.fields.index("unique")


class CaptureRecorder:
    """Record FUSE messages to a pcap file; call it as ``tap(direction, queue, data)``.

    ``minor`` (if known) is written into every record's MINOR hint; set the attribute
    later when INIT has been negotiated. See the module docstring.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str] | BinaryIO,
        *,
        linktype: int = LINKTYPE_FUSE,
        snaplen: int = DEFAULT_MAX_CAPLEN,
        minor: int | None = None,
        max_pending: int = 4096,
        clock: object = time.time_ns,
        header: bool = True,
    ):
        # header=False: append to a capture whose file header is written already.
        self._writer = PcapWriter(dest, linktype, snaplen=snaplen + FRAME_HEADER.size,
                                  header=header)
        self._lock = threading.Lock()
        self._opcodes: OrderedDict[int, int] = OrderedDict()
        self.max_pending = max_pending
        self.minor = minor
        self._clock = clock
        self.closed = False

    @property
    def count(self) -> int:
        return self._writer.count

    def __call__(
        self,
        direction: int,
        queue: int,
        data: bytes,
        timestamp_ns: int | None = None,
        *,
        injected: bool = False,
        orig_len: int | None = None,
    ) -> None:
        """``orig_len``: the message's whole length when ``data`` is only its first bytes
        (the record is then cut, as a snaplen cuts it)."""
        ts = self._clock() if timestamp_ns is None else timestamp_ns  # type: ignore[operator]
        data = bytes(data)
        with self._lock:
            if self.closed:
                return
            opcode = self._hint(int(direction), data)
            rec = pack_frame(
                direction, queue, data, opcode=opcode, minor=self.minor, injected=injected
            )
            self._writer.write(rec, ts, orig_len=None if orig_len is None
                               else FRAME_HEADER.size + orig_len)

    record = __call__

    def annotate(self, queue: int, text: str, timestamp_ns: int | None = None) -> None:
        """Write an ANNOTATION record (UTF-8 ``text``, minor hint as for messages): what a
        recorder saw that is not a FUSE message, or could not read as one."""
        ts = self._clock() if timestamp_ns is None else timestamp_ns  # type: ignore[operator]
        with self._lock:
            if not self.closed:
                rec = pack_frame(Direction.ANNOTATION, queue, text.encode("utf-8", "replace"),
                                 minor=self.minor)
                self._writer.write(rec, ts)

    def write_frame(self, frame: bytes, timestamp_ns: int) -> None:
        """Write one record's bytes exactly as given (pseudo-header included, nothing
        checked or hinted): for sample files that hold a deliberately broken frame."""
        with self._lock:
            if not self.closed:
                self._writer.write(frame, timestamp_ns)

    def _hint(self, direction: int, data: bytes) -> int | None:
        if direction == Direction.REQUEST:
            if len(data) < _IN.size:
                return None
            values = _IN.struct.unpack_from(data)
            opcode: int = values[_IN_OPCODE]
            unique = values[_IN_UNIQUE]
            self._opcodes[unique] = opcode
            self._opcodes.move_to_end(unique)
            while len(self._opcodes) > self.max_pending:
                self._opcodes.popitem(last=False)
            return opcode
        if len(data) < _OUT.size:
            return None
        unique = _OUT.struct.unpack_from(data)[_OUT_UNIQUE]
        if unique == 0:
            return None
        return self._opcodes.pop(unique, None)

    def flush(self) -> None:
        with self._lock:
            self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._writer.close()

    def __enter__(self) -> CaptureRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
