"""Read traces for the DAX simulator: synthetic workloads and recorded real traffic.

A :class:`Trace` is a set of files (node id -> size) and a list of reads
``(nodeid, offset, size)``. Generators are deterministic for a given seed:

* ``sequential`` -- whole files scanned in order, several passes;
* ``random`` -- uniform random reads over all files;
* ``zipf`` -- reads of fixed-size blocks, block popularity Zipf-distributed (a hot set);
* ``small`` -- many small files, each read whole, popularity Zipf-distributed;
* ``mix`` -- the above interleaved.

Recorded traffic: :func:`from_capture` turns the FUSE_READ requests of a capture (a pcap
recorded through the vhost-user transport's tap, decoded with
:func:`fuseproto.capture.decode_capture` and :func:`from_fuse_requests`) into a trace,
with file sizes from the LOOKUP replies. ``real`` is the capture shipped as
``corpus/captures/dax-reads.pcap``: a mixed read workload (:mod:`fuseproto.dax.workload`)
against a real virtiofsd. :func:`from_strace` turns ``strace -f -y -e
trace=openat,read,pread64,lseek,close`` output of a real program into a trace (each
opened regular file becomes a node); ``strace`` is such a recording shipped in
``fuseproto/dax/data`` (see :data:`REAL_TRACE_COMMAND`).
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import random
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fuseproto.wire.constants import FUSE_KERNEL_MINOR_VERSION, fuse_opcode

__all__ = [
    "Access",
    "GENERATORS",
    "REAL_CAPTURE",
    "STRACE_TRACE",
    "TRACE_NAMES",
    "Trace",
    "from_capture",
    "from_fuse_requests",
    "from_strace",
    "load",
    "make_trace",
    "record_strace",
    "save",
]

KiB, MiB = 1 << 10, 1 << 20
# The ``real`` trace: FUSE traffic of a mixed read workload recorded from a real
# virtiofsd (fuseproto.dax.workload; `fuseproto dax record --from-daemon`).
REAL_CAPTURE = Path(__file__).resolve().parents[2] / "corpus" / "captures" / "dax-reads.pcap"
# The ``strace`` trace: a real program's file reads, recorded with record_strace.
STRACE_TRACE = Path(__file__).with_name("data") / "real_strace.jsonl.gz"
REAL_TRACE_COMMAND = (
    "sh -c 'python3 -c \"import json, email.parser, asyncio, http.client, xml.dom.minidom, "
    'sqlite3, unittest, argparse, decimal"; grep -r -l -I PATH_MAX /usr/include >/dev/null; '
    "tar cf - /usr/lib/python3.11/email /usr/lib/python3.11/json | wc -c'"
)


@dataclass(frozen=True, slots=True)
class Access:
    nodeid: int
    offset: int
    size: int


@dataclass
class Trace:
    name: str
    files: dict[int, int]  # nodeid -> size in bytes
    accesses: list[Access] = field(default_factory=list)

    @property
    def working_set(self) -> int:
        """Bytes of the files the trace touches."""
        return sum(self.files[n] for n in {a.nodeid for a in self.accesses})

    def bytes_read(self) -> int:
        return sum(max(0, min(a.size, self.files[a.nodeid] - a.offset)) for a in self.accesses)

    def chunk_accesses(self, chunk: int) -> list[tuple[int, int]]:
        """``(nodeid, chunk index)`` of every chunk each read touches, in order."""
        out = []
        for a in self.accesses:
            end = min(a.offset + a.size, self.files[a.nodeid])
            if end > a.offset:
                for c in range(a.offset // chunk, (end - 1) // chunk + 1):
                    out.append((a.nodeid, c))
        return out


def _zipf_sampler(n: int, s: float, rnd: random.Random) -> Callable[[], int]:
    weights = [1.0 / (k + 1) ** s for k in range(n)]
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    perm = list(range(n))
    rnd.shuffle(perm)  # popularity not tied to file order
    return lambda: perm[min(bisect.bisect_left(cum, rnd.random() * acc), n - 1)]


def sequential(
    seed: int = 0,
    nfiles: int = 8,
    file_size: int = 48 * MiB,
    read_size: int = 128 * KiB,
    passes: int = 3,
) -> Trace:
    rnd = random.Random(seed)
    files = {2 + i: file_size - rnd.randrange(0, 4096) for i in range(nfiles)}
    acc = [
        Access(n, off, read_size)
        for _ in range(passes)
        for n, size in files.items()
        for off in range(0, size, read_size)
    ]
    return Trace("sequential", files, acc)


def random_reads(
    seed: int = 0,
    nfiles: int = 16,
    file_size: int = 32 * MiB,
    read_size: int = 64 * KiB,
    nreads: int = 40000,
) -> Trace:
    rnd = random.Random(seed)
    files = {2 + i: file_size for i in range(nfiles)}
    ids = list(files)
    acc = []
    for _ in range(nreads):
        n = rnd.choice(ids)
        acc.append(Access(n, rnd.randrange(0, files[n] // 4096) * 4096, read_size))
    return Trace("random", files, acc)


def zipf(
    seed: int = 0,
    nfiles: int = 16,
    file_size: int = 32 * MiB,
    block: int = 256 * KiB,
    nreads: int = 60000,
    s: float = 1.1,
) -> Trace:
    rnd = random.Random(seed)
    files = {2 + i: file_size for i in range(nfiles)}
    per = file_size // block
    pick = _zipf_sampler(nfiles * per, s, rnd)
    acc = []
    for _ in range(nreads):
        k = pick()
        acc.append(Access(2 + k // per, (k % per) * block, block))
    return Trace("zipf", files, acc)


def small_files(seed: int = 0, nfiles: int = 3000, nreads: int = 40000, s: float = 0.9) -> Trace:
    rnd = random.Random(seed)
    files = {
        2 + i: rnd.choice([2, 4, 8, 16, 32, 64, 128, 700]) * KiB + rnd.randrange(4096)
        for i in range(nfiles)
    }
    pick = _zipf_sampler(nfiles, s, rnd)
    acc = []
    for _ in range(nreads):
        n = 2 + pick()
        acc.append(Access(n, 0, files[n]))
    return Trace("small", files, acc)


def mix(seed: int = 0) -> Trace:
    rnd = random.Random(seed)
    parts = [
        sequential(seed, nfiles=4, passes=2),
        zipf(seed, nfiles=8, nreads=20000),
        small_files(seed, nfiles=1000, nreads=10000),
    ]
    files: dict[int, int] = {}
    queues = []
    for i, t in enumerate(parts):  # give each part its own node ids
        base = (i + 1) * 100000
        files.update({base + n: s for n, s in t.files.items()})
        queues.append([Access(base + a.nodeid, a.offset, a.size) for a in t.accesses])
    acc: list[Access] = []
    pos = [0] * len(queues)
    while any(p < len(q) for p, q in zip(pos, queues, strict=True)):
        i = rnd.choice([k for k, q in enumerate(queues) if pos[k] < len(q)])
        burst = rnd.randrange(1, 64)
        acc.extend(queues[i][pos[i] : pos[i] + burst])
        pos[i] += burst
    return Trace("mix", files, acc)


GENERATORS: dict[str, Callable[[int], Trace]] = {
    "sequential": sequential,
    "random": random_reads,
    "zipf": zipf,
    "small": small_files,
    "mix": mix,
}


# Every built-in trace, in the order the CLI and the benchmark run them.
TRACE_NAMES = (*GENERATORS, "real", "strace")


def make_trace(spec: str, seed: int = 0) -> Trace:
    """A generator name, ``real`` (the shipped capture of a real daemon's traffic),
    ``strace`` (the shipped strace recording), or a trace file path (a capture if it
    ends in ``.pcap`` / ``.pcapng``, else a JSON-lines trace)."""
    if spec in GENERATORS:
        return GENERATORS[spec](seed)
    if spec == "real":
        if not REAL_CAPTURE.exists():
            raise ValueError(f"the real trace's capture is missing: {REAL_CAPTURE}")
        return from_capture(REAL_CAPTURE, "real")
    if spec == "strace":
        return load(STRACE_TRACE, name="strace")
    if os.path.exists(spec):
        if spec.endswith((".pcap", ".pcapng")):
            return from_capture(spec, Path(spec).stem)
        return load(spec)
    raise ValueError(f"unknown trace {spec!r}: {list(TRACE_NAMES)} or a file")


# ---- files ----------------------------------------------------------------------------------


def save(trace: Trace, path: str | os.PathLike[str]) -> None:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(json.dumps({"name": trace.name, "files": trace.files}) + "\n")
        for a in trace.accesses:
            f.write(f"[{a.nodeid},{a.offset},{a.size}]\n")


def load(path: str | os.PathLike[str], name: str | None = None) -> Trace:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        head = json.loads(f.readline())
        files = {int(k): int(v) for k, v in head["files"].items()}
        acc = [Access(*json.loads(line)) for line in f if line.strip()]
    return Trace(name or head.get("name", Path(path).stem), files, acc)


# ---- recorded traffic ---------------------------------------------------------------------

_SYSCALL = re.compile(
    r"^(?:\[pid\s+)?(\d+)\]?\s*(openat|read|pread64|lseek|close)\((.*)\)\s+=\s+(-?\d+)"
)


def from_strace(text: str, name: str = "strace") -> Trace:
    """Reads of regular files from ``strace -f -y`` output (``-y`` prints fd paths)."""
    files: dict[str, int] = {}
    sizes: dict[int, int] = {}
    pos: dict[tuple[str, int], int] = {}
    acc: list[Access] = []
    fd_path: dict[tuple[str, int], str] = {}
    for line in text.splitlines():
        m = _SYSCALL.match(line.strip())
        if not m:
            continue
        pid, call, args, ret = m.group(1), m.group(2), m.group(3), int(m.group(4))
        if call == "openat":
            pm = re.search(r'"([^"]+)"', args)
            if ret >= 0 and pm:
                fd_path[(pid, ret)] = pm.group(1)
                pos[(pid, ret)] = 0
            continue
        fm = re.match(r"(\d+)<([^>]*)>", args)
        if not fm:
            continue
        fd, path = int(fm.group(1)), fm.group(2)
        key = (pid, fd)
        if call == "close":
            pos.pop(key, None)
            continue
        if not path.startswith("/") or not os.path.isfile(path):
            continue
        if path not in files:
            files[path] = 2 + len(files)
            sizes[files[path]] = os.path.getsize(path)
        nodeid = files[path]
        if call == "lseek":
            if ret >= 0:
                pos[key] = ret
            continue
        nums = [int(x) for x in re.findall(r",\s*(\d+)", args)]
        if call == "read" and ret > 0 and nums:
            off = pos.get(key, 0)
            acc.append(Access(nodeid, off, nums[-1]))
            pos[key] = off + ret
        elif call == "pread64" and ret > 0 and len(nums) >= 2:
            acc.append(Access(nodeid, nums[-1], nums[-2]))
    for a in acc:  # a file may have grown after its size was taken
        sizes[a.nodeid] = max(sizes[a.nodeid], min(a.offset + a.size, sizes[a.nodeid]))
    return Trace(name, sizes, acc)


def record_strace(command: str = REAL_TRACE_COMMAND, name: str = "real") -> Trace:
    """Run ``command`` under strace and return its file reads as a trace."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        subprocess.run(
            [
                "strace",
                "-f",
                "-y",
                "-s",
                "0",
                "-e",
                "trace=openat,read,pread64,lseek,close",
                "-o",
                out.name,
                *shlex.split(command),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return from_strace(Path(out.name).read_text(errors="replace"), name)


def from_fuse_requests(
    requests: Iterable[bytes],
    name: str = "fuse",
    *,
    sizes: dict[int, int] | None = None,
    minor: int = FUSE_KERNEL_MINOR_VERSION,
) -> Trace:
    """FUSE_READ requests (raw bytes, e.g. from a capture; other opcodes are skipped) as
    a trace. A file's size is taken from ``sizes`` (node id -> bytes, e.g. from LOOKUP
    replies) or else as the end of its furthest read."""
    from fuseproto.wire import codec

    acc = []
    ends: dict[int, int] = {}
    for raw in requests:
        req = codec.decode_request(raw, minor)
        if req.opcode == fuse_opcode.FUSE_READ:
            acc.append(Access(req.nodeid, req.body.offset, req.body.size))
            ends[req.nodeid] = max(ends.get(req.nodeid, 0), req.body.offset + req.body.size)
    known = sizes or {}
    return Trace(name, {n: known.get(n, end) for n, end in ends.items()}, acc)


def from_capture(source: str | os.PathLike[str] | bytes, name: str = "capture") -> Trace:
    """The FUSE_READs of a capture (``fuseproto.capture`` pcap, e.g. recorded through
    the vhost-user transport's tap) as a trace; file sizes from the LOOKUP, CREATE and
    GETATTR replies it holds (READ replies may be cut by the snaplen: not needed)."""
    from fuseproto.capture import decode_capture

    reads: list[bytes] = []
    sizes: dict[int, int] = {}
    minor = FUSE_KERNEL_MINOR_VERSION
    for m in decode_capture(source):
        msg = m.message
        if msg is None or m.error is not None:
            continue
        if m.kind == "request":
            if m.opcode == fuse_opcode.FUSE_READ:
                reads.append(m.raw)
            elif m.opcode == fuse_opcode.FUSE_INIT:
                minor = min(minor, msg.body.minor)
        elif m.kind == "reply" and m.paired and msg.error == 0:
            if m.opcode in (fuse_opcode.FUSE_LOOKUP, fuse_opcode.FUSE_CREATE):
                sizes[msg.body.nodeid] = msg.body.attr.size
            elif m.opcode == fuse_opcode.FUSE_GETATTR:
                sizes[msg.request.nodeid] = msg.body.attr.size
    return from_fuse_requests(reads, name, sizes=sizes, minor=minor)
