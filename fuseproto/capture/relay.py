"""The recording proxy's data plane (``relay.c`` and its files): built, started, spoken to.

The relay is a small C program, one process per proxied session, that does what the
proxy does per request (see ``relay.c``'s opening comment): it waits on the kick and call
eventfds, reads the avail and used rings in its own mapping of guest memory, has a writer
thread write every request and reply to the pcap file (relay_out.c: requests copied into
a staging ring first; a shadowed queue's replies written from the guest's buffers),
passes each kick on, and publishes the daemon's used entries (in the shadow,
:class:`ShadowRings`) to the guest once their replies are written, calling it as it asked
(relay_shadow.c).
:mod:`fuseproto.capture.proxy` (the control plane) tells it what the vhost-user messages
change and answers what only Python knows (the INIT negotiation: :class:`InitAnswers`;
the front-end messages a kick must not overtake).

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
import mmap
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DecodeError, FuseprotoError
from ..session import negotiate_init
from ..transport import virtqueue as vq
from ..transport.vhost_user_proto import (
    VHOST_MEMORY_BASELINE_NREGIONS,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_VERSION,
    VHOST_USER_VRING_IDX_MASK,
    VIRTIO_F_RING_EVENT_IDX,
    VhostUserMemory,
    VhostUserMemoryRegion,
    VhostUserPayloadError,
    VhostUserProtocolFeature,
    VhostUserSingleMemoryRegion,
    VhostUserU64,
)
from ..wire import codec, structs
from ..wire.constants import fuse_opcode
from .frames import (
    FLAG_MINOR_VALID,
    FLAG_OPCODE_VALID,
    FRAME_FIELDS,
    FRAME_HEADER,
    LINKTYPE_FUSE,
    Direction,
    pack_frame,
)
from .pcap import (
    DEFAULT_MAX_CAPLEN,
    FILE_HEADER,
    RECORD_FIELDS,
    RECORD_HEADER,
    PcapWriter,
    field_layout,
)

__all__ = ["MAX_RECORD", "MIN_READ", "Event", "InitAnswers", "Relay", "RelayError", "ShadowRing", "ShadowRings",
           "cut_to_whole_records", "executable", "open_capture", "shadow_slot"]

SOURCE_DIR = Path(__file__).parent
# The relay's files: the header first (the interface lists), then the C files compiled.
SOURCES = ("relay.h", "relay.c", "relay_notify.c", "relay_ring.c", "relay_shadow.c",
           "relay_out.c", "relay_mem.c", "relay_util.c")
CFLAGS = ("-O2", "-g", "-std=gnu11", "-pthread", "-Wall", "-Wextra")  # (tests add -Werror)
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
ANSWER_TIMEOUT = 5.0  # the relay waits this long for Python's answer (an INIT, a kick handed back)
# While a driver with requests in flight has its interrupts off (it drains the used ring
# on its own: VIRTQ_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX a used_event other than the next
# entry), the relay reads the rings every HOT_INTERVAL seconds (else every --scan-interval):
# a Linux guest draining its used ring takes replies no call announced and reuses their
# buffers within a fraction of a millisecond (measured through QEMU/TCG: up to ~20 of ~190
# READ replies lost per run at 1 ms, none at 50 us).
HOT_INTERVAL = 50e-6
# The staging ring records are copied into before the writer thread writes them to the
# file (relay_out.c; not the replies of a shadowed queue, written from the guest's
# buffers): room for ~250 READ replies of 128 KiB, and for the largest record
# (MAX_RECORD): a larger record would be written directly, the ring drained first.
STAGING_SIZE = 32 << 20
MSG = struct.Struct("<IIQQQQ")  # relay.h's struct msg
_U64 = struct.Struct("<Q")
_OUT = structs.FAST["fuse_out_header"]
_OUT_UNIQUE = _OUT.fields.index("unique")
_IN = structs.FAST["fuse_in_header"]
_IN_UNIQUE = _IN.fields.index("unique")


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
            has_vmm: bool, staging: int, answer_timeout: float = ANSWER_TIMEOUT) -> bytes:
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
        "answer_timeout_ns": round(answer_timeout * 1e9),
        "minor": -1 if minor is None else minor, "has_vmm": int(has_vmm),
        "staging_size": staging,
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


# -- the INIT negotiation it asks about ----------------------------------------------------------

class InitAnswers:
    """The relay hands each INIT request and reply over (INIT events) and waits for the
    answer: keep the request (for its reply), and the minor the pair negotiated."""

    def __init__(self) -> None:
        self._requests: dict[int, Any] = {}  # unique -> INIT request (at most MAX_INITS)

    def answer(self, ev: Event, note: Callable[[int, str], None]) -> tuple[int, int | None]:
        """For an INIT request (``ev.a`` 0) or reply (1), ``ev.data`` its first bytes:
        whether its reply is wanted (RESUME's word), and the minor negotiated (or None)."""
        data = ev.data
        if ev.a == 0:
            unique = _IN.struct.unpack_from(data)[_IN_UNIQUE]
            try:
                self._requests[unique] = codec.decode_request(data)
            except DecodeError as e:
                note(ev.queue, f"INIT request unique {unique} does not decode ({e}); the "
                               "minor stays as it was")
                return 0, None
            while len(self._requests) > MAX_INITS:
                del self._requests[next(iter(self._requests))]
            return 1, None
        request = self._requests.pop(_OUT.struct.unpack_from(data)[_OUT_UNIQUE], None)
        if request is None:
            return 0, None
        try:
            reply = codec.decode_reply(data, request)
        except DecodeError as e:
            note(ev.queue, f"INIT reply does not decode ({e}); the minor stays as it was")
            return 0, None
        result = negotiate_init(request.body, None if reply.error else reply.body)
        return 0, None if result is None else result.minor


# -- the capture file it appends to -----------------------------------------------------------------

def open_capture(path: str, snaplen: int | None = None) -> BinaryIO:
    """A session's capture file: created (replaced) with its pcap header written, for the
    relay to append records to (unbuffered: nothing waits in this process)."""
    f = open(path, "wb", buffering=0)  # noqa: SIM115 -- the caller closes it
    PcapWriter(f, LINKTYPE_FUSE, snaplen=(snaplen or DEFAULT_MAX_CAPLEN) + FRAME_HEADER.size)
    return f


def cut_to_whole_records(fd: int) -> int:
    """Cut a capture file back to the end of its last whole record (a writer killed in the
    middle of one leaves its first part) and put the file offset there; returns the size.
    Reads only the record headers."""
    size = os.fstat(fd).st_size
    caplen = RECORD_FIELDS.index("caplen")
    pos = FILE_HEADER.size
    while pos + RECORD_HEADER.size <= size:
        end = pos + RECORD_HEADER.size + RECORD_HEADER.unpack(
            os.pread(fd, RECORD_HEADER.size, pos))[caplen]
        if end > size:
            break
        pos = end
    os.ftruncate(fd, pos)
    os.lseek(fd, pos, os.SEEK_SET)
    return pos



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
                 minor: int | None = None, staging: int = STAGING_SIZE,
                 answer_timeout: float = ANSWER_TIMEOUT,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.cmd = _numbers("COMMANDS")
        self._events = {v: k for k, v in _numbers("EVENTS").items()}
        self.on_event = on_event
        self.dead: str | None = None  # why the relay is gone, once it is
        config = _config(snaplen=snaplen, scan_interval=scan_interval,
                         idle_interval=idle_interval, rekick_first=rekick_first,
                         rekick_max=rekick_max, minor=minor, has_vmm=vmm_fd is not None,
                         staging=staging, answer_timeout=answer_timeout)
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
        # Events read from the socket and not yet handed out, oldest first: wait_for()
        # takes what it waits for from here and leaves the rest for events() / on_event
        # (one read may bring a SYNCED and a DEFERRED after it: losing that one would
        # leave the queue's kicks held back for good).
        self._unread: deque[Event] = deque()
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
        """The events waiting (without blocking), oldest first."""
        self._read()
        out = list(self._unread)
        self._unread.clear()
        return out

    def _read(self) -> None:
        """Move what the socket holds now into :attr:`_unread`."""
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
            self._unread.append(Event(self._events.get(t, str(t)), q, a, b, raw[MSG.size:]))

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
        """The next ``kind`` event; the others before it go to ``on_event`` meanwhile (in
        order; those after it stay for the next reader)."""
        import select

        deadline = time.monotonic() + timeout
        while True:
            self._read()
            while self._unread:
                ev = self._unread.popleft()
                if ev.kind == kind:
                    return ev
                if self.on_event is not None:
                    self.on_event(ev)  # (may wait for events itself: they come in order)
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


# -- the shadow used rings (relay_shadow.c) ---------------------------------------------------------

# The daemon's used rings are placed in a memfd of the proxy's own, added to the memory table
# the daemon gets at guest-physical and front-end addresses no guest has: 2**52 is beyond
# x86-64's largest physical address (52 bits) and beyond a 4-level user address space
# (47 bits; QEMU maps nothing higher unless asked).
SHADOW_GPA = 1 << 52
SHADOW_UADDR = 1 << 52
# Every queue gets a slot: all a kick can name (SET_VRING_KICK's 8-bit index; the relay's
# MAX_QUEUES). 256 slots of 260 KiB: 65 MiB of address space, sparse.
SHADOW_QUEUES = VHOST_USER_VRING_IDX_MASK + 1
# One slot per queue: a used ring of the largest size, with avail_event (virtio 1.x 2.7.8),
# page-aligned (the memfd is sparse: the pages a ring never touches cost nothing).
SHADOW_SLOT = -(-(vq.VIRTQ_USED_RING + vq.VIRTQ_USED_ELEM.size * MAX_QUEUE_SIZE + 2)
                // mmap.PAGESIZE) * mmap.PAGESIZE
SHADOW_SIZE = SHADOW_QUEUES * SHADOW_SLOT
_U16 = struct.Struct("<H")


def shadow_slot(queue: int) -> int | None:
    """The front-end address of ``queue``'s used ring in the shadow (None: no slot)."""
    return SHADOW_UADDR + queue * SHADOW_SLOT if queue < SHADOW_QUEUES else None


@dataclass
class ShadowRing:
    size: int
    avail: int  # front-end addresses of the guest's rings
    used: int
    shadow: int  # offset of the daemon's used ring in the shadow


class ShadowRings:
    """The proxy's shadow region (a memfd), what the relay is told about it, and its work
    done here should the relay die: the guest then gets its used entries from
    :meth:`mirror` (called on each call from the daemon, each kick and every millisecond),
    unrecorded. For that this keeps a copy of each guest memory fd the front-end sends."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fuseproto-shadow-used-rings", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, SHADOW_SIZE)
        self.rings: dict[int, ShadowRing] = {}  # shadowed queues
        self._regions: list[tuple[int, int, int, int]] = []  # (uaddr, size, offset, fd)
        self._maps: dict[int, tuple[mmap.mmap, int]] = {}  # fd -> (mapping, its uaddr)
        self._shadow: mmap.mmap | None = None
        self._avail_seen: dict[int, int] = {}
        # Queues whose shadow index was last seen behind the guest's: (guest's, daemon's).
        self.behind: dict[int, tuple[int, int]] = {}
        self.protocol_features = 0  # SET_PROTOCOL_FEATURES
        self.in_table = False  # the daemon's memory table has the shadow region
        self.why_not = "no memory table yet"  # (while not in_table, without slots)
        # ADD_MEM_REG replies the daemon owes, in order: True for the proxy's own.
        self._add_replies: deque[bool] = deque(maxlen=64)

    def region(self) -> tuple[int, int, int, int]:
        """(guest address, size, front-end address, mmap offset) of the shadow."""
        return SHADOW_GPA, SHADOW_SIZE, SHADOW_UADDR, 0

    # -- the daemon's memory table
    def set_mem_table(self, table: VhostUserMemory, fds: Sequence[int]) -> bytes | None:
        """SET_MEM_TABLE: the payload to forward with the shadow region last (its fd goes
        last too), or None when the table has no room for it."""
        self.clear_memory()
        for region, fd in zip(table.regions, fds, strict=True):
            self.add_memory(region.user_addr, region.size, region.mmap_offset, fd)
        self.in_table = len(table.regions) < VHOST_MEMORY_BASELINE_NREGIONS
        if not self.in_table:
            self.why_not = (f"SET_MEM_TABLE with {len(table.regions)} regions leaves no room "
                            f"for the shadow region ({VHOST_MEMORY_BASELINE_NREGIONS} at most; "
                            f"CONFIGURE_MEM_SLOTS not agreed)")
            return None
        return VhostUserMemory((*table.regions, VhostUserMemoryRegion(*self.region())),
                               table.padding).serialize_body()

    def add_mem_reg(self, r: VhostUserMemoryRegion, fd: int, need_reply: bool) -> None:
        """The front-end's ADD_MEM_REG (its reply, if asked for, is the front-end's)."""
        self.add_memory(r.user_addr, r.size, r.mmap_offset, fd)
        if need_reply:
            self._add_replies.append(False)

    def add_message(self) -> tuple[VhostUserSingleMemoryRegion, int] | None:
        """The ADD_MEM_REG (body, flags) that puts the shadow in the daemon's table, when
        it is not there and the daemon takes regions one by one (CONFIGURE_MEM_SLOTS);
        asks for a reply with REPLY_ACK (then :meth:`reply_is_ours` keeps it from the
        front-end). Counts it as sent."""
        slots = self.protocol_features >> VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS & 1
        if self.in_table or not slots:
            return None
        ack = self.protocol_features >> VhostUserProtocolFeature.REPLY_ACK & 1
        if ack:
            self._add_replies.append(True)
        self.in_table = True
        return (VhostUserSingleMemoryRegion(VhostUserMemoryRegion(*self.region())),
                VHOST_USER_VERSION | (VHOST_USER_NEED_REPLY_MASK if ack else 0))

    def declined(self, queue: int) -> str | None:
        """Why ``queue``'s used ring cannot go into the shadow (after :meth:`add_message`),
        or None."""
        if shadow_slot(queue) is None:
            return f"queue index {queue} is past the last a kick names ({SHADOW_QUEUES - 1})"
        return None if self.in_table else self.why_not

    def max_mem_slots(self, payload: bytes) -> bytes:
        """The daemon's GET_MAX_MEM_SLOTS reply as the front-end gets it: one slot less,
        kept for the shadow region (:meth:`add_message`), when there is one to spare."""
        try:
            slots = VhostUserU64.parse_body(payload).u64
        except VhostUserPayloadError:
            return payload
        return VhostUserU64(slots - 1).serialize_body() if slots > 1 else payload

    def reply_is_ours(self) -> bool:
        """An ADD_MEM_REG reply from the daemon: whether it answers the proxy's own."""
        return bool(self._add_replies) and self._add_replies.popleft()

    # -- the guest's memory, as the front-end describes it
    def clear_memory(self) -> None:
        for *_, fd in self._regions:
            os.close(fd)
        self._regions.clear()
        self._unmap()

    def add_memory(self, uaddr: int, size: int, offset: int, fd: int) -> None:
        self._regions.append((uaddr, size, offset, os.dup(fd)))

    def remove_memory(self, uaddr: int, size: int) -> None:
        for r in [r for r in self._regions if r[:2] == (uaddr, size)]:
            self._regions.remove(r)
            self._maps.pop(r[3], None)
            os.close(r[3])

    def _unmap(self) -> None:
        self._maps.clear()  # (mmap objects unmap when collected)

    def _at(self, uaddr: int, length: int) -> tuple[mmap.mmap, int] | None:
        for start, size, offset, fd in self._regions:
            if start <= uaddr and uaddr + length <= start + size:
                if fd not in self._maps:
                    page = offset - offset % mmap.PAGESIZE
                    m = mmap.mmap(fd, size + offset - page, offset=page)
                    self._maps[fd] = (m, start - (offset - page))
                m, base = self._maps[fd]
                return m, uaddr - base
        return None

    # -- the relay's work, done here
    def mirror(self, queue: int, event_idx: bool) -> tuple[bool, bool]:
        """Publish the daemon's new used entries of ``queue`` to the guest (and, with
        EVENT_IDX, avail_event: the avail index now, so that the guest kicks for anything
        it adds). Returns whether there were any, and whether the avail index moved since
        the last time (a kick the guest may not have sent: the caller kicks the daemon)."""
        ring = self.rings.get(queue)
        if ring is None:
            return False, False
        if self._shadow is None:
            self._shadow = mmap.mmap(self.fd, SHADOW_SIZE)
        n = ring.size
        esz = vq.VIRTQ_USED_ELEM.size
        used = self._at(ring.used, vq.VIRTQ_USED_RING + esz * n + 2)
        avail = self._at(ring.avail, vq.VIRTQ_AVAIL_RING + 2 * n)
        if used is None or avail is None:
            return False, False
        (um, uo), (am, ao), sh = used, avail, self._shadow
        start = _U16.unpack_from(um, uo + vq.VIRTQ_USED_IDX)[0]
        end = _U16.unpack_from(sh, ring.shadow + vq.VIRTQ_USED_IDX)[0]
        count = (end - start) & 0xFFFF
        if count > n and (start - end) & 0xFFFF <= n:
            # The daemon's index is behind what the guest was given: publishing it would
            # move the guest's index back (its driver sees a jump of nearly 2**16). Wait
            # for the daemon to pass it; mirror_all says so once.
            self.behind[queue] = (start, end)
            count = 0
        for i in range(min(count, n)):
            at = vq.VIRTQ_USED_RING + esz * ((start + count - min(count, n) + i) % n)
            um[uo + at:uo + at + esz] = sh[ring.shadow + at:ring.shadow + at + esz]
        if count:
            _U16.pack_into(um, uo + vq.VIRTQ_USED_IDX, end)
        idx = _U16.unpack_from(am, ao + vq.VIRTQ_AVAIL_IDX)[0]
        if event_idx:
            _U16.pack_into(um, uo + vq.VIRTQ_USED_RING + esz * n, idx)
        moved = self._avail_seen.get(queue, idx) != idx
        self._avail_seen[queue] = idx
        return count > 0, moved

    def mirror_all(self, event_idx: bool, note: Callable[[int, str], None]
                   ) -> list[tuple[int, str]]:
        """:meth:`mirror` for every shadowed queue: the (queue, "call" / "kick") due."""
        due = []
        for queue in list(self.rings):
            was_behind = queue in self.behind
            try:
                published, moved = self.mirror(queue, event_idx)
            except (OSError, ValueError) as e:
                note(queue, f"queue {queue}: cannot publish its used entries: {e}")
                del self.rings[queue]
                continue
            if queue in self.behind and not was_behind:
                guest, daemon = self.behind[queue]
                note(queue, f"queue {queue}: the daemon's used index {daemon} is behind the "
                            f"{guest} the guest was given; not published until it passes it")
            elif published:
                self.behind.pop(queue, None)
            due += [(queue, kind) for kind, yes in (("call", published), ("kick", moved))
                    if yes]
        return due

    def close(self) -> None:
        self.clear_memory()
        if self._shadow is not None:
            self._shadow.close()
        os.close(self.fd)
