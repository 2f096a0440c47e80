"""Capture decoding (Session pairing, error reporting), the recorder, and `fuseproto decode`."""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fuseproto.capture import (
    LINKTYPE_FUSE,
    CaptureRecorder,
    CaptureSummary,
    Direction,
    PcapWriter,
    decode_capture,
    pack_frame,
    read_records,
    unpack_frame,
)
from fuseproto.capture.dissect import TRUNCATED
from fuseproto.capture.frames import FLAG_OPCODE_VALID, FrameError
from fuseproto.capture.samples import (
    sample_session,
    sample_with_errors,
    write_sample,
    write_sample_with_errors,
)
from fuseproto.errors import DecodeError, LengthMismatchError, ProtocolError, RemoteProtocolError
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_notify_code, fuse_opcode

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "captures"
OP = fuse_opcode


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "session.pcap"
    write_sample(str(path))
    return path


@pytest.fixture(scope="module")
def sample_errors(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "errors.pcap"
    write_sample_with_errors(str(path))
    return path


def cli(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "fuseproto", "decode", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    if check_rc is not None:
        assert p.returncode == check_rc, p.stdout + p.stderr
    return p


# --- the sample files --------------------------------------------------------------------


def test_committed_corpus_is_what_the_script_writes(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sample_captures.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("session.pcap", "session-errors.pcap"):
        assert (CORPUS / name).read_bytes() == (tmp_path / name).read_bytes(), name


# --- frames and the recorder -------------------------------------------------------------


def test_frame_roundtrip_and_errors():
    rec = pack_frame(Direction.REPLY, 3, b"msg", opcode=OP.FUSE_READ, minor=31)
    f = unpack_frame(rec)
    assert (f.direction, f.queue, f.data, f.opcode_hint, f.minor_hint) == (
        Direction.REPLY,
        3,
        b"msg",
        OP.FUSE_READ,
        31,
    )
    assert unpack_frame(pack_frame(0, 1, b"")).opcode_hint is None
    for bad in (b"", b"\x01" * 15, b"\x02" + b"\0" * 15, b"\x01\x07" + b"\0" * 14):
        with pytest.raises(FrameError) as ei:
            unpack_frame(bad)
        assert isinstance(ei.value, DecodeError)


def test_recorder_fills_opcode_hints_and_never_raises(tmp_path):
    path = tmp_path / "r.pcap"
    msgs = sample_session()
    with CaptureRecorder(path, minor=46) as rec:
        for d, q, data in msgs:
            rec(d, q, data, 1)
        rec(Direction.REQUEST, 1, b"\x01")  # garbage is recorded, not parsed
        rec(Direction.REPLY, 1, b"")
    frames = [unpack_frame(r.data) for r in read_records(path)]
    assert len(frames) == len(msgs) + 2
    for (d, q, data), f in zip(msgs, frames, strict=False):
        assert (f.direction, f.queue, f.data, f.minor_hint) == (d, q, data, 46)
        if d == Direction.REQUEST:
            assert f.opcode_hint == struct.unpack_from("<I", data, 4)[0]
        elif d == Direction.REPLY:
            req = next(m for m in msgs if m[0] == Direction.REQUEST and m[2][8:16] == data[8:16])
            assert f.opcode_hint == struct.unpack_from("<I", req[2], 4)[0]
        else:
            assert not f.flags & FLAG_OPCODE_VALID
    assert frames[-1].data == b"" and frames[-1].opcode_hint is None


def test_recorder_is_thread_safe(tmp_path):
    path = tmp_path / "t.pcap"
    data = sample_session()[2][2]
    with CaptureRecorder(path) as rec:
        threads = [
            threading.Thread(target=lambda: [rec(0, 1, data) for _ in range(200)]) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    recs = list(read_records(path))
    assert len(recs) == 800 and all(unpack_frame(r.data).data == data for r in recs)


# --- decode_capture ----------------------------------------------------------------------


def test_sample_decodes_and_pairs(sample):
    s = CaptureSummary()
    msgs = list(decode_capture(sample, summary=s))
    expected = sample_session()
    assert len(msgs) == len(expected)
    assert all(m.error is None for m in msgs)
    assert [m.raw for m in msgs] == [d for _, _, d in expected]
    assert s.decode_errors == s.protocol_errors == 0 and not s.unpaired_requests
    assert not s.failed
    replies = [m for m in msgs if m.kind == "reply"]
    assert replies and all(m.paired for m in replies)
    by_op = {(m.kind, m.opcode): m for m in msgs}
    rdp = by_op["reply", OP.FUSE_READDIRPLUS].message.body
    assert [e.dirent.name for e in rdp.entries] == [b".", b"hello.txt"]
    rm = by_op["request", OP.FUSE_REMOVEMAPPING].message.body
    assert rm.count == 2 and [e.moffset for e in rm.entries] == [0, 2 << 20]
    sm = by_op["request", OP.FUSE_SETUPMAPPING].message.body
    assert (sm.fh, sm.len, sm.moffset) == (7, 2 << 20, 2 << 20)
    # The GETXATTR reply decodes by its request's size (0: fuse_getxattr_out).
    assert by_op["reply", OP.FUSE_GETXATTR].message.body.size == 11
    notes = [m.opcode for m in msgs if m.kind == "notification"]
    assert notes == [
        fuse_notify_code.FUSE_NOTIFY_INVAL_INODE,
        fuse_notify_code.FUSE_NOTIFY_INVAL_ENTRY,
        fuse_notify_code.FUSE_NOTIFY_DELETE,
    ]
    assert s.by_opcode["FUSE_LOOKUP reply"] == 2
    assert s.by_opcode["FUSE_FORGET request"] == 1
    enoent = [m for m in msgs if m.kind == "reply" and m.header.error == -errno.ENOENT]
    assert len(enoent) == 1 and enoent[0].opcode == OP.FUSE_LOOKUP


def test_errors_are_reported_and_decoding_continues(sample_errors):
    s = CaptureSummary()
    msgs = list(decode_capture(sample_errors, summary=s))
    assert len(msgs) == len(sample_with_errors()) + 1
    bad = [m for m in msgs if m.error is not None]
    liar = next(m for m in bad if m.unique == 1001)
    assert isinstance(liar.error, LengthMismatchError)
    assert liar.error.path == "fuse_in_header.len" and liar.error.offset == 0
    assert liar.opcode == OP.FUSE_LOOKUP
    stray = next(m for m in bad if m.unique == 9999)
    assert isinstance(stray.error, RemoteProtocolError)
    read = next(m for m in bad if m.kind == "request" and m.opcode == OP.FUSE_READ)
    assert isinstance(read.error, DecodeError) and read.error.path == "fuse_read_in"
    assert msgs[-1].kind == "bad-frame" and isinstance(msgs[-1].error, FrameError)
    # Everything after the faults still decodes.
    assert (
        msgs[-2].kind == "reply" and msgs[-2].opcode == OP.FUSE_RELEASE and msgs[-2].error is None
    )
    assert s.decode_errors == 3 and s.protocol_errors >= 1 and s.failed


def test_no_pair_uses_the_opcode_hints(sample, tmp_path):
    paired = list(decode_capture(sample))
    alone = list(decode_capture(sample, pair=False))
    for a, b in zip(paired, alone, strict=True):
        assert (a.kind, a.opcode, a.error) == (b.kind, b.opcode, b.error)
        assert a.message == b.message or a.opcode in (OP.FUSE_GETXATTR,)
    # Without hints, a reply shows only its header (not an error).
    path = tmp_path / "nohint.pcap"
    with PcapWriter(path, LINKTYPE_FUSE) as w:
        for d, q, data in sample_session()[:4]:
            w.write(pack_frame(d, q, data), 0)
    alone = list(decode_capture(path, pair=False))
    assert alone[3].kind == "reply" and alone[3].message is None and alone[3].error is None
    assert alone[3].header.unique == 4


def test_foreign_linktypes_truncated_records_and_corrupt_tail(tmp_path):
    msgs = sample_session()
    w_path = tmp_path / "mixed.pcap"
    with PcapWriter(w_path, 1) as w:  # ethernet: none of ours
        w.write(b"\xff" * 20, 0)
    (m,) = decode_capture(w_path)
    assert m.kind == "skipped" and m.error is None

    path = tmp_path / "cut.pcap"
    with PcapWriter(path, LINKTYPE_FUSE, snaplen=16 + 120) as w:  # cuts the LOOKUP reply
        for d, q, data in msgs[:4]:
            w.write(pack_frame(d, q, data), 0)
    s = CaptureSummary()
    out = list(decode_capture(path, summary=s))
    assert [m.error for m in out] == [None] * 4  # a snaplen cut is not an error
    cut = out[3]
    assert cut.opcode == OP.FUSE_LOOKUP and cut.unique == 4 and cut.paired
    assert (cut.captured_len, cut.orig_len, cut.truncated) == (120, 144, True)
    whole = codec.decode_reply(msgs[3][2], OP.FUSE_LOOKUP).body
    body = cut.message.body
    # 16 + 104 bytes captured: fuse_entry_out up to fuse_attr.mode; nlink on is cut.
    assert body.nodeid == whole.nodeid and body.attr_valid_nsec == whole.attr_valid_nsec
    assert body.attr.ino == whole.attr.ino and body.attr.mode == whole.attr.mode
    for name in ("nlink", "uid", "gid", "rdev", "blksize", "flags"):
        assert body.attr[name] is TRUNCATED, name
    assert s.unpaired_requests == [] and not s.failed and s.truncated == 1

    good = (CORPUS / "session.pcap").read_bytes()
    s = CaptureSummary()
    out = list(decode_capture(good[:-7], summary=s))
    assert out[-1].kind == "capture-error" and s.capture_error and s.failed
    assert len(out) == len(msgs)  # every complete record, then the error


def test_snaplen_cut_data_keeps_the_captured_prefix_and_pairs(tmp_path):
    """A READ reply cut inside its data: the data shown is exactly what was captured,
    the reply pairs with its request, nothing is an error; cut below the header: the
    header alone (if any), still no error; a record claiming a huge length: header alone,
    no allocation of that size."""
    payload = bytes(range(256)) * 16
    req = codec.encode_request(OP.FUSE_READ, {"fh": 1, "offset": 0, "size": 4096}, unique=2,
                               nodeid=5)
    rep = codec.encode_reply(OP.FUSE_READ, {"data": payload}, unique=2)
    path = tmp_path / "read.pcap"
    with PcapWriter(path, LINKTYPE_FUSE, snaplen=16 + 16 + 100) as w:
        w.write(pack_frame(0, 1, req), 0)
        w.write(pack_frame(1, 1, rep), 1)
    s = CaptureSummary()
    r, m = list(decode_capture(path, summary=s))
    assert r.error is None and m.error is None and m.paired and m.truncated
    assert m.message.body.data == payload[:100] and m.orig_len == len(rep)
    assert s.unpaired_requests == [] and not s.failed
    out = cli(str(path)).stdout
    assert f"[captured 116 of {len(rep)} bytes: snaplen]" in out and "cut by snaplen: 1" in out

    tiny = tmp_path / "tiny.pcap"
    with PcapWriter(tiny, LINKTYPE_FUSE, snaplen=16 + 10) as w:
        w.write(pack_frame(0, 1, req), 0)
    (t,) = decode_capture(tiny)
    assert t.error is None and t.truncated and t.header is None and t.captured_len == 10

    huge = tmp_path / "huge.pcap"
    frame = pack_frame(1, 1, rep)
    with open(huge, "wb") as f:  # a classic pcap whose one record claims 4 GiB on the wire
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_FUSE))
        f.write(struct.pack("<IIII", 0, 0, len(frame), 0xFFFFFFF0) + frame)
    (h,) = decode_capture(huge, pair=False)
    assert h.error is None and h.truncated and h.message is None and h.header["unique"] == 2


def test_shipped_captures_decode_with_no_errors():
    """Every capture in corpus/captures decodes with zero errors and exit 0; the real
    DAX capture's snaplen-cut READ replies all pair with their requests."""
    for path in sorted(CORPUS.glob("*.pcap")):
        if path.name == "session-errors.pcap":
            continue  # deliberately broken (see write_sample_with_errors)
        s = CaptureSummary()
        msgs = list(decode_capture(path, summary=s))
        assert not s.failed and s.decode_errors == 0, path
        cli(str(path))
        if path.name == "dax-reads.pcap":
            reads = [m for m in msgs if m.kind == "reply" and m.opcode == OP.FUSE_READ]
            assert len(reads) == 489 and all(m.paired and m.truncated for m in reads)
            assert all(len(m.message.body.data) == m.captured_len - 16 for m in reads)
            assert s.unpaired_requests == []


def test_minor_from_init_decodes_old_layouts(tmp_path):
    """A 7.8 session: after INIT, fuse_entry_out is the 120-byte compat form."""
    init_in = codec.encode_request(
        OP.FUSE_INIT, {"major": 7, "minor": 8, "max_readahead": 0, "flags": 0}, unique=2
    )
    init_out = codec.encode_reply(OP.FUSE_INIT, {"major": 7, "minor": 8}, unique=2)
    lookup = codec.encode_request(OP.FUSE_LOOKUP, {"name": b"x"}, unique=4, nodeid=1)
    entry = codec.encode_reply(OP.FUSE_LOOKUP, {"nodeid": 5}, unique=4, minor=8)
    assert len(entry) == 16 + 120
    path = tmp_path / "old.pcap"
    with CaptureRecorder(path) as rec:
        for d, data in [(0, init_in), (1, init_out), (0, lookup), (1, entry)]:
            rec(d, 1, data, 0)
    s = CaptureSummary()
    out = list(decode_capture(path, summary=s))
    assert all(m.error is None for m in out) and s.minor == 8
    assert out[3].message.body.nodeid == 5


# --- the CLI -----------------------------------------------------------------------------


def test_cli_text(sample):
    p = cli(str(sample))
    lines = p.stdout.splitlines()
    body = [line for line in lines if line.lstrip()[:1].isdigit()]
    assert len(body) == len(sample_session())
    assert "FUSE_LOOKUP" in body[2] and "name='hello.txt'" in body[2]
    assert "error=-2 (ENOENT)" in p.stdout
    assert "FUSE_REMOVEMAPPING" in p.stdout and "moffset=2097152" in p.stdout
    assert "entries=[2: '.', 'hello.txt']" in p.stdout
    assert "FUSE_NOTIFY_INVAL_ENTRY" in p.stdout and "name='old'" in p.stdout
    assert "decode errors: 0" in p.stdout and "unanswered requests: 0" in p.stdout
    assert "FUSE_SETUPMAPPING request" in p.stdout  # per-opcode counts


def test_cli_json_lines(sample):
    p = cli(str(sample), "--json")
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    summary = rows.pop()["summary"]
    assert len(rows) == len(sample_session())
    assert rows[2]["opcode"] == "FUSE_LOOKUP"
    assert rows[2]["body"]["name"] == {"len": 9, "hex": b"hello.txt".hex(), "text": "hello.txt"}
    assert rows[3]["paired"] and rows[3]["body"]["attr"]["size"] == 5000
    assert rows[5]["errno"] == errno.ENOENT and rows[5]["body"] is None
    assert all(r["error"] is None for r in rows)
    assert summary["decode_errors"] == 0 and summary["opcodes"]["FUSE_LOOKUP request"] == 2


def test_cli_filter_and_no_pair(sample):
    p = cli(str(sample), "--filter", "lookup", "NOTIFY_DELETE", "--no-summary")
    lines = p.stdout.splitlines()
    assert len(lines) == 5
    assert all("FUSE_LOOKUP" in line or "FUSE_NOTIFY_DELETE" in line for line in lines)
    p = cli(str(sample), "--filter", "READ", "--no-pair", "--json", "--no-summary")
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["kind"] for r in rows] == ["request", "reply"]
    assert rows[1]["body"]["data"]["len"] == 136 and not rows[1]["paired"]
    assert cli(str(sample), "--filter", "NOSUCHOP", check_rc=2).returncode == 2


def test_cli_exit_status_on_errors(sample_errors):
    p = cli(str(sample_errors), check_rc=1)
    assert "LengthMismatchError at field fuse_in_header.len, offset 0" in p.stdout
    assert "RemoteProtocolError" in p.stdout and "bad capture record" in p.stdout
    assert "decode errors: 3" in p.stdout
    cli(str(sample_errors), "--no-fail", check_rc=0)
    p = cli(str(sample_errors), "--json", check_rc=1)
    errs = [json.loads(line)["error"] for line in p.stdout.splitlines()[:-1]]
    liar = next(e for e in errs if e and e["field"] == "fuse_in_header.len")
    assert liar == {
        "type": "LengthMismatchError",
        "offset": 0,
        "field": "fuse_in_header.len",
        "reason": "len=999 but the message is 45 bytes",
    }


def test_cli_unreadable_files(tmp_path):
    p = cli(str(tmp_path / "missing.pcap"), check_rc=2)
    assert "No such file" in p.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    p = cli(str(junk), check_rc=1)
    assert "capture error" in p.stdout and "magic" in p.stdout
    cli(check_rc=2)


def test_cli_hex():
    msgs = sample_session()
    p = cli("--hex", msgs[2][2].hex())
    assert "FUSE_LOOKUP" in p.stdout and "name='hello.txt'" in p.stdout
    p = cli("--hex", msgs[3][2].hex(), "--opcode", "LOOKUP", "--json")
    row = json.loads(p.stdout)
    assert row["kind"] == "reply" and row["body"]["nodeid"] == 2
    note = next(data for d, _, data in msgs if d == Direction.NOTIFICATION)
    p = cli("--hex", note.hex())
    assert "FUSE_NOTIFY_INVAL_INODE" in p.stdout
    p = cli("--hex", msgs[2][2][:-1].hex(), "--as", "request", check_rc=1)
    assert "LengthMismatchError" in p.stdout
    cli("--hex", "zz", check_rc=2)


def test_unnamed_opcodes_and_notify_codes_are_spelled_as_everywhere():
    # wire.constants.opcode_name's spelling (opcode_N); notify codes as notify_N
    unknown = struct.pack("<IIQQIIIHH", 40, 999, 2, 1, 0, 0, 0, 0, 0)
    p = cli("--hex", unknown.hex(), "--as", "request", "--json", check_rc=None)
    row = json.loads(p.stdout)
    assert row["opcode"] == "opcode_999" and row["opcode_num"] == 999
    assert " opcode_999 " in cli("--hex", unknown.hex(), "--as", "request", check_rc=None).stdout
    note = struct.pack("<IiQ", 16, 77, 0)
    assert json.loads(cli("--hex", note.hex(), "--json", check_rc=None).stdout)["opcode"] == (
        "notify_77"
    )


def test_cli_help_explains_the_format():
    p = subprocess.run(
        [sys.executable, "-m", "fuseproto", "decode", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    for word in (
        "LINKTYPE_USER0",
        "147",
        "pseudo-header",
        "direction",
        "queue",
        "--no-pair",
        "--filter",
        "--minor",
        "--json",
        "--hex",
        "exit status",
    ):
        assert word in p.stdout, word


# --- anything inside the frames ----------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SAMPLE = sample_session()


@st.composite
def _messages(draw):
    """Sample messages, some mutated or cut, plus arbitrary bytes, in any direction."""
    if draw(st.booleans()):
        return draw(st.integers(0, 4)), draw(st.binary(max_size=200))
    d, _, data = draw(st.sampled_from(_SAMPLE))
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        buf = buf[: draw(st.integers(0, len(buf)))]
    return int(d), bytes(buf)


@settings(max_examples=300, deadline=None)
@given(st.lists(_messages(), max_size=12), st.booleans())
def test_decode_capture_reports_everything_and_never_raises(msgs, pair):
    import io

    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_FUSE)
    for d, data in msgs:
        # direction 3 is an annotation, 4 is invalid: a bad-frame entry
        w.write(
            pack_frame(Direction.REQUEST, 1, data)[:1]
            + bytes([d])
            + pack_frame(Direction.REQUEST, 1, data)[2:],
            0,
        )
    s = CaptureSummary()
    out = list(decode_capture(buf.getvalue(), pair=pair, summary=s))
    assert len(out) == len(msgs)
    for m in out:
        assert m.kind in ("request", "reply", "notification", "annotation", "bad-frame")
        assert m.error is None or isinstance(m.error, DecodeError | ProtocolError)
        assert (m.message is not None or m.error is not None
                or m.kind in ("reply", "annotation"))
    assert s.records == len(msgs)


# --- -V, --stats and the filters ----------------------------------------------------------


def _lines(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in p.stdout.splitlines() if " #" in ln[:20]]


def test_cli_verbose_tree_shows_every_field(sample):
    out = cli(str(sample), "-V", "--unique", "4", "--no-summary").stdout
    whole = next(m for m in decode_capture(sample) if m.kind == "reply" and m.unique == 4)
    for k, v in whole.message.body.attr.items():  # nested under body > attr
        shown = oct(v) if k == "mode" else hex(v) if k == "flags" and v else str(v)
        assert f"\n            {k}: {shown}\n" in out, k
    assert "    fuse_in_header\n" in out and "    fuse_out_header\n" in out
    assert "        nodeid: 2\n" in out and "name: <9 bytes> 68 65 6c 6c 6f" in out


def test_cli_stats_counts_errnos_and_latency(sample, tmp_path):
    p = cli(str(CORPUS / "dax-reads.pcap"), "--stats", "--json", "-q")
    stats = json.loads(p.stdout.splitlines()[-1])["summary"]["stats"]
    read = stats["FUSE_READ"]
    assert read["requests"] == 489 and read["replies"] == {"ok": 489}
    lat = read["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # The sample's records are 125 us apart: every latency is exactly that.
    text = cli(str(sample), "--stats", "-q").stdout
    assert "FUSE_LOOKUP                    2  ENOENT=1 ok=1" in text
    assert "125.0/125.0/125.0/125.0" in text
    assert _lines(cli(str(sample), "-q")) == []


def test_cli_filters_by_nodeid_unique_and_errno(sample):
    msgs = [m for m in decode_capture(sample) if m.kind in ("request", "reply")]
    to_root = {m.unique for m in msgs if m.kind == "request" and m.header["nodeid"] == 1}
    lines = _lines(cli(str(sample), "--nodeid", "1", "--no-summary"))
    assert len(lines) == sum(1 for m in msgs if m.unique in to_root)
    assert all(f"unique={u} " in " ".join(lines) for u in to_root)
    assert len(_lines(cli(str(sample), "--unique", "4"))) == 2
    assert len(_lines(cli(str(sample), "--unique", "0x4"))) == 2
    (enoent,) = _lines(cli(str(sample), "--errno", "ENOENT"))
    assert "unique=6 " in enoent and "ENOENT" in enoent
    ok = _lines(cli(str(sample), "--errno", "0"))
    assert ok and all("<-" in ln and "error=" not in ln for ln in ok)
    both = _lines(cli(str(sample), "--filter", "LOOKUP", "--nodeid", "1"))
    assert len(both) == 4 and all("FUSE_LOOKUP" in ln for ln in both)
    bad = cli(str(sample), "--errno", "ENOTANERRNO", check_rc=2)
    assert "unknown errno" in bad.stderr


def test_a_cut_request_still_pairs_and_checks_its_reply(tmp_path):
    """A READ request cut inside fuse_read_in: shown as far as captured, but the session
    keeps the whole request, so its (uncut) reply pairs and is checked against its size."""
    req = codec.encode_request(OP.FUSE_READ, {"fh": 1, "offset": 0, "size": 4096}, unique=2,
                               nodeid=5)
    rep = codec.encode_reply(OP.FUSE_READ, {"data": b"abc"}, unique=2)
    path = tmp_path / "cutreq.pcap"
    with PcapWriter(path, LINKTYPE_FUSE, snaplen=16 + 40 + 18) as w:
        w.write(pack_frame(0, 1, req), 0)
        w.write(pack_frame(1, 1, rep), 1)
    r, m = decode_capture(path)
    assert r.truncated and r.error is None and r.message.body.fh == 1
    assert r.message.body.size is TRUNCATED  # body bytes 16..20; cut at 18
    assert m.error is None and m.paired and m.message.body.data == b"abc"
