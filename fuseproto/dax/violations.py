"""The DAX invariants by name, and what a broken one reports.

:data:`INVARIANTS` maps each invariant's name to its one-line statement (the checks are
:class:`~fuseproto.dax.invariants.DaxChecker`'s); a :class:`Violation` names the invariant,
the message that broke it and the state around it, and :class:`InvariantViolation` raises
it. :func:`policy_unit` says which unit a manager maps in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fuseproto.errors import FuseprotoError

from .manager import ViewEntry
from .messages import REMOVEMAPPING_MAX_ENTRY

__all__ = ["DEFAULT_INVARIANTS", "INVARIANTS", "InvariantViolation", "Violation", "fmt_view",
           "policy_unit"]

INVARIANTS: dict[str, str] = {
    "alignment": "foffset, moffset and len (and every REMOVEMAPPING entry) are multiples "
    "of 2**map_alignment, and len is not 0",
    "inside_window": "every mapping and every removed range lies inside the window",
    "removemapping_count": "REMOVEMAPPING count equals its number of entries and is at most "
    f"{REMOVEMAPPING_MAX_ENTRY}",
    "view_overlap": "no two live mappings of one manager's own view overlap in the window",
    "view_matches_device": "every live mapping of a manager's view is what the device maps "
    "there (same node, same file offset)",
    "cross_manager_overlap": "two managers sharing one window never both hold a live mapping "
    "of the same window bytes",
    "accounting": "mapped + free == total, and the view fits in what is counted as mapped",
    "read_bytes": "the bytes a read returns are the file's bytes at that offset",
    "read_stale_range": "a read is never served from a window range that now maps another "
    "file or another offset (use after eviction)",
    "osv_stack": "(OSv) only the top of the stack is evicted, and a new mapping starts at the "
    "first empty chunk",
    "linux_in_use": "(Linux) a range in use is never removed or remapped to other data",
    "linux_free_fifo": "(Linux) the free list is a FIFO: ranges leave from the head, freed "
    "ranges join at the tail",
    "decode": "(traces) every captured DAX request decodes",
    "no_duplicate_chunks": "(opt-in) no file range is mapped at two places of one view",
    "past_eof": "no SETUPMAPPING maps a file range that lies wholly at or past the end of "
    "the file (as the manager's backend knows its size)",
    "miss_span": "the SETUPMAPPINGs one read (or write) causes map only the policy units the "
    "access touches, up to end of file (aggressive: from the access to end of file), and "
    "no more bytes than those units (managers that name their unit: chunk_size, range_size)",
    "unit_alignment": "foffset, moffset and len of every SETUPMAPPING and REMOVEMAPPING entry "
    "are multiples of the policy's own unit (OSv chunk, Linux range), not only of "
    "2**map_alignment",
    "writable_flag": "the writable flag of every live mapping of a view equals the device's",
    "refused_request": "a SETUPMAPPING the device refused leaves no new mapping of what it "
    "asked in the manager's view",
    "in_use_leak": "after each operation the ranges a manager holds in use are exactly those "
    "its callers hold (no reference left behind, e.g. by an error path)",
    "invalid_accepted": "(devices) a request the protocol forbids (misaligned, empty, past "
    "the window, count not its entries or above 256, write through a read-only handle) is "
    "refused and changes nothing",
}
DEFAULT_INVARIANTS = frozenset(INVARIANTS) - {"no_duplicate_chunks"}


@dataclass
class Violation:
    invariant: str
    detail: str
    message: str | None = None  # DaxMessage.describe() of the message that broke it
    raw: bytes | None = None
    sender: str = ""
    state: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        s = f"[{self.invariant}] {self.detail}"
        if self.message:
            s += f"\n  message: {self.message}"
        if self.sender:
            s += f"\n  sender: {self.sender}"
        for k, v in self.state.items():
            s += f"\n  {k}: {v}"
        return s


class InvariantViolation(FuseprotoError, AssertionError):
    def __init__(self, violation: Violation) -> None:
        self.violation = violation
        super().__init__(str(violation))


def policy_unit(manager: Any) -> int | None:
    """The unit a manager maps in (OSv ``chunk_size``, Linux ``range_size``), or None
    when it does not say."""
    for attr in ("chunk_size", "range_size"):
        v = getattr(manager, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def fmt_view(view: list[ViewEntry], limit: int = 12) -> str:
    parts = [f"[{e.moffset:#x}+{e.length:#x} n{e.nodeid}@{e.foffset:#x}]" for e in view[:limit]]
    if len(view) > limit:
        parts.append(f"... {len(view) - limit} more")
    return " ".join(parts) or "(empty)"
