"""scapy layers: rdpcap dissects our captures, and every field equals the codec's decode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

scapy_all = pytest.importorskip("scapy.all")

from vectors.fuse_vectors import VECTORS  # noqa: E402
from wire_helpers import decode_vector  # noqa: E402

from fuseproto.capture import Direction, decode_capture, pack_frame  # noqa: E402
from fuseproto.capture import scapy_layers as L  # noqa: E402
from fuseproto.capture.samples import write_sample  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def plain(v: Any) -> Any:
    """A codec Container as plain Python (dicts, lists, ints, bytes)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, int):
        return int(v)
    return v


def body_of(header_layer: Any) -> Any:
    """The generated body layer above a FUSE header, or None."""
    body = header_layer.payload
    if isinstance(body, scapy_all.NoPayload | scapy_all.Padding):
        return None
    return body


def check_equal(pkt: Any, msg: Any, kind: str) -> None:
    cap = pkt[L.FuseCapture]
    hdr = cap.payload
    assert isinstance(hdr, L.FuseInHeader if kind == "request" else L.FuseOutHeader)
    assert L.as_dict(hdr) == plain(msg.header)
    body = body_of(hdr)
    if msg.body is None or msg.body == {}:
        assert body is None, body.summary()
        return
    if isinstance(msg.body, bytes):  # unknown opcode: raw bytes
        assert isinstance(body, scapy_all.Raw) and body.load == msg.body
        return
    if body is None:
        # scapy makes no layer for an empty payload: only right if every part is empty
        # (READDIRPLUS with no entries, an empty READ reply).
        assert all(x in ([], b"") for x in plain(msg.body).values()), msg
        return
    assert not isinstance(body, scapy_all.Raw), f"{kind} {msg!r} dissected as Raw"
    assert L.as_dict(body) == plain(msg.body)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scapy") / "session.pcap"
    write_sample(str(path))
    return path


def test_rdpcap_shows_fuse_layers(sample):
    pkts = scapy_all.rdpcap(str(sample))
    assert all(L.FuseCapture in p for p in pkts)
    names = [type(p[L.FuseCapture].payload.payload).__name__ for p in pkts]
    assert names[:4] == ["FuseInitRequest", "FuseInitReply", "FuseLookupRequest", "FuseLookupReply"]
    assert "FuseRemovemappingRequest" in names and "FuseReaddirplusReply" in names
    assert "FuseSetupmappingRequest" in names and "FuseNotifyInvalEntry" in names
    lookup = pkts[2]
    assert lookup[L.FuseInHeader].opcode == 1
    assert lookup[L.FuseInHeader].sprintf("%opcode%") == "FUSE_LOOKUP"
    assert lookup["FuseLookupRequest"].getfieldval("name") == b"hello.txt"
    rm = next(p for p in pkts if "FuseRemovemappingRequest" in p)["FuseRemovemappingRequest"]
    assert rm.count == 2 and [e.moffset for e in rm.entries] == [0, 2 << 20]


def test_layers_are_module_attributes_under_their_names(sample):
    """Every generated body layer is an attribute of the module under its class name
    (importable, in __all__, picklable), and dissection uses exactly those classes."""
    import pickle

    from fuseproto.capture.scapy_layers import (  # noqa: F401 -- importable by name
        FuseGetxattrReply,
        FuseGetxattrReply_value,
        FuseInitReply,
        FuseLookupReply,
        FuseNotifyInvalEntry,
    )
    from fuseproto.wire.constants import fuse_opcode

    exported = [n for n in L.__all__ if n.startswith("Fuse") and n not in
                ("FuseCapture", "FuseInHeader", "FuseOutHeader")]
    assert len(set(exported)) == len(exported)
    from fuseproto.wire import messages

    for op in fuse_opcode:  # every opcode with a request body has its layer exported
        if messages.request_parts(op):
            camel = "".join(w.capitalize() for w in op.name.removeprefix("FUSE_").split("_"))
            assert f"Fuse{camel}Request" in exported, op
    for n in exported:
        cls = getattr(L, n)
        assert issubclass(cls, scapy_all.Packet) and cls.__name__ == n
        assert cls.__module__ == L.__name__ and pickle.loads(pickle.dumps(cls)) is cls
    for op in (fuse_opcode.FUSE_LOOKUP, fuse_opcode.FUSE_READ, fuse_opcode.FUSE_SETUPMAPPING):
        name = "Fuse" + op.name.removeprefix("FUSE_").capitalize() + "Request"
        assert getattr(L, name) is L.body_layer("request", op)
    assert [f.name for f in FuseGetxattrReply.fields_desc] == ["size", "padding"]
    assert [f.name for f in FuseGetxattrReply_value.fields_desc] == ["value"]
    for pkt in scapy_all.rdpcap(str(sample)):
        body = pkt[L.FuseCapture].payload.payload
        if not isinstance(body, scapy_all.Raw | scapy_all.NoPayload):
            assert getattr(L, type(body).__name__) is type(body)


def test_scapy_fields_equal_codec_for_every_message(sample):
    pkts = scapy_all.rdpcap(str(sample))
    decoded = list(decode_capture(sample))
    assert len(pkts) == len(decoded)
    for pkt, m in zip(pkts, decoded, strict=True):
        check_equal(pkt, m.message, m.kind)


def test_scapy_rebuilds_the_same_bytes(sample):
    from fuseproto.capture import read_records

    for pkt, rec in zip(scapy_all.rdpcap(str(sample)), read_records(sample), strict=True):
        assert bytes(pkt) == rec.data


@pytest.mark.parametrize("v", [v for v in VECTORS if not v.get("flags")], ids=lambda v: v["name"])
def test_scapy_matches_codec_on_golden_vectors(v):
    """Every hand-written vector (all opcodes, compat minors, notifications) through
    FuseCapture with the opcode/minor hints a recorder writes."""
    msg = decode_vector(v)
    direction = {"request": 0, "reply": 1, "notification": 2}[v["kind"]]
    opcode = v["opcode"] if v["kind"] != "notification" else None
    record = pack_frame(direction, 1, v["data"], opcode=opcode, minor=v.get("minor", 46))
    pkt = L.FuseCapture(record)
    if v["kind"] == "reply" and v["opcode"] in (22, 23):
        # GETXATTR/LISTXATTR: scapy guesses the shape from the reply length (documented).
        body = body_of(pkt.payload)
        guess_is_size = len(v["data"]) == 16 + 8
        codec_is_size = isinstance(msg.body, dict) and "value" not in msg.body
        if guess_is_size != codec_is_size:
            pytest.skip("size-probe reply shape not knowable without the request")
        assert body is None or L.as_dict(body) == plain(msg.body)
        return
    check_equal(pkt, msg, v["kind"])
    assert bytes(pkt) == record


def test_register_another_linktype(tmp_path):
    from fuseproto.capture import CaptureRecorder
    from fuseproto.wire import codec

    L.register(150)
    path = tmp_path / "u3.pcap"
    with CaptureRecorder(path, linktype=150) as rec:
        rec(Direction.REQUEST, 1, codec.encode_request(15 + 0, {"fh": 1, "size": 10}, unique=2))
    (pkt,) = scapy_all.rdpcap(str(path))
    assert pkt["FuseReadRequest"].size == 10


def test_import_fuseproto_without_scapy():
    code = (
        "import sys; sys.modules['scapy'] = None\n"
        "import fuseproto, fuseproto.capture, fuseproto.wire, fuseproto.cli\n"
        "from fuseproto.commands import decode\n"
        "assert not any(m == 'scapy' or m.startswith('scapy.') for m in sys.modules"
        " if sys.modules[m] is not None)\n"
        "try:\n"
        "    import fuseproto.capture.scapy_layers\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('scapy_layers imported without scapy')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['scapy'] = None; from fuseproto.cli import main;"
            f" sys.exit(main(['decode', '--no-summary', r'{ROOT / 'corpus/captures/session.pcap'}']))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0 and "FUSE_READDIRPLUS" in p.stdout


def test_scapy_is_imported_only_inside_capture():
    hits = []
    for path in (ROOT / "fuseproto").rglob("*.py"):
        if path.parent.name == "capture":
            continue
        text = path.read_text()
        if "import scapy" in text or "from scapy" in text:
            hits.append(str(path))
    assert hits == []
