"""Fuzzing a real virtiofsd through the vhost-user frontend (no VM).

:class:`DaemonHarness` owns one daemon at a time: it creates a fresh shared directory
with a few files, starts the daemon (by PID, through :class:`~fuseproto.transport.
daemons.Daemon`), connects a :class:`~fuseproto.transport.vhost_user.VhostUserTransport`,
does INIT and a fixed setup (LOOKUP/OPEN/OPENDIR) with the typed client, and then sends
one raw request at a time and classifies what comes back:

* **crash** -- the daemon was killed by a signal (SIGSEGV, SIGABRT ...);
* **daemon-exit** -- it exited with a status while serving (a guest can end it);
* **hang** -- the process lives but no reply arrived within ``hang_timeout``;
* **protocol** -- a reply that breaks FUSE: device wrote more than the area it was
  given (used.len > area), fewer bytes than a header, ``fuse_out_header.len`` != the
  bytes written, a ``unique`` that is not the request's, an errno outside (-512, 0],
  or a body that does not decode for the request (e.g. READ data longer than ``size``:
  the codec's LimitExceededError).

:meth:`DaemonHarness.send_many` puts several requests in flight on one kick (each judged
as above). With ``setup=False`` the harness does no INIT/LOOKUP at start (sequence
programs, :mod:`.sequences`, negotiate INIT themselves); it learns the negotiated minor
and flags from any INIT reply either way.

After a crash, exit or hang the daemon is stopped by PID and a fresh one (fresh shared
directory) is started. A finding's reproducer is a JSON document with the daemon kind,
version and binary, the setup (``setup_mode: none`` for a program) and the requests sent
since that daemon's setup (hex; a shared ``batch`` id: same kick), replayable with
``fuseproto fuzz replay`` and minimized with ``fuseproto fuzz shrink`` (:mod:`.shrink`).

Host safety (the daemons run as root): :func:`sanitize` rewrites, at the byte level so it
also holds for requests our codec would reject, the few fields that could reach outside
the scratch directory's contents: MKNOD never creates a device node or FIFO (a block
device node plus WRITE could reach a host disk; opening a FIFO blocks by design), and
FALLOCATE / COPY_FILE_RANGE lengths and offsets are capped so the disk cannot be filled.
The daemons are sandboxed (``-o sandbox=chroot`` / ``--sandbox chroot``), and all traffic
is a UNIX socket and shared memory on this machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from construct import Container

from ..client import Client
from ..errors import DaemonError, DecodeError, FuseError, TransportError
from ..session import REPLY_EXPECTATION, ReplyExpectation
from .. import daemons
from ..transport.vhost_user import VhostUserTransport
from ..wire import codec, structs
from ..wire.constants import fuse_opcode
from . import mutate, seeds
from .findings import Finding, FindingStore

__all__ = [
    "DaemonHarness",
    "Outcome",
    "DaemonStats",
    "SandboxedDaemon",
    "sanitize",
    "fuzz_daemon",
    "replay_daemon",
    "replay_items",
    "request_groups",
    "resolve_installation",
    "detect_kind",
    "daemon_label",
]

_OP = fuse_opcode
_IN = structs.FAST["fuse_in_header"]
_OUT = structs.FAST["fuse_out_header"]
OUT_SIZE = _OUT.size
IN_SIZE = _IN.size
# The largest device-writable area we hand out (guest memory is 32 MiB).
MAX_AREA = OUT_SIZE + (1 << 20)
HISTORY = 32  # requests kept for a reproducer

_S_IFMT, _S_IFREG, _S_IFCHR, _S_IFBLK, _S_IFIFO = 0o170000, 0o100000, 0o020000, 0o060000, 0o010000
_CAP = 64 << 20  # FALLOCATE / COPY_FILE_RANGE bytes and offsets

# (opcode, struct at offset 40, {field: fixer})
_SANITIZE: dict[int, tuple[str, dict[str, Callable[[int], int]]]] = {
    _OP.FUSE_MKNOD: ("fuse_mknod_in", {
        "mode": lambda m: (m & ~_S_IFMT) | _S_IFREG
        if (m & _S_IFMT) in (_S_IFCHR, _S_IFBLK, _S_IFIFO) else m,
        "rdev": lambda r: 0,
    }),
    _OP.FUSE_FALLOCATE: ("fuse_fallocate_in", {
        "offset": lambda v: v % _CAP, "length": lambda v: v % _CAP,
    }),
    _OP.FUSE_COPY_FILE_RANGE: ("fuse_copy_file_range_in", {
        "off_in": lambda v: v % _CAP, "off_out": lambda v: v % _CAP, "len": lambda v: v % _CAP,
    }),
    _OP.FUSE_COPY_FILE_RANGE_64: ("fuse_copy_file_range_in", {
        "off_in": lambda v: v % _CAP, "off_out": lambda v: v % _CAP, "len": lambda v: v % _CAP,
    }),
}


def sanitize(data: bytes) -> bytes:
    """``data`` with the host-harming fields defused (see the module docstring)."""
    if len(data) < IN_SIZE:
        return data
    op = _IN.parse(data, 0)["opcode"]
    rule = _SANITIZE.get(op)
    if rule is None:
        return data
    name, fixers = rule
    fl = structs.FAST[name]
    if len(data) < IN_SIZE + fl.size:
        return data
    body = dict(fl.parse(data, IN_SIZE))
    for k, fix in fixers.items():
        body[k] = fix(body[k])
    return data[:IN_SIZE] + fl.build(body) + data[IN_SIZE + fl.size:]


class SandboxedDaemon(daemons.Daemon):
    """A :class:`Daemon` with the chroot sandbox for both kinds (the Rust one defaults to
    ``--sandbox none`` in :class:`Daemon`); the fuzzer sends hostile requests as root."""

    def argv(self) -> list[str]:
        args = super().argv()
        if self.kind == "rust" and "--sandbox" in args:
            args[args.index("--sandbox") + 1] = "chroot"
        return args


def detect_kind(path: str) -> str:
    """``c`` or ``rust`` for a virtiofsd binary, from what ``--version`` says: QEMU's C
    daemon prints "virtiofsd version 7.2.x (...)", the Rust one "virtiofsd 1.13.2"; else
    :meth:`Installation.from_path`'s guess from ``--help``."""
    probe = daemons.Installation(kind="c", version="local", root=os.path.dirname(path),
                                 binary=path)
    try:
        text = daemons.version_text(probe)
    except DaemonError:
        text = ""
    if re.search(r"virtiofsd version \d", text) or "QEMU" in text:
        return "c"
    if re.match(r"virtiofsd v?\d", text):
        return "rust"
    return daemons.Installation.from_path(path).kind


def resolve_installation(spec: str, kind: str | None = None) -> daemons.Installation:
    """``c`` / ``rust`` (installed, or installed now) or a path to a virtiofsd binary (or
    a wrapper script that execs one); ``kind`` says which protocol dialect a path speaks
    (default: :func:`detect_kind`)."""
    if spec in daemons.KINDS:
        return daemons.find(spec) or daemons.install(spec)
    path = os.path.abspath(spec)
    if not os.access(path, os.X_OK):
        raise DaemonError(f"{spec} is not an executable file")
    inst = daemons.Installation.from_path(path, kind or detect_kind(path))
    inst.binary = path  # keep the path as given (a wrapper stays a wrapper)
    return inst


def daemon_label(spec: str, inst: daemons.Installation) -> str:
    """How findings and reports name a daemon: ``c``/``rust``, or ``kind:basename``."""
    return spec if spec in daemons.KINDS else f"{inst.kind}:{os.path.basename(spec)}"


@dataclass
class Outcome:
    """What one request did. ``finding`` is None when nothing was wrong."""

    cls: str  # outcome class, e.g. "FUSE_READ:ok:4K" or "FUSE_LOOKUP:-2"
    finding: str | None = None  # crash | daemon-exit | hang | protocol
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    reply: bytes = b""


def _opname(op: int) -> str:
    try:
        return _OP(op).name
    except ValueError:
        return f"opcode_{op}"


def _bucket(n: int) -> str:
    if n <= OUT_SIZE:
        return "hdr"
    n -= OUT_SIZE
    b = 1
    while b < n:
        b <<= 2
    return f"<={b}"


def _expected_area(req: Any, op: int) -> int:
    """The area a guest kernel would give: header + the size the request asks for."""
    if req is not None and isinstance(req.body, dict | Container):
        size = req.body.get("size")
        if op in (_OP.FUSE_READ, _OP.FUSE_READDIR, _OP.FUSE_READDIRPLUS) and size is not None:
            return min(OUT_SIZE + size, MAX_AREA)
        if op in (_OP.FUSE_GETXATTR, _OP.FUSE_LISTXATTR) and size:
            return min(OUT_SIZE + size, MAX_AREA)
    return OUT_SIZE + 4096


def reply_area(variant: int, req: Any, op: int) -> int:
    """Area size for reply-size ``variant`` (0: what the kernel gives; 1: 4 KiB more;
    2: a header only; 3: 64 KiB more; 4: one byte short)."""
    base = _expected_area(req, op)
    v = variant % 5
    if v == 1:
        return min(base + 4096, MAX_AREA)
    if v == 2:
        return OUT_SIZE
    if v == 3:
        return min(base + 65536, MAX_AREA)
    if v == 4:
        return max(base - 1, 1)
    return base


class DaemonHarness:
    """One daemon at a time (see the module docstring). Use as a context manager."""

    def __init__(self, installation: daemons.Installation, *, hang_timeout: float = 0.5,
                 workdir: str | None = None, history: int = HISTORY,
                 on_send: Callable[[DaemonHarness, bytes], None] | None = None,
                 setup: bool = True):
        self.installation = installation
        # setup=False: no INIT and no LOOKUPs at start (a sequence program negotiates INIT
        # itself); the harness still learns minor/flags from any INIT reply it sees.
        self.setup = setup
        self.kind = installation.kind
        self.hang_timeout = hang_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="fuseproto-fuzz-")
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.on_send = on_send  # test hook: called before each fuzz request is sent
        self.transport: VhostUserTransport | None = None
        self.client: Client | None = None
        self.daemon: daemons.Daemon | None = None
        self.starts = 0
        self.unique = 1 << 40
        self.minor = 46
        self.flags = 0
        self.nodes: dict[str, int] = {}
        self.fhs: dict[str, int] = {}
        self._gen = 0
        self._log_offset = 0
        self._later = 0  # requests of the current batch sent after the one being judged
        self._inited = False  # an INIT reply was seen since start (minor/flags learned)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> DaemonHarness:
        self.stop()
        self._gen += 1
        base = os.path.join(self.workdir, f"d{self._gen}")
        shared = os.path.join(base, "shared")
        os.makedirs(shared)
        _populate(shared)
        sock = os.path.join(base, "vhost.sock")
        self.daemon = SandboxedDaemon(self.installation, shared, sock,
                                      log_path=os.path.join(base, "daemon.log"))
        self._log_offset = 0
        self.daemon.start()
        try:
            self.transport = VhostUserTransport(sock, daemon=self.daemon, timeout=5.0)
            self.client = Client(self.transport, timeout=5.0, uid=0, gid=0, pid=1)
            self._inited = self.setup
            if self.setup:
                self._setup()
            else:
                self.minor, self.flags = 46, 0
                self.nodes, self.fhs = {"root": 1}, {}
        except BaseException:
            self.stop()
            raise
        self.starts += 1
        self.history.clear()
        self.new_log()  # skip the start-up chatter
        return self

    def new_log(self) -> str:
        """Daemon log text written since the last call."""
        if self.daemon is None:
            return ""
        try:
            with open(self.daemon.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read(1 << 16)
        except OSError:
            return ""
        self._log_offset += len(data)
        return data.decode(errors="replace")

    def _setup(self) -> None:
        c = self.client
        assert c is not None
        c.init(flags=seeds.INIT_FLAGS)
        self.minor = c.session.minor
        self.flags = int(c.session.flags)
        self.nodes = {"root": 1}
        for name in ("file", "small", "dir", "link", "empty"):
            self.nodes[name] = c.lookup(1, name).nodeid
        self.fhs = {"file": c.open(self.nodes["file"], os.O_RDWR).fh,
                    "dir": c.opendir(self.nodes["dir"]).fh}

    def stop(self) -> None:
        """Close the connection and stop the daemon by PID; remove its directory."""
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()  # stops the daemon it owns
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                self.daemon.stop()
            shutil.rmtree(os.path.dirname(self.daemon.shared_dir), ignore_errors=True)
        self.transport = self.client = self.daemon = None

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DaemonHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pools(self) -> mutate.Pools:
        return mutate.Pools(sorted(set(self.nodes.values())), sorted(set(self.fhs.values())))

    def version(self) -> str:
        try:
            return daemons.version_text(self.installation)
        except DaemonError as e:
            return f"unknown ({e})"

    # -- seeds --------------------------------------------------------------------------
    def seed_requests(self) -> list[bytes]:
        """The seed requests with this daemon's node ids and file handles."""
        node = {1: 1, 2: self.nodes["file"], 3: self.nodes["link"]}
        fh = {1: self.fhs["file"], 2: self.fhs["dir"]}
        out = []
        for s in seeds.request_seeds():
            if s.opcode in (_OP.FUSE_INIT, _OP.FUSE_DESTROY):
                continue
            body = s.body
            if isinstance(body, dict) and "fh" in body:
                body = Container(body)
                body["fh"] = fh.get(body["fh"], body["fh"])
            if isinstance(body, dict) and "entries" in body and s.opcode == _OP.FUSE_BATCH_FORGET:
                body = Container(body, entries=[Container(nodeid=self.nodes["empty"], nlookup=1)])
            if s.opcode == _OP.FUSE_FORGET:
                nodeid = self.nodes["empty"]
            elif s.opcode in (_OP.FUSE_OPENDIR, _OP.FUSE_READDIR, _OP.FUSE_READDIRPLUS,
                              _OP.FUSE_RELEASEDIR, _OP.FUSE_FSYNCDIR):
                nodeid = self.nodes["dir"]
            else:
                nodeid = node.get(s.nodeid, s.nodeid)
            self.unique += 2
            out.append(codec.encode_request(s.opcode, body, unique=self.unique, nodeid=nodeid,
                                            uid=0, gid=0, pid=1, minor=self.minor,
                                            flags=self.flags))
        return out

    # -- requests -----------------------------------------------------------------------
    def send(self, data: bytes, variant: int = 0) -> Outcome:
        """Send ``data`` (sanitized) with reply-area ``variant``; classify the result."""
        return self.send_many([(data, variant)])[0]

    def send_many(self, items: list[tuple[bytes, int]], batch: int | None = None
                  ) -> list[Outcome]:
        """Put every ``(data, variant)`` in flight on one kick, then classify each reply in
        order (several requests in flight at once). Every request is sanitized. The list
        stops at the first crash, exit or hang (later requests have no outcome)."""
        if self.transport is None:
            self.start()
        t = self.transport
        assert t is not None and self.daemon is not None
        self._later = 0
        sent: list[tuple[Any, str, int, int | None, Any, int, ReplyExpectation]] = []
        outs: list[Outcome] = []
        for data, variant in items:
            data = sanitize(data)
            op, unique = -1, None
            if len(data) >= IN_SIZE:
                h = _IN.parse(data, 0)
                op, unique = h["opcode"], h["unique"]
            try:
                req = codec.decode_request(data, self.minor, flags=self.flags)
            except DecodeError:
                req = None
            expectation = REPLY_EXPECTATION.get(op, ReplyExpectation.ONE)
            area = 0 if expectation is ReplyExpectation.NONE else reply_area(variant, req, op)
            item: dict[str, Any] = {"hex": data.hex(), "variant": variant, "area": area}
            if batch is not None and len(items) > 1:
                item["batch"] = batch
            self.history.append(item)
            name = _opname(op)
            if self.on_send is not None:
                self.on_send(self, data)
            try:
                token = t.submit(data, area, tag=f"{name} unique {unique}", kick=False)
            except TransportError as e:
                outs.append(self._dead(name, f"submit failed: {e}"))
                return outs
            sent.append((token, name, op, unique, req, area, expectation))
        try:
            t.kick(1)
        except (OSError, TransportError) as e:
            name = sent[0][1] if sent else "?"
            outs.append(self._dead(name, f"kick failed: {e}"))
            return outs
        for k, (token, name, op, unique, req, area, expectation) in enumerate(sent):
            # "previous" in the evidence: what was sent before *this* one of the batch.
            self._later = len(sent) - 1 - k
            out = self._finish(token, name, op, unique, req, area, expectation)
            outs.append(out)
            if out.finding in ("crash", "daemon-exit", "hang"):
                break
        return outs

    def _finish(self, token: Any, name: str, op: int, unique: int | None, req: Any,
                area: int, expectation: ReplyExpectation) -> Outcome:
        t, d = self.transport, self.daemon
        assert t is not None and d is not None
        if area == 0:
            # No reply expected: a cheap liveness probe only when the process is gone.
            if not d.running():
                return self._dead(name, "daemon gone after a reply-less request")
            return Outcome(f"{name}:noreply")
        timeout = self.hang_timeout if expectation is ReplyExpectation.ONE else 0.05
        try:
            state = self._await(token, timeout)
        except TransportError as e:
            return self._dead(name, str(e))
        if state == "dead":
            return self._dead(name, "no reply; daemon gone")
        if state != "done":
            token.abandoned = True  # the transport frees it if it ever completes
            log = self.new_log()
            site = crash_site(log)
            ev = {"opcode": name, "area": area, "timeout_s": self.hang_timeout,
                  "previous": self._previous(), "log_tail": _tail(log)}
            if site is not None:
                # A Rust worker thread panicked: the process lives, the queue is dead.
                ev["site"] = site
                return Outcome(f"{name}:panic", "crash",
                               f"{self.kind} virtiofsd worker panicked after {name}: {site}", ev)
            if expectation is not ReplyExpectation.ONE:
                return Outcome(f"{name}:noreply")  # INTERRUPT may go unanswered
            return Outcome(f"{name}:hang", "hang",
                           f"no reply to {name} within {self.hang_timeout} s, daemon alive "
                           f"(state {d.state()})", ev)
        try:
            reply = t.wait(token, 0)
        except TransportError as e:
            return self._dead(name, str(e))
        out = self._check_reply(name, op, unique, req, reply, token.used_len, area)
        if op == _OP.FUSE_INIT and out.finding is None and out.reply and not self._inited:
            # The first INIT only (as a kernel): a later one must not change how we decode.
            self._inited = True
            self._learn_init(req, out.reply)
        return out

    def _learn_init(self, req: Any, reply: bytes) -> None:
        """Negotiated minor and flags from an INIT exchange (later replies decode at them)."""
        try:
            body = codec.decode_reply(reply, _OP.FUSE_INIT, self.minor).body
        except DecodeError:
            return
        if body is None:
            return
        flags = body.get("flags", 0)
        if flags & (1 << 30):  # FUSE_INIT_EXT: flags2 is valid
            flags |= body.get("flags2", 0) << 32
        offered = 0
        if req is not None and isinstance(req.body, dict | Container):
            offered = req.body.get("flags", 0) | (req.body.get("flags2", 0) or 0) << 32
            minor = min(body.get("minor", 46), req.body.get("minor", 46))
        else:
            minor = body.get("minor", 46)
        self.minor = max(0, min(46, minor))
        self.flags = flags & offered if offered else flags

    def settle(self, name: str, timeout: float = 0.1) -> Outcome | None:
        """After a reply-less request (FORGET) nothing reports a death that comes a moment
        later; wait ``timeout`` s for one (replays end on such requests)."""
        d = self.daemon
        if d is None or d.wait_exit(timeout) is None:
            return None
        return self._dead(name, "daemon gone after a reply-less request")

    def _await(self, token: Any, timeout: float) -> str:
        """"done", "dead" or "timeout"; a panicked Rust worker ends the wait early (its
        log says so), a dead process at once."""
        t, d = self.transport, self.daemon
        assert t is not None and d is not None
        start = time.monotonic()
        spin_end = start + 0.002
        deadline = start + timeout
        next_log = start + 0.05
        while True:
            if t.done(token):
                return "done"
            now = time.monotonic()
            if now < spin_end:
                continue
            if not d.running():
                return "done" if t.done(token) else "dead"
            if now > deadline:
                return "timeout"
            if now > next_log:
                next_log = now + 0.05
                if self.kind == "rust" and "panicked" in _peek_log(d.log_path, self._log_offset):
                    return "timeout"
            time.sleep(0.0005)

    def _dead(self, name: str, detail: str) -> Outcome:
        d = self.daemon
        assert d is not None
        status = d.wait_exit(1.0)
        if status is None:
            return Outcome(f"{name}:transport", "hang", f"transport failed ({detail}) but "
                           f"{d.describe()}", {"opcode": name})
        log = self.new_log()
        site = crash_site(log)
        ev: dict[str, Any] = {"opcode": name, "status": daemons.describe_status(status),
                              "previous": self._previous(), "log_tail": _tail(log)}
        if site is not None:
            ev["site"] = site
        at = f": {site}" if site else ""
        if os.WIFSIGNALED(status):
            try:
                sig = signal.Signals(os.WTERMSIG(status)).name
            except ValueError:
                sig = f"signal {os.WTERMSIG(status)}"
            ev["signal"] = sig
            return Outcome(f"{name}:crash:{sig}", "crash",
                           f"{d.kind} virtiofsd killed by {sig} after {name}{at}", ev)
        return Outcome(f"{name}:exit:{os.WEXITSTATUS(status)}", "daemon-exit",
                       f"{d.kind} virtiofsd {ev['status']} after {name}{at}", ev)

    def _previous(self) -> list[str]:
        """Opcode names of the requests sent before the last one (newest last)."""
        out = []
        hist = list(self.history)
        if self._later:
            hist = hist[:-self._later]
        for item in hist[-4:-1]:
            b = bytes.fromhex(item["hex"][: 2 * IN_SIZE])
            out.append(_opname(_IN.parse(b, 0)["opcode"]) if len(b) >= IN_SIZE else "short")
        return out

    def _check_reply(self, name: str, op: int, unique: int | None, req: Any, reply: bytes,
                     used_len: int, area: int) -> Outcome:
        ev: dict[str, Any] = {"opcode": name, "area": area, "used_len": used_len,
                              "reply_head": reply[:64].hex()}
        if req is not None and isinstance(req.body, dict | Container) and "size" in req.body:
            ev["requested_size"] = req.body["size"]
        if used_len > area:
            return Outcome(f"{name}:used-overflow", "protocol",
                           f"used.len {used_len} > device-writable area {area}", ev)
        if len(reply) < OUT_SIZE:
            if op == _OP.FUSE_INTERRUPT and not reply:
                return Outcome(f"{name}:noreply")  # completed without an answer: allowed
            if used_len == 0 and area < _expected_area(req, op):
                # We gave less room than the reply needs; nothing written is defensible.
                return Outcome(f"{name}:noreply-small-area")
            ev["previous"] = self._previous()
            return Outcome(f"{name}:no-reply-written" if not reply else f"{name}:short",
                           "protocol",
                           f"request completed with {len(reply)} reply bytes (area {area})", ev)
        h = _OUT.parse(reply, 0)
        ev["header"] = dict(h)
        err = h["error"]
        if h["len"] != len(reply):
            return Outcome(f"{name}:len-mismatch", "protocol",
                           f"fuse_out_header.len {h['len']} != {len(reply)} bytes written", ev)
        if unique is not None and h["unique"] != unique:
            ev["previous"] = self._previous()
            return Outcome(f"{name}:wrong-unique", "protocol",
                           f"reply unique {h['unique']} to request unique {unique}", ev)
        if not -511 <= err <= 0:
            return Outcome(f"{name}:bad-errno", "protocol", f"error {err} outside (-512, 0]", ev)
        try:
            codec.decode_reply(reply, req if req is not None else op, self.minor)
        except DecodeError as e:
            return Outcome(f"{name}:undecodable:{type(e).__name__}", "protocol",
                           f"reply does not decode: {type(e).__name__}: {e}", ev, reply)
        return Outcome(f"{name}:{err}:{_bucket(len(reply))}" if err == 0 else f"{name}:{err}",
                       reply=reply)

    def healthy(self) -> bool:
        """A GETATTR on the root answers (used after INIT/DESTROY-like requests)."""
        if self.client is None or self.daemon is None or not self.daemon.running():
            return False
        try:
            self.client.getattr(1)
            return True
        except (FuseError, TransportError, DecodeError):
            return False
        except Exception:
            return False


def _populate(shared: str) -> None:
    """The files every fresh daemon serves (node ids: see DaemonHarness._setup)."""
    with open(os.path.join(shared, "file"), "wb") as f:
        f.write(bytes(range(256)) * 256)  # 64 KiB, position-dependent content
    with open(os.path.join(shared, "small"), "wb") as f:
        f.write(b"hello world")
    open(os.path.join(shared, "empty"), "wb").close()
    os.mkdir(os.path.join(shared, "dir"))
    with open(os.path.join(shared, "dir", "inner"), "wb") as f:
        f.write(b"inner")
    os.symlink("file", os.path.join(shared, "link"))


# -- the loop ------------------------------------------------------------------------------


@dataclass
class DaemonStats:
    daemon: str
    version: str = ""
    requests: int = 0
    seconds: float = 0.0
    starts: int = 0
    outcome_classes: int = 0
    corpus_size: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    skipped: int = 0  # mutants not sent: they hit a muted feature
    error: str | None = None
    sequences: dict[str, Any] = field(default_factory=dict)  # sequence mode's summary

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_SITE_PATTERNS = (
    # C: "virtiofsd: ../../tools/virtiofsd/fuse_virtio.c:497: fv_queue_worker: Assertion `0' failed."
    re.compile(r"([\w.]+\.c):\d+: (\w+): (Assertion `.*' failed)"),
    # glibc fortify: "*** invalid openat64 call: O_CREAT or O_TMPFILE without mode ***: terminated"
    re.compile(r"\*\*\* (.+?) \*\*\*"),
    # Rust: "thread 'vring_worker' panicked at .../src/vhost_user.rs:277:18:\n<message>"
    re.compile(r"panicked at (?:[^\n]*/)?([\w.]+\.rs):\d+:\d+:\n([^\n]*)"),
    re.compile(r"panicked at '([^']*)', (?:[^\n]*/)?([\w.]+\.rs)"),
)


def crash_site(log: str) -> str | None:
    """Where the daemon died, from its log: an assertion, a fortify abort, a Rust panic.
    Numbers in messages are replaced by N so repeats deduplicate."""
    for pat in _SITE_PATTERNS:
        matches = list(pat.finditer(log))
        if matches:
            m = matches[-1]
            text = " ".join(g for g in m.groups() if g)
            return re.sub(r"\d+", "N", text).replace("`", "'")[:200]
    return None


def _peek_log(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 16).decode(errors="replace")
    except OSError:
        return ""


def _tail(log: str, lines: int = 6) -> str:
    return "\n".join(log.strip().splitlines()[-lines:])


def _signature(daemon: str, out: Outcome) -> str:
    parts = out.cls.split(":")
    op = parts[0]
    site = out.evidence.get("site")
    if out.finding in ("crash", "daemon-exit"):
        how = out.evidence.get("signal") or out.evidence.get("status") or "panic"
        prev = out.evidence.get("previous") or []
        if site is None and "FUSE_INTERRUPT" in prev:
            # No site in the log: a recent INTERRUPT is the cause (a stale one answered into
            # the next request's buffer, which a FORGET or a header-only request lacks, or
            # on the same kick), whatever came next -- one signature, not one per opcode
            # that happened to follow it (minimized reproducers: INIT, INTERRUPT, 1-3 more).
            site = "after FUSE_INTERRUPT"
        return f"{out.finding}:{daemon}:{how}:{site or op}"
    if out.finding == "protocol":
        if len(parts) > 1 and parts[1] == "undecodable":
            return f"protocol:{daemon}:{op}:{':'.join(parts[1:])}"
        return f"protocol:{daemon}:{parts[1] if len(parts) > 1 else '?'}"
    return f"{out.finding}:{daemon}:{op}"


def fuzz_daemon(
    installation: daemons.Installation,
    *,
    seconds: float,
    store: FindingStore,
    seed: int = 0,
    hang_timeout: float = 0.5,
    max_requests: int | None = None,
    on_send: Callable[[DaemonHarness, bytes], None] | None = None,
    label: str | None = None,
) -> DaemonStats:
    """Fuzz one daemon for ``seconds``: structure-aware mutants of the seed requests, one at
    a time; inputs reaching a new outcome class join the corpus; findings go to ``store``."""
    label = label or installation.kind
    rng = random.Random(seed)
    stats = DaemonStats(label)
    t0 = time.monotonic()
    deadline = t0 + seconds
    with DaemonHarness(installation, hang_timeout=hang_timeout, on_send=on_send) as h:
        stats.version = h.version()
        corpus: list[tuple[bytes, int]] = [(r, 0) for r in h.seed_requests()]
        pending_seeds = list(corpus)
        pools = h.pools
        # Features (a short request, an opcode) that keep triggering an already known
        # finding are mostly skipped, so the time goes to finding something new.
        repeats: dict[tuple[str, str], int] = {}
        muted: set[str] = set()
        while time.monotonic() < deadline and (max_requests is None
                                               or stats.requests < max_requests):
            if pending_seeds:
                data, variant = pending_seeds.pop(0)
            else:
                parent, variant = rng.choice(corpus)
                if rng.random() < 0.15:
                    variant = rng.randrange(5)
                data = mutate.mutate_request(parent, rng, minor=h.minor, flags=h.flags,
                                             pools=pools, max_size=1 << 16)
                if muted and _feature(data) in muted and rng.random() < 0.9:
                    stats.skipped += 1
                    continue
            out = h.send(data, variant)
            stats.requests += 1
            new = out.cls not in stats.classes
            stats.classes[out.cls] = stats.classes.get(out.cls, 0) + 1
            if out.finding is not None:
                f = _record(stats, store, h, label, out)
                key = (f.signature, _feature(data))
                repeats[key] = repeats.get(key, 0) + 1
                if repeats[key] >= 5:
                    muted.add(key[1])
            elif new and len(corpus) < 4000:
                corpus.append((data, variant))
            # A fresh daemon after it died, hung, or was left unusable by INIT/DESTROY.
            if out.finding in ("crash", "daemon-exit", "hang") or (
                out.cls.startswith(("FUSE_INIT:", "FUSE_DESTROY:")) and not h.healthy()
            ):
                try:
                    h.start()
                except (DaemonError, TransportError) as e:
                    stats.error = f"restart failed: {e}"
                    break
                pools = h.pools
        stats.starts = h.starts
        stats.corpus_size = len(corpus)
    stats.seconds = time.monotonic() - t0
    stats.outcome_classes = len(stats.classes)
    return stats


def _feature(data: bytes) -> str:
    if len(data) < IN_SIZE:
        return "short"
    return _opname(_IN.parse(data, 0)["opcode"])


def _record(stats: DaemonStats, store: FindingStore, h: DaemonHarness, label: str,
            out: Outcome, program: list[dict[str, Any]] | None = None) -> Finding:
    sig = _signature(label, out)
    f = Finding("virtiofsd", out.finding or "", sig, out.detail[:300], daemon=label,
                evidence=dict(out.evidence))
    repro = {
        "target": "virtiofsd",
        "daemon": label,
        "daemon_binary": h.installation.binary,
        "daemon_version": stats.version,
        "finding": {"kind": out.finding, "signature": sig, "detail": out.detail},
        "setup": "fuseproto.fuzz.virtiofsd.DaemonHarness (INIT, LOOKUP file/small/dir/link/"
                 "empty, OPEN file O_RDWR, OPENDIR dir)",
        "requests": list(h.history),
    }
    if not h.setup:
        repro["setup_mode"] = "none"
        repro["setup"] = ("none: a sequence program (fuseproto.fuzz.sequences), INIT is its "
                          "first request; requests with the same batch id share one kick")
    if program is not None:
        repro["program"] = program
        f.evidence.setdefault("mode", "sequence")
    f = store.add(f, repro, suffix=".json")
    if all(x.signature != f.signature for x in stats.findings):
        stats.findings.append(f)
    return f


# -- replay --------------------------------------------------------------------------------


def request_groups(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive reproducer items with the same ``batch`` id go in flight together."""
    groups: list[list[dict[str, Any]]] = []
    for item in items:
        b = item.get("batch")
        if groups and b is not None and groups[-1][-1].get("batch") == b:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def replay_items(items: list[dict[str, Any]], installation: daemons.Installation, *,
                 setup: bool = True, hang_timeout: float = 0.5,
                 harness: DaemonHarness | None = None) -> list[Outcome]:
    """Send reproducer ``items`` (hex, variant, batch) to a fresh daemon; the outcome of
    each. Stops when the daemon dies or hangs; protocol findings do not stop it. With
    ``harness`` (a started one, same ``setup``) that harness is restarted and reused."""
    own = harness is None
    h = harness or DaemonHarness(installation, hang_timeout=hang_timeout, setup=setup,
                                 history=100_000)
    outs: list[Outcome] = []
    try:
        h.start()
        for n, group in enumerate(request_groups(items)):
            got = h.send_many([(bytes.fromhex(i["hex"]), i.get("variant", 0)) for i in group],
                              batch=n)
            outs += got
            if got and got[-1].finding in ("crash", "daemon-exit", "hang"):
                break
        else:
            if outs and outs[-1].cls.endswith(":noreply"):
                late = h.settle(outs[-1].cls.split(":")[0])
                if late is not None:
                    outs.append(late)
    finally:
        if own:
            h.close()
        else:
            h.stop()
    return outs


def replay_daemon(repro: dict[str, Any], installation: daemons.Installation, *,
                  hang_timeout: float = 0.5) -> list[Outcome]:
    """Send a reproducer's requests to a fresh daemon (the setup it names: the harness's
    INIT + LOOKUPs, or none for a sequence program, which starts with its own INIT)."""
    return replay_items(repro.get("requests", []), installation,
                        setup=repro.get("setup_mode", "harness") != "none",
                        hang_timeout=hang_timeout)


def outcome_signature(label: str, out: Outcome) -> str | None:
    """The finding signature of an outcome (None when it is not a finding)."""
    return _signature(label, out) if out.finding else None
