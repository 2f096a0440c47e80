"""The control-plane target's programs: hostile front-end steps, the mutations of a
program, and its JSON form (:mod:`.control_plane` runs and judges them)."""

from __future__ import annotations

import random
from dataclasses import asdict, fields, replace
from typing import Any

from ..transport.vhost_user_proto import (
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    VHOST_USER_VRING_NOFD_MASK,
    VIRTIO_F_VERSION_1,
    VhostUserRequest,
)
from .rawfront import (
    ADDR_MODES,
    FD_MODES,
    GETS,
    MEM_MODES,
    QUEUE_SIZE,
    QUEUES,
    VRING_FD,
    VRING_STATE,
    CtlStep,
)

__all__ = ["hostile_step", "valid_ring_step", "mutate_program", "step_tag",
           "program_to_json", "program_from_json"]

R = VhostUserRequest


def hostile_step(rng: random.Random) -> CtlStep:
    """One message a front-end should not send (or sends rarely): boundary values, ring
    indices past the queue count, odd tables and addresses, wrong fds and sizes."""
    k = rng.randrange(12)
    idx = rng.choice((0, 1, 1, 2, 3, 255, 256, 0xFFFF, 0xFFFFFFFF))
    if k == 0:
        return CtlStep(rng.choice(VRING_STATE), idx,
                       rng.choice((None, 0, 1, 2, 3, 255, 256, 32768, 32769, 0xFFFF,
                                   0x10000, 0xFFFFFFFF)))
    if k == 1:
        return CtlStep(R.SET_VRING_ADDR, idx, mode=rng.choice(ADDR_MODES))
    if k == 2:
        return CtlStep(rng.choice(VRING_FD), idx & 0xFF if rng.random() < 0.7 else idx,
                       rng.choice((None, None, VHOST_USER_VRING_NOFD_MASK, 1 << 9)),
                       fds=rng.choice(FD_MODES))
    if k == 3:
        return CtlStep(R.SET_MEM_TABLE, mode=rng.choice(MEM_MODES),
                       fds=rng.choice(FD_MODES), need_reply=rng.random() < 0.7)
    if k == 4:
        return CtlStep(rng.choice((R.SET_FEATURES, R.SET_PROTOCOL_FEATURES)),
                       value=rng.choice((0, 1 << VIRTIO_F_VERSION_1, (1 << 64) - 1,
                                         1 << 63, None)))
    if k == 5:
        return CtlStep(rng.choice(list(GETS)), idx if rng.random() < 0.5 else None)
    if k == 6:
        return CtlStep(rng.choice((R.RESET_OWNER, R.SET_OWNER, R.SET_STATUS, R.GET_STATUS,
                                   R.SET_LOG_BASE, R.SEND_RARP, R.SET_VRING_ENDIAN,
                                   R.GET_CONFIG, R.IOTLB_MSG)), value=rng.choice((None, 0, 1)))
    if k == 7:
        return CtlStep(rng.choice((0, 26, 35, 41, 99, 0xFFFF, 0xFFFFFFFF)))  # unknown
    base = CtlStep(rng.choice(list(R)), 1)
    if k == 8:
        return replace(base, size_delta=rng.choice((-8, -4, -1, 1, 8, 64)))
    if k == 9:
        return replace(base, fds=rng.choice(("extra", "bad")))
    if k == 10:
        return replace(base, flags=rng.choice((0, 2, 3, VHOST_USER_VERSION |
                                               VHOST_USER_REPLY_MASK, 0xFFFFFFFF)))
    return replace(base, need_reply=True)


def valid_ring_step(rng: random.Random) -> CtlStep:
    """A ring message that is valid anywhere after the memory table (a VMM sends these
    when it stops, restarts or reconfigures a ring): the order they come in is what is
    tested."""
    q = rng.choice((0, 1, 1))
    req = rng.choice((R.SET_VRING_KICK, R.SET_VRING_CALL, R.GET_VRING_BASE, R.SET_VRING_ENABLE,
                      R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ADDR))
    value = {R.SET_VRING_ENABLE: rng.choice((0, 1)), R.SET_VRING_NUM: QUEUE_SIZE,
             R.SET_VRING_BASE: 0}.get(req)
    return CtlStep(req, q, value, need_reply=req == R.SET_VRING_ENABLE)


def mutate_program(prog: list[CtlStep], rng: random.Random) -> list[CtlStep]:
    """Insert hostile steps or valid ring steps in odd places, delete, duplicate, swap, or
    change one step's fields."""
    out = [replace(s) for s in prog]
    for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
        k = rng.randrange(10)
        i = rng.randrange(len(out) + 1)
        if k < 4 or not out:
            out.insert(i, hostile_step(rng))
        elif k == 4:
            out.insert(i, valid_ring_step(rng))
        elif k == 5 and len(out) > 1:
            del out[min(i, len(out) - 1)]
        elif k == 6:
            j = min(i, len(out) - 1)
            out.insert(j, replace(out[j]))
        elif k == 7 and len(out) > 1:
            j = min(i, len(out) - 2)
            out[j], out[j + 1] = out[j + 1], out[j]
        else:
            j = min(i, len(out) - 1)
            h = hostile_step(rng)
            out[j] = replace(out[j], **{f.name: getattr(h, f.name) for f in fields(h)
                                        if f.name != "request" and rng.random() < 0.4})
    return out[:80]


def step_tag(step: CtlStep) -> str:
    """What is odd about ``step``, coarsely (a finding signature's cause part):
    ``SET_VRING_ADDR[index>=2,mode=zero]``."""
    odd = []
    idx = step.index
    if idx is not None and not 0 <= idx < QUEUES and step.request in (
            *VRING_STATE, R.SET_VRING_ADDR, *VRING_FD):
        odd.append(f"index>={QUEUES}")
    if step.mode != "std":
        odd.append(f"mode={step.mode}")
    if step.fds != "std":
        odd.append(f"fds={step.fds}")
    if step.size_delta:
        odd.append("size" + ("-" if step.size_delta < 0 else "+"))
    if step.flags is not None:
        odd.append("flags")
    if step.need_reply:
        odd.append("need-reply")
    if step.value is not None and not odd:
        odd.append("value")
    return step.name + (f"[{','.join(odd)}]" if odd else "")


def program_to_json(prog: list[CtlStep]) -> list[dict[str, Any]]:
    return [dict(asdict(s), name=s.name) for s in prog]


def program_from_json(items: list[dict[str, Any]]) -> list[CtlStep]:
    names = {f.name for f in fields(CtlStep)}
    return [CtlStep(**{k: v for k, v in d.items() if k in names}) for d in items]
