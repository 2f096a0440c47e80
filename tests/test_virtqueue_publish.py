"""The avail ring is published with single stores the device can read at any moment.

Regression: ``Struct.pack_into`` memset()s its destination before writing, so storing
avail.idx with it let a concurrent reader see 0. libvhost-user (the C virtiofsd) then
panicked with "Guest moved used index from N to 0" and the Rust daemon stopped serving
the queue; it showed only when requests were added while the daemon was reading the
ring (a sliding window of requests in flight), never with submit-all-then-kick batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque

import pytest
from test_vhost_user import _getattr_body

from fuseproto.client import Client
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.transport.virtqueue import U16, VIRTQ_USED_ELEM, GuestMemory, SplitVirtqueue
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

# A reader in another process (the device's view): map the memfd, read avail.idx as fast
# as it can until told to stop, report every value that went backwards (a torn or
# transient store) and how many reads it made.
_WATCHER = r"""
import mmap, os, struct, sys
fd, off, stop = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mm = mmap.mmap(fd, 0)
u = struct.Struct("<H").unpack_from
sys.stdout.write("ready\n"); sys.stdout.flush()
last, reads, back = 0, 0, []
while True:
    for _ in range(4096):
        v = u(mm, off)[0]
        if (v - last) & 0xFFFF > 0x8000:
            back.append((last, v))
        last = v
    reads += 4096
    if u(mm, stop)[0] == 0xDEAD or len(back) > 10:
        break
print(reads, back)
"""


def test_avail_idx_never_seen_going_back():
    mem = GuestMemory(1 << 20)
    vq = SplitVirtqueue(mem, 1, 256)
    stop_off = mem.carve(4096)  # the watcher's stop flag, in a page of its own
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(mem.fd), str(vq.avail_off + 2),
         str(stop_off)],
        pass_fds=(mem.fd,), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Publish 300k chains, each returned at once as the device would (used ring
        # entry, used.idx) and collected: avail.idx wraps 4 times.
        used = 0
        for _ in range(300_000):
            req = vq.add((b"x" * 48,), (128,))
            VIRTQ_USED_ELEM.pack_into(mem.mm, vq.used_off + 4 + 8 * (used & 255), req.head, 0)
            used = (used + 1) & 0xFFFF
            U16.pack_into(mem.mm, vq.used_off + 2, used)
            (done,) = vq.collect()
            vq.take_reply(done)
        assert mem.allocated == 0 and not vq.inflight
        mem.u16[stop_off >> 1] = 0xDEAD
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        mem.close()
    reads, back = out.split(" ", 1)
    assert int(reads) > 0
    assert back.strip() == "[]", f"the device saw avail.idx go back: {back.strip()}"


@pytest.mark.daemon
def test_sliding_window_of_32_in_flight(no_leaks, installation, shared_dir):
    """32 GETATTRs always in flight, each new one published (and kicked) while the daemon
    is serving the others: the pattern that exposed the transient zero."""
    ino = os.stat(shared_dir).st_ino
    with VhostUserTransport.spawn(installation, shared_dir, queue_size=256) as t:
        c = Client(t)
        c.init()
        op = fuse_opcode.FUSE_GETATTR
        window = deque(c.submit(op, _getattr_body(), nodeid=FUSE_ROOT_ID) for _ in range(32))
        for _ in range(30_000):
            assert c.result(window.popleft()).attr.ino == ino
            window.append(c.submit(op, _getattr_body(), nodeid=FUSE_ROOT_ID))
        while window:
            assert c.result(window.popleft()).attr.ino == ino
        assert t.daemon.running()
