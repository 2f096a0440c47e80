"""``fuseproto capture proxy``: a recording vhost-user proxy between a frontend and a real
virtiofsd.

Our own frontend (VhostUserTransport + Client) plays the VMM and connects to the proxy's
listening socket; the proxy (the CLI, in a child process, as a user runs it) connects to a
real daemon (c, rust; c-dax with DAX for the backend channel). The frontend's tap is the
ground truth of what crossed the rings. Checked:

* every request and reply the client made is in the pcap, byte for byte and in order, the
  pcap decodes with `fuseproto decode` (every reply paired, zero errors) and carries the
  queue and the minor INIT negotiated;
* replies through the proxy are byte-identical to those of a direct connection;
* the daemon exits cleanly (code 0) when the frontend disconnects, and the proxy exits 0;
* SIGTERM (and SIGKILL) leave a valid pcap;
* what the proxy cannot read becomes an annotation record and the traffic continues
  (a broken INIT through a real daemon; malformed chains in real mapped memory are
  tests/test_capture_relay_*.py's);
* c-dax: FS_MAP / FS_UNMAP on the backend channel are forwarded (the window is filled) and
  recorded as annotations.

The frontend uses mode="interrupt" (it reads the used ring only after a call, as a guest
driver waiting for its interrupt): a driver that looks at the used ring before the proxy
forwards the call may take a reply and reuse its buffer first (the proxy annotates such a
loss; see fuseproto/capture/proxy.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fixtures_daemons import built_installation

from fuseproto import daemons, scratch
from fuseproto.capture import decode_capture
from fuseproto.capture.frames import Direction
from fuseproto.client import DEFAULT_INIT_FLAGS, Client
from fuseproto.dax.messages import FLAG_READ
from fuseproto.transport.backend import DaxMapHandler
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.transport.vhost_user_proto import VhostUserProtocolFeature
from fuseproto.transport.window import Window
from fuseproto.wire import codec
from fuseproto.wire.constants import FUSE_ROOT_ID, InitFlags, fuse_opcode

pytestmark = pytest.mark.daemon

PY = sys.executable
MiB = 1 << 20


# -- the proxy as a user runs it ----------------------------------------------------------

class Proxy:
    """``fuseproto capture proxy`` in a child process, ready when this returns (its
    --ready-fd said so); stopped by PID afterwards if it is still running."""

    def __init__(self, scratch: str, *args: str) -> None:
        self.listen = os.path.join(scratch, "vmm.sock")
        self.pcap = os.path.join(scratch, "proxy.pcap")
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [PY, "-m", "fuseproto", "capture", "proxy", "--listen", self.listen,
             "-w", self.pcap, "--ready-fd", str(w), *args],
            stderr=subprocess.PIPE, text=True, pass_fds=(w,))
        os.close(w)
        try:
            ready = select.select([r], [], [], 30)[0]
            line = os.read(r, 100) if ready else b""
        finally:
            os.close(r)
        if line != b"ready\n":
            self.stop()
            raise AssertionError(f"proxy not ready: {line!r}; stderr:\n{self.stderr}")
        self.stderr = ""

    def wait(self, timeout: float = 20.0) -> int:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"proxy still running after {timeout} s") from None
        self.stderr = err
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: the one we started
        _, err = self.proc.communicate()
        self.stderr = err or ""


@pytest.fixture
def proxy_factory(scratch_dir) -> Iterator:
    made: list[Proxy] = []

    def make(*args: str) -> Proxy:
        p = Proxy(scratch_dir, *args)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def connect(path: str, **kw) -> VhostUserTransport:
    """Our frontend on the proxy's socket, once the C daemon's setup calls are through
    (libvhost-user signals each call fd once when it is set: a driver woken by that would
    look at the used ring before the proxy has read it)."""
    t = VhostUserTransport(path, mode="interrupt", timeout=10.0, **kw)
    poller = select.poll()
    for fd in t.call_fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + 0.3
    while (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(int(left * 1000) + 1):
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
    return t


class Tap:
    """What the frontend put on and took off the rings (direction, queue, bytes)."""

    def __init__(self) -> None:
        self.crossed: list[tuple[int, int, bytes]] = []

    def __call__(self, direction: int, queue: int, data: bytes) -> None:
        self.crossed.append((int(direction), queue, bytes(data)))


def make_tree(shared: str) -> None:
    with open(os.path.join(shared, "hello.txt"), "wb") as f:
        f.write(b"hello, proxy\n" * 20000)  # 260 KB
    os.mkdir(os.path.join(shared, "sub"))
    with open(os.path.join(shared, "sub", "small"), "wb") as f:
        f.write(b"x" * 100)
    # Access times in the future: reads in one run do not change what the next one sees.
    future = time.time() + 86400 * 365
    for path in (shared, os.path.join(shared, "sub"), os.path.join(shared, "hello.txt"),
                 os.path.join(shared, "sub", "small")):
        st = os.stat(path)
        os.utime(path, ns=(int(future * 1e9), st.st_mtime_ns))


def read_only_workload(c: Client) -> list[tuple[str, object]]:
    """Operations whose replies do not depend on the run (compared proxy vs direct)."""
    out: list[tuple[str, object]] = []
    out.append(("init", c.init()))
    e = c.lookup(FUSE_ROOT_ID, "hello.txt")
    out.append(("lookup", e))
    out.append(("getattr", c.getattr(e.nodeid)))
    fh = c.open(e.nodeid).fh
    out.append(("read 4k", c.read(e.nodeid, fh, 0, 4096)))
    out.append(("read 128k", c.read(e.nodeid, fh, 4096, 128 << 10)))
    # x8 in flight at once (one kick each, several used entries per call)
    pend = [c.submit_read(e.nodeid, fh, i * 8192, 8192) for i in range(8)]
    out.extend((f"read x8 #{i}", c.result(p)) for i, p in enumerate(pend))
    c.release(e.nodeid, fh)
    d = c.lookup(FUSE_ROOT_ID, "sub")
    dfh = c.opendir(d.nodeid).fh
    out.append(("readdirplus", c.readdirplus(d.nodeid, dfh)))
    c.releasedir(d.nodeid, dfh)
    out.append(("lookup missing", _errno(lambda: c.lookup(FUSE_ROOT_ID, "nope"))))
    c.forget(d.nodeid)  # hiprio queue, no reply
    return out


def mutating_workload(c: Client) -> None:
    """Recorded, not compared (timestamps differ from run to run)."""
    n = c.mkdir(FUSE_ROOT_ID, "made").nodeid
    created = c.create(n, "f", flags=os.O_RDWR)
    c.write(created.nodeid, created.fh, 0, os.urandom(200_000))  # split writes: 3 segments
    c.fsync(created.nodeid, created.fh)
    c.release(created.nodeid, created.fh)
    c.unlink(n, "f")
    c.rmdir(FUSE_ROOT_ID, "made")


def _errno(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- the errno is the result
        return getattr(e, "errno", repr(e))


def recorded(pcap: str) -> list[tuple[int, int, bytes]]:
    msgs = list(decode_capture(pcap))
    bad = [(m.index, m.kind, str(m.error)) for m in msgs if m.error is not None]
    assert not bad, bad
    return [(int(m.direction), m.queue, m.raw) for m in msgs if m.kind != "annotation"]


def unique_of(message: bytes) -> int:
    return int.from_bytes(message[8:16], "little")


def lost_replies(pcap: str) -> set[int]:
    """Uniques of replies the proxy says it lost to buffer reuse."""
    out = set()
    for m in decode_capture(pcap):
        text = m.raw.decode() if m.kind == "annotation" else ""
        if "is not recorded" in text:
            out.add(int(text.split("the reply to unique ")[1].split()[0]))
    return out


def decode_cli(pcap: str) -> dict:
    p = subprocess.run([PY, "-m", "fuseproto", "decode", pcap, "--json", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary: dict = json.loads(p.stdout.strip().splitlines()[-1])["summary"]
    return summary


# -- the tests ------------------------------------------------------------------------------

def test_help_and_usage_errors(scratch_dir):
    h = subprocess.run([PY, "-m", "fuseproto", "capture", "proxy", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert h.returncode == 0 and "--ready-fd" in h.stdout and "--daemon-socket" in h.stdout
    base = [PY, "-m", "fuseproto", "capture", "proxy", "-w", os.path.join(scratch_dir, "x")]
    no_dir = subprocess.run([*base, "--listen", os.path.join(scratch_dir, "s"),
                             "--daemon", "rust"], capture_output=True, text=True, timeout=60)
    assert no_dir.returncode == 2 and "--shared-dir" in no_dir.stderr
    taken = os.path.join(scratch_dir, "taken")
    open(taken, "w").close()
    exists = subprocess.run([*base, "--listen", taken, "--daemon-socket", "/nonexistent"],
                            capture_output=True, text=True, timeout=60)
    assert exists.returncode == 2 and "already exists" in exists.stderr
    assert os.path.exists(taken)  # not ours to remove


def test_records_everything_and_changes_nothing(installation, shared_dir, scratch_dir,
                                                proxy_factory, no_leaks):
    make_tree(shared_dir)
    # Directly first: the replies to compare with.
    with VhostUserTransport.spawn(installation, shared_dir, mode="interrupt") as t:
        direct = read_only_workload(Client(t))

    proxy = proxy_factory("--daemon", installation.kind, "--shared-dir", shared_dir)
    tap = Tap()
    t = connect(proxy.listen, tap=tap, indirect=True)
    try:
        c = Client(t)
        via = read_only_workload(c)
        mutating_workload(c)
        minor = c.session.minor
    finally:
        t.close()
    assert proxy.wait() == 0, proxy.stderr
    assert "exited with code 0" in proxy.stderr, proxy.stderr  # the daemon's own exit

    # Replies through the proxy are the direct ones, byte for byte.
    assert [k for k, _ in via] == [k for k, _ in direct]
    for (what, a), (_, b) in zip(via, direct, strict=True):
        assert a == b, what

    # Every message the frontend moved is in the pcap with its queue: requests in the
    # order they were made available, replies in the order the daemon completed them
    # (the tap sees them in the order the client waited for them).
    got = recorded(proxy.pcap)
    assert [m for m in got if m[0] == Direction.REQUEST] == [
        m for m in tap.crossed if m[0] == Direction.REQUEST]
    replies = sorted(m for m in got if m[0] == Direction.REPLY)
    sent = sorted(m for m in tap.crossed if m[0] == Direction.REPLY)
    # With 8 READs in flight a call lets the client take replies the daemon published
    # after the proxy read the ring; if it reuses such a buffer before the proxy's next
    # look, that reply is lost -- and annotated, never recorded garbled.
    lost = lost_replies(proxy.pcap)
    assert [m for m in sent if unique_of(m[2]) not in lost] == replies
    assert len(lost) <= 8, lost
    assert any(q == 0 for _, q, _ in got)  # the FORGET on the hiprio queue
    assert any(len(data) > 128 << 10 for d, _, data in got if d == Direction.REPLY)
    # The minor INIT negotiated is in every pseudo-header after INIT's reply.
    msgs = list(decode_capture(proxy.pcap))
    assert msgs[0].opcode == fuse_opcode.FUSE_INIT
    from fuseproto.capture import read_records, unpack_frame
    hints = [unpack_frame(r.data).minor_hint for r in read_records(proxy.pcap)]
    assert hints[0] is None and set(hints[2:]) == {minor}
    summary = decode_cli(proxy.pcap)
    assert summary["decode_errors"] == 0 and summary["protocol_errors"] == 0
    assert {u["unique"] for u in summary["unpaired"]} == lost
    assert summary["kinds"]["request"] == sum(1 for d, _, _ in tap.crossed if d == 0)


@pytest.mark.parametrize("kind", ["c", "rust"])
def test_daemon_socket_daemon_exits_cleanly(kind, daemon_installations, shared_dir,
                                            scratch_dir, proxy_factory, no_leaks):
    """--daemon-socket: a daemon we started; when the frontend disconnects the proxy closes
    the daemon's connection, the daemon exits 0 and the proxy exits 0. The memory comes
    with ADD_MEM_REG, as QEMU sends it once CONFIGURE_MEM_SLOTS is agreed."""
    make_tree(shared_dir)
    d = daemons.Daemon(daemon_installations[kind], shared_dir,
                       os.path.join(scratch_dir, "daemon.sock"))
    d.start()
    try:
        proxy = proxy_factory("--daemon-socket", d.socket_path)
        with connect(proxy.listen, add_mem_reg=True) as t:
            assert t.negotiated.has(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS)
            c = Client(t)
            c.init()
            assert c.read(*_open(c, "hello.txt"), 0, 13) == b"hello, proxy\n"
        assert proxy.wait() == 0, proxy.stderr
        assert d.wait_exit(10) is not None, d.describe()
        assert d.returncode == 0, d.describe() + d.log_tail()
        assert "listening on" in proxy.stderr
    finally:
        d.cleanup()
    assert decode_cli(proxy.pcap)["kinds"] == {"request": 4, "reply": 4}
    assert recorded(proxy.pcap)[-1][2].endswith(b"hello, proxy\n")


def test_no_once_serves_the_next_connection_into_its_own_file(
        daemon_installations, shared_dir, scratch_dir, proxy_factory, no_leaks):
    """--no-once: each VMM connection gets a new daemon and its own capture file."""
    make_tree(shared_dir)
    proxy = proxy_factory("--daemon", "rust", "--shared-dir", shared_dir, "--no-once")
    for n in range(2):
        with connect(proxy.listen) as t:
            c = Client(t)
            c.init()
            assert c.lookup(FUSE_ROOT_ID, "sub").nodeid
            assert c.getattr(FUSE_ROOT_ID).attr.ino
        # the next connection waits until the proxy listens again
        deadline = time.monotonic() + 20
        while n == 0 and "session ended" not in _peek(proxy) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert proxy.proc.poll() is None  # still waiting for a third
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.wait() == 0, proxy.stderr
    said = proxy.said + proxy.stderr
    assert said.count("exited with code 0") == 2, said  # two daemons, each ended cleanly
    second = proxy.pcap.replace(".pcap", ".1.pcap")
    for path in (proxy.pcap, second):
        assert decode_cli(path)["kinds"] == {"request": 3, "reply": 3}, path


def _peek(proxy: Proxy) -> str:
    """What the proxy has said so far (its stderr, read without blocking)."""
    import fcntl
    fd = proxy.proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536).decode()
    except BlockingIOError:
        chunk = ""
    proxy.said = getattr(proxy, "said", "") + chunk
    return proxy.said


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_leaves_a_valid_capture(sig, daemon_installations, shared_dir, scratch_dir,
                                       proxy_factory, no_leaks):
    make_tree(shared_dir)
    proxy = proxy_factory("--daemon", "rust", "--shared-dir", shared_dir)
    tap = Tap()
    t = connect(proxy.listen, tap=tap)
    try:
        c = Client(t)
        c.init()
        for _ in range(20):
            c.getattr(FUSE_ROOT_ID)
        proxy.proc.send_signal(sig)
        rc = proxy.wait()
        # The frontend is told, not left hanging.
        with pytest.raises(Exception) as exc:  # noqa: PT011 -- TransportError or timeout
            c.getattr(FUSE_ROOT_ID)
        assert "closed" in str(exc.value) or "no reply" in str(exc.value)
    finally:
        t.close()
    if sig == signal.SIGTERM:
        assert rc == 0, proxy.stderr
        assert "capture closed" in proxy.stderr
        # The daemon it started is gone (stopped by PID, its socket directory removed).
        assert "rust virtiofsd pid" in proxy.stderr
    else:
        assert rc == -signal.SIGKILL
        # A killed proxy cannot clean up: its daemon exits when its connection closes
        # (the test waits for that, by PID); the daemon's directory (its socket and pid
        # file) stays until a later fuseproto process sweeps dead owners' scratch dirs.
        started = next(ln for ln in proxy.stderr.splitlines() if " started " in ln)
        pid = int(started.split(" pid ")[1].split()[0])
        left = os.path.dirname(started.rsplit(" on ", 1)[1])
        assert os.path.basename(left).startswith(f"fuseproto-proxy-p{proxy.proc.pid}-")
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}"), "the daemon outlived its connection"
        assert os.path.isdir(left)
        assert left in scratch.sweep(os.path.dirname(left))
        assert not os.path.exists(left)
    got = recorded(proxy.pcap)
    assert len(got) >= 42  # INIT + 20 GETATTR, requests and replies (one at a time)
    assert got[:42] == tap.crossed[:42]


def test_snaplen_records_the_first_bytes_only(daemon_installations, shared_dir,
                                             scratch_dir, proxy_factory, no_leaks):
    """--snaplen 64: large READ replies and WRITE requests are cut (their length kept),
    small messages are whole, and the capture still decodes and pairs with no error."""
    make_tree(shared_dir)
    proxy = proxy_factory("--daemon", "rust", "--shared-dir", shared_dir, "--snaplen", "64")
    with connect(proxy.listen) as t:
        c = Client(t)
        c.init()
        nodeid, fh = _open(c, "hello.txt")
        data = c.read(nodeid, fh, 0, 128 << 10)
        f = c.create(FUSE_ROOT_ID, "w", flags=os.O_RDWR)
        c.write(f.nodeid, f.fh, 0, b"y" * 5000)
    assert proxy.wait() == 0, proxy.stderr
    from fuseproto.capture import CaptureSummary
    s = CaptureSummary()
    msgs = list(decode_capture(proxy.pcap, summary=s))
    assert (s.decode_errors, s.protocol_errors, s.unpaired_requests) == (0, 0, [])
    read = next(m for m in msgs if m.kind == "reply" and m.opcode == fuse_opcode.FUSE_READ)
    assert (read.captured_len, read.orig_len) == (64, 16 + len(data))
    write = next(m for m in msgs if m.kind == "request" and m.opcode == fuse_opcode.FUSE_WRITE)
    assert write.orig_len == 40 + 40 + 5000 and write.message.body.size == 5000
    # Whatever is longer than 64 bytes is cut to 64 (INIT's pair among them), the rest whole.
    assert all(m.captured_len == 64 if m.truncated else m.captured_len <= 64 for m in msgs)
    assert s.truncated == sum(m.truncated for m in msgs) >= 4 and s.minor == 38
    assert not [m for m in msgs if m.kind == "annotation"]  # the proxy still read INIT


def test_unparseable_init_is_annotated_and_traffic_continues(daemon_installations,
                                                             shared_dir, scratch_dir,
                                                             proxy_factory, no_leaks):
    """An INIT whose body is cut short: the C daemon answers EINVAL, the proxy cannot
    decode it (so cannot learn a minor from it): an annotation, and the session goes on.
    (The Rust daemon drops such a request without a reply, so it is not used here.)"""
    make_tree(shared_dir)
    proxy = proxy_factory("--daemon", "c", "--shared-dir", shared_dir)
    with connect(proxy.listen) as t:
        body = {"major": 7, "minor": 46, "max_readahead": 0, "flags": 0, "flags2": 0,
                "unused": [0] * 11}
        full = codec.encode_request(fuse_opcode.FUSE_INIT, body, unique=99, length=44)
        reply = t.wait(t.submit(full[:44], 4096))
        assert codec.decode_reply(reply, fuse_opcode.FUSE_INIT).error < 0
        c = Client(t)
        c.init()
        assert c.read(*_open(c, "hello.txt"), 0, 13) == b"hello, proxy\n"
    assert proxy.wait() == 0, proxy.stderr
    msgs = list(decode_capture(proxy.pcap))
    notes = [m.raw.decode() for m in msgs if m.kind == "annotation"]
    assert len(notes) == 1 and "INIT request unique 99 does not decode" in notes[0], notes
    # The broken INIT is recorded as it was (it decodes with an error, so its reply pairs
    # with nothing); all else is clean.
    assert [(m.kind, m.unique) for m in msgs if m.error is not None] == [
        ("request", 99), ("reply", 99)]
    assert msgs[-1].kind == "reply" and msgs[-1].error is None
    assert msgs[-1].message.body.data == b"hello, proxy\n"


def _open(c: Client, name: str) -> tuple[int, int]:
    e = c.lookup(FUSE_ROOT_ID, name)
    return e.nodeid, c.open(e.nodeid).fh


def test_cdax_backend_channel_forwarded_and_annotated(shared_dir, scratch_dir,
                                                      proxy_factory, no_leaks):
    built_installation("c-dax")  # built on first use (cached)
    window_size = 8 * MiB
    data = os.urandom(3 * MiB)
    with open(os.path.join(shared_dir, "big"), "wb") as f:
        f.write(data)
    proxy = proxy_factory("--daemon", "c-dax", "--shared-dir", shared_dir,
                          "--dax-window", "8M")
    window = Window(window_size)
    handler = DaxMapHandler(window)
    try:
        with connect(proxy.listen, backend_handler=handler) as t:
            c = Client(t)
            out = c.init(flags=DEFAULT_INIT_FLAGS | InitFlags.FUSE_MAP_ALIGNMENT)
            assert out.flags & InitFlags.FUSE_MAP_ALIGNMENT
            nodeid, fh = _open(c, "big")
            c.setupmapping(nodeid, fh, 2 * MiB, 2 * MiB, 4 * MiB, flags=FLAG_READ)
            assert window.read(4 * MiB, 4096) == data[2 * MiB:2 * MiB + 4096]
            c.removemapping([(4 * MiB, 2 * MiB)])
            assert c.read(nodeid, fh, 0, 16) == data[:16]  # the queue still flows
    finally:
        window.close()
    assert proxy.wait() == 0, proxy.stderr
    assert [e.result for e in handler.events] == [0, 0]  # map and unmap carried out
    msgs = list(decode_capture(proxy.pcap))
    assert not [m for m in msgs if m.error is not None]
    notes = [m.raw.decode() for m in msgs if m.kind == "annotation"]
    assert any(n.startswith("backend FS_MAP need_reply fds=1: [fd_offset=0x200000 "
                            "cache_offset=0x400000 len=0x200000") for n in notes), notes
    assert "backend reply FS_MAP: 0" in notes
    assert any(n.startswith("backend FS_UNMAP") for n in notes), notes
    assert "backend reply FS_UNMAP: 0" in notes
    assert all(m.queue == 0xFFFF for m in msgs if m.kind == "annotation")
    ops = [m.opcode for m in msgs if m.kind == "reply"]
    assert fuse_opcode.FUSE_SETUPMAPPING in ops and fuse_opcode.FUSE_REMOVEMAPPING in ops
