"""A realistic read workload through a real virtiofsd, recorded as a capture.

:func:`record_daemon_reads` starts a daemon on a directory of files made by
:func:`create_files`, drives :func:`run_workload` through :class:`fuseproto.client.Client`
over the vhost-user transport with a :class:`~fuseproto.capture.CaptureRecorder` as its
tap, and leaves a pcap whose FUSE_READ requests :func:`fuseproto.dax.traces.from_capture`
turns into a simulator trace. The shipped ``corpus/captures/dax-reads.pcap`` (the ``real``
trace) was made with ``fuseproto dax record --from-daemon rust corpus/captures/dax-reads.pcap``.

The workload is what a guest's page cache would send for a small mixed machine, in
interleaved bursts (one application at a time, as a scheduler would run them):

* a media file streamed front to back in 256 KiB reads (readahead), its start replayed;
* a database: 4 KiB page reads, page popularity Zipf-like (a hot set), re-read often;
* a shared library: 64 KiB reads at scattered offsets (the loader), then the same again;
* a log file scanned twice in 128 KiB reads (``grep`` run twice);
* an archive: 32 KiB reads at random offsets;
* many small files (configuration, scripts) read whole, some far more than others.

Every READ's bytes are checked against the file, so a recording is also a test of the
daemon. The capture keeps each message's first :data:`SNAPLEN` bytes: requests and
LOOKUP replies (the file sizes) whole, READ replies cut after their header.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fuseproto.client import Client
    from fuseproto.daemons import Installation

__all__ = ["SNAPLEN", "WorkloadRead", "create_files", "record_daemon_reads", "run_workload"]

KiB, MiB = 1 << 10, 1 << 20
# fuse_out_header (16) + fuse_entry_out (128): a LOOKUP reply whole, READ data cut.
SNAPLEN = 144


@dataclass(frozen=True, slots=True)
class WorkloadRead:
    """One READ the workload sent: ``path`` relative to the shared directory."""

    path: str
    nodeid: int
    offset: int
    size: int


def _sizes(scale: float, rnd: random.Random) -> dict[str, int]:
    def s(n: int) -> int:
        return max(4 * KiB, int(n * scale)) + rnd.randrange(4096)

    files = {
        "media/clip.mp4": s(24 * MiB),
        "var/app.db": s(16 * MiB),
        "lib/libapp.so": s(8 * MiB),
        "var/log/app.log": s(4 * MiB),
        "backup/data.tar": s(20 * MiB),
    }
    for i in range(24):
        files[f"etc/conf{i:02d}.txt"] = rnd.choice([1, 2, 4, 9, 16, 40, 100]) * KiB + rnd.randrange(
            1000
        )
    return files


def file_sizes(*, scale: float = 1.0, seed: int = 0) -> dict[str, int]:
    """The workload's files, path -> size, as :func:`create_files` makes them."""
    return _sizes(scale, random.Random(seed))


def create_files(root: str, *, scale: float = 1.0, seed: int = 0) -> dict[str, int]:
    """Write the workload's files (random bytes) under ``root``; returns path -> size."""
    rnd = random.Random(seed)
    files = _sizes(scale, rnd)
    for path, size in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(rnd.randbytes(size))
    return files


def _zipf_index(n: int, rnd: random.Random, s: float = 1.2) -> int:
    weights = [1.0 / (k + 1) ** s for k in range(n)]
    return rnd.choices(range(n), weights)[0]


def _plan(files: dict[str, int], seed: int) -> list[list[tuple[str, int, int]]]:
    """Each application's reads ``(path, offset, size)`` in its own order."""
    rnd = random.Random(seed + 1)
    apps: list[list[tuple[str, int, int]]] = []

    media = files["media/clip.mp4"]
    seq = [("media/clip.mp4", off, 256 * KiB) for off in range(0, media, 256 * KiB)]
    apps.append(seq + seq[: max(1, len(seq) // 6)])  # streamed, then its start replayed

    db = files["var/app.db"]
    pages = db // (4 * KiB)
    hot = list(range(pages))
    rnd.shuffle(hot)
    apps.append(
        [
            ("var/app.db", hot[_zipf_index(min(pages, 400), rnd)] * 4 * KiB, 4 * KiB)
            for _ in range(150)
        ]
    )

    lib = files["lib/libapp.so"]
    loads = sorted(rnd.randrange(0, lib // (64 * KiB)) * 64 * KiB for _ in range(20))
    apps.append([("lib/libapp.so", off, 64 * KiB) for off in loads] * 2)

    log = files["var/log/app.log"]
    scan = [("var/log/app.log", off, 128 * KiB) for off in range(0, log, 128 * KiB)]
    apps.append(scan * 2)

    tar = files["backup/data.tar"]
    apps.append(
        [
            ("backup/data.tar", rnd.randrange(0, tar // (32 * KiB)) * 32 * KiB, 32 * KiB)
            for _ in range(60)
        ]
    )

    small = sorted(p for p in files if p.startswith("etc/"))
    apps.append(
        [(p, 0, files[p]) for p in (small[_zipf_index(len(small), rnd)] for _ in range(60))]
    )
    return apps


def _interleave(
    apps: list[list[tuple[str, int, int]]], seed: int
) -> Iterator[tuple[str, int, int]]:
    rnd = random.Random(seed + 2)
    pos = [0] * len(apps)
    while True:
        ready = [i for i, a in enumerate(apps) if pos[i] < len(a)]
        if not ready:
            return
        i = rnd.choice(ready)
        burst = rnd.randrange(1, 24)
        yield from apps[i][pos[i] : pos[i] + burst]
        pos[i] += burst


def read_plan(files: dict[str, int], seed: int = 0) -> list[tuple[str, int, int]]:
    """The workload's reads ``(path, offset, size)`` in the order they are made (the
    applications' reads interleaved in bursts): what :func:`run_workload` sends, and what
    a real guest reads (``fuseproto dax record --from-guest``)."""
    return list(_interleave(_plan(files, seed), seed))


def run_workload(
    client: Client, root: str, files: dict[str, int], *, seed: int = 0
) -> list[WorkloadRead]:
    """Look up, open, read (checking every byte against ``root``) and release the files
    as the plan says; returns the READs in the order they were sent."""
    from fuseproto.wire.constants import FUSE_ROOT_ID

    nodes: dict[str, int] = {}  # path -> nodeid (LOOKUP, component by component)
    handles: dict[str, int] = {}
    done: list[WorkloadRead] = []

    def lookup(path: str) -> int:
        if path in nodes:
            return nodes[path]
        parent = FUSE_ROOT_ID
        parts = path.split("/")
        for k in range(1, len(parts) + 1):
            sub = "/".join(parts[:k])
            if sub not in nodes:
                nodes[sub] = client.lookup(parent, parts[k - 1]).nodeid
            parent = nodes[sub]
        return parent

    for path, offset, size in read_plan(files, seed):
        nodeid = lookup(path)
        if path not in handles:
            client.getattr(nodeid)
            handles[path] = client.open(nodeid).fh
        data = client.read(nodeid, handles[path], offset, size)
        with open(os.path.join(root, path), "rb") as f:
            f.seek(offset)
            want = f.read(size)
        if data != want:
            raise AssertionError(f"READ {path} [{offset}, +{size}) returned other bytes")
        done.append(WorkloadRead(path, nodeid, offset, size))
        if path.startswith("etc/"):  # small files: opened, read, closed each time
            client.release(nodeid, handles.pop(path))
    for path, fh in handles.items():
        client.release(nodes[path], fh)
    return done


def record_daemon_reads(
    installation: Installation,
    pcap_path: str | os.PathLike[str],
    *,
    scale: float = 1.0,
    seed: int = 0,
    snaplen: int = SNAPLEN,
) -> tuple[dict[str, int], list[WorkloadRead]]:
    """Run the workload against a fresh daemon of ``installation`` (a
    :class:`~fuseproto.daemons.Installation`) and record it to ``pcap_path``.
    Returns the files (path -> size) and the READs sent."""
    from fuseproto import scratch as scratch_dirs
    from fuseproto.capture import CaptureRecorder
    from fuseproto.client import Client
    from fuseproto.transport.vhost_user import VhostUserTransport

    scratch = scratch_dirs.directory("dax-record")
    try:
        shared = os.path.join(scratch, "shared")
        os.mkdir(shared)
        files = create_files(shared, scale=scale, seed=seed)
        rec = CaptureRecorder(pcap_path, snaplen=snaplen)
        transport = VhostUserTransport.spawn(installation, shared, tap=rec)
        try:
            client = Client(transport)
            client.init()
            rec.minor = client.session.minor
            reads = run_workload(client, shared, files, seed=seed)
        finally:
            transport.close()
            rec.close()
        return files, reads
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
