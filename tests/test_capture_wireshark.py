"""The generated Wireshark dissector (fuseproto.capture.wireshark) against `fuseproto decode -V`.

tshark (Debian's package, installed by scripts/setup.sh) loads the plugin with ``-X
lua_script:`` and dissects every shipped capture, the sample (also without opcode hints,
and cut at 11 snaplens), every golden vector and garbled captures; both trees are parsed
into {message index: {field path: value}} and compared, and the kind of complaint too
(decode's decode errors = the plugin's expert errors, its protocol errors = the plugin's
Sequence warnings). Deliberate differences of presentation, normalized here before
comparing:

* integers: decode prints ``mode`` in Python octal (``0o100644``) and non-zero ``*flags*``
  in hex (``0x2``), Wireshark prints C octal (``0100644``) and zero-padded hex
  (``0x00000002``, also for 0); header fields with a value string show ``NAME (N)``
  (``opcode: FUSE_LOOKUP (1)``, ``error: ENOENT (-2)``, ``error: OK (0)``): compared as
  numbers;
* bytes: decode prints ``<N bytes> 6d 65 ...`` (the first 32 bytes), Wireshark ``6d65...``
  (its first 36 bytes, then an ellipsis; ``<MISSING>`` when empty) with ``(N bytes)``
  appended by the plugin: compared as length + common prefix;
* names (``name``, ``newname``, SYMLINK's ``link``, dirent names) are strings in Wireshark:
  compared with decode's bytes as Wireshark escapes them (:func:`ws_text`);
* fields whose name starts with ``_`` (``fuse_sx_time.__reserved`` ...) are left out by
  decode -V (construct hides them); Wireshark shows them, they are not compared;
* a message that fails to decode: decode shows its header only, the plugin the header, what
  it could parse, and an expert error; the headers are compared and the expert error is
  required;
* a snaplen-cut body of which nothing could be kept: both print ``body: [truncated]``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from vectors.fuse_vectors import BY_NAME, VECTORS

from fuseproto.capture import CaptureRecorder, Direction
from fuseproto.capture.samples import write_sample
from fuseproto.capture.wireshark import lua_plugin
from fuseproto.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = sorted((ROOT / "corpus" / "captures").glob("*.pcap"))
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (setup.sh)")

_MSG = re.compile(r"^\s*-?\d+\.\d{6} #(\d+)\s")
_BYTES_DECODE = re.compile(r"<(\d+) bytes>((?: [0-9a-f]{2})*)( \.\.\.)?")
_BYTES_TSHARK = re.compile(r"(<MISSING>|[0-9a-f]*)(…)? \((\d+) bytes\)")
_NAMED = re.compile(r".* \((-?\d+)\)")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ws") / "fuseproto.lua"
    path.write_text(lua_plugin())
    return path


def run_tshark(plugin: Path, capture: Path, home: Path, *extra: str) -> tuple[str, str]:
    """tshark -V on ``capture`` with the plugin (HOME a temp dir: no user profile)."""
    assert TSHARK is not None
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    p = subprocess.run(
        [TSHARK, "-n", "-X", f"lua_script:{plugin}", "-r", str(capture), "-V", *extra],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout, p.stderr


def run_decode(capture: Path, *extra: str) -> str:
    """`fuseproto decode -V` (in this process: no interpreter start per capture)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["decode", "-V", "--no-fail", *extra, str(capture)]) == 0
    return buf.getvalue()


def _add(tree: dict[str, str], stack: list[str], depth: int, line: str) -> None:
    label, _, value = line.strip().partition(": ")
    del stack[depth - 1:]
    stack.append(label)
    tree["/".join(stack)] = value


def parse_decode(text: str) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
    """decode -V -> ({index: {path: value}}, {index: "decode" | "protocol"} of messages
    with an error)."""
    msgs: dict[int, dict[str, str]] = {}
    errors: dict[int, str] = {}
    cur: dict[str, str] | None = None
    stack: list[str] = []
    for line in text.splitlines():
        if line.startswith("---"):
            break
        m = _MSG.match(line)
        if m:
            cur = msgs.setdefault(int(m[1]), {})
            stack = []
            if " !! " in line:
                kind = "protocol" if "ProtocolError" in line.split(" !! ")[1] else "decode"
                errors[int(m[1])] = kind
            continue
        if cur is not None and line.startswith("    "):
            _add(cur, stack, (len(line) - len(line.lstrip(" "))) // 4, line)
    return msgs, errors


def parse_tshark(text: str) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
    """tshark -V -> ({frame index from 0: {path: value}} of the FUSE tree, {index:
    "decode" | "protocol"} of frames with an expert error / sequence warning)."""
    msgs: dict[int, dict[str, str]] = {}
    errors: dict[int, str] = {}
    index = -1
    cur: dict[str, str] | None = None
    stack: list[str] = []
    for line in text.splitlines():
        if line.startswith("Frame "):
            index = int(line.split()[1].rstrip(":")) - 1
            cur = None
            continue
        if line.startswith("FUSE ("):
            cur = msgs.setdefault(index, {})
            stack = []
            continue
        if line and not line.startswith(" "):
            cur = None
            continue
        if cur is None or not line.strip():
            continue
        if "[Expert Info (Error/" in line:
            errors[index] = "decode"
        elif "[Expert Info (Warning/Sequence)" in line:
            errors.setdefault(index, "protocol")
        depth = (len(line) - len(line.lstrip(" "))) // 4
        if depth == 1 or stack:
            _add(cur, stack, depth, line)
    return msgs, errors


def _number(v: str) -> int | None:
    m = _NAMED.fullmatch(v)
    if m:
        v = m[1]
    if re.fullmatch(r"0x[0-9a-f]+", v):
        return int(v, 16)
    if re.fullmatch(r"0o[0-7]+", v):
        return int(v, 8)
    if re.fullmatch(r"0[0-7]+", v):
        return int(v, 8)
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    return None


_C_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def ws_text(b: bytes) -> str:
    """How Wireshark shows bytes as an ASCII string: printable as is, C escapes, other
    control bytes as octal escapes, bytes above 0x7f as U+FFFD."""
    out = []
    for c in b:
        if 0x20 <= c < 0x7F:
            out.append(chr(c))
        elif c in _C_ESCAPES:
            out.append(_C_ESCAPES[c])
        elif c < 0x80:
            out.append(f"\\{c:03o}")
        else:
            out.append("\ufffd")
    return "".join(out)


def same_value(dv: str, tv: str) -> bool:
    """decode's value ``dv`` and Wireshark's ``tv`` say the same (see the docstring)."""
    if dv == tv:
        return True
    mb = _BYTES_DECODE.fullmatch(dv)
    if mb:
        n, shown = int(mb[1]), bytes.fromhex(mb[2].replace(" ", ""))
        tb = _BYTES_TSHARK.fullmatch(tv)
        if tb is None:  # a name: a string in Wireshark
            return mb[3] is None and ws_text(shown) == tv
        t_hex = "" if tb[1] == "<MISSING>" else tb[1]
        t_bytes = bytes.fromhex(t_hex)
        k = min(len(shown), len(t_bytes))
        return int(tb[3]) == n and shown[:k] == t_bytes[:k] and (
            tb[2] is not None or len(t_bytes) == n)
    a, b = _number(dv), _number(tv)
    return a is not None and a == b


_COMPARED = ("fuse_in_header", "fuse_out_header", "body", "extensions",
             "[Packet size limited during capture")


def _shown(tree: dict[str, str], header_only: bool = False) -> dict[str, str]:
    keep = _COMPARED[:2] if header_only else _COMPARED
    return {k: v for k, v in tree.items() if k.split("/")[0] in keep
            and not any(p.startswith("_") for p in k.split("/"))}


def compare(decode_out: str, tshark_out: str) -> int:
    dmsgs, derrs = parse_decode(decode_out)
    tmsgs, terrs = parse_tshark(tshark_out)
    assert sorted(dmsgs) == sorted(tmsgs), "not the same records"
    compared = 0
    for i, dtree in dmsgs.items():
        bad = derrs.get(i) == "decode"
        d = _shown(dtree, bad)
        t = _shown(tmsgs[i], bad)
        if d or bad:  # (a bad pseudo-header: decode shows no tree, the dissector an error)
            assert terrs.get(i) == derrs.get(i), (
                f"#{i}: decode error {derrs.get(i)}, dissector {terrs.get(i)}")
        assert d.keys() == t.keys(), (
            f"#{i}: only decode: {sorted(d.keys() - t.keys())[:8]}, "
            f"only tshark: {sorted(t.keys() - d.keys())[:8]}")
        for k, dv in d.items():
            assert same_value(dv, t[k]), f"#{i} {k}: decode {dv!r}, tshark {t[k]!r}"
        compared += len(d)
    return compared


def _no_lua_errors(stdout: str, stderr: str) -> None:
    assert "Lua Error" not in stdout
    assert "lua" not in stderr.lower(), stderr


@needs_tshark
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_tshark_shows_what_decode_shows(plugin, capture, tmp_path):
    out, err = run_tshark(plugin, capture, tmp_path, "-2")
    _no_lua_errors(out, err)
    assert compare(run_decode(capture), out) > 0


@needs_tshark
def test_sample_one_pass_and_two_passes(plugin, tmp_path):
    """The sample written by write_sample: the same tree with tshark's one pass (pairing as
    frames go by) and two passes (-2)."""
    sample = tmp_path / "sample.pcap"
    write_sample(str(sample))
    decoded = run_decode(sample)
    for extra in ((), ("-2",)):
        out, err = run_tshark(plugin, sample, tmp_path, *extra)
        _no_lua_errors(out, err)
        assert compare(decoded, out) > 100


# Cuts through the headers, names, fixed structs, READ data, dirent records, xattrs and
# notifications of the sample (59 cuts the READ request's fuse_read_in: its reply must
# still pair and be checked against the request's whole size).
CUT_SNAPLENS = (17, 24, 31, 38, 45, 52, 59, 66, 80, 101, 136, 171)


@needs_tshark
def test_snaplen_cut_records_show_what_decode_shows(plugin, tmp_path):
    from fuseproto.capture.samples import sample_session

    for snaplen in CUT_SNAPLENS:
        path = tmp_path / f"cut{snaplen}.pcap"
        with CaptureRecorder(path, snaplen=snaplen) as rec:
            for i, (direction, queue, data) in enumerate(sample_session()):
                rec(direction, queue, data, 1_700_000_000_000_000_000 + i * 1000)
        out, err = run_tshark(plugin, path, tmp_path, "-2")
        _no_lua_errors(out, err)
        assert compare(run_decode(path), out) > 90, snaplen
        assert "[Packet size limited during capture: " in out


def _mutated_capture(path: Path, seed: int, snaplen: int, count: int = 1500) -> None:
    """The sample's and the golden vectors' messages, mutated (bytes overwritten, cut,
    extended, ``len`` fixed up or not, direction changed), recorded in random order."""
    import random

    from fuseproto.capture.samples import sample_session

    kinds = {"request": Direction.REQUEST, "reply": Direction.REPLY,
             "notification": Direction.NOTIFICATION}
    msgs = [(d, data) for d, _, data in sample_session()]
    msgs += [(kinds[v["kind"]], v["data"]) for v in VECTORS]
    rng = random.Random(seed)
    with CaptureRecorder(path, snaplen=snaplen) as rec:
        for i in range(count):
            direction, data = rng.choice(msgs)
            b = bytearray(data)
            for _ in range(rng.randint(0, 4)):
                k = rng.random()
                if k < 0.5 and b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
                elif k < 0.7:
                    del b[rng.randrange(len(b) + 1):]
                else:
                    b += rng.randbytes(rng.randrange(40))
            if rng.random() < 0.6 and len(b) >= 4:
                b[0:4] = struct.pack("<I", len(b))
            if rng.random() < 0.1:
                direction = Direction(rng.randrange(3))
            rec(direction, 1, bytes(b), 1_700_000_000_000_000_000 + i * 1000)


@needs_tshark
@pytest.mark.parametrize("seed,snaplen", [(1, 1 << 24), (2, 100)])
def test_mutated_messages_show_what_decode_shows(plugin, tmp_path, seed, snaplen):
    """Garbled, cut and out-of-order messages: no Lua error, and the dissector agrees with
    decode -V on every one (the same decode errors, the same protocol errors -- a reply to
    no request in flight, a unique reused, an error out of range, a second INIT -- and the
    same fields)."""
    path = tmp_path / "mutated.pcap"
    _mutated_capture(path, seed, snaplen)
    out, err = run_tshark(plugin, path, tmp_path, "-2")
    _no_lua_errors(out, err)
    assert compare(run_decode(path), out) > 5000


@needs_tshark
def test_replies_pair_without_the_opcode_hint(plugin, tmp_path):
    """A recorder that writes no opcode hint: replies decode by the request's unique."""
    from fuseproto.capture import read_records
    from fuseproto.capture.frames import FRAME_HEADER
    from fuseproto.capture.pcap import PcapWriter

    src = tmp_path / "sample.pcap"
    write_sample(str(src))
    bare = tmp_path / "nohint.pcap"
    with open(bare, "wb") as f:
        w = PcapWriter(f, 147)
        for rec in read_records(src):
            hdr = bytearray(rec.data[:FRAME_HEADER.size])
            hdr[4] &= ~1  # OPCODE_VALID off
            hdr[8:12] = b"\0\0\0\0"
            w.write(bytes(hdr) + rec.data[FRAME_HEADER.size:], rec.ts_ns)
    out, err = run_tshark(plugin, bare, tmp_path, "-2")
    _no_lua_errors(out, err)
    assert compare(run_decode(bare), out) > 100
    assert "entries: 2 item(s)" in out  # READDIRPLUS reply, paired by unique


@needs_tshark
def test_unknown_opcode_is_raw_bytes(plugin, tmp_path):
    path = tmp_path / "unknown.pcap"
    body = b"\x01\x02\x03\x04"
    req = struct.pack("<IIQQIIIHH", 40 + len(body), 9999, 2, 1, 0, 0, 0, 0, 0) + body
    rep = struct.pack("<IiQ", 16 + 3, 0, 2) + b"abc"
    with CaptureRecorder(path) as rec:
        rec(Direction.REQUEST, 1, req)
        rec(Direction.REPLY, 1, rep)
    out, err = run_tshark(plugin, path, tmp_path, "-2")
    _no_lua_errors(out, err)
    assert "Expert Info" not in out
    assert "opcode: opcode_9999 (9999)" in out or "opcode: Unknown (9999)" in out
    assert "    body: 01020304 (4 bytes)" in out
    assert "    body: 616263 (3 bytes)" in out
    assert compare(run_decode(path), out) > 0


def _vector_captures(tmp: Path) -> list[Path]:
    """The golden vectors (every opcode's request and reply, compat minors, notifications)
    as captures a session could have made: one per (minor, INIT flags), opened by an INIT
    exchange that negotiates them (so decode and the dissector both learn the minor and
    FUSE_SETXATTR_EXT from the capture, as they would from a real one); every reply right
    after its request under a fresh unique. INIT and CUSE_INIT vectors get a capture each
    (a session has one INIT)."""
    from fuseproto.wire import codec
    from fuseproto.wire.constants import InitFlags

    init_ops = (26, 4096)
    groups: dict[tuple[int, int], list[tuple[Direction, bytes]]] = {}
    alone: list[list[tuple[Direction, bytes]]] = []
    unique = 100

    def renumber(data: bytes, u: int) -> bytes:
        return data[:8] + struct.pack("<Q", u) + data[16:]

    for v in VECTORS:
        if v["kind"] == "notification":
            msgs = [(Direction.NOTIFICATION, v["data"])]
            req = v
        else:
            unique += 2
            req = v if v["kind"] == "request" else BY_NAME[v["request"]]
            msgs = [(Direction.REQUEST, renumber(req["data"], unique))]
            if v["kind"] == "reply":
                msgs.append((Direction.REPLY, renumber(v["data"], unique)))
        if v["opcode"] in init_ops:
            alone.append(msgs)
        else:
            key = (v.get("minor", 46), req.get("flags", 0))
            groups.setdefault(key, []).extend(msgs)
    paths = []
    for i, msgs in enumerate([*alone, *groups.items()]):
        if isinstance(msgs, tuple):
            (minor, flags), body = msgs
            words = {"flags": (flags | InitFlags.FUSE_INIT_EXT) & 0xFFFFFFFF,
                     "flags2": flags >> 32}
            init = {"major": 7, "minor": minor, "max_readahead": 0, **words}
            out = {"major": 7, "minor": minor, "max_readahead": 0, "max_write": 4096,
                   **words}
            msgs = [(Direction.REQUEST, codec.encode_request(26, init, unique=2)),
                    (Direction.REPLY, codec.encode_reply(26, out, unique=2)), *body]
        path = tmp / f"vectors{i}.pcap"
        with CaptureRecorder(path) as rec:
            for direction, data in msgs:
                rec(direction, 1, data)
        paths.append(path)
    return paths


@needs_tshark
def test_every_golden_vector(plugin, tmp_path):
    """Every opcode's request and reply and every notification (tests/vectors), at the
    compat minors and with FUSE_SETXATTR_EXT: the same fields and values as decode -V."""
    total = 0
    for path in _vector_captures(tmp_path):
        out, err = run_tshark(plugin, path, tmp_path, "-2")
        _no_lua_errors(out, err)
        total += compare(run_decode(path), out)
    assert total > 1000


def test_plugin_is_generated_from_the_schema(plugin):
    """Every struct and every opcode's body comes from the codec's tables."""
    from fuseproto.wire import messages, structs

    src = plugin.read_text()
    for name in structs.ALL:
        assert f'S["{name}"] = ' in src
    for op in messages.REQUESTS:
        assert f"REQ[{int(op)}] = " in src
    for op in messages.REPLIES:
        assert f"REP[{int(op)}] = " in src
    for code in messages.NOTIFICATIONS:
        assert f"NOT[{int(code)}] = " in src
    assert 'DissectorTable.get("wtap_encap"):add(encaps[ENCAP], fuse)' in src
    assert 'local ENCAP = "USER0"' in src
    assert 'local ENCAP = "USER3"' in lua_plugin(150)
    with pytest.raises(ValueError):
        lua_plugin(1)


def test_a_new_struct_field_reaches_the_plugin(monkeypatch):
    """Nothing names a field by hand: a field added to a struct declaration shows up."""
    from construct import Int32ul, Struct

    from fuseproto.wire import structs

    grown = Struct(*structs.ALL["fuse_poll_out"].subcons, "revents2" / Int32ul)
    monkeypatch.setitem(structs.ALL, "fuse_poll_out", grown)
    src = lua_plugin()
    assert 'ProtoField.uint32("fuse.poll_out.revents2", "revents2", base.DEC)' in src
    assert '{"revents2", "u32", 8, 4, FL[' in src


def test_cli_writes_the_plugin(plugin, tmp_path, monkeypatch, capsys):
    out = tmp_path / "p.lua"
    assert cli_main(["wireshark", "-o", str(out)]) == 0
    assert out.read_text() == plugin.read_text()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli_main(["wireshark", "--install"]) == 0
    installed = tmp_path / "home/.local/lib/wireshark/plugins/fuseproto.lua"
    assert installed.read_text() == plugin.read_text()
    assert str(installed) in capsys.readouterr().out
    assert cli_main(["wireshark", "--linktype", "9"]) == 2
