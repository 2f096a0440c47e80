"""Descriptor chains as data: what a fuzz input asks for (:class:`ChainInput`), the
descriptors as written (:class:`Desc`), and the two pure oracles of the chain target
(:mod:`.chains`): :func:`chain_check` walks a chain as a device does and says whether it is
valid virtio 1.x (2.7.5 "The Virtqueue Descriptor Table", 2.7.5.3 "Indirect Descriptors")
and which device-writable buffers it names; :func:`judge_used` checks the used ring
against that (2.7.8: ``len`` is the bytes written into the writable buffers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..transport.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from .forensics import Outcome
from .rawfront import QUEUE_SIZE

__all__ = ["OPS", "ChainInput", "Desc", "ChainCheck", "chain_check", "judge_used"]

#: Hostile edits a ChainInput may carry, as (name, argument); :mod:`.chains` applies them.
OPS = ("zero", "outside", "addr-zero", "huge", "straddle", "loop", "next-oob", "avail-oob",
       "avail-jump", "indirect-badlen", "indirect-nested", "indirect-loop", "indirect-next",
       "indirect-long", "indirect-tail", "write-flag", "len-lie")


@dataclass
class ChainInput:
    """One request and the chain it travels in (see the module docstring)."""

    request: bytes
    area: int  # device-writable bytes in all (0: none)
    cuts: list[int] = field(default_factory=list)  # readable split points
    splits: list[int] = field(default_factory=list)  # writable split points in the area
    order: str = "normal"  # normal | writable-first | interleaved
    indirect: bool = False
    ops: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["request"] = self.request.hex()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChainInput:
        return cls(bytes.fromhex(d["request"]), d["area"], list(d["cuts"]), list(d["splits"]),
                   d["order"], bool(d["indirect"]), [tuple(o) for o in d["ops"]])

    def tags(self) -> str:
        """The chain's shape in a few words (outcome classes, signatures)."""
        t = sorted({o for o, _ in self.ops})
        if self.order != "normal":
            t.append(self.order)
        if self.indirect:
            t.append("indirect")
        if not self.area:
            t.append("no-writable")
        return "+".join(t) or "plain"


@dataclass
class Desc:
    """One descriptor as written: guest address, length, flags, next; ``off``: the memfd
    offset of its buffer (None: points nowhere we own)."""

    addr: int
    len: int
    flags: int
    next: int = 0
    off: int | None = None


@dataclass
class ChainCheck:
    """What :func:`chain_check` found: whether the chain is valid, why not, and the
    device-writable descriptors in walk order (what the device may fill)."""

    valid: bool
    reasons: list[str]
    writable: list[Desc]
    readable: list[Desc] = field(default_factory=list)  # in walk order: what it reads

    @property
    def writable_bytes(self) -> int:
        return sum(d.len for d in self.writable)

    @property
    def used_bound(self) -> int:
        """The most used.len may say: the writable bytes; for a chain that loops, a device
        that bounds its walk by the ring size (instead of refusing the loop) may count
        each writable buffer up to that many times."""
        if "next loops" in self.reasons:
            return self.writable_bytes * QUEUE_SIZE
        return self.writable_bytes


def _in_memory(fe_regions: Any, addr: int, length: int) -> bool:
    """[addr, addr+length) lies in guest memory (it may cross contiguous regions)."""
    end = addr + length
    pos = addr
    while pos < end:
        r = next((r for r in fe_regions if r.gpa <= pos < r.gpa + r.size), None)
        if r is None:
            return False
        pos = r.gpa + r.size
    return length > 0 or any(r.gpa <= addr < r.gpa + r.size for r in fe_regions)


def chain_check(ring: list[Desc | None], head: int, tables: dict[int, list[Desc]],
                regions: Any, *, indirect_ok: bool, size: int = QUEUE_SIZE) -> ChainCheck:
    """Walk the chain at ``head`` of ``ring`` (descriptor index -> Desc) the way a device
    does and judge it against virtio 1.x 2.7.5: every buffer inside guest memory, readable
    before writable, ``next`` in range and no loop, at most ``size`` descriptors, an
    indirect descriptor only when negotiated, alone (no NEXT), with a table of a non-zero
    multiple of 16 bytes that holds no indirect descriptor (``tables``: table address ->
    its entries)."""
    reasons: list[str] = []
    writable: list[Desc] = []
    readable: list[Desc] = []
    if not 0 <= head < size or ring[head] is None:
        return ChainCheck(False, ["avail entry names no descriptor"], [])
    seen_w = False

    def walk(entries: list[Desc | None], start: int, in_table: bool) -> None:
        nonlocal seen_w
        i, steps, visited = start, 0, set()
        while True:
            if not 0 <= i < len(entries) or entries[i] is None:
                reasons.append("next out of range")
                return
            if i in visited:
                reasons.append("next loops")
                return
            visited.add(i)
            d = entries[i]
            assert d is not None
            steps += 1
            if steps == size + 1:
                # Invalid, but walk on: the device may follow it, and what it may fill
                # is every writable buffer the chain names (loops end the walk).
                reasons.append("chain longer than the ring")
            if d.flags & VIRTQ_DESC_F_INDIRECT:
                if in_table:
                    reasons.append("nested indirect")
                    return
                if not indirect_ok:
                    reasons.append("indirect not negotiated")
                if d.flags & VIRTQ_DESC_F_NEXT:
                    reasons.append("INDIRECT with NEXT")
                if d.len == 0 or d.len % 16:
                    reasons.append("indirect table length")
                table = tables.get(d.addr)
                if table is None or not _in_memory(regions, d.addr, max(d.len, 1)):
                    reasons.append("indirect table outside memory")
                    return
                n = min(d.len // 16, len(table))
                if n > size:
                    reasons.append("indirect table longer than the ring")
                walk(list(table[:n]), 0, True)
                return
            if not _in_memory(regions, d.addr, d.len):
                reasons.append("buffer outside guest memory")
            if d.flags & VIRTQ_DESC_F_WRITE:
                seen_w = True
                writable.append(d)
            else:
                readable.append(d)
                if seen_w:
                    reasons.append("readable after writable")
            if not d.flags & VIRTQ_DESC_F_NEXT:
                return
            i = d.next

    walk(list(ring), head, False)
    return ChainCheck(not reasons, sorted(set(reasons)), writable, readable)


def judge_used(name: str, head: int, used: list[tuple[int, int]], check: ChainCheck,
               outstanding: set[int]) -> Outcome | None:
    """The used ring's oracle: an entry for a head we never published (or that is not
    outstanding), or a used.len past the chain's device-writable bytes
    (:attr:`ChainCheck.used_bound`), is a protocol
    finding (virtio 1.x 2.7.8.1: the device MUST NOT write more than ``len``... of the
    writable buffers; used.len is the bytes written)."""
    for uid, ulen in used:
        if uid != head and uid not in outstanding:
            return Outcome(f"{name}:used-unknown-head", "protocol",
                           f"used entry for descriptor {uid}, which is not a chain in "
                           f"flight (head {head})", {"used_id": uid, "used_len": ulen})
        if uid == head and ulen > check.used_bound:
            return Outcome(f"{name}:used-overflow", "protocol",
                           f"used.len {ulen} > the chain's device-writable bytes "
                           f"{check.writable_bytes}",
                           {"used_len": ulen, "writable": check.writable_bytes,
                            "writable_descs": len(check.writable)})
    return None
