"""Scratch directories and files that name their owner, and the sweep of dead owners'.

Every temporary directory fuseproto makes for a daemon, a proxy, a guest or a fuzz worker
(and every coverage map file in ``/dev/shm``) is named ``fuseproto-KIND-pPID-RANDOM``:
KIND says what made it, PID the process that owns it. The owner removes it when it stops;
an owner killed with SIGKILL cannot, so the first scratch entry a process makes sweeps the
entries of owners that no longer exist (:func:`sweep`). An entry is left alone while:

* its owner's PID is alive, not a zombie (a reused PID keeps a dead owner's entry: safe);
* a mount lies inside it (a FUSE mount a dead bridge left: removing files through it would
  reach the share);
* a ``*.pid`` file in it (or one level down) names a live process (a daemon that outlived
  the owner still uses its socket there).

Entries of another form (older names, other programs) are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "fuseproto-"
_NAME = re.compile(r"^fuseproto-[a-z][a-z0-9-]*?-p(\d+)-[A-Za-z0-9_]+$")
_swept: set[str] = set()


def _tag(kind: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]*", kind):
        raise ValueError(f"scratch kind {kind!r}: lower-case letters, digits and '-' only")
    return f"{PREFIX}{kind}-p{os.getpid()}-"


def directory(kind: str, base: str | None = None) -> str:
    """A new private directory ``fuseproto-KIND-pPID-*`` in ``base`` (default: the temp
    dir), after sweeping ``base`` of dead owners' entries once per process."""
    base = base or tempfile.gettempdir()
    _sweep_once(base)
    return tempfile.mkdtemp(prefix=_tag(kind), dir=base)


def file_path(kind: str, base: str) -> str:
    """A fresh name ``fuseproto-KIND-pPID-*`` for a file the caller creates with O_EXCL
    in ``base`` (after the same once-per-process sweep of ``base``)."""
    _sweep_once(base)
    return os.path.join(base, _tag(kind) + os.urandom(8).hex())


def _sweep_once(base: str) -> None:
    if base not in _swept:
        _swept.add(base)
        sweep(base)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a process whose owner was
    killed is reparented; until its new parent reaps it, it is gone in all but name)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _mount_points() -> list[str]:
    points = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    points.append(re.sub(r"\\([0-7]{3})",
                                         lambda m: chr(int(m.group(1), 8)), fields[4]))
    except OSError:
        pass
    return points


def _live_pid_file(path: Path) -> bool:
    for pattern in ("*.pid", "*/*.pid"):
        for p in path.glob(pattern):
            try:
                text = p.read_text(errors="replace").strip()
            except OSError:
                continue
            if text.isdigit() and alive(int(text)):
                return True
    return False


def sweep(base: str | None = None) -> list[str]:
    """Remove the scratch entries in ``base`` (default: the temp dir) whose owner is gone,
    except those a mount or a live ``*.pid`` file still holds; returns what was removed."""
    base = base or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    mounts: list[str] | None = None
    for entry in entries:
        m = _NAME.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or alive(int(m.group(1))):
            continue
        try:
            if entry.is_symlink():
                continue
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.path)
                continue
        except OSError:
            continue
        if mounts is None:
            mounts = _mount_points()
        if any(mp == entry.path or mp.startswith(entry.path + "/") for mp in mounts):
            continue
        if _live_pid_file(Path(entry.path)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
    return removed
