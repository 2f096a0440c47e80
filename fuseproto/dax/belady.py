"""Belady's MIN: the optimal offline replacement policy, the upper bound of a hit ratio.

On a miss with a full cache, MIN evicts the resident item whose next use is furthest in
the future (or never). Run on the same chunk accesses as the managers (each read touching
chunks ``(nodeid, index)`` of the common chunk size) with the window's capacity in
chunks, it bounds what any demand-mapping policy can reach.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["MinResult", "belady_min"]

_NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class MinResult:
    accesses: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0


def belady_min(accesses: Sequence[Hashable], capacity: int) -> MinResult:
    """Hits of MIN over ``accesses`` with room for ``capacity`` items. O(n log n)."""
    n = len(accesses)
    nxt = [_NEVER] * n
    last: dict[Hashable, int] = {}
    for i in range(n - 1, -1, -1):
        key = accesses[i]
        nxt[i] = last.get(key, _NEVER)
        last[key] = i
    resident: dict[Hashable, int] = {}  # key -> its next use (the live heap entry)
    heap: list[tuple[int, int, Hashable]] = []  # (-next use, tiebreak, key), lazy deletion
    hits = evictions = 0
    for i, key in enumerate(accesses):
        if key in resident:
            hits += 1
        elif capacity <= 0:
            continue
        elif len(resident) >= capacity:
            while True:
                neg, _, victim = heapq.heappop(heap)
                if resident.get(victim) == -neg:
                    del resident[victim]
                    evictions += 1
                    break
        if capacity > 0:
            resident[key] = nxt[i]
            heapq.heappush(heap, (-nxt[i], i, key))
    return MinResult(n, hits, n - hits, evictions)
