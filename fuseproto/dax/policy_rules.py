"""The policy rules :class:`~fuseproto.dax.invariants.DaxChecker` judges by comparing two
full checks of one manager (``osv_stack``, ``linux_free_fifo``): pure functions of the two
snapshots and of what the checker saw in between, so they are sound over several steps.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from .manager import ViewEntry

__all__ = ["free_list_follows_fifo", "stack_evictions"]


def stack_evictions(old: Sequence[ViewEntry], new: Sequence[ViewEntry],
                    forgotten: Collection[int],
                    remapped: Sequence[tuple[int, int]]) -> list[tuple[ViewEntry, int]]:
    """(OSv) The mappings of ``old`` that vanished or shrank below the top of the stack,
    each with the end of the highest mapping kept throughout. A mapping was kept if it is
    in both views and no window range set up since (``remapped``) covered it; the mappings
    of ``forgotten`` nodes may leave from anywhere."""
    new_set = set(new)
    kept = [e for e in old if e in new_set
            and not any(lo < e.end and e.moffset < hi for lo, hi in remapped)]
    kept_top = max((e.end for e in kept), default=0)
    new_by_start = {e.moffset: e for e in new}
    out = []
    for e in old:
        if e in new_set or e.nodeid in forgotten:
            continue
        # gone or shrunk (or extended, when it was the top): what vanished must lie
        # above every mapping that stayed
        cur = new_by_start.get(e.moffset)
        if cur is not None and cur.nodeid == e.nodeid and cur.foffset == e.foffset:
            lost_from = cur.end if cur.length < e.length else None
        else:
            lost_from = e.moffset
        if lost_from is not None and lost_from < kept_top:
            out.append((e, kept_top))
    return out


def free_list_follows_fifo(old: list[int], new: list[int], set_up: Collection[int]) -> bool:
    """(Linux) ``new`` is ``old`` with some ranges taken from its head and the ranges
    freed since appended: ``new == old[k:] + freed`` for some ``k``, and each of the ``k``
    ranges taken was then set up at its window offset (``set_up``)."""
    if old == new:  # k = 0, nothing freed: the common case, one comparison in C
        return True
    k_max = next((i for i, off in enumerate(old) if off not in set_up), len(old))
    # ranges are unique: old[k:] (when not empty) starts where new starts
    ks = {len(old)} | ({old.index(new[0])} if new and new[0] in old else set())
    return any(k <= k_max and old[k:] == new[: len(old) - k] for k in ks)
