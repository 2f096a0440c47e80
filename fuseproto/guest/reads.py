"""A real guest's READ pattern, recorded for the DAX simulator
(``fuseproto dax record --from-guest``).

The files and the reads are those of the DAX workload (:mod:`fuseproto.dax.workload`: a
streamed clip, a database's hot pages, a library, a log, small config files, interleaved
in bursts). The guest makes each read with O_DIRECT (no page cache, no readahead: each
read reaches the daemon as the program made it; ``fpguest preads`` keeps each file open,
as a program would), through the recording proxy; the capture's FUSE_READs are the
trace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from .. import scratch
from ..dax.workload import SNAPLEN, create_files, file_sizes, read_plan
from ..errors import GuestError
from .run import RecordingProxies, WorkloadRun, run_workload


@dataclass
class GuestReads:
    files: dict[str, int]  # path -> size, as created on the share
    plan: list[tuple[str, int, int]]  # the reads the guest made, (path, offset, size)
    run: WorkloadRun
    proxy_exit: str


def read_script(plan: list[tuple[str, int, int]]) -> bytes:
    """A busybox sh script making ``plan``'s reads in order: ``fpguest preads``, one
    O_DIRECT pread of ``size`` bytes at ``offset`` per line, each file opened once; prints
    ``@@r reads <done> <failed>`` and one ``@@r ERR pread ...`` line per failed read."""
    lines = "".join(f"{path} {offset} {size}\n" for path, offset, size in plan)
    return ("fpguest preads <<'PLAN' | while read line; do echo \"@@r $line\"; done\n"
            + lines + "PLAN\n").encode()


def record_guest_reads(daemon: str, pcap_path: str | os.PathLike[str], *,
                       scale: float = 0.1, seed: int = 0, snaplen: int = SNAPLEN,
                       timeout: float = 240.0) -> GuestReads:
    """Boot the guest on ``daemon`` (through the recording proxy), make the DAX
    workload's reads and write the capture to ``pcap_path`` (each message cut at
    ``snaplen`` bytes: the READ data is not needed). Raises :class:`GuestError` if a read
    failed or the guest did not finish."""
    files: dict[str, int] = {}

    def fill(share: str) -> None:
        files.update(create_files(share, scale=scale, seed=seed))

    plan = read_plan(file_sizes(scale=scale, seed=seed), seed)
    work = scratch.directory("guest-reads")
    try:
        proxies = RecordingProxies(work, snaplen=snaplen)
        run = run_workload([daemon], timeout=timeout, interpose=proxies, script=read_script(plan),
                           prepare_share=fill, workdir=os.path.join(work, "shares"))
        (tag,) = proxies.captures
        result = run.guest.tags.get(tag)
        done = [line for line in result.lines if line.split()[1].isdigit()] if result else []
        if done != [f"@@r {len(plan)} 0"] or run.problems():
            failed = [line for line in (result.lines if result else []) if "ERR" in line]
            raise GuestError(f"guest reads: {done} of {len(plan)} ({failed[:5]}); "
                             f"{run.problems()}; console:\n{run.guest.tail()}")
        shutil.move(proxies.captures[tag], pcap_path)
        return GuestReads(files, plan, run, proxies.exits[tag])
    finally:
        shutil.rmtree(work, ignore_errors=True)

