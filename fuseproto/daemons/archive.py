"""Fetch packages from Debian's archive by name, through a *private* apt configuration.

The system's apt sources are never touched: each suite gets its own sources list, lists
directory and cache under ``cache_dir`` (default ``~/.cache/fuseproto/apt``), and
``apt-get download`` fetches a ``.deb`` which :func:`extract` unpacks with ``dpkg -x``.
A configuration made with ``sources=True`` has ``deb-src`` lines instead: ``apt-get
source --download-only`` fetches a source package (``.dsc`` and its tarballs, checked
against the signed index), which ``dpkg-source -x`` unpacks with Debian's patches
applied (:mod:`fuseproto.daemons.variants`).
The archive's address is taken from the system's own apt configuration, so whatever
mirror this machine uses is used here too.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DaemonError

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def cache_root() -> Path:
    """fuseproto's cache directory: ``$FUSEPROTO_CACHE``, else ``$XDG_CACHE_HOME/fuseproto``
    (``~/.cache/fuseproto``). Apt state and unpacked daemons live under it."""
    base = os.environ.get("FUSEPROTO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fuseproto"
    )
    return Path(base)


def system_archive_uri() -> str:
    """The URI of the main Debian archive as this machine's apt sources name it."""
    candidates: list[str] = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file() or "disabled" in path.name:
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for m in re.finditer(r"^URIs:\s*(.+)$", text, re.M):
                candidates.extend(m.group(1).split())
        else:
            for m in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M):
                candidates.append(m.group(1))
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise DaemonError(
        "cannot find a Debian archive URI in /etc/apt/sources.list{,.d}; "
        "set FUSEPROTO_DEBIAN_MIRROR"
    )


@dataclass
class PrivateApt:
    """One apt configuration for a set of suites, isolated from the system's."""

    suites: tuple[str, ...]
    root: Path
    sources: bool = False  # deb-src lines (source packages) instead of deb lines

    @classmethod
    def for_suites(cls, *suites: str, cache_dir: Path | None = None,
                   sources: bool = False) -> PrivateApt:
        name = "+".join(suites) + ("+src" if sources else "")
        return cls(tuple(suites), (cache_dir or cache_root() / "apt") / name, sources)

    def _options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::sourcelist={r}/sources.list",
            "-o", f"Dir::Etc::sourceparts={r}/sources.list.d",
            "-o", f"Dir::Etc::preferences={r}/preferences",
            "-o", f"Dir::Etc::preferencesparts={r}/preferences.d",
            "-o", f"Dir::State::Lists={r}/lists",
            "-o", f"Dir::Cache={r}/cache",
            "-o", "Dir::State::status=/dev/null",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Retries=3",
        ]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, "-q", *self._options(), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DaemonError(f"{' '.join([tool, *args])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def update(self, *, max_age_s: float = 6 * 3600) -> None:
        """Write this configuration's sources list and run ``apt-get update`` unless the
        lists were fetched for the same sources less than ``max_age_s`` ago."""
        mirror = os.environ.get("FUSEPROTO_DEBIAN_MIRROR") or system_archive_uri()
        for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        keyring = f" [signed-by={DEFAULT_KEYRING}]" if os.path.exists(DEFAULT_KEYRING) else ""
        kind = "deb-src" if self.sources else "deb"
        lines = "".join(f"{kind}{keyring} {mirror} {s} main\n" for s in self.suites)
        src = self.root / "sources.list"
        stamp = self.root / "updated"
        fresh = (
            src.exists() and src.read_text() == lines and stamp.exists()
            and time.time() - stamp.stat().st_mtime < max_age_s
        )
        if fresh:
            return
        src.write_text(lines)
        self._run("apt-get", "update")
        stamp.touch()

    def versions(self, package: str) -> list[str]:
        """All versions of ``package`` these suites offer, newest first (apt's order)."""
        out = self._run("apt-cache", "madison", package)
        return [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]

    def depends(self, package: str) -> list[str]:
        """The package names the newest ``package`` depends on (its ``Depends:`` field,
        versions and alternatives after the first left out), e.g. the versioned kernel
        image behind ``linux-image-cloud-amd64``."""
        self.update()
        out = self._run("apt-cache", "show", "--no-all-versions", package)
        m = re.search(r"^Depends:\s*(.*)$", out, re.M)
        if not m:
            return []
        return [alt.split("|")[0].split("(")[0].strip() for alt in m.group(1).split(",")]

    def download(self, package: str, version: str | None = None, dest: Path | None = None) -> Path:
        """Download one .deb (cached: an existing file for that version is reused)."""
        self.update()
        if version is None:
            vs = self.versions(package)
            if not vs:
                raise DaemonError(f"package {package!r} not found in {', '.join(self.suites)}")
            version = vs[0]
        dest = dest or (self.root / "debs")
        dest.mkdir(parents=True, exist_ok=True)
        quoted = version.replace(":", "%3a")
        for existing in dest.glob(f"{package}_{quoted}_*.deb"):
            return existing
        self._run("apt-get", "download", f"{package}={version}", cwd=dest)
        found = list(dest.glob(f"{package}_{quoted}_*.deb"))
        if not found:
            raise DaemonError(f"apt-get download {package}={version} produced no .deb in {dest}")
        return found[0]


    def source(self, package: str, version: str, dest: Path | None = None) -> Path:
        """Download source package ``package`` ``version`` (a ``sources=True``
        configuration); returns its ``.dsc``, next to the files it lists. Cached: an
        existing ``.dsc`` is reused (``dpkg-source -x`` checks the files' sums)."""
        if not self.sources:
            raise DaemonError("PrivateApt.source needs a configuration with sources=True")
        dest = dest or (self.root / "sources")
        dest.mkdir(parents=True, exist_ok=True)
        dsc = dest / f"{package}_{version.split(':', 1)[-1]}.dsc"
        if dsc.exists():
            return dsc
        self.update()
        self._run("apt-get", "source", "--download-only", f"{package}={version}", cwd=dest)
        if not dsc.exists():
            raise DaemonError(f"apt-get source {package}={version} produced no {dsc.name} in {dest}")
        return dsc


def extract(deb: Path, dest: Path) -> Path:
    """Unpack ``deb`` into ``dest`` (``dpkg -x``); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DaemonError(f"dpkg -x {deb} failed: {proc.stderr.strip()}")
    return dest


def newest_header(cache_dir: Path | None = None) -> Path:
    """Path of ``linux/fuse.h`` from the newest ``linux-libc-dev`` in sid/experimental."""
    apt = PrivateApt.for_suites("sid", "experimental", cache_dir=cache_dir)
    apt.update()
    versions = apt.versions("linux-libc-dev")
    if not versions:
        raise DaemonError("linux-libc-dev not found in sid/experimental")
    newest = max(versions, key=_debversion_key)
    tree = apt.root / "trees" / f"linux-libc-dev_{newest}"
    header = tree / "usr/include/linux/fuse.h"
    if not header.exists():
        extract(apt.download("linux-libc-dev", newest), tree)
    return header


def _debversion_key(v: str) -> tuple[int, list[tuple[int, int]]]:
    """Order Debian versions (enough of dpkg's rules: epoch, then ~ sorts first)."""
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)

    def part(s: str) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for num, alpha in re.findall(r"(\d+)|([^\d]+)", s):
            if num:
                out.append((1, int(num)))
            else:
                out.extend((0, _order(c)) for c in alpha)
        out.append((0, 0))
        return out

    return (int(epoch or 0), part(rest))


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256
