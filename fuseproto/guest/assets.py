"""The test guest's files: a Debian kernel, its virtio-fs modules and a busybox initramfs.

Everything comes from Debian's archive by package name through a private apt configuration
(:class:`fuseproto.daemons.PrivateApt`; the system's sources are never touched) and is
cached under ``<cache_root>/guest/<kernel release>/`` with a ``guest.json`` manifest:

* the kernel is the image package behind Debian 12's ``linux-image-cloud-amd64`` on every
  host (a fixed guest: FUSE 7.38 whatever the host runs). It is *downloaded*, never
  installed (installing it would pull initramfs-tools and upgrade systemd): only
  ``/boot/vmlinuz-*`` and the modules in :data:`MODULES` are taken from the package;
* busybox comes from the same suite's ``busybox-static`` (a static binary: the initramfs
  needs no libraries);
* ``fpguest`` (``fpguest.c`` beside this file, built here with ``gcc -static``) does what
  busybox has no applet for: extended attributes, flock, fsync;
* ``/init`` is ``init.sh`` beside this file. The base initramfs (``base.cpio``) is rebuilt
  when any of these inputs changes; the download is done once.

QEMU itself is a Debian package installed by ``scripts/setup.sh`` (``qemu-system-x86`` on
Debian 12 and 13); :func:`find_qemu` finds it or ``FUSEPROTO_QEMU``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ..daemons import PrivateApt, cache_root, extract
from ..errors import DaemonError, GuestError
from .initramfs import Entry, cpio_newc

SUITE = "bookworm"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# In the order they depend on each other (virtio_pci needs both transport libraries;
# virtiofs needs fuse and virtio_ring), as insmod loads them: it resolves nothing itself.
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "fuse", "virtiofs",
)


@dataclass
class GuestAssets:
    """A prepared guest: what QEMU boots."""

    release: str  # the kernel's uname -r, e.g. 6.1.0-50-cloud-amd64
    kernel_package: str  # name=version of the Debian package it came from
    busybox_package: str
    root: str  # the cache directory holding everything below
    kernel: str  # vmlinuz
    initramfs: str  # base.cpio: busybox, modules, fpguest, /init
    inputs: str  # digest of what base.cpio was built from (rebuilt when it changes)

    @property
    def manifest(self) -> Path:
        return Path(self.root) / "guest.json"


def guest_dir() -> Path:
    """``<cache_root>/guest``: one folder per kernel release."""
    return cache_root() / "guest"


def package_text(name: str) -> bytes:
    """A file shipped beside this module (``init.sh``, ``workload.sh``, ``fpguest.c``)."""
    return resources.files(__package__).joinpath(name).read_bytes()


def find_qemu() -> str:
    """The ``qemu-system-x86_64`` to run: ``FUSEPROTO_QEMU``, else the one on PATH."""
    path = os.environ.get("FUSEPROTO_QEMU") or shutil.which("qemu-system-x86_64")
    if not path or not os.access(path, os.X_OK):
        raise GuestError("qemu-system-x86_64 not found: apt-get install qemu-system-x86 "
                         "(scripts/setup.sh does), or set FUSEPROTO_QEMU")
    return path


def cached() -> GuestAssets | None:
    """The newest cached guest whose files are all there, or None (no network)."""
    base = guest_dir()
    for manifest in sorted(base.glob("*/guest.json"), reverse=True) if base.is_dir() else []:
        try:
            assets = GuestAssets(**json.loads(manifest.read_text()))
        except (ValueError, TypeError):
            continue
        if all(os.path.exists(p) for p in (assets.kernel, assets.initramfs)):
            return assets
    return None


def prepare(*, refresh: bool = False) -> GuestAssets:
    """The guest's kernel and base initramfs, fetched and built on first use (cached: a
    second call returns at once, without the network). ``refresh``: look for a newer
    kernel in the archive even when one is cached. The initramfs is rebuilt, from the
    cached packages, whenever this package's ``init.sh`` or ``fpguest.c`` changed."""
    assets = None if refresh else cached()
    if assets is None:
        assets = _fetch()
    if assets.inputs != _inputs_digest(Path(assets.root)):
        _build_initramfs(assets)
    return assets


def _fetch() -> GuestAssets:
    apt = PrivateApt.for_suites(SUITE)
    try:
        images = [d for d in apt.depends(KERNEL_METAPACKAGE) if d.startswith("linux-image-")]
        if not images:
            raise GuestError(f"{KERNEL_METAPACKAGE} in {SUITE} names no kernel image")
        kernel_deb = apt.download(images[0])
        busybox_deb = apt.download(BUSYBOX_PACKAGE)
    except DaemonError as e:
        raise GuestError(f"cannot fetch the guest's packages: {e}") from e
    release = images[0].removeprefix("linux-image-")
    base = guest_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / release
    work = Path(tempfile.mkdtemp(prefix=f".{release}-", dir=base))
    try:
        kernel = _unpack_kernel(kernel_deb, release, work)
        extract(busybox_deb, work / "busybox")
        if not (work / "busybox/bin/busybox").exists():
            raise GuestError(f"{busybox_deb.name} has no bin/busybox")
        root = str(final)
        assets = GuestAssets(
            release=release, kernel_package=_deb_id(kernel_deb),
            busybox_package=_deb_id(busybox_deb), root=root,
            kernel=os.path.join(root, kernel.relative_to(work)),
            initramfs=os.path.join(root, "base.cpio"), inputs="",
        )
        (work / "guest.json").write_text(json.dumps(asdict(assets), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return assets


def _deb_id(deb: Path) -> str:
    name, version = deb.name.split("_")[:2]
    return f"{name}={version.replace('%3a', ':')}"


def _unpack_kernel(deb: Path, release: str, dest: Path) -> Path:
    """Take ``boot/vmlinuz-<release>`` and the :data:`MODULES` out of the image package
    (``dpkg-deb --fsys-tarfile`` streamed through :mod:`tarfile`; nothing else is written)."""
    wanted = {f"{m}.ko" for m in MODULES} | {f"{m}.ko.xz" for m in MODULES}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    vmlinuz = dest / "boot" / f"vmlinuz-{release}"
    (dest / "modules").mkdir(parents=True)
    vmlinuz.parent.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = os.path.basename(member.name)
                if not member.isfile():
                    continue
                if member.name.endswith(f"boot/vmlinuz-{release}"):
                    target = vmlinuz
                elif name in wanted and "/kernel/" in member.name:
                    target = dest / "modules" / name
                else:
                    continue
                src = tar.extractfile(member)
                assert src is not None
                target.write_bytes(src.read())
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise GuestError(f"dpkg-deb --fsys-tarfile {deb.name} failed ({proc.returncode})")
    missing = [m for m in MODULES if not any((dest / "modules").glob(f"{m}.ko*"))]
    if not vmlinuz.exists() or missing:
        raise GuestError(f"{deb.name}: no vmlinuz-{release} or no module(s) {missing}")
    return vmlinuz


def _inputs_digest(root: Path) -> str:
    h = hashlib.sha256()
    for name in ("init.sh", "fpguest.c"):
        h.update(package_text(name))
    for path in sorted((root / "modules").glob("*")) + [root / "busybox/bin/busybox"]:
        h.update(path.name.encode() + str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


def _build_fpguest(root: Path) -> bytes:
    src = root / "fpguest.c"
    out = root / "fpguest"
    src.write_bytes(package_text("fpguest.c"))
    proc = subprocess.run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", str(out),
                           str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestError(f"building fpguest (gcc -static; needs libc6-dev) failed:\n"
                         f"{proc.stderr.strip()[-2000:]}")
    return out.read_bytes()


def _module_bytes(path: Path) -> bytes:
    if path.suffix == ".xz":  # later Debian kernels compress modules; busybox insmod cannot
        import lzma

        return lzma.decompress(path.read_bytes())
    return path.read_bytes()


def _build_initramfs(assets: GuestAssets) -> None:
    """Write ``base.cpio`` and record its inputs' digest in the manifest."""
    root = Path(assets.root)
    fpguest = _build_fpguest(root)
    entries = [Entry.directory(d) for d in
               ("bin", "dev", "etc", "etc/fuseproto", "lib", "lib/modules", "mnt", "proc",
                "sys", "tmp")]
    entries += [
        Entry.char_device("dev/console", 5, 1),
        Entry.file("bin/busybox", (root / "busybox/bin/busybox").read_bytes(), 0o755),
        Entry.symlink("bin/sh", "busybox"),
        Entry.file("bin/fpguest", fpguest, 0o755),
        Entry.file("init", package_text("init.sh"), 0o755),
        Entry.file("etc/fuseproto/modules", ("\n".join(MODULES) + "\n").encode()),
    ]
    for m in MODULES:
        (path,) = root.glob(f"modules/{m}.ko*")
        entries.append(Entry.file(f"lib/modules/{m}.ko", _module_bytes(path)))
    tmp = root / "base.cpio.tmp"
    tmp.write_bytes(cpio_newc(entries))
    tmp.rename(root / "base.cpio")
    assets.inputs = _inputs_digest(root)
    assets.manifest.write_text(json.dumps(asdict(assets), indent=2) + "\n")
