"""Hostile descriptor chains: a live target whose input decides the virtqueue chain a FUSE
request travels in, not only the message.

The honest path stays :meth:`fuseproto.transport.virtqueue.SplitVirtqueue.add`; here a
:class:`ChainInput` says how to cut the request into device-readable descriptors (at odd
offsets, headers split mid-field), how to split the reply area into device-writable ones
(or give none), in which order they come (readable and writable misordered or
interleaved), whether they sit in an indirect table, and which hostile edits apply
(:data:`OPS`): zero-length descriptors, addresses outside guest memory or across the two
regions of the memory table (contiguous: valid; with a hole: not), lengths past the end
of memory, ``next`` loops and out-of-range indices, chains longer than the ring, indirect
tables of a bad length, nested or looping, INDIRECT with NEXT, an avail entry naming no
descriptor, an avail index jumping past the ring. :func:`chain_check` walks the chain
as written and says whether it is valid virtio 1.x (2.7.5, 2.7.13) and what the device
may write. The rings are written by :class:`~.rawfront.RingWriter` through
:mod:`fuseproto.transport.virtqueue`'s layouts, on a daemon set up by
:class:`~.rawfront.RawFrontend` (memory shown as one region, two, or two with a hole).

Oracles (:meth:`ChainSession.run`): for every chain, a used entry naming a head we never
published, or a used.len past the device-writable bytes of the chain (**used-overflow**,
:func:`judge_used`) is a protocol finding; a death by signal, an abort, a sanitizer
report, a Rust worker panic is a crash. For a *valid* chain an exit, a stall or a reply
that breaks FUSE (:func:`.harness.judge_reply`) is a finding too; for an *invalid* one the
device may refuse it: exit (QEMU's libvhost-user calls ``vu_panic``), drop it, or stop the
queue -- outcome classes ``refused-exit`` / ``dropped`` / ``queue-stopped``, not findings.
After a hostile chain an honest GETATTR checks the queue still serves.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from construct import Container

from .. import daemons, scratch
from ..capture.frames import Direction
from ..errors import DaemonError, DecodeError, TransportError
from ..transport.virtqueue import (
    VIRTQ_DESC,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from ..wire import codec, structs
from ..wire.constants import fuse_opcode, opcode_name
from . import mutate
from .corpus import Corpus, energy_for
from .coverage import CoverageMap
from .descchain import OPS, ChainCheck, ChainInput, Desc, chain_check, judge_used
from .findings import Finding, FindingStore
from .forensics import HANG_GRACE, Outcome, count_slow, log_tail, outcome_signature
from .harness import expected_area, judge_reply
from .rawfront import (
    LAYOUTS,
    QUEUE_SIZE,
    LiveDaemon,
    RawFrontend,
    RingWriter,
    died,
    init_body,
    stalled,
    standard_program,
    wait_used,
)
from .virtiofsd import EdgeFeedback

__all__ = ["ChainSession", "ChainStats", "fuzz_chains", "random_input", "mutate_input",
           "replay_chains", "chains_verdict", "record_chain_finding"]

OP = fuse_opcode
_IN = structs.FAST["fuse_in_header"]
SCRATCH = 8 << 20  # buffers from here on (rings sit below 1 MiB)
BOUNDARY = 16 << 20  # where the two-region layouts split guest memory
TABLE_AREA = 6 << 20  # indirect tables
PROBE_TIMEOUT = 0.1  # the honest probe after an invalid chain


_SEED_BODIES: dict[int, Any] = {}


def _seed_body(op: int, **over: Any) -> Container:
    """The seeds' body for ``op`` (the first one), with ``over`` set."""
    if not _SEED_BODIES:
        from . import seeds

        for sd in reversed(seeds.request_seeds()):
            _SEED_BODIES[sd.opcode] = sd.body
    return Container(_SEED_BODIES[op], **over)


class ChainSession:
    """One daemon, set up honestly (:func:`~.rawfront.standard_program` with memory shown
    as ``layout``, INDIRECT_DESC asked for when ``indirect``; then INIT, LOOKUP, OPEN,
    OPENDIR on honest chains), then hostile chains on ring 1, one at a time. Descriptors
    0.. carry the fuzz chain, 250/251 the honest ones; :attr:`mirror` is what we wrote
    (the ring as the device reads it)."""

    HONEST = 250

    def __init__(self, installation: daemons.Installation, workdir: str, *,
                 layout: str = "two", indirect: bool = False, timeout: float = 0.5,
                 env: dict[str, str] | None = None,
                 slow: dict[str, list[float]] | None = None):
        self.installation, self.layout, self.timeout = installation, layout, timeout
        # Valid chains answered after the timeout, within its grace (forensics.count_slow).
        self.slow: dict[str, list[float]] = {} if slow is None else slow
        self.live = LiveDaemon(installation, workdir, env)
        self.history: list[ChainInput] = []
        self.unique = 100
        try:
            self.fe = RawFrontend(self.live.socket, self.live.daemon, layout=layout,
                                  indirect=indirect, timeout=max(timeout, 1.0))
            for step in [*standard_program(), standard_program()[0]]:  # + a barrier
                expected, msg = self.fe.send_step(step)
                if expected and msg is None:
                    raise DaemonError(f"no reply to {step.name} in the honest handshake")
            self.indirect_ok = bool(self.fe.features >> 28 & 1)
            self.ring: RingWriter = self.fe.ring(1)
            self.mirror: list[Desc | None] = [None] * QUEUE_SIZE
            self._setup()
        except BaseException:
            self.stop()
            raise

    # -- honest requests --------------------------------------------------------------------
    def next_unique(self) -> int:
        self.unique += 2
        return self.unique

    def request(self, op: int, body: Any, nodeid: int = 1) -> bytes:
        return codec.encode_request(op, body, unique=self.next_unique(), nodeid=nodeid)

    def honest(self, data: bytes, area: int, timeout: float | None = None
               ) -> tuple[str, bytes]:
        """One request on a plain two-descriptor chain: (wait state, reply bytes)."""
        fe, ring, h = self.fe, self.ring, self.HONEST
        self.note(Direction.REQUEST, data)
        off = 30 << 20
        fe.mem.mm[off:off + len(data)] = data
        ring.desc(h, fe.gpa(off), len(data), VIRTQ_DESC_F_NEXT if area else 0, h + 1)
        ring.desc(h + 1, fe.gpa(off + (1 << 20)), area, VIRTQ_DESC_F_WRITE, 0)
        ring.publish(h)
        self.kick()
        seen: list[tuple[int, int]] = []
        state = wait_used(ring, h, self.live, timeout or self.timeout, seen)
        ulen = next((n for i, n in seen if i == h), 0)
        reply = bytes(fe.mem.mm[off + (1 << 20):off + (1 << 20) + min(ulen, area)])
        if reply:
            self.note(Direction.REPLY, reply)
        return state, reply

    def note(self, direction: int, data: bytes) -> None:
        """Keep one record for a finding's pcap (the front-end's exchange, ring 1): the
        honest requests and replies, each hostile chain's shape (an annotation), the
        bytes the device reads from it and what it wrote back."""
        self.fe.note(data, direction, 1)

    def _call(self, op: int, body: Any, nodeid: int = 1) -> Any:
        data = self.request(op, body, nodeid)
        state, reply = self.honest(data, codec.reply_area(op, body))
        if state != "done":
            raise DaemonError(f"no reply to {opcode_name(op)} in the set-up ({state})")
        rep = codec.decode_reply(reply, codec.decode_request(data))
        if rep.error:
            raise DaemonError(f"{opcode_name(op)} failed in the set-up: {rep.error}")
        return rep.body

    def _setup(self) -> None:
        self._call(OP.FUSE_INIT, init_body())
        self.file = self._call(OP.FUSE_LOOKUP, Container(name=b"file")).nodeid
        self.dir = self._call(OP.FUSE_LOOKUP, Container(name=b"dir")).nodeid
        self.fh = self._call(OP.FUSE_OPEN, _seed_body(OP.FUSE_OPEN, flags=2), self.file).fh
        self.dfh = self._call(OP.FUSE_OPENDIR, _seed_body(OP.FUSE_OPENDIR), self.dir).fh

    def templates(self) -> list[tuple[int, Any, int]]:
        """(opcode, body, nodeid) of the requests the chains carry (our node ids, fhs)."""
        rd = _seed_body(OP.FUSE_READ, fh=self.fh)
        wr = _seed_body(OP.FUSE_WRITE, fh=self.fh)
        return [
            (OP.FUSE_GETATTR, _seed_body(OP.FUSE_GETATTR), 1),
            (OP.FUSE_LOOKUP, Container(name=b"file"), 1),
            (OP.FUSE_READ, rd, self.file),
            (OP.FUSE_READ, Container(rd, size=65536), self.file),
            (OP.FUSE_WRITE, Container(wr, data=bytes(range(256)) * 12), self.file),
            (OP.FUSE_WRITE, Container(wr, data=b"\xa5" * ((1 << 20) + 4096)), self.file),
            (OP.FUSE_READDIR, _seed_body(OP.FUSE_READDIR, fh=self.dfh), self.dir),
            (OP.FUSE_STATFS, Container(), 1),
        ]

    def read_request(self, size: int = 4096) -> tuple[bytes, int]:
        """A READ of the scratch file and the area a kernel gives its reply."""
        body = _seed_body(OP.FUSE_READ, fh=self.fh, size=size)
        return self.request(OP.FUSE_READ, body, self.file), codec.reply_area(OP.FUSE_READ, body)

    def kick(self) -> None:
        import os

        fd = self.fe.kick_fds.get(1)
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass

    def alive(self, timeout: float | None = None) -> Outcome | None:
        """An honest GETATTR: None when the queue serves (within ``timeout``, default the
        hang timeout), else the verdict."""
        state, reply = self.honest(self.request(OP.FUSE_GETATTR, _seed_body(OP.FUSE_GETATTR)),
                                   codec.reply_area(OP.FUSE_GETATTR, None), timeout)
        if state == "done":
            return None
        if state == "dead":
            return died(self.live, "probe FUSE_GETATTR", [])
        return stalled(self.live, "probe FUSE_GETATTR", "no reply to an honest GETATTR",
                       self.timeout)

    def stop(self) -> None:
        fe = getattr(self, "fe", None)
        if fe is not None:
            fe.close()
        self.live.stop()

    # -- hostile chains -----------------------------------------------------------------------
    def _place(self, inp: ChainInput) -> tuple[list[Desc], int]:
        """Buffers for the input's pieces; returns the descriptors (not yet linked) and
        how many of them are readable."""
        fe, req = self.fe, inp.request
        cuts = sorted({c for c in inp.cuts if 0 < c < len(req)})[:200]
        bounds = [0, *cuts, len(req)]
        reads = [req[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        splits = sorted({s for s in inp.splits if 0 < s < inp.area})[:30]
        wb = [0, *splits, inp.area] if inp.area else []
        writes = [b - a for a, b in zip(wb, wb[1:], strict=False)]
        items: list[tuple[str, Any]] = [("r", r) for r in reads]
        witems: list[tuple[str, Any]] = [("w", n) for n in writes]
        if inp.order == "writable-first":
            items = witems + items
        elif inp.order == "interleaved":
            mixed = []
            for k in range(max(len(items), len(witems))):
                mixed += items[k:k + 1] + witems[k:k + 1]
            items = mixed
        else:
            items += witems
        pos, out = SCRATCH, []
        for kind, x in items:
            n = len(x) if kind == "r" else x
            if kind == "r":
                fe.mem.mm[pos:pos + n] = x
            else:
                fe.mem.mm[pos:pos + n] = bytes(n)
            out.append(Desc(fe.gpa(pos), n, VIRTQ_DESC_F_WRITE if kind == "w" else 0,
                            off=pos))
            pos = (pos + n + 7) & ~7
        return out, len(reads)

    def build(self, inp: ChainInput) -> tuple[int, int, dict[int, list[Desc]], list[str]]:
        """Write the input's chain: (head, avail advance, indirect tables, extra reasons it
        is invalid beyond what :func:`chain_check` sees)."""
        fe = self.fe
        ents, _ = self._place(inp)
        extra: list[str] = []
        ops = [(o, a) for o, a in inp.ops if o in OPS]
        for o, a in ops:
            if not ents:
                break
            i = a % len(ents)
            d = ents[i]
            if o == "zero":
                ents.insert(a % (len(ents) + 1), Desc(d.addr, 0, d.flags, off=d.off))
            elif o == "outside":
                d.addr, d.off = fe.memory_end + 4096 * (1 + a % 16), None
            elif o == "addr-zero":
                d.addr, d.off = 0, None
            elif o == "huge":
                d.len = 0xFFFFF000
            elif o == "straddle" and 2 <= d.len <= 4 << 20 and d.off is not None:
                off = BOUNDARY - d.len // 2
                fe.mem.mm[off:off + d.len] = fe.mem.mm[d.off:d.off + d.len]
                d.addr, d.off = fe.gpa(off), off
            elif o == "write-flag":
                d.flags ^= VIRTQ_DESC_F_WRITE
            elif o == "len-lie":
                d.len += 1 + a % 64
        limit = QUEUE_SIZE + 1 if inp.indirect else self.HONEST - 10
        if inp.indirect and any(o == "indirect-long" for o, _ in ops):
            pad = max(0, QUEUE_SIZE + 1 - len(ents))
            ents = [Desc(ents[0].addr, 0, 0, off=ents[0].off) for _ in range(pad)] + ents
        ents = ents[:limit]
        n = len(ents)
        for k, d in enumerate(ents):  # link them
            if k < n - 1:
                d.flags |= VIRTQ_DESC_F_NEXT
                d.next = k + 1
        for o, a in ops:
            last = ents[-1]
            if o == "loop" and not inp.indirect or o == "indirect-loop" and inp.indirect:
                last.flags |= VIRTQ_DESC_F_NEXT
                last.next = a % n
            elif o == "next-oob":
                d = ents[a % n]
                d.flags |= VIRTQ_DESC_F_NEXT
                d.next = (n if inp.indirect else QUEUE_SIZE) + a % 1000
        tables: dict[int, list[Desc]] = {}
        tail = not inp.indirect and any(o == "indirect-tail" for o, _ in ops)
        if tail and any(d.flags & VIRTQ_DESC_F_WRITE for d in ents):
            # Direct readable descriptors, then one INDIRECT descriptor whose table holds
            # the writable ones: valid (2.7.5.3.2: the device MUST handle it).
            k = next(k for k, d in enumerate(ents) if d.flags & VIRTQ_DESC_F_WRITE)
            table = ents[k:]
            for j, d in enumerate(table):
                d.next = j + 1
            toff = TABLE_AREA
            for j, d in enumerate(table):
                VIRTQ_DESC.pack_into(fe.mem.mm, toff + 16 * j, d.addr & (1 << 64) - 1,
                                     d.len & 0xFFFFFFFF, d.flags, d.next & 0xFFFF)
            tables[fe.gpa(toff)] = table
            ents = ents[:k] + [Desc(fe.gpa(toff), 16 * len(table), VIRTQ_DESC_F_INDIRECT,
                                    off=toff)]
            if k:
                ents[k - 1].flags |= VIRTQ_DESC_F_NEXT
                ents[k - 1].next = k
        if inp.indirect:
            toff = TABLE_AREA
            taddr = fe.gpa(toff)
            for o, a in ops:
                if o == "indirect-nested":
                    d = ents[a % n]
                    d.flags, d.addr, d.len, d.off = VIRTQ_DESC_F_INDIRECT, taddr, 16 * n, None
            for k, d in enumerate(ents):
                VIRTQ_DESC.pack_into(fe.mem.mm, toff + 16 * k, d.addr & (1 << 64) - 1,
                                     d.len & 0xFFFFFFFF, d.flags, d.next & 0xFFFF)
            tables[taddr] = ents
            top = Desc(taddr, 16 * n, VIRTQ_DESC_F_INDIRECT, off=toff)
            for o, a in ops:
                if o == "indirect-badlen":
                    top.len = 0 if a % 5 == 0 else max(0, 16 * n - 1 - a % 15)
                elif o == "indirect-next":
                    top.flags |= VIRTQ_DESC_F_NEXT
                    top.next = 1
            ring_ents = [top]
            if top.flags & VIRTQ_DESC_F_NEXT:
                ring_ents.append(Desc(ents[0].addr, 0, 0, off=ents[0].off))
        else:
            ring_ents = ents
        for k, d in enumerate(ring_ents):
            self.ring.desc(k, d.addr, d.len, d.flags, d.next)
            self.mirror[k] = Desc(d.addr & (1 << 64) - 1, d.len & 0xFFFFFFFF, d.flags & 0xFFFF,
                                  d.next & 0xFFFF, d.off)
        head, advance = 0, 1
        for o, a in ops:
            if o == "avail-oob":
                head = QUEUE_SIZE + a % 1000
            elif o == "avail-jump":
                advance = QUEUE_SIZE + 1 + a % 100
                extra.append("avail index moved past the ring")
        return head, advance, tables, extra

    def run(self, inp: ChainInput) -> tuple[Outcome, bool]:
        """Send one input; (its outcome, whether the session is still usable)."""
        self.history.append(inp)
        head, advance, tables, extra = self.build(inp)
        check = chain_check(self.mirror, head, tables, self.fe.regions,
                            indirect_ok=self.indirect_ok)
        if extra:
            check = ChainCheck(False, sorted(set(check.reasons + extra)), check.writable,
                               check.readable)
        # Judge against what the device reads (a length that lies or a flag flipped
        # changes the message), not what we meant to send.
        req = self.read_back(check)
        self.note(Direction.ANNOTATION, f"hostile chain {inp.tags()}: "
                  f"{'valid' if check.valid else 'invalid: ' + ', '.join(check.reasons)}"
                  .encode())
        self.note(Direction.REQUEST, req)
        op = _IN.parse(req, 0)["opcode"] if len(req) >= _IN.size else -1
        unique = _IN.parse(req, 0)["unique"] if len(req) >= _IN.size else None
        name = opcode_name(op) if op >= 0 else "short"
        self.ring.publish(head, advance)
        self.kick()
        seen: list[tuple[int, int]] = []
        # An invalid chain the device skips has no used entry: the honest probe behind it
        # (served in order) tells a skip from a stall, so the wait can be short. A valid
        # one gets the hang grace too (a slow answer is not a hang: forensics.HANG_GRACE).
        timeout = self.timeout + HANG_GRACE if check.valid else min(self.timeout, 0.05)
        t0 = time.monotonic()
        state = wait_used(self.ring, head, self.live, timeout, seen)
        waited = time.monotonic() - t0
        if state == "done" and check.valid and waited > self.timeout:
            count_slow(self.slow, name, 1, round(waited, 3))
        tag = inp.tags()
        ev = {"chain": tag, "valid": check.valid, "reasons": check.reasons,
              "writable": check.writable_bytes}
        # An avail index that jumps past what was written publishes the stale ring slots
        # again: the heads they name (ours and the honest one) may come back too.
        stale = {0, self.HONEST} if any(o == "avail-jump" for o, _ in inp.ops) else set()
        bad = judge_used(name, head, seen, check, stale)
        if bad is not None:
            bad.evidence.update(ev)
            return bad, self.alive() is None
        if state == "done":
            return self._judge(inp, name, op, unique, head, seen, check, ev)
        if state == "dead":
            out = died(self.live, name, [])
            return self._refusable(out, check, ev), False
        if state == "panic":
            out = stalled(self.live, name, "", timeout)
            out.evidence.update(ev)
            return out, False
        if check.valid:
            out = stalled(self.live, name, f"no used entry for a valid chain ({tag})", timeout)
            out.evidence.update(ev)
            return out, False
        # An honest request takes a few ms: a short wait tells a stopped queue (after an
        # invalid chain the device may stop it: no finding either way).
        probe = self.alive(PROBE_TIMEOUT)
        if probe is None:
            return Outcome(f"{name}:{tag}:dropped", evidence=ev), False
        if probe.finding == "hang":
            return Outcome(f"{name}:{tag}:queue-stopped", evidence=ev), False
        return self._refusable(probe, check, ev), False

    def read_back(self, check: ChainCheck) -> bytes:
        """The device-readable bytes of the chain as written, in walk order (buffers we
        do not own, or past memory, count as nothing)."""
        out = bytearray()
        size = self.fe.mem.size
        for d in check.readable:
            if d.off is not None and len(out) < 4 << 20:
                out += self.fe.mem.mm[d.off:min(d.off + d.len, size)]
        return bytes(out)

    def _refusable(self, out: Outcome, check: ChainCheck, ev: dict[str, Any]) -> Outcome:
        out.evidence.update(ev)
        if out.finding == "daemon-exit" and not check.valid:
            reason = (out.evidence.get("log_tail") or "").strip().splitlines()[-1:] or [""]
            return Outcome(f"refused-exit:{ev['chain']}", None, reason[0][:200], out.evidence)
        return out

    def _judge(self, inp: ChainInput, name: str, op: int, unique: int | None, head: int,
               seen: list[tuple[int, int]], check: ChainCheck, ev: dict[str, Any]
               ) -> tuple[Outcome, bool]:
        ulen = next(n for i, n in seen if i == head)
        reply = bytearray()
        for d in check.writable:
            take = min(d.len, ulen - len(reply))
            if take <= 0:
                if len(reply) >= ulen:
                    break
                continue  # a zero-length descriptor
            reply += self.fe.mem.mm[d.off:d.off + take] if d.off is not None else bytes(take)
        if reply:
            self.note(Direction.REPLY, bytes(reply))
        try:
            req = codec.decode_request(self.read_back(check))
        except DecodeError:
            req = None
        exp = expected_area(op, req.body if req is not None else None, 46) if op >= 0 else 0
        out = judge_reply(name, op, unique, req, check.writable_bytes, exp, bytes(reply),
                          ulen, 46)
        out.evidence.update(ev)
        if not check.valid and out.finding == "protocol":
            out = Outcome(f"{name}:{inp.tags()}:answered-invalid", evidence=out.evidence)
        if check.valid and out.finding is None:
            return out, True
        probe = self.alive(PROBE_TIMEOUT if out.finding is None else None)
        if probe is not None and out.finding is None:
            if probe.finding in ("crash", "asan", "ubsan"):
                probe.evidence.update(ev)
                return probe, False
            return Outcome(f"{name}:{inp.tags()}:queue-stopped", evidence=ev), False
        return out, probe is None


# -- inputs and the loop ----------------------------------------------------------------------

_CUTS = (1, 2, 3, 4, 7, 8, 12, 16, 20, 24, 28, 32, 36, 39, 40, 41, 44, 48, 56, 64, 80)


def random_input(data: bytes, area: int, rng: random.Random) -> ChainInput:
    """A chain for request ``data`` (reply area ``area``): odd cuts (headers split
    mid-field), odd writable splits, sometimes an order, indirect, and hostile ops."""
    inp = ChainInput(data, area)
    for _ in range(rng.choice((0, 1, 1, 2, 3, 8))):
        inp.cuts.append(rng.choice(_CUTS) if rng.random() < 0.7 else rng.randrange(1, 1 + len(data)))
    if area and rng.random() < 0.4:
        inp.splits = [rng.randrange(1, area + 1) for _ in range(rng.choice((1, 2, 5)))]
    if rng.random() < 0.08:
        inp.area, inp.splits = 0, []
    elif rng.random() < 0.1:
        inp.area = rng.choice((1, 15, 16, 17, area // 2 + 1, area + 4096))
    if rng.random() < 0.08:
        inp.order = rng.choice(("writable-first", "interleaved"))
    inp.indirect = rng.random() < 0.3
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        inp.ops.append((rng.choice(OPS), rng.randrange(1 << 16)))
    return inp


def mutate_input(parent: ChainInput, rng: random.Random) -> ChainInput:
    """One change to the chain (a cut, a split, an op added or dropped, the order, the
    indirect bit) or, sometimes, to the request through :func:`.mutate.mutate_request`."""
    c = ChainInput(parent.request, parent.area, list(parent.cuts), list(parent.splits),
                   parent.order, parent.indirect, list(parent.ops))
    k = rng.randrange(8)
    if k == 0:
        c.cuts.append(rng.choice(_CUTS))
    elif k == 1 and c.cuts:
        c.cuts.pop(rng.randrange(len(c.cuts)))
    elif k == 2 and c.area:
        c.splits.append(rng.randrange(1, c.area + 1))
    elif k == 3:
        c.ops.append((rng.choice(OPS), rng.randrange(1 << 16)))
    elif k == 4 and c.ops:
        c.ops.pop(rng.randrange(len(c.ops)))
    elif k == 5:
        c.indirect = not c.indirect
    elif k == 6:
        c.order = rng.choice(("normal", "normal", "writable-first", "interleaved"))
    else:
        c.request = mutate.mutate_request(c.request, rng, max_size=1 << 16)
    return c


@dataclass
class ChainStats:
    daemon: str
    inputs: int = 0
    seconds: float = 0.0
    starts: int = 0
    valid: int = 0  # inputs whose chain was valid virtio
    classes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    corpus_size: int = 0
    # The daemon's edges (EdgeFeedback.summary(): guards, edges, timeline, feedback);
    # empty when the daemon is not instrumented.
    edges: dict[str, Any] = field(default_factory=dict)
    # Valid chains answered after the hang timeout, within its grace: opcode name ->
    # [count, longest wait in s] (forensics.count_slow).
    slow: dict[str, list[float]] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _signature(label: str, out: Outcome) -> str:
    """The live target's signature; without a crash site, the daemon's last word (QEMU's
    ``fv_panic: libvhost-user: <why>``) or else the chain's shape names the cause."""
    sig = outcome_signature(label, out) or ""
    if out.finding in ("crash", "daemon-exit", "hang") and "site" not in out.evidence:
        how = out.evidence.get("signal") or out.finding
        last = (out.evidence.get("log_tail") or "").strip().splitlines()[-1:]
        why = last[0].split("libvhost-user: ", 1)[1] if last and "libvhost-user: " in last[0] \
            else out.evidence.get("chain", "?")
        sig = f"{out.finding}:{label}:{how}:{re.sub(r'[0-9]+', 'N', why)[:120]}"
    return sig.replace(":", ":chain:", 1)


def record_chain_finding(store: FindingStore, label: str, s: ChainSession, out: Outcome,
                         indirect: bool) -> Finding:
    """File ``out`` with a reproducer: the session's memory layout and the inputs it ran
    (``fuseproto fuzz replay`` runs them on a fresh daemon)."""
    sig = _signature(label, out)
    f = Finding("chains", out.finding or "", sig, out.detail[:300], daemon=label,
                evidence=dict(out.evidence, log_tail=log_tail(s.live.log(), 10)))
    doc = {"target": "chains", "daemon": label, "daemon_binary": s.installation.binary,
           "daemon_variant": s.installation.variant, "layout": s.layout,
           "indirect": indirect, "finding": {"kind": out.finding, "signature": sig,
                                             "detail": out.detail},
           "log_tail": log_tail(s.live.log(), 10),
           "inputs": [i.to_json() for i in s.history[-32:]]}
    return store.add(f, doc, suffix=".json", exchange=list(s.fe.exchange))


def replay_chains(doc: dict[str, Any], installation: daemons.Installation,
                  timeout: float = 0.5) -> list[Outcome]:
    """Run a chain reproducer's inputs again on a fresh daemon; the outcome of each (it
    stops when the session is no longer usable)."""
    wd = scratch.directory("chain")
    s = None
    outs: list[Outcome] = []
    try:
        s = ChainSession(installation, wd, layout=doc.get("layout", "two"),
                         indirect=doc.get("indirect", False), timeout=timeout)
        for d in doc["inputs"]:
            out, usable = s.run(ChainInput.from_json(d))
            outs.append(out)
            if not usable:
                break
    finally:
        if s is not None:
            s.stop()
        shutil.rmtree(wd, ignore_errors=True)
    return outs


def chains_verdict(doc: dict[str, Any], spec: str | None = None, kind: str | None = None
                   ) -> dict[str, Any]:
    """Replay chain reproducer ``doc`` (``fuseproto fuzz replay``): reproduced when the
    finding's signature comes back."""
    from .replay import doc_installation

    used, inst = doc_installation(doc, spec, kind)
    label = doc.get("daemon", used)
    outs = replay_chains(doc, inst)
    expected = (doc.get("finding") or {}).get("signature")
    hits = [(_signature(label, o), o) for o in outs if o.finding]
    match = [o for sig, o in hits if sig == expected]
    verdict: dict[str, Any] = {"target": "chains", "daemon": used, "binary": inst.binary,
                               "reproduced": bool(match), "inputs_sent": len(outs),
                               "expected": expected, "seen": sorted({s for s, _ in hits})}
    hit = match[0] if match else (hits[-1][1] if hits else None)
    if hit is not None:
        verdict.update(kind=hit.finding, summary=hit.detail, outcome=hit.cls)
    return verdict


def fuzz_chains(installation: daemons.Installation, *, seconds: float, store: FindingStore,
                seed: int = 0, label: str | None = None, timeout: float = 0.5,
                max_inputs: int | None = None, env: dict[str, str] | None = None,
                coverage: CoverageMap | None = None, feedback: str = "auto"
                ) -> ChainStats:
    """Hostile chains for ``seconds``: each daemon start takes the next memory layout
    (one, two, two with a hole) and asks for INDIRECT_DESC every other time; a fresh
    daemon after each fatal outcome (or a refused chain). What is kept: on an
    instrumented daemon (``feedback`` as in :class:`~.virtiofsd.EdgeFeedback`) a chain
    that lit new daemon edges, with energy for how many (libvhost-user's descriptor walk
    answers most hostile shapes with the same few outcomes, so the edges see what the
    outcome class cannot); and a chain reaching a new outcome class. A start's own edges
    (handshake, setup) are absorbed, not credited to the next chain."""
    label = label or installation.kind
    rng = random.Random(seed)
    st = ChainStats(label)
    t0 = time.monotonic()
    wd = scratch.directory("chain")
    s: ChainSession | None = None
    corpus: Corpus[ChainInput] = Corpus(2000)
    fb = EdgeFeedback(installation, coverage, feedback)
    env = {**(env or {}), **fb.map.env()}
    try:
        while time.monotonic() - t0 < seconds and (max_inputs is None
                                                    or st.inputs < max_inputs):
            if s is None:
                layout = LAYOUTS[st.starts % len(LAYOUTS)]
                indirect = st.starts % 2 == 1
                try:
                    s = ChainSession(installation, wd, layout=layout, indirect=indirect,
                                     timeout=timeout, env=env, slow=st.slow)
                except (DaemonError, TransportError, OSError) as e:
                    st.error = f"start failed: {type(e).__name__}: {e}"
                    break
                st.starts += 1
                fb.started()
                fb.map.absorb()
                tmpl = s.templates()
            if len(corpus) and rng.random() < 0.5:
                inp = mutate_input(corpus.choose(rng), rng)
            else:
                op, body, node = rng.choice(tmpl)
                data = s.request(op, body, node)
                inp = random_input(data, min(codec.reply_area(op, body), 1 << 20) or 4096, rng)
            out, usable = s.run(inp)
            if out.finding is None:  # the escape canaries beside the share
                out = next(iter(s.live.escapes(out.cls.split(":", 1)[0], out.reply)), out)
            st.inputs += 1
            st.valid += bool(out.evidence.get("valid"))
            new = out.cls not in st.classes
            st.classes[out.cls] = st.classes.get(out.cls, 0) + 1
            edges = fb.new_edges()
            if out.finding is not None:
                f = record_chain_finding(store, label, s, out, s.indirect_ok)
                if all(x.signature != f.signature for x in st.findings):
                    st.findings.append(f)
            elif fb.steering and edges:
                corpus.add(inp, energy_for(edges))
            elif new:
                corpus.add(inp)
            if not usable or out.finding is not None:
                s.stop()
                s = None
        st.edges = fb.summary()
    finally:
        if s is not None:
            s.stop()
        fb.close()
        shutil.rmtree(wd, ignore_errors=True)
        st.seconds = time.monotonic() - t0
        st.corpus_size = len(corpus)
    return st
