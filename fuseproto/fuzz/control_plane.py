"""The vhost-user control plane as a fuzz target: programs of front-end messages sent to a
fresh real daemon through :class:`~.rawfront.RawFrontend`.

A *program* is a list of :class:`CtlStep` (one front-end message each: the request, the
ring index, the value, which file descriptors go with it, a payload made shorter or
longer than its layout, NEED_REPLY). :func:`standard_program` is the handshake as QEMU
orders it (GET_FEATURES ... SET_MEM_TABLE, then per ring NUM, BASE, ADDR, KICK, CALL, then
ENABLE); the fuzzer inserts hostile steps (boundary values, ring indices past the queue
count, odd memory tables, missing or extra fds, unknown requests, a REPLY flag from the
front-end), deletes, duplicates and swaps steps, and changes one step's fields. Layouts
and framing are :mod:`fuseproto.transport.vhost_user_proto`'s, rings
:mod:`fuseproto.transport.virtqueue`'s (QEMU docs/interop/vhost-user.rst, virtio 1.x 2.7).

Oracles, per step and per program (:func:`run_control_program`):

* **crash** -- killed by a signal, an assertion or fortify abort, a sanitizer report, a
  Rust panic in the log (the same forensics as the live target);
* **daemon-exit** -- it exited after a step that is valid in its place (:func:`step_valid`
  and :class:`ControlModel`); after an invalid one an exit is a refusal (outcome class
  ``refused-exit``, not a finding): a back-end may drop a front-end that breaks the
  protocol;
* **hang** -- a step that asks for a reply (GET_*, or NEED_REPLY once REPLY_ACK is agreed)
  gets none while the process lives and the socket is open, within the hang timeout and
  its grace (:data:`~.forensics.HANG_GRACE`; a reply in the grace is *slow*: counted in
  :attr:`ControlResult.slow`, not a finding); at the end the control
  socket must still answer GET_FEATURES; and when the model says ring 1 is set up
  (memory table, NUM, ADDR, KICK, enabled, with the values we use, whatever hostile steps
  came between), a FUSE INIT on it must be answered (a queue the process holds but does
  not serve);
* **protocol** -- a reply without the reply flag or for another request, a payload of the
  wrong size, a reply nobody asked for, a valid step refused (REPLY_ACK non-zero).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import daemons, scratch
from ..errors import DaemonError, TransportError
from ..transport.vhost_user_proto import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_NEED_REPLY_MASK,
    VHOST_USER_VERSION,
    VHOST_USER_VRING_NOFD_MASK,
    VIRTIO_F_VERSION_1,
    VhostUserMessage,
    VhostUserProtocolFeature,
    VhostUserRequest,
    VhostUserU64,
    request_name,
)
from .control_programs import (
    hostile_step,
    mutate_program,
    program_from_json,
    program_to_json,
    step_tag,
    valid_ring_step,
)
from .corpus import Corpus, energy_for
from .coverage import CoverageMap
from .findings import Finding, FindingStore
from .forensics import HANG_GRACE, Outcome, count_slow, log_tail, outcome_signature
from .rawfront import (
    GETS,
    KNOWN_REQUESTS,
    LAYOUTS,
    MAY_REPLY,
    QUEUE_SIZE,
    QUEUES,
    TAKES_FD,
    VRING_FD,
    VRING_STATE,
    CtlStep,
    LiveDaemon,
    RawFrontend,
    died,
    fuse_probe,
    stalled,
    standard_program,
)
from .virtiofsd import EdgeFeedback

__all__ = ["step_valid", "ControlModel", "ControlResult", "run_control_program",
           "hostile_step", "mutate_program", "fuzz_control_plane", "ControlStats",
           "program_to_json", "program_from_json", "step_tag", "replay_control",
           "record_control_finding", "shrink_control", "finding_key", "judge_control_reply", "stray_reply", "control_verdict", "valid_ring_step"]

R = VhostUserRequest
P = VhostUserProtocolFeature


def step_valid(step: CtlStep, offered: int = 0, offered_protocol: int = 0) -> bool:
    """Whether ``step`` on its own is a message the protocol allows (QEMU's vhost-user.rst:
    ring indices below the queue count, payload as long as its layout, the fds it takes,
    features among those the daemon offered (``offered``, ``offered_protocol``: 0 when
    the program never asked, and then only ours count), VERSION_1 (virtio-fs has no
    legacy interface), a power-of-two ring size up to 32768, addresses inside memory and
    aligned, a table of 1..8 regions that fit the memfd, NEED_REPLY only once REPLY_ACK
    is agreed (checked by the caller))."""
    req = step.request
    if req not in KNOWN_REQUESTS or req in (R.SEND_RARP, R.NET_SET_MTU, R.IOTLB_MSG,
                                    R.SET_VRING_ENDIAN, R.SET_LOG_BASE, R.SET_LOG_FD,
                                    R.SET_BACKEND_REQ_FD, R.GET_CONFIG, R.SET_CONFIG,
                                    R.ADD_MEM_REG, R.REM_MEM_REG, R.SET_STATUS,
                                    R.GET_STATUS, R.RESET_OWNER):
        return False  # not offered here, or deprecated (RESET_OWNER)
    if step.size_delta or step.mode != "std":
        return False
    if step.flags is not None and step.flags & ~VHOST_USER_NEED_REPLY_MASK != VHOST_USER_VERSION:
        return False
    if step.fds != "std" and not (step.fds == "none" and req not in TAKES_FD):
        return False
    idx = 1 if step.index is None else step.index
    if req in (*VRING_STATE, R.SET_VRING_ADDR, *VRING_FD) and not 0 <= idx < QUEUES:
        return False
    v = step.value
    if v is None:
        return True
    if req == R.SET_VRING_NUM:
        return 1 <= v <= 32768 and not v & (v - 1)
    if req == R.SET_VRING_BASE:
        return 0 <= v <= 0xFFFF
    if req == R.SET_VRING_ENABLE:
        return v in (0, 1)
    if req == R.SET_FEATURES:
        return bool(offered) and not v & ~offered and bool(v >> VIRTIO_F_VERSION_1 & 1)
    if req == R.SET_PROTOCOL_FEATURES:
        return bool(offered_protocol) and not v & ~offered_protocol
    if req in VRING_FD:
        return v in (0, VHOST_USER_VRING_NOFD_MASK) and not (
            v and req == R.SET_VRING_KICK)  # a kick we cannot poll for: not ours to use
    return True


@dataclass
class _Ring:
    num: bool = False
    base: bool = True  # avail/used start at 0 (our RingWriter starts from memory anyway)
    addr: bool = False
    kick: bool = False
    enabled: bool = False


@dataclass
class ControlModel:
    """What a program has set up, step by step: whether ring 1 must serve a request at
    the end. ``certain`` turns false once an invalid step touched ring 0/1 or the memory
    table (then nothing is expected of the ring); steps naming rings past the queue count
    leave it alone: the daemon must refuse or ignore them."""

    certain: bool = True
    broken: bool = False  # an invalid step was sent: an exit after it is a refusal
    owner: bool = False
    features: int | None = None
    mem: bool = False
    rings: dict[int, _Ring] = field(default_factory=lambda: {q: _Ring() for q in range(QUEUES)})

    def apply(self, step: CtlStep, valid: bool, fe: RawFrontend) -> bool:
        """Record ``step`` (``valid``: :func:`step_valid`); returns whether it is valid
        *in its place* (SET_VRING_ADDR needs a memory table first)."""
        req = step.request
        idx = 1 if step.index is None else step.index
        if valid:
            valid = self._in_place(step, fe)
        if not valid:
            self.broken = True
            touches_ring = idx in self.rings and req in (*VRING_STATE, R.SET_VRING_ADDR,
                                                         *VRING_FD)
            if touches_ring or req in (R.SET_MEM_TABLE, R.SET_FEATURES, R.RESET_OWNER,
                                       R.SET_PROTOCOL_FEATURES) or req not in KNOWN_REQUESTS:
                self.certain = False
            return False
        ring = self.rings.get(idx)
        if req == R.SET_OWNER:
            self.owner = True
        elif req == R.SET_FEATURES:
            self.features = fe.value_of(step)
        elif req == R.SET_MEM_TABLE:
            self.mem = True
        elif ring is None:
            pass
        elif req == R.SET_VRING_NUM:
            ring.num = fe.value_of(step) == QUEUE_SIZE
        elif req == R.SET_VRING_BASE:
            ring.base = fe.value_of(step) == 0
        elif req == R.SET_VRING_ADDR:
            ring.addr = True
        elif req == R.SET_VRING_KICK:
            ring.kick = step.fds == "std" and not step.value
        elif req == R.SET_VRING_ENABLE:
            ring.enabled = fe.value_of(step) == 1
        elif req == R.GET_VRING_BASE:
            ring.kick = False  # stops the ring until the next SET_VRING_KICK
        return True

    def _in_place(self, step: CtlStep, fe: RawFrontend) -> bool:
        """The order rules of vhost-user.rst: features only once GET_FEATURES told what is
        offered (protocol features only when it offers PROTOCOL_FEATURES), GET_QUEUE_NUM
        and GET_MAX_MEM_SLOTS only with MQ / CONFIGURE_MEM_SLOTS agreed, one SET_OWNER,
        ring addresses only once a memory table can translate them, SET_VRING_ENABLE only once
        PROTOCOL_FEATURES is agreed by SET_FEATURES."""
        req = step.request
        if req in (R.SET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_PROTOCOL_FEATURES):
            if not fe.offered:
                return False
            if req != R.SET_FEATURES and not fe.offered >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
                return False
        if req == R.SET_PROTOCOL_FEATURES and not fe.offered_protocol:
            return False
        if req == R.GET_QUEUE_NUM:
            return bool(fe.protocol >> P.MQ & 1)
        if req == R.GET_MAX_MEM_SLOTS:
            return bool(fe.protocol >> P.CONFIGURE_MEM_SLOTS & 1)
        if req == R.SET_OWNER:
            return not self.owner
        if req == R.SET_VRING_ADDR:
            return self.mem  # the addresses are translated through the table
        if req == R.SET_VRING_ENABLE:
            # "sent only when VHOST_USER_F_PROTOCOL_FEATURES has been negotiated"
            return self.features is not None and bool(
                self.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1)
        return True

    def serving(self, q: int = 1) -> bool:
        r = self.rings[q]
        f = self.features
        enabled = r.enabled or (f is not None and not f >> VHOST_USER_F_PROTOCOL_FEATURES & 1)
        return (self.certain and self.owner and self.mem and f is not None
                and bool(f >> VIRTIO_F_VERSION_1 & 1) and r.num and r.base and r.addr and r.kick
                and enabled)


# -- one program ----------------------------------------------------------------------------

@dataclass
class ControlResult:
    """What a program did: an outcome per step sent (and the probes'), the first finding,
    whether ring 1 was expected to serve and whether it did."""

    outcomes: list[Outcome] = field(default_factory=list)
    finding: Outcome | None = None
    expected_serving: bool = False
    served: bool | None = None
    steps_run: int = 0
    log: str = ""
    first_invalid: str | None = None  # step_tag() of the first step invalid in its place
    invalid: list[str] = field(default_factory=list)  # step_tag() of every invalid step
    exchange: list[tuple[int, int, bytes, int]] = field(default_factory=list)  # pcap's
    # Replies (and probe answers) after the hang timeout, within its grace: name ->
    # [count, longest wait in s] (forensics.count_slow).
    slow: dict[str, list[float]] = field(default_factory=dict)


def stray_reply(name: str, msg: VhostUserMessage, detail: str, ev: dict[str, Any]) -> Outcome:
    """A reply to a request that wanted none, or to an earlier one: named by the request
    it says it answers (its code), not by the step it came after. Whether the front-end
    sees it while nothing is expected or as the answer to its next question is timing, so
    both are one finding (``stray-<REQUEST>``)."""
    return Outcome(f"{name}:stray-{request_name(msg.request)}", "protocol",
                   detail + ": a reply no request here asked for", ev)


def judge_control_reply(step: CtlStep, msg: VhostUserMessage, valid: bool) -> Outcome | None:
    """A protocol finding when ``msg`` is not a proper reply to ``step``."""
    name = step.name
    ev: dict[str, Any] = {"step": name, "reply_request": msg.request, "flags": msg.flags,
                          "payload": msg.payload[:64].hex()}
    if msg.is_reply and msg.request != step.request:
        return stray_reply(name, msg, f"reply to {name} is a {request_name(msg.request)} "
                           f"reply (flags {msg.flags:#x})", ev)
    if not msg.is_reply:
        return Outcome(f"{name}:reply-mismatch", "protocol",
                       f"reply to {name} is {request_name(msg.request)} with flags "
                       f"{msg.flags:#x}", ev)
    if msg.flags & 3 != VHOST_USER_VERSION:
        return Outcome(f"{name}:reply-version", "protocol",
                       f"reply to {name} has version {msg.flags & 3}", ev)
    layout: Any = GETS.get(R(step.request)) if step.request in KNOWN_REQUESTS else None
    size = layout.STRUCT.size if layout is not None else VhostUserU64.STRUCT.size
    if len(msg.payload) != size and (layout is not None or step.request not in MAY_REPLY):
        return Outcome(f"{name}:reply-size", "protocol",
                       f"reply to {name} carries {len(msg.payload)} bytes, its layout "
                       f"{size}", ev)
    if layout is None and valid and VhostUserU64.parse_body(msg.payload).u64 != 0:
        return Outcome(f"{name}:refused-valid", "protocol",
                       f"{name}, valid in its place, was refused (REPLY_ACK "
                       f"{VhostUserU64.parse_body(msg.payload).u64})", ev)
    if step.request == R.GET_FEATURES and valid:
        need = 1 << VIRTIO_F_VERSION_1 | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        if VhostUserU64.parse_body(msg.payload).u64 & need != need:
            return Outcome(f"{name}:features", "protocol",
                           "GET_FEATURES lacks VERSION_1 or PROTOCOL_FEATURES", ev)
    return None


def late_reply(fe: RawFrontend, name: str, timeout: float, grace: float,
               res: ControlResult) -> VhostUserMessage | None:
    """The reply to ``name`` that did not come within ``timeout``, if it comes within
    ``grace`` more (then counted slow in ``res``); None: a stall. TransportError on EOF."""
    t0 = time.monotonic()
    msg = fe.recv(grace) if grace > 0 else None
    if msg is not None:
        count_slow(res.slow, name, 1, round(timeout + time.monotonic() - t0, 3))
    return msg


def run_control_program(prog: list[CtlStep], installation: daemons.Installation, *,
                        workdir: str, layout: str = "one", timeout: float = 0.5,
                        env: dict[str, str] | None = None,
                        before_step: Callable[[int, LiveDaemon], None] | None = None,
                        hang_grace: float = HANG_GRACE) -> ControlResult:
    """Run ``prog`` against a fresh daemon and judge it (see the module docstring).
    ``before_step(i, live)`` (tests) runs before step ``i`` is sent; ``hang_grace``: the
    seconds a reply may still come after ``timeout`` (a slow reply, not a hang)."""
    res = ControlResult()
    live = LiveDaemon(installation, workdir, env)
    fe: RawFrontend | None = None
    model = ControlModel()
    sent: list[str] = []
    try:
        fe = RawFrontend(live.socket, live.daemon, layout=layout, timeout=timeout)
        for step in prog:
            valid = step_valid(step, fe.offered, fe.offered_protocol)
            if step.need_reply and not fe.protocol & 1 << P.REPLY_ACK:
                valid = False  # NEED_REPLY before REPLY_ACK is agreed: undefined
            valid = model.apply(step, valid, fe)
            if not valid and step_tag(step) != f"{step.name}[need-reply]":
                # (an early NEED_REPLY is harmless: not a cause)
                res.invalid.append(step_tag(step))
                res.first_invalid = res.first_invalid or res.invalid[0]
            name = step.name
            sent.append(name)
            if before_step is not None:
                before_step(len(sent) - 1, live)
            res.steps_run += 1
            try:
                expected, msg = fe.send_step(step)
                if not expected and fe.pending():
                    msg = fe.recv(0.01)  # nobody asked: a finding, or EOF (raises)
                    if msg is not None:
                        res.finding = stray_reply(
                            name, msg, f"a {request_name(msg.request)} reply after {name}, "
                            "which asks for none", {"step": name, "flags": msg.flags})
                        break
            except TransportError:
                res.finding = _death(live, name, sent[-4:-1], model.broken or not valid, res)
                break
            if expected and msg is None and valid and not model.broken \
                    and live.daemon.running():
                try:
                    msg = late_reply(fe, name, timeout, hang_grace, res)
                except TransportError:
                    res.finding = _death(live, name, sent[-4:-1], False, res)
                    break
            if expected and msg is None:
                if _closed(fe) or not live.daemon.running():
                    res.finding = _death(live, name, sent[-4:-1], model.broken or not valid,
                                         res)
                    break
                if valid and not model.broken:
                    res.finding = stalled(live, name, f"no reply to {name}", timeout)
                    res.outcomes.append(res.finding)
                    break
                res.outcomes.append(Outcome(f"noreply:{name}"))
                continue
            if msg is None:
                res.outcomes.append(Outcome(f"{name}:{'ok' if valid else 'taken'}"))
                continue
            bad = judge_control_reply(step, msg, valid and model.certain)
            res.outcomes.append(bad or Outcome(f"{name}:{'ok' if valid else 'taken'}"))
            if bad is not None:
                res.finding = bad
                break
        else:
            res.expected_serving = model.serving(1)
            res.finding = _end_probes(fe, live, model, res, timeout, hang_grace)
    finally:
        if fe is not None:
            fe.close()
            res.exchange = list(fe.exchange)
        if res.finding is None:  # the escape canaries beside the share
            res.finding = next(iter(live.escapes("program")), None)
        res.log = live.log()[-4000:]
        live.stop()
    return res


def _closed(fe: RawFrontend) -> bool:
    """The daemon closed the control socket (it is exiting)."""
    try:
        if fe.pending():
            fe.recv(0.01)
    except TransportError:
        return True
    return False


def _death(live: LiveDaemon, name: str, previous: list[str], refusable: bool,
           res: ControlResult) -> Outcome | None:
    """The verdict on a daemon that closed the socket or died after step ``name``: an
    exit is a refusal (no finding) when ``refusable`` (an invalid step was sent)."""
    out = died(live, name, previous)
    if out.finding == "daemon-exit" and refusable:
        out = Outcome(f"refused-exit:{name}", None, out.detail, out.evidence)
    res.outcomes.append(out)
    return out if out.finding else None


def _answers(fe: RawFrontend, live: LiveDaemon, what: str, model: ControlModel,
             res: ControlResult, timeout: float, grace: float) -> tuple[bool, Outcome | None]:
    """GET_FEATURES as a probe: (answered, finding)."""
    try:
        _, msg = fe.send_step(CtlStep(R.GET_FEATURES))
        if msg is None and live.daemon.running():
            msg = late_reply(fe, what, timeout, grace, res)
    except TransportError:
        return False, _death(live, what, [], model.broken, res)
    if msg is None:
        if _closed(fe) or not live.daemon.running():
            return False, _death(live, what, [], model.broken, res)
        return False, stalled(live, what, "control socket open but no reply to GET_FEATURES",
                              timeout)
    return True, judge_control_reply(CtlStep(R.GET_FEATURES), msg, True)


def _end_probes(fe: RawFrontend, live: LiveDaemon, model: ControlModel, res: ControlResult,
                timeout: float, grace: float) -> Outcome | None:
    """After the program: the control socket must still answer GET_FEATURES (or be closed
    by a daemon that exited, after an invalid step), and a ring set up for us must answer
    a FUSE INIT. GET_FEATURES goes first as a barrier: the daemon handles messages in
    order, so once it is answered the last SET_VRING_ENABLE is in effect (the Rust daemon
    drops a kick that comes before it; a VMM enables rings before the guest kicks)."""
    ok, bad = _answers(fe, live, "probe GET_FEATURES", model, res, timeout, grace)
    if not ok or bad is not None:
        return bad
    if res.expected_serving:
        out = fuse_probe(fe, live, timeout, grace, res.slow)
        res.outcomes.append(out)
        res.served = out.finding is None
        if out.finding is not None:
            return out
    return None


# -- the loop -------------------------------------------------------------------------------

@dataclass
class ControlStats:
    daemon: str
    programs: int = 0
    steps: int = 0
    seconds: float = 0.0
    served: int = 0  # programs whose ring 1 was set up and answered the FUSE probe
    classes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    corpus_size: int = 0
    edges: dict[str, Any] = field(default_factory=dict)  # as ChainStats.edges
    slow: dict[str, list[float]] = field(default_factory=dict)  # as ControlResult.slow

    @property
    def per_second(self) -> float:
        return self.programs / self.seconds if self.seconds else 0.0


def record_control_finding(store: FindingStore, label: str, installation: daemons.Installation,
                           prog: list[CtlStep], layout: str, out: Outcome, log: str,
                           cause: str | None = None,
                           exchange: list[tuple[int, int, bytes, int]] | None = None) -> Finding:
    """File ``out`` with a reproducer: the program as JSON (``fuseproto fuzz replay``)."""
    sig = outcome_signature(label, out) or ""
    if out.finding in ("crash", "daemon-exit", "hang", "protocol") and cause \
            and "site" not in out.evidence:
        # No site in the log: the first odd step is the cause, not the step it died at.
        how = out.evidence.get("signal") or out.cls.split(":")[1 if ":" in out.cls else 0]
        sig = f"{out.finding}:{label}:{how}:{cause}"
    sig = sig.replace(":", ":control:", 1)
    f = Finding("control_plane", out.finding or "", sig, out.detail[:300], daemon=label,
                evidence=dict(out.evidence, log_tail=log_tail(log, 10)))
    doc = {"target": "control_plane", "daemon": label, "daemon_binary": installation.binary,
           "daemon_variant": installation.variant, "layout": layout,
           "first_invalid": cause, "log_tail": log_tail(log, 10),
           "key": list(finding_key(out) or ()),
           "finding": {"kind": out.finding, "signature": sig, "detail": out.detail},
           "program": program_to_json(prog)}
    return store.add(f, doc, suffix=".json", exchange=exchange)


def finding_key(out: Outcome | None) -> tuple[str, ...] | None:
    """What must stay the same while a program is shrunk: the kind and the signal or site
    (not the step it died at)."""
    if out is None or out.finding is None:
        return None
    ev = out.evidence
    return (out.finding, str(ev.get("site") or ev.get("signal") or out.cls.split(":")[-1]))


#: A step's fields and their plain values (what the standard handshake sends), tried by
#: :func:`shrink_control` in this order.
PLAIN: dict[str, Any] = {"mode": "std", "fds": "std", "size_delta": 0, "flags": None,
                         "need_reply": False, "value": None}


def shrink_control(prog: list[CtlStep], installation: daemons.Installation, layout: str,
                   key: tuple[str, ...], *, seconds: float = 5.0, timeout: float = 0.5,
                   env: dict[str, str] | None = None) -> tuple[list[CtlStep], ControlResult | None]:
    """Drop steps one at a time (last first) while the program still gives a finding with
    ``key`` (:func:`finding_key`), then give each kept step's hostile fields their plain
    values one at a time (:data:`PLAIN`: a mode, fds, size, flags or value the finding
    does not need goes), within ``seconds``; the smaller program and its run. The plainer
    steps name the finding's cause (:func:`step_tag`), so one bug reached with different
    decorations is one signature."""
    end = time.monotonic() + seconds
    best, best_res = list(prog), None
    wd = scratch.directory("ctl")

    def keeps(cand: list[CtlStep]) -> ControlResult | None:
        res = run_control_program(cand, installation, workdir=wd, layout=layout,
                                  timeout=timeout, env=env)
        return res if finding_key(res.finding) == key else None
    try:
        i = len(best) - 1
        while i >= 0 and time.monotonic() < end:
            cand = best[:i] + best[i + 1:]
            res = keeps(cand)
            if res is not None:
                best, best_res = cand, res
            i -= 1
        for i in range(len(best)):
            for name, plain in PLAIN.items():
                if getattr(best[i], name) == plain or time.monotonic() >= end:
                    continue
                cand = best[:i] + [dataclasses.replace(best[i], **{name: plain})] + best[i + 1:]
                res = keeps(cand)
                if res is not None:
                    best, best_res = cand, res
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return best, best_res


def replay_control(doc: dict[str, Any], installation: daemons.Installation,
                   timeout: float = 0.5) -> ControlResult:
    """Run a control-plane reproducer's program again on a fresh daemon."""
    wd = scratch.directory("ctl")
    try:
        return run_control_program(program_from_json(doc["program"]), installation,
                                   workdir=wd, layout=doc.get("layout", "one"),
                                   timeout=timeout)
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def control_verdict(doc: dict[str, Any], spec: str | None = None, kind: str | None = None
                    ) -> dict[str, Any]:
    """Replay control-plane reproducer ``doc`` (``fuseproto fuzz replay``): reproduced when
    a finding of the same kind and site or signal (:func:`finding_key`) comes back."""
    from .replay import doc_installation

    used, inst = doc_installation(doc, spec, kind)
    res = replay_control(doc, inst)
    got = finding_key(res.finding)
    verdict: dict[str, Any] = {"target": "control_plane", "daemon": used,
                               "binary": inst.binary,
                               "reproduced": got is not None and list(got) == doc.get("key"),
                               "steps_sent": res.steps_run,
                               "expected": (doc.get("finding") or {}).get("signature"),
                               "seen": [":".join(got)] if got else []}
    if res.finding is not None:
        verdict.update(kind=res.finding.finding, summary=res.finding.detail,
                       outcome=res.finding.cls)
    return verdict


def fuzz_control_plane(installation: daemons.Installation, *, seconds: float,
                       store: FindingStore, seed: int = 0, label: str | None = None,
                       timeout: float = 0.5, max_programs: int | None = None,
                       env: dict[str, str] | None = None, shrink_seconds: float = 3.0,
                       coverage: CoverageMap | None = None, feedback: str = "auto"
                       ) -> ControlStats:
    """Mutated control programs, each on a fresh daemon, for ``seconds``; findings go to
    ``store``. Kept: a program that lit new daemon edges (an instrumented daemon; energy
    for how many; ``feedback`` as in :class:`~.virtiofsd.EdgeFeedback`), and one that
    reaches a new outcome class. The first program of each kind of finding is shrunk
    (:func:`shrink_control`, ``shrink_seconds``) and its invalid steps name the cause in
    the signature."""
    label = label or installation.kind
    rng = random.Random(seed)
    st = ControlStats(label)
    corpus: Corpus[list[CtlStep]] = Corpus(500)
    corpus.add(standard_program())
    shrunk: dict[Any, str | None] = {}  # finding key -> the cause its minimal program shows
    fb = EdgeFeedback(installation, coverage, feedback)
    env = {**(env or {}), **fb.map.env()}
    t0 = time.monotonic()
    wd = scratch.directory("ctl")
    try:
        while time.monotonic() - t0 < seconds and (max_programs is None
                                                    or st.programs < max_programs):
            parent = corpus.choose(rng)
            prog = parent if st.programs == 0 else mutate_program(parent, rng)
            layout = LAYOUTS[st.programs % len(LAYOUTS)]
            try:
                res = run_control_program(prog, installation, workdir=wd, layout=layout,
                                          timeout=timeout, env=env)
            except (DaemonError, TransportError, OSError) as e:
                st.error = f"{type(e).__name__}: {e}"
                break
            fb.started()
            st.programs += 1
            st.steps += res.steps_run
            st.served += bool(res.served)
            for name, (n, worst) in res.slow.items():
                count_slow(st.slow, name, int(n), worst)
            new = False
            for o in res.outcomes:
                new |= o.cls not in st.classes
                st.classes[o.cls] = st.classes.get(o.cls, 0) + 1
            edges = fb.new_edges()
            if res.finding is not None:
                key = finding_key(res.finding)
                cause = res.first_invalid
                if key not in shrunk and shrink_seconds > 0:
                    # First time: a minimal program names the cause (the steps it keeps).
                    small, sres = shrink_control(prog, installation, layout, key or (),
                                                 seconds=shrink_seconds, timeout=timeout,
                                                 env=env)
                    fb.map.absorb()  # the shrinker's runs are not the next program's
                    shrunk[key] = "+".join(sorted(set(sres.invalid))) if sres else cause
                    if sres is not None and sres.finding is not None:
                        prog, res = small, sres
                assert res.finding is not None
                cause = shrunk.get(key) or cause
                f = record_control_finding(store, label, installation, prog, layout,
                                           res.finding, res.log, cause, res.exchange)
                if all(x.signature != f.signature for x in st.findings):
                    st.findings.append(f)
            elif fb.steering and edges:
                corpus.add(prog, energy_for(edges))
            elif new:
                corpus.add(prog)
        st.edges = fb.summary()
    finally:
        fb.close()
        shutil.rmtree(wd, ignore_errors=True)
        st.seconds = time.monotonic() - t0
        st.corpus_size = len(corpus)
    return st
