"""FUSE captures: pcap/pcapng I/O, the recorder (transport tap), capture decoding.

Pure Python; scapy is needed only by :mod:`fuseproto.capture.scapy_layers`, which is not
imported here (``import fuseproto.capture`` works without scapy). The file format is
described in :mod:`fuseproto.capture.frames` and ``docs/capture.md``.
"""

from __future__ import annotations

from .dissect import CapturedMessage, CaptureSummary, decode_capture, decode_message
from .frames import (
    LINKTYPE_FUSE,
    LINKTYPE_USER0,
    CaptureRecorder,
    Direction,
    Frame,
    FrameError,
    pack_frame,
    unpack_frame,
)
from .pcap import (
    PcapError,
    PcapFormatError,
    PcapLimitError,
    PcapRecord,
    PcapTruncatedError,
    PcapWriter,
    read_records,
)

__all__ = [
    "LINKTYPE_FUSE",
    "LINKTYPE_USER0",
    "CaptureRecorder",
    "CaptureSummary",
    "CapturedMessage",
    "Direction",
    "Frame",
    "FrameError",
    "PcapError",
    "PcapFormatError",
    "PcapLimitError",
    "PcapRecord",
    "PcapTruncatedError",
    "PcapWriter",
    "decode_capture",
    "decode_message",
    "pack_frame",
    "read_records",
    "unpack_frame",
]
