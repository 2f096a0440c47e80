"""pcap/pcapng container I/O: roundtrip, hand-built files, corrupt files -> typed errors."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseproto.capture import (
    LINKTYPE_FUSE,
    PcapFormatError,
    PcapLimitError,
    PcapTruncatedError,
    PcapWriter,
    read_records,
)
from fuseproto.capture.pcap import PcapError
from fuseproto.errors import DecodeError, LimitExceededError, TruncatedError

T0 = 1_700_000_000_123_456_789


def classic(bo: str = "<", nano: bool = True, records=((T0, b"abc"),), linktype=147) -> bytes:
    """A classic pcap built field by field (independent of PcapWriter)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, data in records:
        sec, ns = divmod(ts, 10**9)
        frac = ns if nano else ns // 1000
        out += struct.pack(bo + "IIII", sec, frac, len(data), len(data)) + data
    return out


def block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def option(bo: str, code: int, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(bo: str) -> bytes:
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += option(bo, 14, struct.pack(bo + "q", tsoffset))
    if opts:
        opts += option(bo, 0, b"")
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, 0) + opts)


def epb(bo: str, iface: int, units: int, data: bytes, orig: int | None = None) -> bytes:
    hdr = struct.pack(
        bo + "IIIII",
        iface,
        units >> 32,
        units & 0xFFFFFFFF,
        len(data),
        len(data) if orig is None else orig,
    )
    return block(bo, 6, hdr + data)


def spb(bo: str, data: bytes) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", len(data)) + data)


# --- classic ------------------------------------------------------------------------------


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("nano", [True, False])
def test_classic_both_byte_orders_and_resolutions(bo, nano):
    data = classic(bo, nano, [(T0, b"one"), (T0 + 1000, b""), (T0 + 2000, b"three")])
    recs = list(read_records(data))
    assert [r.data for r in recs] == [b"one", b"", b"three"]
    want = T0 if nano else T0 // 1000 * 1000
    assert recs[0].ts_ns == want
    assert [r.index for r in recs] == [0, 1, 2]
    assert recs[0].offset == 24 and recs[1].offset == 24 + 16 + 3
    assert {r.linktype for r in recs} == {147}


@pytest.mark.parametrize("nano", [True, False])
def test_writer_roundtrip(tmp_path, nano):
    path = tmp_path / "w.pcap"
    msgs = [(T0 + i * 1000, bytes([i]) * i) for i in range(20)]
    with PcapWriter(path, LINKTYPE_FUSE, nanosecond=nano) as w:
        for ts, d in msgs:
            w.write(d, ts)
    written = path.read_bytes()
    assert written[24:] == classic("<", nano, msgs)[24:]
    assert struct.unpack_from("<HHiII", written, 4) == (2, 4, 0, 0, 16 << 20)
    assert struct.unpack_from("<I", written, 20)[0] == LINKTYPE_FUSE
    recs = list(read_records(path))
    assert [(r.ts_ns, r.data) for r in recs] == [
        (ts if nano else ts // 1000 * 1000, d) for ts, d in msgs
    ]


def test_writer_snaplen_keeps_original_length():
    buf = io.BytesIO()
    w = PcapWriter(buf, 147, snaplen=4)
    w.write(b"0123456789", T0)
    w.close()
    (r,) = read_records(buf.getvalue())
    assert r.data == b"0123" and r.orig_len == 10 and r.truncated


def test_reads_file_objects_and_unseekable_streams(tmp_path):
    data = classic(records=[(T0, b"x" * 100)] * 3)

    class Pipe(io.RawIOBase):
        def __init__(self, b):
            self.b = io.BytesIO(b)

        def readable(self):
            return True

        def readinto(self, buf):
            chunk = self.b.read(min(len(buf), 7))  # short reads, like a pipe
            buf[: len(chunk)] = chunk
            return len(chunk)

    assert len(list(read_records(io.BytesIO(data)))) == 3
    assert len(list(read_records(Pipe(data)))) == 3
    with pytest.raises(PcapTruncatedError):
        list(read_records(Pipe(data[:-5])))


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", PcapTruncatedError),
        (b"\xd4\xc3\xb2", PcapTruncatedError),
        (b"NOPE" + b"\0" * 40, PcapFormatError),
        (classic()[:20], PcapTruncatedError),  # inside the file header
        (classic()[:30], PcapTruncatedError),  # inside a record header
        (classic()[:-1], PcapTruncatedError),  # inside record data
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 0, 147), PcapFormatError),
    ],
)
def test_corrupt_classic_files(data, error):
    with pytest.raises(error) as ei:
        list(read_records(data))
    assert isinstance(ei.value, DecodeError)
    assert ei.value.offset is not None


def test_absurd_caplen_is_refused_before_reading():
    hdr = classic(records=[])
    rec = struct.pack("<IIII", 1, 0, 0xFFFFFFF0, 0xFFFFFFF0)
    with pytest.raises(PcapLimitError) as ei:
        list(read_records(hdr + rec + b"x" * 10))
    assert isinstance(ei.value, LimitExceededError)
    assert ei.value.offset == 24
    # Below the limit but beyond the file: truncated, reported without reading.
    rec = struct.pack("<IIII", 1, 0, 1 << 20, 1 << 20)
    with pytest.raises(PcapTruncatedError) as ei:
        list(read_records(hdr + rec + b"x" * 10))
    assert isinstance(ei.value, TruncatedError)
    # The limit is configurable.
    ok = classic(records=[(T0, b"y" * 100)])
    with pytest.raises(PcapLimitError):
        list(read_records(ok, max_caplen=99))


# --- pcapng -------------------------------------------------------------------------------


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_hand_built(bo):
    data = (
        shb(bo)
        + idb(bo, 147)  # default resolution: microseconds
        + idb(bo, 1, tsresol=9)  # ethernet, nanoseconds
        + block(bo, 4, b"\0" * 8)  # name resolution block: skipped
        + epb(bo, 0, 1_700_000_000_000_001, b"fuse-1")
        + epb(bo, 1, 1_700_000_000_000_000_002, b"ether")
        + block(bo, 0x0BAD, b"custom")  # unknown block: skipped
        + spb(bo, b"simple!")  # interface 0, no timestamp
        + block(bo, 5, b"\0" * 12)  # interface statistics: skipped
    )
    recs = list(read_records(data))
    assert [(r.linktype, r.data, r.interface) for r in recs] == [
        (147, b"fuse-1", 0),
        (1, b"ether", 1),
        (147, b"simple!", 0),
    ]
    assert recs[0].ts_ns == 1_700_000_000_000_001_000
    assert recs[1].ts_ns == 1_700_000_000_000_000_002
    assert recs[2].ts_ns == 0
    assert [r.index for r in recs] == [0, 1, 2]


def test_pcapng_tsresol_power_of_two_tsoffset_and_new_section():
    data = (
        shb("<")
        + idb("<", 147, tsresol=0x80 | 10, tsoffset=100)  # 2^-10 s units, +100 s
        + epb("<", 0, 1024 * 5 + 512, b"a")
        + shb(">")  # a new section, big-endian: interfaces start over
        + idb(">", 147, tsresol=3)
        + epb(">", 0, 1500, b"b")
    )
    a, b = read_records(data)
    assert a.ts_ns == 105_500_000_000
    assert b.ts_ns == 1_500_000_000 and b.data == b"b"


def test_pcapng_obsolete_packet_block():
    body = struct.pack("<HHIIII", 0, 0, 0, 2_000_000, 3, 3) + b"old"
    data = shb("<") + idb("<", 147) + block("<", 2, body)
    (r,) = read_records(data)
    assert r.data == b"old" and r.ts_ns == 2_000_000_000


@pytest.mark.parametrize(
    "data, error",
    [
        (shb("<")[:-4], PcapTruncatedError),  # no trailing length
        (shb("<") + epb("<", 0, 0, b"x"), PcapFormatError),  # no interface described
        (shb("<")[:8] + b"\x11\x22\x33\x44" + shb("<")[12:], PcapFormatError),  # bad BOM
        (shb("<") + struct.pack("<II", 1, 13) + b"\0" * 9, PcapFormatError),  # length % 4
        (shb("<") + struct.pack("<II", 1, 8), PcapFormatError),  # length < 12
        (shb("<") + struct.pack("<II", 6, 0x7FFFFFF0), PcapLimitError),  # absurd length
        (shb("<") + struct.pack("<II", 6, 4096) + b"\0" * 20, PcapTruncatedError),
        (shb("<") + block("<", 1, b"\0" * 8)[:-4] + b"\x99\0\0\0", PcapError),  # trailer
    ],
)
def test_corrupt_pcapng_files(data, error):
    with pytest.raises(error):
        list(read_records(data))


def test_pcapng_caplen_past_block_and_absurd_caplen():
    good = shb("<") + idb("<", 147)
    body = struct.pack("<IIIII", 0, 0, 0, 100, 100) + b"short"
    with pytest.raises(PcapTruncatedError):
        list(read_records(good + block("<", 6, body)))
    body = struct.pack("<IIIII", 0, 0, 0, 0xFFFFFFFF, 0) + b"x"
    with pytest.raises(PcapLimitError):
        list(read_records(good + block("<", 6, body)))


# --- anything at all ----------------------------------------------------------------------

VALID = [
    classic(records=[(T0, b"abc"), (T0 + 5, b"defgh")]),
    classic(">", False, records=[(T0, b"abc")]),
    shb("<") + idb("<", 147, tsresol=9) + epb("<", 0, 5, b"data") + spb("<", b"s"),
]


def _drain(data: bytes) -> None:
    try:
        for r in read_records(data, max_caplen=1 << 16):
            assert isinstance(r.data, bytes) and len(r.data) <= 1 << 16
    except DecodeError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_records_or_decode_error(data):
    _drain(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_files_give_records_or_decode_error(base, data):
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    _drain(bytes(buf[:cut]))
