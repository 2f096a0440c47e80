"""``fuseproto mount`` against the host, on the same disk, and where the time goes.

Per daemon (``c``, ``rust``): a share and a plain host directory side by side in one
scratch directory; the same work on the host directory (the baseline, same run) and
through the mount:

* **write**: 64 MiB in 1 MiB ``write`` calls, then ``fsync`` (MB/s);
* **cold read**: that file read back in 1 MiB calls after its page cache was dropped
  (``posix_fadvise(DONTNEED)`` on the file: the host's cache for the host file, the FUSE
  mount's for the mounted one; nothing system-wide) (MB/s);
* **metadata**: create + stat + unlink of a small file in a loop for ``--seconds``
  (loops/s).

Printed: each figure, the mount/host ratio, and for the mount the CPU seconds each
process spent per 1,000 operations (``/proc/PID/stat`` utime + stime before and after):
the bridge (``fuseproto mount``: /dev/fuse read, decode, session, virtqueue, reply), the
daemon, and this process (the system calls into the kernel's FUSE client). With 2 cores,
CPU per operation says whose work the time is.

Run: ``.venv/bin/python benchmarks/bench_mount.py [--daemon c|rust] [--seconds 3]
[--mib 64]`` (root, /dev/fuse).
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuseproto.transport.devfuse import find_mount_device

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    """utime + stime of ``pid`` with its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Mount:
    def __init__(self, base: str, daemon: str) -> None:
        self.share, self.mnt = os.path.join(base, "share"), os.path.join(base, "mnt")
        os.mkdir(self.share)
        os.mkdir(self.mnt)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fuseproto", "mount", "--daemon", daemon, self.share,
             self.mnt], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # type: ignore[union-attr]
        m = re.search(r"virtiofsd pid (\d+)", line)
        if m is None:
            self.proc.kill()
            raise SystemExit(f"fuseproto mount did not start: {line!r}")
        self.daemon_pid = int(m.group(1))
        deadline = time.monotonic() + 10
        while find_mount_device(self.mnt) is None:
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("not mounted after 10 s")
            time.sleep(0.05)

    def cpu(self) -> tuple[float, float, float]:
        return cpu(self.proc.pid), cpu(self.daemon_pid), self_cpu()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_file(path: str, mib: int) -> float:
    buf = mmap.mmap(-1, 1 << 20)
    buf.write(os.urandom(1 << 20))
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    t0 = time.perf_counter()
    try:
        for _ in range(mib):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    return mib / (time.perf_counter() - t0)


def cold_read(path: str) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        n, t0 = 0, time.perf_counter()
        while chunk := os.read(fd, 1 << 20):
            n += len(chunk)
    finally:
        os.close(fd)
    return n / (1 << 20) / (time.perf_counter() - t0)


def metadata(d: str, seconds: float) -> tuple[float, int]:
    n, t0 = 0, time.perf_counter()
    path = os.path.join(d, "meta")
    while time.perf_counter() - t0 < seconds:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        os.stat(path)
        os.unlink(path)
        n += 1
    return n / (time.perf_counter() - t0), n


def run(daemon: str, seconds: float, mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mount-", dir=os.environ.get("TMPDIR")) as base:
        host = os.path.join(base, "host")
        os.mkdir(host)
        m = Mount(base, daemon)
        try:
            rows = []
            for name, fn in (("write MB/s", lambda d: (write_file(os.path.join(d, "big"), mib), mib)),
                             ("cold read MB/s", lambda d: (cold_read(os.path.join(d, "big")), mib)),
                             ("create+stat+unlink /s", lambda d: metadata(d, seconds))):
                h = fn(host)[0]
                before = m.cpu()
                val, ops = fn(m.mnt)
                after = m.cpu()
                per = [(a - b) * 1000 / max(1, ops) for a, b in zip(after, before, strict=True)]
                rows.append((name, h, val, per))
            print(f"\n{daemon}: mount vs host, same disk ({base})")
            print(f"{'':24} {'host':>10} {'mount':>10} {'ratio':>7}   CPU s per 1000 ops "
                  "(bridge / daemon / caller)")
            for name, h, val, per in rows:
                unit = "MiB" if "MB" in name else "loop"
                print(f"{name:24} {h:10.1f} {val:10.1f} {val / h:6.2f}x   "
                      f"{per[0]:.3f} / {per[1]:.3f} / {per[2]:.3f}  (per 1000 {unit})")
        finally:
            m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemon", action="append", choices=["c", "rust"],
                    help="daemon(s) to measure (default: both)")
    ap.add_argument("--seconds", type=float, default=3.0, help="metadata loop length")
    ap.add_argument("--mib", type=int, default=64, help="size of the written file")
    a = ap.parse_args()
    for d in a.daemon or ["c", "rust"]:
        run(d, a.seconds, a.mib)


if __name__ == "__main__":
    main()
