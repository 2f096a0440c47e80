"""Installing real virtiofsd builds from Debian's archive, and finding installed ones.

Two implementations are supported, both taken from Debian's archive through a private apt
configuration (:mod:`fuseproto.daemons.archive`; the system's sources are never edited)
and unpacked under ``<cache_root>/daemons/<kind>-<version>/`` with a ``daemon.json``
manifest describing the :class:`Installation`:

* ``c``: the C virtiofsd of QEMU 7.2 (bookworm ``qemu-system-common``,
  ``usr/lib/qemu/virtiofsd``, FUSE protocol 7.36). Later QEMU releases no longer ship it,
  so it comes from bookworm on every host. It links against the system's glib, libseccomp,
  libcap-ng and libnuma, which :func:`install` installs with apt-get when missing.
* ``rust``: virtiofsd 1.13.x (trixie ``virtiofsd``, ``usr/libexec/virtiofsd``). It needs
  glibc >= 2.39; on an older host trixie's libc6, libgcc-s1, libcap-ng0 and libseccomp2
  are unpacked beside it and it runs through that tree's own dynamic loader.

``FUSEPROTO_VIRTIOFSD_C`` / ``FUSEPROTO_VIRTIOFSD_RUST`` name a user's own build instead.

Source-built variants of the C daemon (``c-src``, ``c-asan-cov``, ...; made by
:mod:`fuseproto.daemons.variants`) live under ``<cache_root>/daemons/builds/<variant>-
<version>/`` with the same manifest; :func:`installed` and :func:`find` know them too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DaemonError
from .archive import PrivateApt, cache_root, extract
from .detect import detect_kind, glibc_version

KINDS = ("c", "rust")


@dataclass(frozen=True)
class DaemonSpec:
    """Where one kind of daemon comes from in Debian's archive."""

    kind: str
    suite: str
    package: str
    binary: str  # path inside the unpacked package
    # Extra packages unpacked into the same tree when the host's glibc is too old.
    private_libs: tuple[str, ...] = ()
    min_glibc: tuple[int, int] = (0, 0)
    # soname -> system packages providing it (first that apt knows is installed).
    system_libs: dict[str, tuple[str, ...]] = field(default_factory=dict)


SPECS: dict[str, DaemonSpec] = {
    "c": DaemonSpec(
        kind="c",
        suite="bookworm",
        package="qemu-system-common",
        binary="usr/lib/qemu/virtiofsd",
        system_libs={
            # trixie renamed glib's package for the 64-bit time_t transition.
            "libglib-2.0.so.0": ("libglib2.0-0t64", "libglib2.0-0"),
            "libseccomp.so.2": ("libseccomp2",),
            "libcap-ng.so.0": ("libcap-ng0",),
            "libnuma.so.1": ("libnuma1",),
        },
    ),
    "rust": DaemonSpec(
        kind="rust",
        suite="trixie",
        package="virtiofsd",
        binary="usr/libexec/virtiofsd",
        private_libs=("libc6", "libgcc-s1", "libcap-ng0", "libseccomp2"),
        min_glibc=(2, 39),
        system_libs={
            "libseccomp.so.2": ("libseccomp2",),
            "libcap-ng.so.0": ("libcap-ng0",),
        },
    ),
}


@dataclass
class Installation:
    """One unpacked daemon: how to execute it."""

    kind: str
    version: str  # Debian package version
    root: str  # unpacked tree
    binary: str  # absolute path of the executable
    loader: str | None = None  # private dynamic loader (old-glibc hosts)
    library_path: str | None = None
    # Which build: "c" / "rust" for the packaged ones, or a source-built variant of the
    # C daemon ("c-src", "c-asan-cov", ...; see fuseproto.daemons.variants). Empty: the kind.
    variant: str = ""
    # How the build is instrumented: "" (plain) or e.g. "asan+ubsan+sancov".
    instrumentation: str = ""

    def __post_init__(self) -> None:
        if not self.variant:
            self.variant = self.kind

    def argv(self) -> list[str]:
        """The command prefix that runs this daemon (loader first when there is one)."""
        if self.loader:
            return [self.loader, "--library-path", self.library_path or "", self.binary]
        return [self.binary]

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], kind: str | None = None) -> Installation:
        """A user's own build (``--virtiofsd PATH``); ``kind`` defaults to what
        :func:`~fuseproto.daemons.detect.detect_kind` tells from the binary."""
        p = Path(path).resolve()
        if not os.access(p, os.X_OK):
            raise DaemonError(f"{p} is not an executable file")
        if kind is None:
            kind = detect_kind(p)
        if kind not in KINDS:
            raise DaemonError(f"unknown daemon kind {kind!r} (one of {', '.join(KINDS)})")
        return cls(kind=kind, version="local", root=str(p.parent), binary=str(p))


def daemons_dir() -> Path:
    """Where installations are unpacked: ``<cache_root>/daemons/<kind>-<version>/``
    (source builds: ``builds/<variant>-<version>/`` below it)."""
    return cache_root() / "daemons"


def installed(kind: str | None = None, *, variant: str | None = None) -> list[Installation]:
    """Installations found in the cache (packaged ones, then source builds), newest
    version last within each, optionally of one protocol ``kind`` and/or one ``variant``
    (``c``, ``rust``, ``c-src``, ...)."""
    out: list[Installation] = []
    base = daemons_dir()
    if not base.is_dir():
        return out
    manifests = [*sorted(base.glob("*/daemon.json")), *sorted(base.glob("builds/*/daemon.json"))]
    for manifest in manifests:
        try:
            inst = Installation(**json.loads(manifest.read_text()))
        except (ValueError, TypeError):
            continue
        if kind is not None and inst.kind != kind:
            continue
        if variant is not None and inst.variant != variant:
            continue
        if os.path.exists(inst.binary):
            out.append(inst)
    return out


def find(name: str) -> Installation | None:
    """The cached installation of kind ``c`` / ``rust`` (or ``FUSEPROTO_VIRTIOFSD_<KIND>``)
    or of a built variant (``c-src``, ``c-asan-cov``, ...), else None."""
    if name in KINDS:
        env = os.environ.get(f"FUSEPROTO_VIRTIOFSD_{name.upper()}")
        if env:
            return Installation.from_path(env, name)
    found = installed(variant=name)
    return found[-1] if found else None


def install(kind: str, *, apt_system_libs: bool = True) -> Installation:
    """Download and unpack ``kind`` (cached: returns the existing installation if any)."""
    if kind not in SPECS:
        raise DaemonError(f"unknown daemon kind {kind!r} (one of {', '.join(KINDS)})")
    existing = find(kind)
    if existing is not None:
        return existing
    spec = SPECS[kind]
    apt = PrivateApt.for_suites(spec.suite)
    deb = apt.download(spec.package)
    version = deb.name.split("_")[1].replace("%3a", ":")
    base = daemons_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{kind}-{version.replace(':', '_')}"
    # Unpack into a temporary directory and rename, so a half-done install never counts.
    work = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=base))
    try:
        root = work / "root"
        extract(deb, root)
        binary = root / spec.binary
        if not binary.exists():
            raise DaemonError(f"{spec.package} {version} has no {spec.binary}")
        need_private = glibc_version() < spec.min_glibc
        if need_private:
            for lib in spec.private_libs:
                extract(apt.download(lib), root)
        final_root = final / "root"
        inst = Installation(kind=kind, version=version, root=str(final_root),
                            binary=str(final_root / spec.binary))
        if need_private:
            inst.loader = str(final_root / "usr/lib64/ld-linux-x86-64.so.2")
            inst.library_path = str(final_root / "usr/lib/x86_64-linux-gnu")
            if not (root / "usr/lib64/ld-linux-x86-64.so.2").exists():
                raise DaemonError("unpacked libc6 has no usr/lib64/ld-linux-x86-64.so.2")
        else:
            _ensure_system_libs(binary, spec, allow_apt=apt_system_libs)
        publish(work, final, inst)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return inst


def build_record(name: str) -> dict[str, Any] | None:
    """The ``build.json`` a source build left beside its installation ``name`` (recipe,
    step times, size), else None."""
    inst = find(name)
    if inst is None:
        return None
    try:
        data: dict[str, Any] = json.loads((Path(inst.root) / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return data


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made if missing): one build at a time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish(work: Path, final: Path, inst: Installation,
            record: dict[str, Any] | None = None) -> None:
    """Make a finished tree the cached installation: write its ``daemon.json`` (what
    :func:`installed` reads back) and, for a source build, its ``record`` as
    ``build.json`` (what :func:`build_record` reads back), and move ``work`` to ``final``,
    replacing an older one. The packaged installs and the source builds all end here."""
    (work / "daemon.json").write_text(json.dumps(asdict(inst), indent=2) + "\n")
    if record is not None:
        (work / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)


def _missing_sonames(binary: Path) -> list[str]:
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    return re.findall(r"^\s*(\S+) => not found", proc.stdout, re.M)


def _ensure_system_libs(binary: Path, spec: DaemonSpec, *, allow_apt: bool) -> None:
    missing = _missing_sonames(binary)
    if not missing:
        return
    pkgs: list[str] = []
    for soname in missing:
        candidates = spec.system_libs.get(soname)
        if not candidates:
            raise DaemonError(f"{binary} needs {soname}, which no known package provides")
        for pkg in candidates:
            probe = subprocess.run(["apt-cache", "show", pkg], capture_output=True)
            if probe.returncode == 0:
                pkgs.append(pkg)
                break
        else:
            raise DaemonError(f"{binary} needs {soname}: none of {candidates} is known to apt")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    if not allow_apt or os.geteuid() != 0:
        raise DaemonError(f"{binary} needs {', '.join(missing)}; run: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or _missing_sonames(binary):
        raise DaemonError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-1000:]}")
