"""The live fuzzers' corpus: inputs with an energy (how often they are picked as a parent),
optionally kept in a directory so the next run starts where this one stopped.

An input that lit new daemon edges gets more energy than one that only reached a new
outcome class (:func:`energy_for`), so the loops spend their mutations near new code.
Energies may change after the fact (:meth:`Corpus.set_energy`: a scheduler such as
:mod:`.steer` lowers a parent whose mutants stopped gaining, raises one whose mutants
gain); picking and changing are O(log n) (a Fenwick tree of the energies), which matters
at ~1,000-3,000 inputs per second.

On disk (:meth:`Corpus.save`, :meth:`Corpus.load`) an entry is one file named by the
SHA-1 of its bytes: ``<sha1>.bin`` (a single request: one reply-area variant byte, then the
request, as the atheris virtiofsd target reads it) or ``<sha1>.json`` (a sequence
program). :func:`default_dir` is one directory per target and daemon variant under the
fuseproto cache (``FUSEPROTO_FUZZ_CORPUS`` moves it).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from ..daemons import cache_root

__all__ = ["Corpus", "Weights", "corpus_root", "default_dir", "energy_for", "ENV_CORPUS",
           "MAX_SAVED"]

T = TypeVar("T")

#: Environment variable: the directory the per-target corpora live under.
ENV_CORPUS = "FUSEPROTO_FUZZ_CORPUS"
#: At most this many inputs are written per corpus directory (newest kept out).
MAX_SAVED = 5000


def corpus_root() -> Path:
    """``$FUSEPROTO_FUZZ_CORPUS``, else ``<fuseproto cache>/fuzz-corpus``."""
    base = os.environ.get(ENV_CORPUS)
    return Path(base) if base else cache_root() / "fuzz-corpus"


def default_dir(target: str, variant: str, root: Path | None = None) -> Path:
    """``<root>/<target>-<variant>`` (root: :func:`corpus_root`): one corpus per target
    (``virtiofsd-requests``, ``virtiofsd-sequences``) and daemon (a variant name, or a
    path's label: ``c:mybuild`` becomes ``c_mybuild``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{target}-{variant}")
    return (root if root is not None else corpus_root()) / safe


def energy_for(new_edges: int) -> float:
    """How often an input is picked relative to a seed (1): more for more new edges."""
    return 1.0 + 2.0 * min(new_edges, 16) if new_edges > 0 else 1.0


class Weights:
    """Non-negative weights by index, appended and changed in O(log n); :meth:`find` maps a
    point of [0, total) to the index whose share of the running sum holds it (the same
    index a bisect over the cumulative sums gives)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._tree: list[float] = [0.0]  # 1-based Fenwick tree
        self.total = 0.0

    def __len__(self) -> int:
        return len(self.values)

    def append(self, w: float) -> None:
        i = len(self.values) + 1
        self.values.append(0.0)
        # The new node covers (i - lowbit(i), i]: the sums of its children, then w itself.
        acc, j, low = 0.0, i - 1, i & -i
        while j > i - low:
            acc += self._tree[j]
            j -= j & -j
        self._tree.append(acc)
        self.set(i - 1, w)

    def set(self, index: int, w: float) -> None:
        w = max(w, 0.0)
        d = w - self.values[index]
        if not d:
            return
        self.values[index] = w
        self.total += d
        i = index + 1
        while i < len(self._tree):
            self._tree[i] += d
            i += i & -i

    def find(self, x: float) -> int:
        """The index whose weight holds point ``x`` (clamped to the last index)."""
        pos, step = 0, 1 << (len(self._tree).bit_length())
        while step:
            nxt = pos + step
            if nxt < len(self._tree) and self._tree[nxt] <= x:
                pos = nxt
                x -= self._tree[nxt]
            step >>= 1
        return min(pos, len(self.values) - 1)


class Corpus(Generic[T]):
    """Entries with energies; :meth:`choose` picks one in proportion to energy."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: list[T] = []
        self.weights = Weights()
        self.loaded = 0  # entries read from a directory
        self.saved = 0  # entries written to it in this run

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.limit

    def add(self, item: T, energy: float = 1.0) -> bool:
        """Keep ``item`` (False when the corpus is full)."""
        if self.full:
            return False
        self.items.append(item)
        self.weights.append(energy)
        return True

    def energy(self, index: int) -> float:
        return self.weights.values[index]

    def set_energy(self, index: int, energy: float) -> None:
        """Change entry ``index``'s energy (0: never picked again, unless all are 0)."""
        self.weights.set(index, energy)

    def choose_index(self, rng: random.Random) -> int:
        """The index of one entry, in proportion to energy (uniform when all are 0)."""
        if self.weights.total <= 0:
            return rng.randrange(len(self.items))
        return self.weights.find(rng.random() * self.weights.total)

    def choose(self, rng: random.Random) -> T:
        """One entry, in proportion to its energy."""
        return self.items[self.choose_index(rng)]

    # -- on disk -----------------------------------------------------------------------------
    @staticmethod
    def save(directory: Path | None, data: bytes, suffix: str) -> bool:
        """Write ``data`` as ``<sha1><suffix>`` in ``directory`` (made if needed); False when
        there is no directory, it is full, or the entry is already there."""
        if directory is None:
            return False
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (hashlib.sha1(data).hexdigest() + suffix)
        if path.exists():
            return False
        if sum(1 for _ in directory.iterdir()) >= MAX_SAVED:
            return False
        # A temporary name of this process and thread: parallel jobs share the directory
        # and may save the same entry at once (one tmp name made the second replace fail).
        # The entry appears by link(), which fails when another job saved it first: each
        # entry is counted by exactly one writer (a replace() let both count it).
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    @staticmethod
    def load(directory: Path | None, suffix: str, limit: int = MAX_SAVED) -> list[bytes]:
        """The saved entries with ``suffix`` (oldest first), at most ``limit``."""
        if directory is None or not directory.is_dir():
            return []
        files = sorted((p for p in directory.iterdir() if p.name.endswith(suffix)),
                       key=lambda p: (p.stat().st_mtime, p.name))
        out = []
        for p in files[:limit]:
            try:
                out.append(p.read_bytes())
            except OSError:
                continue
        return out
