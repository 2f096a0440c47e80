"""A kernel FUSE mount bridged to a real virtiofsd over vhost-user.

The kernel's requests are forwarded unchanged through :class:`DevFuseBridge` to a daemon
sharing a host directory; every reply is paired and decoded by the bridge's Session before
it reaches the kernel. Ordinary file operations on the mount must show up in the shared
directory and the other way round, and no request or reply may fail to decode.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fuseproto.bridge import DevFuseBridge
from fuseproto.transport.devfuse import DevFuseMount, find_mount_device, unavailable_reason
from fuseproto.wire.constants import fuse_opcode

_SKIP = unavailable_reason()

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.daemon,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

OP = fuse_opcode
CALL_TIMEOUT = 15.0


class Bridged:
    def __init__(self, mountpoint: str, shared: str, transport: Any) -> None:
        self.mountpoint = mountpoint
        self.shared = shared
        self.mount = DevFuseMount(mountpoint, subtype="fuseproto-bridge")
        self.bridge = DevFuseBridge(self.mount, transport, keep_messages=1 << 20)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fs-call")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future = self.pool.submit(fn, *args, **kwargs)
        try:
            return future.result(CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.mount.abort()
            pytest.fail(f"{fn!r}{args!r} did not return within {CALL_TIMEOUT}s; aborted")

    def m(self, *names: str) -> str:
        return os.path.join(self.mountpoint, *names)

    def h(self, *names: str) -> str:
        return os.path.join(self.shared, *names)


@pytest.fixture
def bridged(no_leaks: Any, installation: Any, scratch_dir: str) -> Iterator[Bridged]:
    from fuseproto.transport.vhost_user import VhostUserTransport

    shared = os.path.join(scratch_dir, "shared")
    mountpoint = os.path.join(scratch_dir, "mnt")
    os.mkdir(shared)
    os.mkdir(mountpoint)
    transport = VhostUserTransport.spawn(installation, shared, timeout=CALL_TIMEOUT)
    try:
        b = Bridged(mountpoint, shared, transport)
        b.mount.open()
        try:
            b.bridge.start()
            try:
                yield b
            finally:
                try:
                    b.mount.unmount()
                finally:
                    b.bridge.stop()
        finally:
            b.mount.close()
            b.pool.shutdown(wait=True, cancel_futures=True)
    finally:
        transport.close()
    assert find_mount_device(mountpoint) is None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())


def test_kernel_mount_bridged_to_virtiofsd(bridged: Bridged) -> None:
    b = bridged
    call = b.call
    assert call(os.listdir, b.mountpoint) == []

    # Mount -> host.
    payload = os.urandom(300_000)
    call(_write, b.m("through-bridge.bin"), payload)
    assert _read(b.h("through-bridge.bin")) == payload
    call(os.mkdir, b.m("d"))
    call(os.rename, b.m("through-bridge.bin"), b.m("d", "moved.bin"))
    assert os.path.isfile(b.h("d", "moved.bin"))
    call(os.symlink, "d/moved.bin", b.m("link"))
    assert os.readlink(b.h("link")) == "d/moved.bin"
    call(os.setxattr, b.m("d", "moved.bin"), "user.k", b"v")
    assert os.getxattr(b.h("d", "moved.bin"), "user.k") == b"v"
    call(os.truncate, b.m("d", "moved.bin"), 10)
    assert os.path.getsize(b.h("d", "moved.bin")) == 10

    # Host -> mount.
    with open(b.h("from-host.txt"), "wb") as f:
        f.write(b"written on the host\n")
    assert call(_read, b.m("from-host.txt")) == b"written on the host\n"
    assert sorted(call(os.listdir, b.mountpoint)) == ["d", "from-host.txt", "link"]
    assert call(os.readlink, b.m("link")) == "d/moved.bin"
    assert call(os.getxattr, b.m("d", "moved.bin"), "user.k") == b"v"
    st = call(os.stat, b.m("d", "moved.bin"))
    assert stat.S_ISREG(st.st_mode) and st.st_size == 10
    assert call(os.statvfs, b.mountpoint).f_bsize > 0

    call(os.unlink, b.m("link"))
    call(os.unlink, b.m("d", "moved.bin"))
    call(os.rmdir, b.m("d"))
    assert sorted(os.listdir(b.shared)) == ["from-host.txt"]

    stats = b.bridge.stats
    assert not stats.failures, stats.failures[:5]
    seen = {m.request.opcode for m in stats.messages}
    assert all(isinstance(op, fuse_opcode) for op in seen)
    assert {OP.FUSE_INIT, OP.FUSE_LOOKUP, OP.FUSE_WRITE, OP.FUSE_READ, OP.FUSE_RENAME} <= seen
    # (accepted is None only while the last write is still returning in the server thread)
    rejected = [m.request for m in stats.messages if m.accepted is False]
    assert not rejected, rejected
    assert b.bridge.session.initialized and not b.bridge.session.pending
