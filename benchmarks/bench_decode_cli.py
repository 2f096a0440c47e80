"""Capture decoding rate: `fuseproto decode` on a large capture beside the raw decoder.

Writes a capture of N request/reply pairs (a realistic mix: LOOKUP, GETATTR, OPEN,
READ 4 KiB, WRITE 4 KiB, RELEASE, one INIT first) with the project's recorder, then
measures in the same run:

* raw: ``codec.decode_request`` / ``decode_reply`` over the same messages held in memory
  (the baseline: no file, no pairing);
* decode_capture: reading the pcap, the pseudo-headers, pairing by the Session, decoding;
* CLI: ``fuseproto decode FILE`` end to end (text lines to /dev/null), and ``-q`` (no
  per-message lines).

Prints messages/s and each figure's ratio to the raw baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from construct import Container

from fuseproto.capture import CaptureRecorder, Direction, decode_capture
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode as OP

ROOT = Path(__file__).resolve().parent.parent


def _attr() -> Container:
    return Container(ino=5, size=4096, blocks=8, atime=1, mtime=1, ctime=1, atimensec=0,
                     mtimensec=0, ctimensec=0, mode=0o100644, nlink=1, uid=0, gid=0, rdev=0,
                     blksize=4096, flags=0)


def messages(pairs: int) -> list[tuple[int, bytes]]:
    """(direction, bytes) of an INIT exchange and ``pairs`` request/reply pairs."""
    entry = Container(nodeid=5, generation=0, entry_valid=1, attr_valid=1, entry_valid_nsec=0,
                      attr_valid_nsec=0, attr=_attr())
    kinds = [
        (OP.FUSE_LOOKUP, Container(name=b"file.txt"), entry, 1),
        (OP.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0),
         Container(attr_valid=1, attr_valid_nsec=0, dummy=0, attr=_attr()), 5),
        (OP.FUSE_OPEN, Container(flags=0, open_flags=0),
         Container(fh=1, open_flags=0, backing_id=0), 5),
        (OP.FUSE_READ, Container(fh=1, offset=0, size=4096, read_flags=0, lock_owner=0,
                                 flags=0, padding=0), Container(data=bytes(4096)), 5),
        (OP.FUSE_WRITE, Container(fh=1, offset=0, size=None, write_flags=0, lock_owner=0,
                                  flags=0, padding=0, data=bytes(4096)),
         Container(size=4096, padding=0), 5),
        (OP.FUSE_RELEASE, Container(fh=1, flags=0, release_flags=0, lock_owner=0), None, 5),
    ]
    init_in = Container(major=7, minor=46, max_readahead=131072, flags=0, flags2=0,
                        unused=[0] * 11)
    init_out = Container(major=7, minor=46, max_readahead=131072, flags=0, max_background=16,
                         congestion_threshold=12, max_write=1 << 20, time_gran=1,
                         max_pages=256, map_alignment=0, flags2=0, max_stack_depth=0,
                         request_timeout=0, unused=[0] * 11)
    out = [(Direction.REQUEST, codec.encode_request(OP.FUSE_INIT, init_in, unique=2)),
           (Direction.REPLY, codec.encode_reply(OP.FUSE_INIT, init_out, unique=2))]
    for i in range(pairs):
        op, body, reply, node = kinds[i % len(kinds)]
        unique = 4 + 2 * i
        out.append((Direction.REQUEST, codec.encode_request(op, body, unique=unique,
                                                            nodeid=node)))
        out.append((Direction.REPLY, codec.encode_reply(op, reply, unique=unique)))
    return out


def raw_rate(msgs: list[tuple[int, bytes]]) -> float:
    t0 = time.perf_counter()
    request = None
    for d, data in msgs:
        if d == Direction.REQUEST:
            request = codec.decode_request(data)
        else:
            codec.decode_reply(data, request)
    return len(msgs) / (time.perf_counter() - t0)


def capture_rate(path: str, n: int) -> float:
    t0 = time.perf_counter()
    count = sum(1 for m in decode_capture(path) if m.error is None)
    dt = time.perf_counter() - t0
    assert count == n, f"{n - count} messages failed to decode"
    return n / dt


def cli_rate(path: str, n: int, *extra: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fuseproto", "decode", path, *extra], cwd=ROOT,
                   stdout=subprocess.DEVNULL, check=True)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=50_000, help="request/reply pairs")
    args = ap.parse_args(argv)
    msgs = messages(args.pairs)
    with tempfile.TemporaryDirectory(prefix="fuseproto-bench-") as tmp:
        path = os.path.join(tmp, "large.pcap")
        with CaptureRecorder(path) as rec:
            for i, (d, data) in enumerate(msgs):
                rec(d, 1, data, 1_700_000_000_000_000_000 + i * 1000)
        size = os.path.getsize(path)
        n = len(msgs)
        raw = max(raw_rate(msgs) for _ in range(2))
        cap = capture_rate(path, n)
        cli = cli_rate(path, n)
        quiet = cli_rate(path, n, "-q")
    print(f"capture: {n} messages, {size / 1e6:.1f} MB")
    print(f"raw codec decode (baseline):   {raw:12,.0f} msg/s")
    for name, rate in (("decode_capture (pcap+pair)", cap), ("fuseproto decode (text)", cli),
                       ("fuseproto decode -q", quiet)):
        print(f"{name + ':':<30} {rate:12,.0f} msg/s  ({rate / raw:.2f}x of raw)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
