"""The live-daemon harness: one real virtiofsd, driven through the vhost-user frontend
(no VM), one raw request at a time, each reply classified.

:class:`DaemonHarness` owns one daemon at a time: it creates a fresh shared directory with
a few files, starts the daemon (by PID, through :class:`~fuseproto.daemons.Daemon`,
sandboxed: :class:`SandboxedDaemon`), connects a
:class:`~fuseproto.transport.vhost_user.VhostUserTransport`, does INIT and a fixed setup
(LOOKUP/OPEN/OPENDIR) with the typed client, and then sends raw requests and classifies
what comes back:

* **crash** -- the daemon was killed by a signal (SIGSEGV, SIGABRT ...), or a Rust
  worker panicked (the process lives, the queue is dead; seen while a later request
  waits, a panic is put down to an earlier reply-less request whose chain never came
  back, :meth:`DaemonHarness._blame`);
* **daemon-exit** -- it exited with a status while serving (a guest can end it);
* **hang** -- the process lives but no reply arrived within ``hang_timeout`` and the
  grace after it (:data:`~.forensics.HANG_GRACE`); a reply in the grace makes the request
  *slow*: counted per opcode in :attr:`DaemonHarness.slow`, not a finding;
* **protocol** -- a reply that breaks FUSE (:func:`.replies.judge_reply`).

The area a request gets is :func:`fuseproto.wire.codec.reply_area` (what a guest kernel
gives, capped at :data:`MAX_AREA`) or one of the deviations of :func:`variant_area`.
:meth:`DaemonHarness.send_many` puts several requests in flight on one kick (each judged
as above); every request passes :func:`~fuseproto.fuzz.sanitizer.sanitize` first. With
``setup=False`` the harness does no INIT/LOOKUP at start (sequence programs,
:mod:`.sequences`, negotiate INIT themselves); it learns the negotiated minor and flags
from the first successful INIT reply either way, through
:func:`fuseproto.session.negotiate_init` (the session's own rule).

Every daemon starts with :data:`SANITIZER_ENV` (the options an ASan/UBSan build needs;
ignored by a plain one) and, given a :class:`~fuseproto.fuzz.coverage.CoverageMap`, a map
of its own (:meth:`~fuseproto.fuzz.coverage.CoverageMap.spawn`: a sibling file sharing the
given map's seen set), so a warm spare's start-up never lands in the live daemon's
counters. When the harness adopts a daemon the given map follows that daemon's map and its
start-up and setup edges are absorbed (a restart is not new coverage); the loops read the
given map after each input; a retired daemon's map is unmapped and its file deleted with
the daemon (:func:`.spare.stop_started`).
A sanitizer report in the log turns a death (or a stall while the report is written)
into an ``asan`` / ``ubsan`` finding (:mod:`.forensics`).

After a crash, exit or hang the caller starts a fresh daemon (:meth:`DaemonHarness.start`:
the old one is stopped by PID, a fresh shared directory is made). The requests sent since
the daemon's setup are kept in :attr:`DaemonHarness.history` for a reproducer
(:mod:`.virtiofsd`, :mod:`.replay`), every message since its start (setup included, taken
by the transport's tap) in :attr:`DaemonHarness.exchange` for the finding's pcap
(:mod:`.reproducer`); the log and crash analysis is :mod:`.forensics`.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from construct import Container

from .. import daemons, scratch
from ..client import Client
from ..daemons.options import DEFAULT, DaemonConfig
from ..errors import DaemonError, DecodeError, FuseError, TransportError, TransportTimeout
from ..session import REPLY_EXPECTATION, InitNegotiation, ReplyExpectation, negotiate_init
from ..transport.backend import DaxMapHandler
from ..transport.vhost_user import VhostUserTransport
from ..transport.window import Window
from ..wire import codec, structs
from ..wire.constants import FUSE_KERNEL_MINOR_VERSION, fuse_opcode, opcode_name
from . import mutate, seeds
from .canaries import Breach, Canaries
from .coverage import ENV_VAR, CoverageMap
from .forensics import (
    FATAL,
    HANG_GRACE,
    Outcome,
    PanicWatch,
    count_slow,
    death_outcome,
    read_new_log,
    stall_outcome,
)
from .livedaemon import (
    DAX_WINDOW,
    SANITIZER_ENV,
    SandboxedDaemon,
    daemon_label,
    default_daemons,
    instrumented,
    populate,
    resolve_installation,
)
from .replies import MAX_AREA, as_served, expected_area, judge_reply, variant_area
from .sanitizer import sanitize
from .sanitizer_report import has_report
from .spare import Spare, Started, stop_started

__all__ = [
    "DaemonHarness",
    "SandboxedDaemon",
    "MAX_AREA",
    "expected_area",
    "variant_area",
    "judge_reply",
    "resolve_installation",
    "daemon_label",
    "SANITIZER_ENV",
    "instrumented",
    "default_daemons",
    "escape_outcome",
    "CANARIES",
    "DAX_WINDOW",
    "populate",
]

_OP = fuse_opcode
_IN = structs.FAST["fuse_in_header"]
IN_SIZE = _IN.size
HISTORY = 32  # requests kept for a reproducer
#: Requests the daemon answers only after the host has flushed data to disk (syncfs(2),
#: fsync(2)): on a machine busy writing they take seconds, which is not a hang. These get
#: SLOW_TIMEOUT s before they count as hung (a real hang of one then costs that long).
SLOW_OPS = frozenset({int(fuse_opcode.FUSE_SYNCFS), int(fuse_opcode.FUSE_FSYNC),
                      int(fuse_opcode.FUSE_FSYNCDIR)})
SLOW_TIMEOUT = 10.0
#: How long an inline-started daemon's edge map may take to go quiet after its setup.
SETTLE_MAX = 0.05
#: How long one blocked wait for a reply lasts before the harness looks at the daemon
#: (gone? a Rust worker panic in its log?) and waits again.
AWAIT_SLICE = 0.001
#: How long :meth:`DaemonHarness.healthy` waits for its GETATTR (the Rust daemon answers
#: nothing after some DESTROYs: each probe waited the hang timeout, 0.5 s).
HEALTH_TIMEOUT = 0.1
#: Where the harness plants escape canaries (:mod:`.canaries`): ``beside`` the share (the
#: default: every live target checks them), ``inside`` it (tests only: a daemon that can
#: reach them, so each check is shown to fire), or ``off``.
CANARIES = ("beside", "inside", "off")


def escape_outcome(name: str, breach: Breach) -> Outcome:
    """The ``escape`` finding for a canary breach seen after request ``name``."""
    return Outcome(f"{name}:escape-{breach.kind}", "escape",
                   f"escape canary {breach.kind}: {breach.detail} (after {name})",
                   {"opcode": name, "breach": breach.kind, "canary": breach.canary})


@dataclass
class _InFlight:
    """One request of a kick, as :meth:`DaemonHarness.send_many` judges its reply."""

    token: Any
    name: str
    op: int
    unique: int | None
    req: Any  # the decoded request, None if it does not decode
    area: int
    expected: int  # the area a kernel would give
    expectation: ReplyExpectation
    seq: int = 0  # the harness's request count when it was sent (its place in history)


class DaemonHarness:
    """One daemon at a time (see the module docstring). Use as a context manager."""

    def __init__(self, installation: daemons.Installation, *, hang_timeout: float = 0.5,
                 workdir: str | None = None, history: int = HISTORY,
                 on_send: Callable[[DaemonHarness, bytes], None] | None = None,
                 setup: bool = True, coverage: CoverageMap | None = None,
                 env: dict[str, str] | None = None, canaries: str = "beside",
                 spare: bool = False, config: Any = None, hang_grace: float = HANG_GRACE):
        if canaries not in CANARIES:
            raise ValueError(f"canaries: one of {', '.join(CANARIES)}, not {canaries!r}")
        self.installation = installation
        # Escape canaries beside each share (checked by check_canaries(), and every reply
        # scanned for their tokens); None until a daemon starts, or when "off".
        self.canary_mode = canaries
        self.canaries: Canaries | None = None
        # Extra environment for every daemon started (over SANITIZER_ENV and the map's).
        self.env = dict(env or {})
        # The daemons' configuration (fuseproto.daemons.options): a DaemonConfig for every
        # daemon, or a chooser (.configs.ConfigChooser: next() per daemon); None: the
        # default. ``config``: the current daemon's.
        self.configs = config
        self.config: DaemonConfig | None = None
        # The edge map the loops read (it follows the current daemon's own map, spawned
        # from it; one seen set across all daemons); None: not measured.
        self.coverage = coverage
        self.edge_map: CoverageMap | None = None  # the current daemon's own map
        # setup=False: no INIT and no LOOKUPs at start (a sequence program negotiates INIT
        # itself); the harness still learns minor/flags from any INIT reply it sees.
        self.setup = setup
        self.kind = installation.kind
        self.hang_timeout = hang_timeout
        self.hang_grace = hang_grace
        # Requests answered after the hang timeout, within the grace: opcode name ->
        # [count, longest wait in s] (the report's "slow replies").
        self.slow: dict[str, list[float]] = {}
        self._own_workdir = workdir is None
        self._workdir = workdir
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        # Every message to and from the current daemon since its start, setup included, as
        # (direction, queue, bytes, time_ns): a finding's pcap (the transport's tap).
        self.exchange: deque[tuple[int, int, bytes, int]] = deque(maxlen=2 * history + 64)
        self.on_send = on_send  # test hook: called before each fuzz request is sent
        self.transport: VhostUserTransport | None = None
        # The DAX window of a c-dax daemon (None for daemons without DAX): the backend
        # channel maps what the daemon asks into it, and its handler's events record it.
        self.window: Window | None = None
        self.dax: DaxMapHandler | None = None
        self.client: Client | None = None
        self.daemon: daemons.Daemon | None = None
        self.starts = 0
        self.unique = 1 << 40
        self.minor = FUSE_KERNEL_MINOR_VERSION
        self.flags = 0
        self.nodes: dict[str, int] = {}
        self.fhs: dict[str, int] = {}
        self._gen = 0
        self._log_offset = 0
        self._later = 0  # requests of the current batch sent after the one being judged
        self._inited = False  # an INIT was negotiated since start (minor/flags learned)
        self._seq = 0  # requests sent to this daemon (history entries made)
        self._decoded: tuple[bytes, tuple[int, int], tuple[Any, Any]] | None = None
        # Reply-less requests (FORGET ...) sent to this daemon, not yet known to be done.
        self._unanswered: deque[_InFlight] = deque(maxlen=8)
        # spare=True: the next daemons (FUSEPROTO_FUZZ_SPARES, 3) are made in the background
        # and retired ones stopped there (:mod:`.spare`; only where spare_allowed()).
        self._spare: Spare[Started] | None = (
            Spare(stop_started, int(os.environ.get("FUSEPROTO_FUZZ_SPARES", "3"))) if spare else None)

    @property
    def workdir(self) -> str:
        """The directory each daemon's shared directory, socket and log go under (made on
        first use unless given)."""
        if self._workdir is None:
            self._workdir = scratch.directory("fuzz")
        return self._workdir

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> DaemonHarness:
        """A fresh daemon (the spare when one is ready), the current one stopped."""
        self.stop()
        started = self._spare.take() if self._spare is not None else None
        if started is None or not started.daemon.running():
            if started is not None:
                stop_started(started)
            self._gen += 1
            started = self.prepare_daemon(self._gen)
            fresh = True
        else:
            fresh = False  # a spare: idle since its setup, its map is quiet
        self._adopt(started, settle=fresh)
        while self._spare is not None and self._spare.wanted() and self.spare_allowed():
            self._gen = gen = self._gen + 1
            self._spare.launch_with(functools.partial(self.prepare_daemon, gen))
        return self

    @property
    def spare(self) -> Spare[Started] | None:
        """The warm spares (None: made in line at each start)."""
        return self._spare

    def spare_allowed(self) -> bool:
        """Whether a spare daemon may run beside this one (:mod:`.spare`): not when
        ``env`` names one edge map for every daemon (each daemon gets its own map
        otherwise). A DAX daemon may: each gets a window of its own (a range of this
        process reserved apart, :class:`~fuseproto.transport.window.Window`) and its own
        backend channel and record (:attr:`Started.window`, :attr:`Started.dax`), so a
        spare's mappings never land in the live daemon's window nor its record."""
        return ENV_VAR not in self.env

    def prepare_daemon(self, gen: int) -> Started:
        """Daemon number ``gen``: its scratch share and canaries, started, connected and
        (``setup``) set up; not yet the harness's (:meth:`start` adopts it; a spare is
        made by this same call in a background thread). A daemon whose chosen config
        does not start or set up is started again with the default options (the chooser,
        when it has ``refuse``, is told)."""
        cfg = self.configs if isinstance(self.configs, DaemonConfig) or self.configs is None \
            else self.configs.next()
        try:
            return self._prepare(gen, cfg)
        except (DaemonError, TransportError, FuseError) as e:
            if cfg is None or cfg.choice == DEFAULT[cfg.kind].choice \
                    or isinstance(self.configs, DaemonConfig):
                raise
            if hasattr(self.configs, "refuse"):
                self.configs.refuse(cfg, str(e))
            return self._prepare(gen, None, suffix="-default")

    def _prepare(self, gen: int, cfg: DaemonConfig | None, suffix: str = "") -> Started:
        base = os.path.join(self.workdir, f"d{gen}{suffix}")
        shared = os.path.join(base, "shared")
        os.makedirs(shared)
        populate(shared)
        canaries = None
        if self.canary_mode != "off":
            canaries = Canaries.plant(shared if self.canary_mode == "inside" else base, shared)
        sock = os.path.join(base, "vhost.sock")
        extra = daemons.dax_options(DAX_WINDOW) if self.has_dax else []
        daemon = SandboxedDaemon(self.installation, shared, sock,
                                 extra_args=[*extra, *(cfg.args if cfg else ())],
                                 xattr=cfg.xattr if cfg else True,
                                 log_path=os.path.join(base, "daemon.log"))
        s = Started(daemon, base, deque(maxlen=self.exchange.maxlen), canaries,
                    minor=FUSE_KERNEL_MINOR_VERSION, nodes={"root": 1}, config=cfg)
        try:
            daemon.env = dict(SANITIZER_ENV)
            if self.coverage is not None:
                s.coverage = self.coverage.spawn()  # this daemon's own map
                daemon.env.update(s.coverage.env())
            daemon.env.update(self.env)
            daemon.start()
            if self.has_dax:
                s.window = Window(DAX_WINDOW)
                s.dax = DaxMapHandler(s.window)
            ex = s.exchange
            s.transport = VhostUserTransport(
                sock, daemon=daemon, timeout=5.0, backend_handler=s.dax,
                tap=lambda d, q, data: ex.append((d, q, data, time.time_ns())))
            s.client = Client(s.transport, timeout=5.0, uid=0, gid=0, pid=1)
            if self.setup:
                s.set_up(seeds.INIT_FLAGS | (cfg.init_flags if cfg else 0))
        except BaseException:
            stop_started(s)
            raise
        if canaries is not None:
            canaries.rearm()  # the socket and log are there now; setup read nothing
        return s

    def _adopt(self, s: Started, settle: bool = False) -> None:
        self.daemon, self.transport, self.client = s.daemon, s.transport, s.client
        self.edge_map, self.config = s.coverage, s.config
        self.window, self.dax, self.canaries, self.exchange = s.window, s.dax, s.canaries, s.exchange
        self.minor, self.flags, self.nodes, self.fhs = s.minor, s.flags, s.nodes, s.fhs
        self._inited = self.setup
        self._log_offset = 0
        self.starts += 1
        self.history.clear()
        self._seq = 0
        self._unanswered.clear()
        self.new_log()  # skip the start-up chatter
        if self.coverage is not None:
            self.coverage.follow(s.coverage)
            self.coverage.absorb()  # start-up and setup: not any input's coverage
            # A daemon set up just now still runs the tail of its last setup request (its
            # worker finishes after the reply is out): absorb until the map is quiet, so
            # those edges are not credited to the first input (SETTLE_MAX at most).
            deadline = time.monotonic() + SETTLE_MAX
            while settle and time.monotonic() < deadline:
                time.sleep(0.002)
                if not self.coverage.absorb():
                    break

    def new_log(self) -> str:
        """Daemon log text written since the last call (its last 64 KiB: where a death
        says why)."""
        if self.daemon is None or self.daemon.log_path is None:
            return ""
        text, self._log_offset = read_new_log(self.daemon.log_path, self._log_offset)
        return text

    def stop(self) -> None:
        """Close the connection and stop the daemon by PID; remove its directory (in the
        background with a spare: :meth:`close` waits for it)."""
        if self.coverage is not None:
            self.coverage.follow(None)  # before the daemon's own map is closed
        if self.daemon is not None:
            s = Started(self.daemon, os.path.dirname(self.daemon.shared_dir), self.exchange,
                        transport=self.transport, window=self.window, coverage=self.edge_map)
            if self._spare is not None and self.spare_allowed():
                self._spare.retire(stop_started, s)
            else:
                stop_started(s)
        self.transport = self.client = self.daemon = None
        self.window = self.dax = self.edge_map = None

    @property
    def has_dax(self) -> bool:
        """Whether the daemon implements DAX (our c-dax variants): it is started with
        ``-o dax`` and a backend channel mapping into a real window, so SETUPMAPPING and
        REMOVEMAPPING can be accepted and carried out."""
        return daemons.has_dax(self.installation)

    def close(self) -> None:
        self.stop()
        if self._spare is not None:
            self._spare.close()  # the untaken spare stopped, every retirement joined
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> DaemonHarness:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run: nothing may outlive a failed start
            raise

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
    def decode(self, data: bytes) -> tuple[Any, DecodeError | None]:
        """``data`` decoded with the negotiated minor and flags: (the request, None) or
        (None, why not). The last answer is kept: the loop decodes a mutant to name its
        features (:mod:`.mute`) and :meth:`send_many` the same bytes (sanitize() left
        them as they were) to judge its reply, one decode for both."""
        memo = self._decoded
        if memo is not None and memo[1] == (self.minor, self.flags) and memo[0] == data:
            return memo[2]
        try:
            out: tuple[Any, DecodeError | None] = (
                codec.decode_request(data, self.minor, flags=self.flags), None)
        except DecodeError as e:
            out = (None, e)
        self._decoded = (data, (self.minor, self.flags), out)
        return out

    def as_served(self, data: bytes) -> Any:
        """:func:`.replies.as_served` with this session's minor and flags."""
        return as_served(data, self.decode(data)[0], self.minor, self.flags)

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
        sent: list[_InFlight] = []
        outs: list[Outcome] = []
        for data, variant in items:
            data = sanitize(data)
            op, unique = -1, None
            if len(data) >= IN_SIZE:
                h = _IN.parse(data, 0)
                op, unique = h["opcode"], h["unique"]
            req = self.as_served(data)
            expectation = REPLY_EXPECTATION.get(op, ReplyExpectation.ONE)
            expected = expected_area(op, req.body if req is not None else None, self.minor)
            area = 0 if expectation is ReplyExpectation.NONE else variant_area(variant, expected)
            item: dict[str, Any] = {"hex": data.hex(), "variant": variant, "area": area}
            if batch is not None and len(items) > 1:
                item["batch"] = batch
            self.history.append(item)
            self._seq += 1
            name = opcode_name(op)
            if self.on_send is not None:
                self.on_send(self, data)
            try:
                token = t.submit(data, area, tag=f"{name} unique {unique}", kick=False)
            except TransportError as e:
                outs.append(self._dead(name, f"submit failed: {e}"))
                return outs
            sent.append(_InFlight(token, name, op, unique, req, area, expected, expectation,
                                  self._seq))
        try:
            t.kick(1)
        except (OSError, TransportError) as e:
            name = sent[0].name if sent else "?"
            outs.append(self._dead(name, f"kick failed: {e}"))
            return outs
        for k, one in enumerate(sent):
            # "previous" in the evidence: what was sent before *this* one of the batch.
            self._later = len(sent) - 1 - k
            out = self._finish(one)
            outs.append(out)
            if out.finding in FATAL:
                break
        return outs

    def _finish(self, one: _InFlight) -> Outcome:
        t, d = self.transport, self.daemon
        assert t is not None and d is not None
        name = one.name
        if one.area == 0:
            # No reply expected: a cheap liveness probe only when the process is gone.
            if not d.running():
                return self._dead(name, "daemon gone after a reply-less request")
            self._unanswered.append(one)  # a later panic may be its doing (_blame)
            return Outcome(f"{name}:noreply")
        timeout = self.hang_timeout if one.expectation is ReplyExpectation.ONE else 0.05
        if one.op in SLOW_OPS:  # the host's own flush takes what the disk takes
            timeout = max(timeout, SLOW_TIMEOUT)
        t0 = time.monotonic()
        try:
            state, reply = self._await(one.token, timeout)
            if state == "timeout" and one.expectation is ReplyExpectation.ONE \
                    and self.hang_grace > 0:
                state, reply = self._await(one.token, self.hang_grace)
                if state == "done":
                    count_slow(self.slow, name, 1, round(time.monotonic() - t0, 3))
        except TransportError as e:
            return self._dead(name, str(e))
        if state == "dead":
            return self._dead(name, "no reply; daemon gone")
        if state != "done":
            one.token.abandoned = True  # the transport frees it if it ever completes
            log = self.new_log()
            if has_report(log):
                # A sanitizer report is being written: the daemon halts when it is done.
                status = d.wait_exit(5.0)
                if status is not None:
                    return death_outcome(self.kind, name, status, log + self.new_log(),
                                         self._previous(), self.installation.binary)
            return self._blame(stall_outcome(
                self.kind, name, area=one.area, timeout=timeout + self.hang_grace, log=log,
                previous=self._previous(), state=d.state(),
                reply_expected=one.expectation is ReplyExpectation.ONE))
        out = self._check_reply(one, reply, one.token.used_len)
        if self.canaries is not None and out.finding is None:
            leak = self.canaries.scan(reply)
            if leak is not None:
                out = escape_outcome(name, leak)
                out.reply = reply
        if one.op == _OP.FUSE_INIT and out.finding is None and out.reply and not self._inited:
            # The first negotiated INIT only (as a kernel): a later one must not change how
            # we decode.
            self.learn_init(one.req, out.reply)
        return out

    def learn_init(self, request: Any, reply: bytes) -> InitNegotiation | None:
        """Take the minor and flags an INIT exchange settled, by the session's own rule
        (:func:`fuseproto.session.negotiate_init`: min of the minors, the reply's flags);
        later requests are encoded and replies decoded with them. ``request`` is the
        decoded INIT request (None if it did not decode), ``reply`` the reply's bytes.
        None (and nothing learned) when the reply settles no session (an error, another
        major version, bytes that do not decode)."""
        try:
            rep = codec.decode_reply(reply, request if request is not None else _OP.FUSE_INIT,
                                     self.minor)
        except DecodeError:
            return None
        neg = negotiate_init(getattr(request, "body", None), None if rep.error else rep.body)
        if neg is None:
            return None
        self.minor, self.flags = neg.minor, int(neg.flags)
        self._inited = True
        return neg

    def settle(self, name: str, timeout: float = 0.1) -> Outcome | None:
        """After a reply-less request (FORGET) nothing reports a death that comes a moment
        later; wait ``timeout`` s for one (replays end on such requests)."""
        d = self.daemon
        if d is None or d.wait_exit(timeout) is None:
            return None
        return self._dead(name, "daemon gone after a reply-less request")

    def _await(self, token: Any, timeout: float) -> tuple[str, bytes]:
        """("done", the reply), ("dead", b""), ("panic", b"") or ("timeout", b""): the
        transport's own wait (a short spin, then blocked on the call eventfd) in slices
        of :data:`AWAIT_SLICE` s, doubling up to 16 times that; between slices a dead
        process ends the wait, and so does a panicked Rust worker ("panic": its log says
        so, one ``stat`` per look while the log does not grow), not the hang timeout."""
        t, d = self.transport, self.daemon
        assert t is not None and d is not None
        deadline = time.monotonic() + timeout
        watch = PanicWatch(d.log_path, self._log_offset) if self.kind == "rust" else None
        slice_s = AWAIT_SLICE
        while True:
            step = min(slice_s, deadline - time.monotonic())
            slice_s = min(2 * slice_s, 16 * AWAIT_SLICE)
            if step > 0:
                try:
                    return "done", t.wait(token, step)
                except TransportTimeout:
                    token.abandoned = False  # the slice ended, not our wait
            if t.done(token):
                return "done", t.wait(token, 0)
            if not d.running():
                return "dead", b""
            if watch is not None and watch.seen():
                return "panic", b""  # the log says a worker died: no grace for it
            if time.monotonic() >= deadline:
                return "timeout", b""

    def _blame(self, out: Outcome) -> Outcome:
        """A worker panic seen while waiting for one request is the doing of an earlier
        reply-less one (FORGET, NOTIFY_REPLY) when the daemon never gave that one's chain
        back (the queue is served in order: it died on it); the outcome then names that
        request (``culprit_back``: its place in the history, 1 = the newest; ``seen_after``:
        the request the panic was seen behind)."""
        t = self.transport
        if not out.cls.endswith(":panic") or t is None:
            return out
        while self._unanswered:
            one = self._unanswered.popleft()
            if not t.done(one.token):
                name, seen = one.name, out.evidence.get("opcode", "?")
                ev = dict(out.evidence, opcode=name, seen_after=seen,
                          culprit_back=self._seq - one.seq + 1)
                return Outcome(f"{name}:panic", out.finding, out.detail.replace(
                    f"after {seen}:", f"after {name} (seen behind {seen}):", 1), ev)
        return out

    def _dead(self, name: str, detail: str) -> Outcome:
        d = self.daemon
        assert d is not None
        status = d.wait_exit(1.0)
        if status is None:
            return Outcome(f"{name}:transport", "hang", f"transport failed ({detail}) but "
                           f"{d.describe()}", {"opcode": name})
        return death_outcome(self.kind, name, status, self.new_log(), self._previous(),
                             self.installation.binary)

    def _previous(self) -> list[str]:
        """Opcode names of the requests sent before the last one (newest last)."""
        out = []
        hist = list(self.history)
        if self._later:
            hist = hist[:-self._later]
        for item in hist[-4:-1]:
            b = bytes.fromhex(item["hex"][: 2 * IN_SIZE])
            out.append(opcode_name(_IN.parse(b, 0)["opcode"]) if len(b) >= IN_SIZE else "short")
        return out

    def _check_reply(self, one: _InFlight, reply: bytes, used_len: int) -> Outcome:
        return judge_reply(one.name, one.op, one.unique, one.req, one.area, one.expected,
                           reply, used_len, self.minor, self._previous)

    def check_canaries(self, name: str = "program") -> list[Outcome]:
        """The escape findings since the last check (:meth:`.canaries.Canaries.check`:
        a canary beside the share read, written, linked, renamed or deleted, an entry
        created there), each reported once (the canaries are re-armed); ``name``: what
        ran since (an opcode, or "program"). Every live loop calls this after each input."""
        c = self.canaries
        if c is None:
            return []
        breaches = c.check()
        if breaches:
            c.rearm()
        return [escape_outcome(name, b) for b in breaches]

    def healthy(self) -> bool:
        """A GETATTR on the root answers, with no error, within :data:`HEALTH_TIMEOUT`
        (at most the hang timeout; used after INIT/DESTROY-like requests: a probe, not an
        oracle; waited for as a fuzz request is, so a dead process or a panicked Rust
        worker ends the wait at once)."""
        c = self.client
        if c is None or self.daemon is None or not self.daemon.running():
            return False
        try:
            p = c.submit(_OP.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), nodeid=1)
            state, reply = self._await(p.token, min(self.hang_timeout, HEALTH_TIMEOUT))
            if state != "done":
                p.token.abandoned = True  # the transport frees it if it ever completes
                return False
            return not c.session.feed_reply(reply).error
        except Exception:  # noqa: BLE001 -- any failure means "not usable"
            return False
