"""Building the Rust virtiofsd (Debian 13's 1.13) with an edge-coverage map: ``rust-cov``.

Debian 13 builds ``rust-virtiofsd`` with its own rustc (1.85) against its packaged crates
(``librust-*-dev``, installed as a directory registry under ``/usr/share/cargo/registry``);
Debian 12's rustc is too old for that set, so the build runs in a Debian 13 chroot:

1. **chroot** (once, kept): ``debootstrap --variant=minbase trixie`` from the archive
   this machine's apt sources name (:func:`~fuseproto.daemons.archive.system_archive_uri`),
   with ``deb`` and ``deb-src`` lines in the chroot's own sources (the host's are never
   touched); inside it ``apt-get build-dep rust-virtiofsd`` (rustc, cargo, gcc and every
   ``librust-*-dev`` of ``debian/control``) and ``librust-virtiofsd-dev``: the crate's own
   source as Debian ships it, Debian's patches applied (the archive's ``.orig.tar.gz``
   is not needed). A separate tree from ``scripts/check-debian13.sh``'s
   ``trixie-root``: that one checks ``make test`` on a near-fresh Debian 13.
2. **runtime**: ``csrc/cov_runtime.c`` (the same file as c-asan-cov's: the edge map named
   by ``FUSEPROTO_COV_MAP``) compiled by the chroot's ``cc``.
3. **cargo** (offline, in the chroot, :data:`RUSTFLAGS`): SanitizerCoverage's
   ``trace-pc-guard`` on every crate of the binary (``--target`` given, so build scripts
   and proc macros are left alone), the runtime object added to the final link. The
   profile is Debian's ``release`` but for ``lto`` (off: an instrumented link of the whole
   program in one unit costs minutes and gains nothing for coverage). Rust's std comes
   precompiled and is not instrumented.
4. **install**: the binary, plus the chroot's dynamic loader and the libraries the binary
   needs (``ldd`` in the chroot), under ``builds/rust-cov-<version>/``; it runs through
   that loader on any host (Debian 12's glibc is too old for it), as the packaged Rust
   daemon does.

Layout under ``daemons_dir()/builds/``: ``trixie-build-root/`` (the chroot, 1.4 GB; its
``build/`` holds the crate copy, the runtime object and cargo's target directory, kept so
that a rebuild only relinks) and ``rust-cov-<version>/`` with ``virtiofsd``, ``lib/``,
``daemon.json``, ``build.json`` (recipe, step times, size) and ``build.log``. Chroot
commands run in a private mount namespace (``unshare --mount``) where ``/proc`` is
mounted: the mounts vanish with the namespace whatever happens. Needs root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import DaemonError
from .archive import system_archive_uri
from .install import Installation, build_lock, build_record, daemons_dir, find, publish

NAME = "rust-cov"
DESCRIPTION = "Debian 13's rustc, trixie's crates, edge coverage map"
INSTRUMENTATION = "sancov"
SUITE = "trixie"
SOURCE_PACKAGE = "rust-virtiofsd"
CRATE_PACKAGE = "librust-virtiofsd-dev"
CRATE = "virtiofsd"
TARGET = "x86_64-unknown-linux-gnu"
CSRC = Path(__file__).with_name("csrc")
RUNTIME = "cov_runtime.c"
RUNTIME_CFLAGS = ("-O2", "-g", "-fPIE", "-Wall", "-Wextra")
# In the chroot: where the build happens.
BUILD = "/build"
RUNTIME_OBJ = f"{BUILD}/fpcov/cov_runtime.o"
RUSTFLAGS = (
    "-C", "passes=sancov-module",
    "-C", "llvm-args=-sanitizer-coverage-level=3",
    "-C", "llvm-args=-sanitizer-coverage-trace-pc-guard",
    "-C", f"link-arg={RUNTIME_OBJ}",
)
CARGO_ENV = {
    "CARGO_HOME": f"{BUILD}/cargo-home",
    "CARGO_TARGET_DIR": f"{BUILD}/target",
    "CARGO_PROFILE_RELEASE_LTO": "false",
}
# Debian's crates as a directory registry, no network (what dh-cargo sets up too).
CARGO_CONFIG = """\
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "/usr/share/cargo/registry"

[net]
offline = true
"""
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOADER = "ld-linux-x86-64.so.2"


def builds_dir() -> Path:
    return daemons_dir() / "builds"


def chroot_dir() -> Path:
    """The Debian 13 build chroot (kept between builds)."""
    return builds_dir() / "trixie-build-root"


def install_dir(version: str) -> Path:
    return builds_dir() / f"{NAME}-{version.replace(':', '_')}"


def runtime_digest() -> str:
    """sha256 of the coverage runtime's source (a changed runtime means a relink)."""
    return hashlib.sha256((CSRC / RUNTIME).read_bytes()).hexdigest()


def build(variant: str = NAME, *, jobs: int | None = None) -> Installation:
    """The installation of ``rust-cov``, built now if it is not in the cache (or was built
    with another coverage runtime). Serialised with other Rust builds by a lock file."""
    if variant != NAME:
        raise DaemonError(f"unknown Rust build variant {variant!r} (only {NAME})")
    existing = find(NAME)
    if existing is not None and not _stale(existing):
        return existing
    builds_dir().mkdir(parents=True, exist_ok=True)
    with build_lock(builds_dir() / ".rust.lock"):
        existing = find(NAME)
        if existing is not None and not _stale(existing):
            return existing
        if os.geteuid() != 0:
            raise DaemonError(f"building {NAME} needs root (debootstrap, chroot)")
        log_path = builds_dir() / f"{NAME}.log"
        with open(log_path, "w") as log:
            steps = _Steps(log, log_path)
            inst = _build(steps, jobs or os.cpu_count() or 1)
        shutil.move(str(log_path), Path(inst.root) / "build.log")
        return inst


def _stale(inst: Installation) -> bool:
    built = build_record(inst.variant or NAME)
    return built is None or built.get("runtime_sha256") != runtime_digest()


# -- steps --------------------------------------------------------------------------------
@dataclass
class _Steps:
    """Runs and logs the build's commands; remembers each step's time for build.json."""

    log: IO[str]
    log_path: Path
    times: dict[str, float] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.log.write(text.rstrip("\n") + "\n")
        self.log.flush()

    def run(self, step: str, argv: list[str], *, capture: bool = False) -> str:
        self.note(f"\n## {step}: {shlex.join(argv)}")
        t0 = time.monotonic()
        out = ""
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, text=True,
                                  stdout=subprocess.PIPE if capture else self.log,
                                  stderr=self.log if capture else subprocess.STDOUT)
            rc = proc.returncode
            out = proc.stdout or ""
        except OSError as e:
            self.note(f"cannot run: {e}")
            rc = -1
        took = time.monotonic() - t0
        self.times[step] = round(self.times.get(step, 0.0) + took, 1)
        if capture:
            self.note(out)
        self.note(f"## {step}: exit {rc} after {took:.1f} s")
        if rc != 0:
            raise self.failed(step, f"exit {rc}")
        return out

    def failed(self, step: str, why: str) -> DaemonError:
        self.log.flush()
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])
        except OSError:
            tail = ""
        return DaemonError(f"building {NAME}: step {step!r} failed ({why}); "
                           f"log {self.log_path}, its tail:\n{tail}")


def in_chroot(root: Path, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The command that runs ``argv`` in ``root`` with ``/proc`` mounted, in a private
    mount namespace (the mount goes away with it), with a clean environment."""
    envs = [f"{k}={v}" for k, v in {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
                                     "DEBIAN_FRONTEND": "noninteractive", **(env or {})}.items()]
    script = 'mount -t proc proc "$1/proc" && exec chroot "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(root), "/usr/bin/env", "-i", *envs, *argv]


def _mirror() -> str:
    return (os.environ.get("FUSEPROTO_DEBIAN_MIRROR") or system_archive_uri()).rstrip("/")


def _build(steps: _Steps, jobs: int) -> Installation:
    t0 = time.monotonic()
    root = _chroot(steps)
    version = steps.run("version", in_chroot(root, [
        "dpkg-query", "-W", "-f=${Version}", CRATE_PACKAGE]), capture=True).strip()
    crate_version = version.split("-")[0].split(":")[-1]
    rustc = steps.run("rustc", in_chroot(root, ["rustc", "--version"]), capture=True).strip()
    build = root / BUILD.lstrip("/")
    (build / "fpcov").mkdir(parents=True, exist_ok=True)
    (build / "cargo-home").mkdir(parents=True, exist_ok=True)
    (build / "cargo-home" / "config.toml").write_text(CARGO_CONFIG)
    shutil.copy2(CSRC / RUNTIME, build / "fpcov" / RUNTIME)
    steps.run("compile runtime", in_chroot(root, [
        "cc", *RUNTIME_CFLAGS, "-c", f"{BUILD}/fpcov/{RUNTIME}", "-o", RUNTIME_OBJ]))
    # The crate as Debian ships it, copied fresh; main.rs gets a new mtime so that cargo
    # recompiles the binary's crate and relinks it with the (maybe changed) runtime object
    # (seconds; the dependencies and the library crate stay built).
    src = build / "src"
    shutil.rmtree(src, ignore_errors=True)
    registry = root / "usr/share/cargo/registry" / f"{CRATE}-{crate_version}"
    if not (registry / "Cargo.toml").exists():
        raise steps.failed("source", f"{CRATE_PACKAGE} {version} has no {registry}")
    shutil.copytree(registry, src)
    os.utime(src / "src" / "main.rs")
    cargo = ["cargo", "build", "--release", "--offline", "-j", str(jobs), "--target", TARGET,
             "--bin", CRATE, "--manifest-path", f"{BUILD}/src/Cargo.toml"]
    cargo_env = {**CARGO_ENV, "RUSTFLAGS": shlex.join(RUSTFLAGS)}
    steps.run("cargo build", in_chroot(root, cargo, cargo_env))
    built = build / "target" / TARGET / "release" / CRATE
    final = install_dir(version)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=builds_dir()))
    try:
        binary = work / "virtiofsd"
        shutil.copy2(built, binary)
        libs = _private_libs(root, f"{BUILD}/target/{TARGET}/release/{CRATE}", work / "lib",
                             steps)
        inst = Installation(kind="rust", version=version, root=str(final),
                            binary=str(final / "virtiofsd"),
                            loader=str(final / "lib" / LOADER),
                            library_path=str(final / "lib"), variant=NAME,
                            instrumentation=INSTRUMENTATION)
        _check(work, steps, crate_version)
        recipe = {
            "variant": NAME,
            "description": DESCRIPTION,
            "source": f"{CRATE_PACKAGE} {version} ({SUITE}; source package {SOURCE_PACKAGE})",
            "chroot": f"debootstrap --variant=minbase {SUITE} {_mirror()}; apt-get build-dep "
                      f"{SOURCE_PACKAGE}; apt-get install {CRATE_PACKAGE}",
            "compiler": rustc,
            "runtime": f"cc {' '.join(RUNTIME_CFLAGS)} -c csrc/{RUNTIME}",
            "rustflags": list(RUSTFLAGS),
            "env": CARGO_ENV,
            "cargo": cargo,
            "libs": libs,
            "seconds": round(time.monotonic() - t0, 1),
            "steps": steps.times,
            "size": binary.stat().st_size,
            "runtime_sha256": runtime_digest(),
            "test_only": False,
        }
        publish(work, final, inst, recipe)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return inst


def _chroot(steps: _Steps) -> Path:
    """The Debian 13 chroot with rust-virtiofsd's build dependencies and its crate (made
    once: a stamp marks it complete; an incomplete one is started over)."""
    root = chroot_dir()
    stamp = root / ".fuseproto-ready"
    if stamp.exists():
        return root
    if shutil.which("debootstrap") is None:
        raise DaemonError(f"building {NAME} needs debootstrap (apt-get install debootstrap)")
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        mirror = _mirror()
        # In a private mount namespace too: the /proc and /sys debootstrap mounts in the
        # new tree go away with it even if it is killed (rmtree must never meet them).
        steps.run("debootstrap", ["unshare", "--mount", "--propagation", "private", "--",
                                  "debootstrap", "--variant=minbase",
                                  "--include=ca-certificates", SUITE, str(tmp), mirror])
        (tmp / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb-src {mirror} {SUITE} main\n")
        with contextlib.suppress(FileNotFoundError):
            (tmp / "etc/apt/sources.list.d/debian.sources").unlink()
        if os.path.exists("/etc/resolv.conf"):
            shutil.copy2("/etc/resolv.conf", tmp / "etc/resolv.conf")
        apt = ["apt-get", "-q", "-y", "--no-install-recommends"]
        steps.run("apt-get update", in_chroot(tmp, ["apt-get", "-q", "update"]))
        steps.run("build-dep", in_chroot(tmp, [*apt, "build-dep", SOURCE_PACKAGE]))
        steps.run("crate", in_chroot(tmp, [*apt, "install", CRATE_PACKAGE]))
        steps.run("apt-get clean", in_chroot(tmp, ["apt-get", "clean"]))
        (tmp / stamp.name).write_text(f"{SUITE} from {mirror}\n")
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _private_libs(root: Path, binary: str, dest: Path, steps: _Steps) -> list[str]:
    """Copy the chroot's dynamic loader and the libraries ``binary`` (a path inside the
    chroot) links to into ``dest``; returns their names. Copied by ``cp -L`` in the chroot:
    symbolic links resolve against the chroot, never against the host's tree."""
    out = steps.run("ldd", in_chroot(root, ["ldd", binary]), capture=True)
    paths: list[str] = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            i = parts.index("=>")
            path = parts[i + 1] if i + 1 < len(parts) else ""
            if not path.startswith("/"):
                raise steps.failed("ldd", f"{binary} needs {parts[0]}, not in the chroot")
            paths.append(path)
        elif parts and parts[0].startswith("/"):
            paths.append(parts[0])  # the loader; linux-vdso has no file
    names = [os.path.basename(p) for p in paths]
    if LOADER not in names:
        raise steps.failed("ldd", f"no {LOADER} among {names}")
    inside = f"{BUILD}/libs"
    shutil.rmtree(root / inside.lstrip("/"), ignore_errors=True)
    steps.run("copy libs", in_chroot(root, ["sh", "-c", 'mkdir -p "$0" && cp -L "$@" "$0"',
                                            inside, *paths]))
    shutil.move(str(root / inside.lstrip("/")), str(dest))
    return names


def _check(work: Path, steps: _Steps, crate_version: str) -> None:
    """The result runs on this host through its private loader and says its version."""
    argv = [str(work / "lib" / LOADER), "--library-path", str(work / "lib"),
            str(work / "virtiofsd"), "--version"]
    out = steps.run("check", argv, capture=True)
    if crate_version not in out:
        raise steps.failed("check", f"--version printed {out.strip()[:200]!r}")


def recipe() -> dict[str, Any] | None:
    """The ``build.json`` of the built ``rust-cov`` (recipe, step times, size), else None."""
    return build_record(NAME)


