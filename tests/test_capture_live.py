"""Record real traffic to a pcap through the vhost-user transport's tap, then decode it.

Every message a real virtiofsd exchanged with the client must decode and every reply pair
with its request; the file must hold exactly the bytes that crossed the rings, in order,
and each decoded message must re-encode to them; the CLI must read the file too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fuseproto.capture import CaptureRecorder, decode_capture
from fuseproto.client import Client
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire import codec
from fuseproto.wire.constants import FUSE_KERNEL_MINOR_VERSION, FUSE_ROOT_ID, fuse_opcode

pytestmark = pytest.mark.daemon


def test_recorded_session_decodes_and_pairs(installation, shared_dir, scratch_dir, no_leaks):
    with open(os.path.join(shared_dir, "hello.txt"), "wb") as f:
        f.write(b"hello, virtio-fs\n" * 100)
    pcap = os.path.join(scratch_dir, "live.pcap")
    rec = CaptureRecorder(pcap)
    crossed: list[tuple[int, int, bytes]] = []  # what the transport handed the tap

    def tap(direction: int, queue: int, data: bytes) -> None:
        crossed.append((direction, queue, bytes(data)))
        rec(direction, queue, data)

    t = VhostUserTransport.spawn(installation, shared_dir, tap=tap)
    try:
        c = Client(t)
        c.init()
        rec.minor = c.session.minor
        entry = c.lookup(FUSE_ROOT_ID, "hello.txt")
        c.getattr(entry.nodeid)
        fh = c.open(entry.nodeid).fh
        data = c.read(entry.nodeid, fh, 0, 4096)
        c.release(entry.nodeid, fh)
        dfh = c.opendir(FUSE_ROOT_ID).fh
        c.readdirplus(FUSE_ROOT_ID, dfh)
        c.releasedir(FUSE_ROOT_ID, dfh)
        c.statfs()
    finally:
        t.close()
        rec.close()
    assert data == (b"hello, virtio-fs\n" * 100)[:4096]

    msgs = list(decode_capture(pcap))
    assert msgs, "nothing was recorded"
    bad = [m for m in msgs if m.error is not None]
    assert not bad, [(m.index, m.kind, str(m.error)) for m in bad]
    requests = [m for m in msgs if m.kind == "request"]
    replies = [m for m in msgs if m.kind == "reply"]
    assert len(requests) == len(replies) == 10
    assert all(m.paired for m in replies)
    ops = [m.opcode for m in requests]
    assert ops[0] == fuse_opcode.FUSE_INIT and fuse_opcode.FUSE_READDIRPLUS in ops
    read_reply = next(m for m in replies if m.opcode == fuse_opcode.FUSE_READ)
    assert read_reply.message.body.data == data
    # Lossless: the file holds what crossed the rings, record for record (direction,
    # queue, bytes), and nothing else.
    assert [(m.direction, m.queue, m.raw) for m in msgs] == crossed
    assert [d for d, _, _ in crossed] == [0, 1] * 10  # one request, then its reply
    # And decoding loses nothing: each message re-encodes to the bytes it came from (at
    # the minor it was decoded at: INIT before negotiation, the rest after).
    for m in msgs:
        h = m.message.header
        minor = FUSE_KERNEL_MINOR_VERSION if m.opcode == fuse_opcode.FUSE_INIT else c.session.minor
        if m.kind == "request":
            again = codec.encode_request(
                h.opcode, m.message.body, unique=h.unique, nodeid=h.nodeid, uid=h.uid,
                gid=h.gid, pid=h.pid, minor=minor, ext=m.message.ext, padding=h.padding)
        else:
            again = codec.encode_reply(m.message.request, m.message.body, unique=h.unique,
                                       error=h.error, minor=minor)
        assert again == m.raw, (m.index, m.kind, m.opcode)

    out = subprocess.run([sys.executable, "-m", "fuseproto", "decode", pcap],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "FUSE_READDIRPLUS" in out.stdout and "FUSE_INIT" in out.stdout
