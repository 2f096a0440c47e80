"""Decode and encode throughput of fuseproto's codec vs hand-written ``struct`` baselines.

Run: ``.venv/bin/python benchmarks/bench_decode.py [--seconds 2]`` (prints messages/s for
both and the ratio, for decoding and for encoding), or under pytest-benchmark:
``pytest benchmarks/bench_decode.py``.

The mix is what a virtio-fs session mostly carries: LOOKUP/GETATTR/READ/WRITE(4 KiB)/
READDIRPLUS/SETUPMAPPING/REMOVEMAPPING/INIT requests and their replies. The baseline
decodes the same messages into the same fields (dicts, nested for ``attr``; dirent lists;
the same length checks a careful hand parser would make) with precompiled ``struct.Struct``.

Encoding: ``codec.encode_request``/``encode_reply`` (the fast path) of the same bodies the
mix was built from, against a hand-written encoder that packs the same bodies (absent fields
as 0, lengths and counts derived) with precompiled ``struct.Struct`` and checks it produced
the same bytes.
"""

from __future__ import annotations

import argparse
import struct
import time
from typing import Any

from construct import Container

from fuseproto.wire import codec
from fuseproto.wire import constants as C

O = C.fuse_opcode  # noqa: E741


def _attr(ino: int) -> Container:
    return Container(ino=ino, size=4096, blocks=8, atime=1, mtime=2, ctime=3, atimensec=0,
                     mtimensec=0, ctimensec=0, mode=0o100644, nlink=1, uid=0, gid=0, rdev=0,
                     blksize=4096, flags=0)


def _entry(ino: int) -> Container:
    return Container(nodeid=ino, generation=1, entry_valid=1, attr_valid=1, entry_valid_nsec=0,
                     attr_valid_nsec=0, attr=_attr(ino))


def build_mix(bodies: list | None = None) -> list[tuple[str, bytes, Any]]:
    """(kind, bytes, request-or-None) in a realistic proportion; ``bodies`` (if given)
    receives (kind, opcode, body, request-or-None, unique, bytes) for the encode benchmark."""
    enc, rep = codec.encode_request, codec.encode_reply
    msgs: list[tuple[str, bytes, Any]] = []

    def both(op, body, reply_body, n=1, **kw):
        unique = 100 + len(msgs)
        rb = enc(op, body, unique=unique, nodeid=2, **kw)
        req = codec.decode_request(rb)
        pb = rep(req, reply_body, unique=req.unique)
        for _ in range(n):
            msgs.append(("request", rb, None))
            msgs.append(("reply", pb, req))
            if bodies is not None:
                bodies.append(("request", op, body, None, unique, rb))
                bodies.append(("reply", op, reply_body, req, unique, pb))

    both(O.FUSE_LOOKUP, Container(name=b"some-file.txt"), _entry(5), n=4)
    both(O.FUSE_GETATTR, Container(getattr_flags=0, fh=0), Container(attr_valid=1, attr=_attr(5)), n=4)
    both(O.FUSE_READ, Container(fh=1, offset=0, size=4096), Container(data=b"r" * 4096), n=3)
    both(O.FUSE_WRITE, Container(fh=1, offset=0, data=b"w" * 4096), Container(size=4096), n=3)
    entries = [Container(entry_out=_entry(10 + i), dirent=Container(ino=10 + i, off=i + 1, type=8, name=b"file-%03d" % i)) for i in range(8)]
    both(O.FUSE_READDIRPLUS, Container(fh=1, offset=0, size=4096), Container(entries=entries), n=1)
    both(O.FUSE_SETUPMAPPING, Container(fh=1, foffset=0, len=1 << 21, flags=3, moffset=0), None, n=2)
    both(O.FUSE_REMOVEMAPPING, Container(entries=[Container(moffset=i << 21, len=1 << 21) for i in range(4)]), None, n=2)
    both(O.FUSE_INIT, Container(major=7, minor=46, max_readahead=1 << 17, flags=0, flags2=0),
         Container(major=7, minor=46, max_readahead=1 << 17, flags=0, max_background=16,
                   congestion_threshold=12, max_write=1 << 20, time_gran=1, max_pages=256,
                   map_alignment=12, flags2=0), n=1)
    return msgs


# --- the hand-written baseline -----------------------------------------------------------

_IN = struct.Struct("<IIQQIIIHH")
_OUT = struct.Struct("<IiQ")
_ATTR_NAMES = ("ino", "size", "blocks", "atime", "mtime", "ctime", "atimensec", "mtimensec",
               "ctimensec", "mode", "nlink", "uid", "gid", "rdev", "blksize", "flags")
_ENTRY = struct.Struct("<4Q2I6Q10I")
_ATTR_OUT = struct.Struct("<QII6Q10I")
_READ_IN = struct.Struct("<QQIIQII")
_WRITE_OUT = struct.Struct("<II")
_SETUP = struct.Struct("<5Q")
_RM_ONE = struct.Struct("<QQ")
_INIT_IN = struct.Struct("<5I11I")
_INIT_OUT = struct.Struct("<4IHHIIHHIIH11H")
_DIRENT = struct.Struct("<QQII")
_IN_NAMES = ("len", "opcode", "unique", "nodeid", "uid", "gid", "pid", "total_extlen", "padding")


def _entry_dict(v, i=0):
    return {"nodeid": v[i], "generation": v[i + 1], "entry_valid": v[i + 2], "attr_valid": v[i + 3],
            "entry_valid_nsec": v[i + 4], "attr_valid_nsec": v[i + 5],
            "attr": dict(zip(_ATTR_NAMES, v[i + 6:i + 22], strict=True))}


def baseline_request(data: bytes):
    h = _IN.unpack_from(data, 0)
    if h[0] != len(data):
        raise ValueError("len")
    op = h[1]
    hdr = dict(zip(_IN_NAMES, h, strict=True))
    if op == 1:
        i = data.find(b"\0", 40)
        if i != len(data) - 1:
            raise ValueError("name")
        body = {"name": data[40:i]}
    elif op == 3:
        g, d, fh = struct.unpack_from("<IIQ", data, 40)
        body = {"getattr_flags": g, "dummy": d, "fh": fh}
    elif op in (15, 44):
        v = _READ_IN.unpack_from(data, 40)
        body = dict(zip(("fh", "offset", "size", "read_flags", "lock_owner", "flags", "padding"), v, strict=True))
    elif op == 16:
        v = _READ_IN.unpack_from(data, 40)
        body = dict(zip(("fh", "offset", "size", "write_flags", "lock_owner", "flags", "padding"), v, strict=True))
        if len(data) - 80 != v[2]:
            raise ValueError("size")
        body["data"] = data[80:]
    elif op == 48:
        body = dict(zip(("fh", "foffset", "len", "flags", "moffset"), _SETUP.unpack_from(data, 40), strict=True))
    elif op == 49:
        (n,) = struct.unpack_from("<I", data, 40)
        if n > 256 or len(data) - 44 != 16 * n:
            raise ValueError("count")
        body = {"count": n, "entries": [dict(zip(("moffset", "len"), _RM_ONE.unpack_from(data, o), strict=True)) for o in range(44, len(data), 16)]}
    elif op == 26:
        v = _INIT_IN.unpack_from(data, 40)
        body = dict(zip(("major", "minor", "max_readahead", "flags", "flags2"), v[:5], strict=True))
        body["unused"] = list(v[5:])
    else:
        body = data[40:]
    return hdr, body


def baseline_reply(data: bytes, op: int):
    ln, err, unique = _OUT.unpack_from(data, 0)
    if ln != len(data):
        raise ValueError("len")
    hdr = {"len": ln, "error": err, "unique": unique}
    if op == 1:
        body = _entry_dict(_ENTRY.unpack_from(data, 16))
    elif op == 3:
        v = _ATTR_OUT.unpack_from(data, 16)
        body = {"attr_valid": v[0], "attr_valid_nsec": v[1], "dummy": v[2], "attr": dict(zip(_ATTR_NAMES, v[3:], strict=True))}
    elif op == 15:
        body = {"data": data[16:]}
    elif op == 16:
        s, p = _WRITE_OUT.unpack_from(data, 16)
        body = {"size": s, "padding": p}
    elif op == 44:
        entries = []
        off, end = 16, len(data)
        while off < end:
            v = _ENTRY.unpack_from(data, off)
            ino, doff, namelen, typ = _DIRENT.unpack_from(data, off + 128)
            ne = off + 152 + namelen
            re = off + ((152 + namelen + 7) & ~7)
            if re > end:
                raise ValueError("dirent")
            entries.append({"entry_out": _entry_dict(v), "dirent": {"ino": ino, "off": doff, "namelen": namelen, "type": typ, "name": data[off + 152:ne]}, "pad": data[ne:re]})
            off = re
        body = {"entries": entries}
    elif op == 26:
        v = _INIT_OUT.unpack_from(data, 16)
        body = dict(zip(("major", "minor", "max_readahead", "flags", "max_background", "congestion_threshold",
                         "max_write", "time_gran", "max_pages", "map_alignment", "flags2", "max_stack_depth",
                         "request_timeout"), v[:13], strict=True))
        body["unused"] = list(v[13:])
    else:
        body = {}
    return hdr, body


# --- the hand-written encode baseline -------------------------------------------------------

_SIMPLE_IN = {
    3: (struct.Struct("<IIQ"), ("getattr_flags", "dummy", "fh")),
    15: (_READ_IN, ("fh", "offset", "size", "read_flags", "lock_owner", "flags", "padding")),
    44: (_READ_IN, ("fh", "offset", "size", "read_flags", "lock_owner", "flags", "padding")),
    48: (_SETUP, ("fh", "foffset", "len", "flags", "moffset")),
}
_WRITE_NAMES = ("fh", "offset", "size", "write_flags", "lock_owner", "flags", "padding")
_INIT_IN_NAMES = ("major", "minor", "max_readahead", "flags", "flags2")
_INIT_OUT_NAMES = ("major", "minor", "max_readahead", "flags", "max_background",
                   "congestion_threshold", "max_write", "time_gran", "max_pages",
                   "map_alignment", "flags2", "max_stack_depth", "request_timeout")
_ENTRY_NAMES = ("nodeid", "generation", "entry_valid", "attr_valid", "entry_valid_nsec",
                "attr_valid_nsec")


def _vals(body, names):
    g = body.get
    return [g(k) or 0 for k in names]


def _entry_vals(e):
    return _vals(e, _ENTRY_NAMES) + _vals(e.get("attr") or {}, _ATTR_NAMES)


def baseline_encode_request(op: int, body, unique: int, nodeid: int) -> bytes:
    if op == 1:
        payload = bytes(body["name"]) + b"\0"
    elif op in _SIMPLE_IN:
        st, names = _SIMPLE_IN[op]
        payload = st.pack(*_vals(body, names))
    elif op == 16:
        data = bytes(body["data"])
        v = _vals(body, _WRITE_NAMES)
        v[2] = len(data) if body.get("size") is None else body["size"]
        payload = _READ_IN.pack(*v) + data
    elif op == 49:
        entries = body.get("entries") or []
        n = len(entries) if body.get("count") is None else body["count"]
        payload = struct.pack("<I", n) + b"".join(
            [_RM_ONE.pack(e.get("moffset") or 0, e.get("len") or 0) for e in entries])
    elif op == 26:
        payload = _INIT_IN.pack(*_vals(body, _INIT_IN_NAMES), *(body.get("unused") or [0] * 11))
    else:
        raise ValueError(op)
    return _IN.pack(40 + len(payload), op, unique, nodeid, 0, 0, 0, 0, 0) + payload


def baseline_encode_reply(op: int, body, unique: int) -> bytes:
    if op == 1:
        payload = _ENTRY.pack(*_entry_vals(body))
    elif op == 3:
        payload = _ATTR_OUT.pack(*_vals(body, ("attr_valid", "attr_valid_nsec", "dummy")),
                                 *_vals(body.get("attr") or {}, _ATTR_NAMES))
    elif op == 15:
        payload = bytes(body["data"])
    elif op == 16:
        payload = _WRITE_OUT.pack(*_vals(body, ("size", "padding")))
    elif op == 44:
        out = []
        for rec in body["entries"]:
            d = rec["dirent"]
            name = bytes(d["name"])
            out.append(_ENTRY.pack(*_entry_vals(rec.get("entry_out") or {})))
            out.append(_DIRENT.pack(d.get("ino") or 0, d.get("off") or 0, len(name),
                                    d.get("type") or 0))
            out.append(name + b"\0" * (-(152 + len(name)) % 8))
        payload = b"".join(out)
    elif op == 26:
        payload = _INIT_OUT.pack(*_vals(body, _INIT_OUT_NAMES), *(body.get("unused") or [0] * 11))
    elif body is None or not body:
        payload = b""
    else:
        raise ValueError(op)
    return _OUT.pack(16 + len(payload), 0, unique) + payload


def run_encode_fuseproto(items) -> None:
    ereq, erep = codec.encode_request, codec.encode_reply
    for kind, op, body, req, unique, _ in items:
        if kind == "request":
            ereq(op, body, unique=unique, nodeid=2)
        else:
            erep(req, body, unique=unique)


def run_encode_baseline(items) -> None:
    for kind, op, body, _, unique, _ in items:
        if kind == "request":
            baseline_encode_request(int(op), body, unique, 2)
        else:
            baseline_encode_reply(int(op), body, unique)


def check_same_bytes(items) -> None:
    for kind, op, body, _, unique, data in items:
        if kind == "request":
            got = baseline_encode_request(int(op), body, unique, 2)
        else:
            got = baseline_encode_reply(int(op), body, unique)
        assert got == data, (kind, op, got.hex(), data.hex())


# --- measurement -------------------------------------------------------------------------


def run_fuseproto(msgs) -> None:
    dreq, drep = codec.decode_request, codec.decode_reply
    for kind, data, req in msgs:
        if kind == "request":
            dreq(data)
        else:
            drep(data, req)


def run_baseline(msgs) -> None:
    for kind, data, req in msgs:
        if kind == "request":
            baseline_request(data)
        else:
            baseline_reply(data, int(req.opcode))


def check_same_fields(msgs) -> None:
    for kind, data, req in msgs:
        if kind == "request":
            m = codec.decode_request(data)
            h, b = baseline_request(data)
        else:
            m = codec.decode_reply(data, req)
            h, b = baseline_reply(data, int(req.opcode))
        assert m.header == h, (m.header, h)
        assert m.body == b, (kind, req, m.body, b)


def rate(fn, msgs, seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        fn(msgs)
        n += len(msgs)
        t = time.perf_counter()
        if t >= deadline:
            return n / (t - t0)


def measure(seconds: float = 2.0, rounds: int = 3) -> tuple[float, float]:
    msgs = build_mix()
    check_same_fields(msgs)
    best_f = best_b = 0.0
    for _ in range(rounds):  # interleaved, best of each, so both see the same machine state
        best_b = max(best_b, rate(run_baseline, msgs, seconds / rounds))
        best_f = max(best_f, rate(run_fuseproto, msgs, seconds / rounds))
    return best_f, best_b


def measure_encode(seconds: float = 2.0, rounds: int = 3) -> tuple[float, float]:
    items: list = []
    build_mix(items)
    check_same_bytes(items)
    best_f = best_b = 0.0
    for _ in range(rounds):
        best_b = max(best_b, rate(run_encode_baseline, items, seconds / rounds))
        best_f = max(best_f, rate(run_encode_fuseproto, items, seconds / rounds))
    return best_f, best_b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    f, b = measure(args.seconds)
    print(f"mix: {len(build_mix())} messages (requests and replies)")
    print(f"baseline struct.unpack_from: {b:12,.0f} msg/s")
    print(f"fuseproto decode:            {f:12,.0f} msg/s")
    print(f"ratio fuseproto/baseline:    {f / b:12.2f}x  (target >= 0.50x)")
    f, b = measure_encode(args.seconds)
    print(f"baseline struct.pack:        {b:12,.0f} msg/s")
    print(f"fuseproto encode:            {f:12,.0f} msg/s")
    print(f"encode ratio:                {f / b:12.2f}x")
    return 0


# --- pytest-benchmark entry points ----------------------------------------------------------


def test_bench_fuseproto(benchmark):
    msgs = build_mix()
    benchmark(run_fuseproto, msgs)


def test_bench_baseline(benchmark):
    msgs = build_mix()
    benchmark(run_baseline, msgs)


def test_bench_encode_fuseproto(benchmark):
    items: list = []
    build_mix(items)
    benchmark(run_encode_fuseproto, items)


def test_bench_encode_baseline(benchmark):
    items: list = []
    build_mix(items)
    check_same_bytes(items)
    benchmark(run_encode_baseline, items)


if __name__ == "__main__":
    raise SystemExit(main())
