"""The recording proxy's data plane (``relay.c`` and its files): built, started, spoken to.

The relay is a small C program, one process per proxied session, that does what the
proxy does per request (see ``relay.c``'s opening comment): it waits on the kick and call
eventfds, reads the avail and used rings in its own read-only mapping of guest memory,
writes every request and reply to the pcap file with writev straight from that mapping,
and passes each kick and call on. :mod:`fuseproto.capture.proxy` (the control plane)
tells it what the vhost-user messages change and answers what only Python knows (the
INIT negotiation, the front-end messages a kick must not overtake).

Why a process and not a thread: a SIGKILL of the proxy cannot cut a record in half (the
kernel stops a large write() of a killed process part-way; the relay is not the process
killed, it finishes the record, sees its control socket close and exits), and a crash of
the C code cannot take the control plane down with it (the proxy goes on forwarding).

Building: ``gcc`` (a package setup installs) compiles the relay's files (:data:`SOURCES`)
on first use into fuseproto's cache (``~/.cache/fuseproto/relay/``), keyed by the hash of
every one of them and the flags, so an edited file is rebuilt and a cached binary is never
stale. Nothing is compiled at import time.

The interface (commands, events, the CONFIG fields) is declared once, in ``relay.h``'s
X-macro lists, which this module reads from the source; the layouts the relay fills in
(the pcap record header, the capture pseudo-header, the FUSE header fields, the split
ring) come from the modules that own them (:mod:`.pcap`, :mod:`.frames`,
:mod:`fuseproto.wire.structs`, :mod:`fuseproto.transport.virtqueue`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import FuseprotoError
from ..transport import virtqueue as vq
from ..transport.vhost_user_proto import VIRTIO_F_RING_EVENT_IDX
from ..wire import structs
from ..wire.constants import fuse_opcode
from .frames import (
    FLAG_MINOR_VALID,
    FLAG_OPCODE_VALID,
    FRAME_FIELDS,
    FRAME_HEADER,
    Direction,
    pack_frame,
)
from .pcap import DEFAULT_MAX_CAPLEN, RECORD_FIELDS, RECORD_HEADER, field_layout

__all__ = ["MAX_RECORD", "MIN_READ", "Event", "Relay", "RelayError", "executable"]

SOURCE_DIR = Path(__file__).parent
# The relay's files: the header first (the interface lists), then the C files compiled.
SOURCES = ("relay.h", "relay.c", "relay_util.c", "relay_mem.c", "relay_out.c", "relay_ring.c")
CFLAGS = ("-O2", "-g", "-std=gnu11", "-Wall", "-Wextra")  # (tests add -Werror)
# The largest message recorded whole: larger requests (a hostile or broken descriptor
# length) are noted, not read.
MAX_RECORD = DEFAULT_MAX_CAPLEN
# Read at least this much of an INIT whatever the snaplen: the proxy decodes INIT pairs to
# learn the minor.
MIN_READ = 256
INIT_DATA_MAX = 1 << 16  # bytes of an INIT handed to Python at most
MAX_INITS = 8  # INIT requests whose reply is awaited, at most
MAX_OPCODES = 4096  # the recorder's opcode hints: uniques remembered (CaptureRecorder's)
MAX_QUEUE_SIZE = 32768  # virtio 1.x 2.7: Queue Size is at most 32768
ANSWER_TIMEOUT = 5.0  # the relay waits this long for Python's answer about an INIT
# While a driver with requests in flight has its interrupts off (it drains the used ring
# on its own: VIRTQ_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX a used_event other than the next
# entry), the relay reads the rings every HOT_INTERVAL seconds (else every --scan-interval):
# a Linux guest draining its used ring takes replies no call announced and reuses their
# buffers within a fraction of a millisecond (measured through QEMU/TCG: up to ~20 of ~190
# READ replies lost per run at 1 ms, none at 50 us).
HOT_INTERVAL = 50e-6
MSG = struct.Struct("<IIQQQQ")  # relay.h's struct msg
_U64 = struct.Struct("<Q")


class RelayError(FuseprotoError):
    """The relay cannot be built or started, or stopped answering."""


@dataclass(frozen=True)
class Event:
    """One event from the relay: ``kind`` INIT / DEFERRED / LOG / SYNCED / STATS."""

    kind: str
    queue: int
    a: int
    b: int
    data: bytes


# -- the interface, read from relay.h --------------------------------------------------------

@cache
def _abi() -> dict[str, tuple[str, ...]]:
    text = (SOURCE_DIR / SOURCES[0]).read_text()
    out = {}
    for name in ("COMMANDS", "EVENTS", "STATS_FIELDS", "CONFIG_FIELDS"):
        m = re.search(rf"^#define {name}\(X\)((?:.*\\\n)*.*)$", text, re.M)
        if m is None:
            raise RelayError(f"relay.h declares no {name}")
        out[name] = tuple(re.findall(r"X\((\w+)\)", m.group(1)))
    return out


def _numbers(name: str) -> dict[str, int]:
    return {n: i + 1 for i, n in enumerate(_abi()[name])}


# -- building ----------------------------------------------------------------------------------

def _cache_dir() -> Path:
    from ..daemons.archive import cache_root

    return cache_root() / "relay"


def compile_units() -> list[str]:
    """The C files the relay is linked from (paths)."""
    return [str(SOURCE_DIR / n) for n in SOURCES if n.endswith(".c")]


def executable() -> Path:
    """The relay binary for these sources, built now if the cache has none. Raises
    RelayError (no compiler, or the relay does not build)."""
    digest = hashlib.sha256()
    for name in SOURCES:  # (each file's name and length too: no two splits hash alike)
        data = (SOURCE_DIR / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    cc = os.environ.get("CC", "gcc")
    digest.update("\0".join((cc, *CFLAGS)).encode())
    key = digest.hexdigest()[:16]
    path = _cache_dir() / f"relay-{key}"
    if os.access(path, os.X_OK):
        return path
    if shutil.which(cc) is None:
        raise RelayError(f"the capture proxy's data plane (relay.c) is built with {cc}, "
                         "which is not installed (scripts/setup.sh installs gcc)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".relay-", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *CFLAGS, "-o", tmp, *compile_units()],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RelayError(f"building the relay with {cc} failed:\n"
                             f"{proc.stderr[-4000:]}")
        os.replace(tmp, path)  # atomic: a concurrent build installs the same bytes
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


# -- the configuration ---------------------------------------------------------------------------

def _config(*, snaplen: int | None, scan_interval: float, idle_interval: float,
            rekick_first: float, rekick_max: float, minor: int | None,
            has_vmm: bool) -> bytes:
    rec = field_layout(RECORD_HEADER, RECORD_FIELDS)
    frame = {k: (off + RECORD_HEADER.size, size)
             for k, (off, size) in field_layout(FRAME_HEADER, FRAME_FIELDS).items()}
    template = bytes(RECORD_HEADER.size) + pack_frame(0, 0, b"")
    desc = field_layout(vq.VIRTQ_DESC, ("addr", "len", "flags", "next"))
    used = field_layout(vq.VIRTQ_USED_ELEM, ("id", "len"))
    fin = {n: (off, size) for n, off, size in structs.layout("fuse_in_header")}
    fout = {n: (off, size) for n, off, size in structs.layout("fuse_out_header")}
    values: dict[str, int] = {
        "msg_size": MSG.size, "template_len": len(template),
        "ts_frac_div": 1,  # PcapWriter's default: nanosecond timestamps
        "frame_len": FRAME_HEADER.size,
        "flag_opcode_valid": FLAG_OPCODE_VALID, "flag_minor_valid": FLAG_MINOR_VALID,
        "dir_request": Direction.REQUEST, "dir_reply": Direction.REPLY,
        "dir_annotation": Direction.ANNOTATION,
        "in_size": structs.FAST["fuse_in_header"].size,
        "out_size": structs.FAST["fuse_out_header"].size,
        "op_init": fuse_opcode.FUSE_INIT, "op_cuse_init": fuse_opcode.CUSE_INIT,
        "desc_size": vq.VIRTQ_DESC.size,
        "f_next": vq.VIRTQ_DESC_F_NEXT, "f_write": vq.VIRTQ_DESC_F_WRITE,
        "f_indirect": vq.VIRTQ_DESC_F_INDIRECT,
        "avail_idx_off": vq.VIRTQ_AVAIL_IDX, "avail_ring_off": vq.VIRTQ_AVAIL_RING,
        "used_idx_off": vq.VIRTQ_USED_IDX, "used_ring_off": vq.VIRTQ_USED_RING,
        "used_elem_size": vq.VIRTQ_USED_ELEM.size, "max_queue_size": MAX_QUEUE_SIZE,
        "limit": min(snaplen, MAX_RECORD) if snaplen is not None else MAX_RECORD,
        "max_record": MAX_RECORD, "min_read": MIN_READ, "max_opcodes": MAX_OPCODES,
        "max_inits": MAX_INITS, "init_data_max": INIT_DATA_MAX,
        "scan_interval_ns": round(scan_interval * 1e9),
        "idle_interval_ns": round(idle_interval * 1e9),
        "hot_interval_ns": round(HOT_INTERVAL * 1e9),
        "avail_flags_off": 0,  # virtq_avail { le16 flags; le16 idx; ... } (virtqueue.py)
        "f_no_interrupt": vq.VIRTQ_AVAIL_F_NO_INTERRUPT,
        "f_event_idx": VIRTIO_F_RING_EVENT_IDX,
        "rekick_first_ns": round(rekick_first * 1e9),
        "rekick_max_ns": round(rekick_max * 1e9),
        "answer_timeout_ns": round(ANSWER_TIMEOUT * 1e9),
        "minor": -1 if minor is None else minor, "has_vmm": int(has_vmm),
    }
    for prefix, layout in (("", rec), ("", frame), ("desc_", desc), ("used_", used),
                           ("in_", fin), ("out_", fout)):
        for field, (off, size) in layout.items():
            values[f"{prefix}{field}_off"] = off
            values[f"{prefix}{field}_size"] = size
    names = _abi()["CONFIG_FIELDS"]
    missing = [n for n in names if n not in values]
    if missing:
        raise RelayError(f"relay.h asks for configuration fields this module does not "
                         f"know: {missing}")
    return b"".join(_U64.pack(values[n] & 0xFFFFFFFFFFFFFFFF) for n in names) + template


# -- the relay process ----------------------------------------------------------------------------

class Relay:
    """One relay process writing records to ``out_fd`` (a pcap file whose header is
    written; the relay appends). ``vmm_fd``: the VMM's vhost-user socket (the relay only
    polls it: a kick never overtakes a message waiting there); None in tests.

    ``on_event`` is called with each INIT, DEFERRED or LOG event while :meth:`sync` or
    :meth:`finish` wait for theirs (the owner's loop calls :meth:`events` otherwise)."""

    def __init__(self, out_fd: int, *, vmm_fd: int | None = None, snaplen: int | None = None,
                 scan_interval: float = 0.001, idle_interval: float = 0.02,
                 rekick_first: float = 0.25, rekick_max: float = 1.0,
                 minor: int | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.cmd = _numbers("COMMANDS")
        self._events = {v: k for k, v in _numbers("EVENTS").items()}
        self.on_event = on_event
        self.dead: str | None = None  # why the relay is gone, once it is
        config = _config(snaplen=snaplen, scan_interval=scan_interval,
                         idle_interval=idle_interval, rekick_first=rekick_first,
                         rekick_max=rekick_max, minor=minor, has_vmm=vmm_fd is not None)
        exe = executable()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen([str(exe), str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise RelayError(f"cannot start the relay: {e}") from e
        finally:
            theirs.close()
        self.sock = ours
        self._seq = 0
        fds = [out_fd] if vmm_fd is None else [out_fd, vmm_fd]
        self.send("CONFIG", payload=config, fds=fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: str, queue: int = 0, a: int = 0, b: int = 0, c: int = 0, d: int = 0,
             *, payload: bytes = b"", fds: Sequence[int] = ()) -> bool:
        """One command; False if the relay is gone (nothing is sent then)."""
        if self.dead is not None:
            return False
        m = MSG.pack(self.cmd[kind], queue, a & 0xFFFFFFFFFFFFFFFF, b, c, d) + payload
        try:
            if fds:
                socket.send_fds(self.sock, [m], list(fds))
            else:
                self.sock.send(m)
        except OSError as e:
            self._lost(f"control socket: {e}")
            return False
        return True

    def events(self) -> list[Event]:
        """The events waiting (without blocking)."""
        out = []
        while self.dead is None:
            try:
                raw = self.sock.recv(INIT_DATA_MAX + MSG.size + 64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as e:
                self._lost(f"control socket: {e}")
                break
            if not raw:
                self._lost("it closed its control socket")
                break
            t, q, a, b, _c, _d = MSG.unpack_from(raw)
            out.append(Event(self._events.get(t, str(t)), q, a, b, raw[MSG.size:]))
        return out

    def _lost(self, why: str) -> None:
        if self.dead is None:
            code = self.proc.poll()
            if code is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self.proc.wait(0.5)
            fate = ("still running" if code is None else
                    f"killed by signal {-code}" if code < 0 else f"exit code {code}")
            self.dead = f"{why} ({fate})"

    def wait_for(self, kind: str, timeout: float = 10.0) -> Event:
        """The next ``kind`` event; the others go to ``on_event`` meanwhile."""
        import select

        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events():
                if ev.kind == kind:
                    return ev
                if self.on_event is not None:
                    self.on_event(ev)
            if self.dead is not None:
                raise RelayError(f"the relay is gone: {self.dead}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RelayError(f"no {kind} from the relay in {timeout} s")
            select.select([self.sock], [], [], left)

    def sync(self, timeout: float = 10.0) -> None:
        """Return once the relay has carried out every command sent before (and written
        what they recorded)."""
        self._seq += 1
        self.send("SYNC", a=self._seq)
        while self.wait_for("SYNCED", timeout).a != self._seq:
            pass

    def finish(self, timeout: float = 10.0) -> dict[str, int]:
        """Read every ring a last time; the relay's counters (empty if it is gone)."""
        if not self.send("FINISH"):
            return {}
        try:
            ev = self.wait_for("STATS", timeout)
        except RelayError:
            return {}
        names = _abi()["STATS_FIELDS"]
        return dict(zip(names, struct.unpack(f"<{len(names)}Q", ev.data), strict=True))

    def close(self, timeout: float = 5.0) -> str | None:
        """Close the control socket (the relay writes what it holds and exits) and reap
        it; a relay that does not exit is killed (by its PID). Returns what went wrong
        with it, if anything (it died on its way, or did not end cleanly)."""
        self.sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        code = self.proc.returncode
        trouble = self.dead
        if trouble is None and code != 0:
            trouble = (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        if self.dead is None:
            self.dead = "closed"
        return trouble
