"""Replay read traces against DAX managers, beside Belady's MIN.

Each trace read is issued as an application would: the manager may answer short (OSv
serves only what one mapping covers), so the rest is asked again until the read is
complete or the file ends. Accounting is per *chunk access* (each chunk of the common
chunk size a read touches): a hit if the manager served it from the window without
mapping it during that read, a miss otherwise (mapped for it, or served by FUSE_READ).
MIN runs on exactly the same chunk accesses with the window's capacity in chunks.

The simulation device is a data-less :class:`~fuseproto.dax.device.ModelDevice` that
still validates and applies every request (without encoding it), and the backend only
knows file sizes; use ``check=True`` to run the invariant checker along (slower).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .belady import belady_min
from .device import DeviceMapping, ModelDevice
from .manager import ManagerFactory
from .messages import FUSE_REMOVEMAPPING, FUSE_SETUPMAPPING
from .registry import load_manager
from .traces import Trace

__all__ = [
    "SimBackend",
    "SimResult",
    "SimWindow",
    "plot_hit_ratio",
    "simulate",
    "simulate_min",
    "sweep",
]

MiB = 1 << 20


class SimBackend:
    """File sizes only; FUSE_READ returns zeros and is counted."""

    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes = dict(sizes)
        self.fuse_reads = 0
        self.fuse_read_bytes = 0
        # file_size(nodeid): asked on every read; the dict's own lookup is the fastest.
        self.file_size = self.sizes.__getitem__

    def fuse_read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        n = max(0, min(size, self.sizes[nodeid] - offset))
        self.fuse_reads += 1
        self.fuse_read_bytes += n
        return bytes(n)

    def fuse_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        self.sizes[nodeid] = max(self.sizes[nodeid], offset + len(data))
        return len(data)


class SimWindow(ModelDevice):
    """The simulator's data-less window: reads return a view of shared zeros.

    It validates every request as :class:`ModelDevice` does (same errno for the same
    fields) and notes, for the hit accounting, the file chunks of ``chunk`` bytes each
    successful SETUPMAPPING maps (``mapped``; the simulator clears it per trace read).
    With ``track`` it also keeps the extent map (for the invariant checker).

    ``accepts_records``: managers hand SETUPMAPPING / REMOVEMAPPING over as plain fields
    (:meth:`setup_record`, :meth:`remove_record`) instead of messages while nobody
    observes them. Without it every request is a :class:`DaxMessage`, decoded from its
    wire bytes when ``through_codec``. ``log`` (a list) receives every request as
    ``("setup", nodeid, fh, foffset, len, flags, moffset, errno)`` or ``("remove",
    nodeid, ((moffset, len), ...), errno)`` whichever way it came: the two paths must
    log the same.
    """

    name = "sim"

    def __init__(
        self,
        window_size: int,
        map_alignment: int | None = 12,
        *,
        chunk: int = 2 * MiB,
        track: bool = False,
        records: bool = True,
        through_codec: bool = False,
        log: list[tuple[Any, ...]] | None = None,
    ) -> None:
        super().__init__(window_size, None, map_alignment, through_codec=through_codec)
        self._zeros = memoryview(bytes(4 * MiB))
        self.chunk = chunk
        self.track = track
        self.accepts_records = records
        self.mapped: set[tuple[int, int]] = set()
        self.log = log

    # ---- mapping records -------------------------------------------------------------
    def setup_record(
        self, nodeid: int, fh: int, foffset: int, length: int, flags: int, moffset: int
    ) -> int:
        self.requests += 1
        if self._bad_setup(moffset, length, foffset):
            err = errno.EINVAL
        elif self.track:
            m = DeviceMapping(moffset, length, nodeid, foffset, flags, fh)
            self._carve(moffset, moffset + length)
            self._insert(m)
            err = 0
        else:
            err = 0
        if err:
            self.refused += 1
        else:
            c = self.chunk
            k = foffset // c
            if length <= c and (foffset + length - 1) // c == k:
                self.mapped.add((nodeid, k))
            else:
                for j in range(k, (foffset + length - 1) // c + 1):
                    self.mapped.add((nodeid, j))
        if self.log is not None:
            self.log.append(("setup", nodeid, fh, foffset, length, flags, moffset, err))
        return err

    def remove_record(
        self, nodeid: int, entries: Sequence[tuple[int, int]], count: int | None = None
    ) -> int:
        self.requests += 1
        err = errno.EINVAL if self._bad_remove(count, entries) else 0
        if err:
            self.refused += 1
        elif self.track:
            for m, n in entries:
                self._carve(m, m + n)
        if self.log is not None:
            self.log.append(("remove", nodeid, tuple(entries), err))
        return err

    # ---- messages --------------------------------------------------------------------
    def submit(self, msg: Any) -> int:
        fields = self._fields(msg)
        if fields is None:
            self.requests += 1
            self.refused += 1
            return errno.EINVAL
        opcode, nodeid, body = fields
        if opcode == FUSE_SETUPMAPPING:
            return self.setup_record(
                nodeid, body.fh, body.foffset, body.len, body.flags, body.moffset
            )
        if opcode == FUSE_REMOVEMAPPING:
            ents = [(e.moffset, e.len) for e in body.entries]
            return self.remove_record(nodeid, ents, body.count)
        self.requests += 1
        self.refused += 1
        return errno.ENOSYS

    def read(self, moffset: int, length: int) -> bytes:
        if moffset < 0 or length < 0 or moffset + length > self.window_size:
            self._check_inside(moffset, length)  # raises WindowFault
        if length <= 4 * MiB:
            return self._zeros[:length]  # type: ignore[return-value]
        return bytes(length)


@dataclass
class SimResult:
    trace: str
    manager: str
    window_size: int
    chunk: int
    reads: int  # trace reads
    calls: int  # manager read calls (short reads are continued)
    chunk_accesses: int
    hits: int
    setupmapping: int
    removemapping: int
    removemapping_entries: int
    bytes_read: int
    bytes_mapped: int
    fallback_bytes: int
    errors: int
    seconds: float

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.chunk_accesses if self.chunk_accesses else 0.0

    @property
    def mapped_per_read_byte(self) -> float:
        return self.bytes_mapped / self.bytes_read if self.bytes_read else 0.0

    @property
    def reads_per_second(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            hit_ratio=self.hit_ratio,
            mapped_per_read_byte=self.mapped_per_read_byte,
            reads_per_second=self.reads_per_second,
        )
        return d


def simulate(
    trace: Trace,
    manager: str | ManagerFactory,
    window_size: int,
    *,
    chunk: int = 2 * MiB,
    map_alignment: int = 12,
    options: dict[str, Any] | None = None,
    check: bool = False,
    name: str | None = None,
    records: bool = True,
    log: list[tuple[Any, ...]] | None = None,
) -> SimResult:
    """Replay ``trace`` against one manager over a window of ``window_size`` bytes.

    ``records`` (default) lets the manager hand its mappings to the device as plain
    fields; ``records=False`` sends every request as a wire message encoded and decoded
    through the codec (the full path: same decisions, several times slower). ``log``
    receives every request (see :class:`SimWindow`). ``check`` runs the invariant
    checker along (it observes messages, so it implies the message path).
    """
    factory = load_manager(manager) if isinstance(manager, str) else manager
    device = SimWindow(
        window_size,
        map_alignment,
        chunk=chunk,
        track=check,
        records=records,
        through_codec=not records,
        log=log,
    )
    backend = SimBackend(trace.files)
    mgr = factory(device, backend, **(options or {}))
    if check:
        from .invariants import DaxChecker

        DaxChecker.for_manager(
            mgr,
            enabled={
                "alignment",
                "inside_window",
                "removemapping_count",
                "view_overlap",
                "accounting",
                "read_stale_range",
                "osv_stack",
                "linux_in_use",
                "linux_free_fifo",
            },
        )
    hits = accesses = calls = errors = bytes_read = 0
    read = mgr.read
    mapped = device.mapped  # file chunks mapped during the current trace read
    clear = mapped.clear
    files = trace.files
    t0 = time.perf_counter()
    for a in trace.accesses:
        nodeid = a.nodeid
        off = a.offset
        end = off + a.size
        size = files[nodeid]
        if end > size:
            end = size
        if end <= off:
            continue
        if mapped:
            clear()
        pos = off
        fell_back: list[tuple[int, int]] | None = None
        while pos < end:
            res = read(nodeid, pos, end - pos)
            calls += 1
            got = len(res.data)
            if res.fell_back:
                if fell_back is None:
                    fell_back = []
                fell_back.append((pos, pos + got))
            elif res.error:
                errors += 1
            if got == 0:
                break
            pos += got
        bytes_read += pos - off
        first = off // chunk
        last = (end - 1) // chunk
        accesses += last - first + 1
        if first == last and fell_back is None and pos > off:
            # The common case: one chunk, served from the window.
            if (nodeid, first) not in mapped:
                hits += 1
            continue
        for k in range(first, last + 1):
            if (nodeid, k) in mapped:
                continue
            lo, hi = k * chunk, (k + 1) * chunk
            if pos <= lo or (fell_back and any(s < hi and lo < e for s, e in fell_back)):
                continue
            hits += 1
    seconds = time.perf_counter() - t0
    st = mgr.stats
    return SimResult(
        trace=trace.name,
        manager=name or str(getattr(mgr, "name", manager)),
        window_size=window_size,
        chunk=chunk,
        reads=len(trace.accesses),
        calls=calls,
        chunk_accesses=accesses,
        hits=hits,
        setupmapping=st.setupmapping,
        removemapping=st.removemapping,
        removemapping_entries=st.removemapping_entries,
        bytes_read=bytes_read,
        bytes_mapped=st.bytes_mapped,
        fallback_bytes=st.fallback_bytes,
        errors=errors,
        seconds=seconds,
    )


def simulate_min(trace: Trace, window_size: int, *, chunk: int = 2 * MiB) -> SimResult:
    """Belady's MIN on the trace's chunk accesses (one SETUPMAPPING per miss)."""
    t0 = time.perf_counter()
    seq = trace.chunk_accesses(chunk)
    r = belady_min(seq, window_size // chunk)
    return SimResult(
        trace=trace.name,
        manager="belady-min",
        window_size=window_size,
        chunk=chunk,
        reads=len(trace.accesses),
        calls=len(trace.accesses),
        chunk_accesses=r.accesses,
        hits=r.hits,
        setupmapping=r.misses,
        removemapping=0,
        removemapping_entries=0,
        bytes_read=trace.bytes_read(),
        bytes_mapped=r.misses * chunk,
        fallback_bytes=0,
        errors=0,
        seconds=time.perf_counter() - t0,
    )


def sweep(
    traces: Iterable[Trace],
    managers: Sequence[str],
    window_sizes: Sequence[int] | None = None,
    *,
    fractions: Sequence[float] = (1 / 16, 1 / 8, 1 / 4, 1 / 2),
    chunk: int = 2 * MiB,
    with_min: bool = True,
    progress: Callable[[SimResult], None] | None = None,
) -> list[SimResult]:
    """Every trace x manager x window size (default: fractions of the working set,
    rounded to chunks, at least 2 chunks)."""
    out = []
    for trace in traces:
        sizes = window_sizes or sorted(
            {max(2, int(trace.working_set * f) // chunk) * chunk for f in fractions}
        )
        for w in sizes:
            runs = [simulate(trace, m, w, chunk=chunk, name=m) for m in managers]
            if with_min:
                runs.append(simulate_min(trace, w, chunk=chunk))
            for r in runs:
                out.append(r)
                if progress:
                    progress(r)
    return out


def format_table(results: Sequence[SimResult]) -> str:
    head = (
        f"{'trace':<11} {'manager':<12} {'window':>9} {'hit%':>6} {'SETUP':>8} "
        f"{'REMOVE':>7} {'entries':>8} {'mapped/read':>11} {'fallback':>9} {'reads/s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.trace:<11} {r.manager:<12} {r.window_size // MiB:>7}Mi {100 * r.hit_ratio:>6.1f} "
            f"{r.setupmapping:>8} {r.removemapping:>7} {r.removemapping_entries:>8} "
            f"{r.mapped_per_read_byte:>11.2f} {r.fallback_bytes // MiB:>7}Mi "
            f"{r.reads_per_second:>9.0f}"
        )
    return "\n".join(lines)


def plot_hit_ratio(results: Sequence[SimResult], path: str) -> None:
    """One panel per trace: hit ratio against window size, a line per manager."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.trace for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, tname in zip(axes[0], names, strict=True):
        rs = [r for r in results if r.trace == tname]
        for m in dict.fromkeys(r.manager for r in rs):
            pts = sorted((r.window_size / MiB, 100 * r.hit_ratio) for r in rs if r.manager == m)
            style = "k--" if m == "belady-min" else "o-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=m, markersize=3)
        ax.set_xscale("log", base=2)
        ax.set_title(tname)
        ax.set_xlabel("window (MiB)")
        ax.set_ylabel("chunk hit ratio (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
