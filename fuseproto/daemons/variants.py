"""Building QEMU 7.2's C virtiofsd from Debian's source, in variants.

The source is Debian 12's ``qemu`` source package, the version the packaged C daemon
comes from (:data:`SOURCE_VERSION`), fetched through the private apt configuration
(:class:`~fuseproto.daemons.archive.PrivateApt` with ``deb-src`` lines) and unpacked with
``dpkg-source -x`` (Debian's patches applied). QEMU's own build system builds it
(``configure`` with :data:`CONFIGURE_OPTIONS`, then ``ninja tools/virtiofsd/virtiofsd``),
so the daemon is compiled exactly as QEMU's meson files say (its config header, its
warning and hardening flags, libvhost-user, the few util/ files it needs) rather than
from a hand-kept list of files and defines that could drift from what Debian ships.

Variants (:data:`VARIANTS`), all of protocol kind ``c`` but ``rust-cov`` (the Rust
virtiofsd with an edge map, built in a Debian 13 chroot by :mod:`.rust_build`):

* ``c-src``: gcc with Debian 12's build flags (``dpkg-buildflags`` on bookworm), a
  control that must behave like the packaged daemon;
* ``c-asan-cov``: clang with AddressSanitizer, UndefinedBehaviorSanitizer and
  SanitizerCoverage (``trace-pc-guard``), relinked with our coverage runtime
  (``csrc/cov_runtime.c``: the edge map named by ``FUSEPROTO_COV_MAP``) and our seccomp
  widening (``csrc/sanitizer_sandbox.c``, ``-Wl,--wrap=seccomp_load``);
* ``c-asan-cov-planted``: the same objects relinked once more with a planted memory error
  (``csrc/planted_bug.c``, ``-Wl,--wrap=fstatvfs64``), for tests only;
* ``c-dax`` / ``c-dax-asan-cov``: c-src / c-asan-cov built from a copy of the source with
  our DAX patch applied (``csrc/dax/*.patch``: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING
  carried out through the vhost-user backend channel's FS_MAP / FS_UNMAP; ``-o dax``
  turns it on). The copy (``source/qemu-<version>+<variant>/``) is hard links to the
  plain source but for the patched files, which are real copies: the plain source stays
  untouched. A changed patch re-patches the copy and re-runs ninja in the kept tree
  (only the changed files recompile).

Layout under ``daemons_dir()/builds/``: ``source/qemu-<version>/`` (the unpacked source;
``+<variant>`` for a patched copy),
``tree/<variant>/`` (QEMU's build directory, kept so a relink costs seconds), and
``<variant>-<version>/`` with ``virtiofsd``, ``daemon.json`` (the
:class:`~fuseproto.daemons.install.Installation`), ``build.json`` (the recipe and step
times) and ``build.log``. Each is made complete or not at all: a failed step removes what
it was making and raises :class:`~fuseproto.errors.DaemonError` naming the step and the
log's tail (the log of a failed build stays at ``builds/<variant>.log``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from . import rust_build
from .archive import PrivateApt
from .install import (
    KINDS,
    Installation,
    build_lock,
    build_record,
    daemons_dir,
    find,
    install,
    publish,
)

SOURCE_PACKAGE = "qemu"
SOURCE_VERSION = "1:7.2+dfsg-7+deb12u18"
SOURCE_SUITE = "bookworm"
CSRC = Path(__file__).with_name("csrc")
TARGET = "tools/virtiofsd/virtiofsd"

# Only virtiofsd: no emulator, no optional feature but the three it needs. --enable-tools
# is required (util/iov.c and friends are only built with the tools). The directories
# are Debian's (the pid file goes to /var/run/virtiofsd as with the packaged daemon).
CONFIGURE_OPTIONS = (
    "--prefix=/usr", "--sysconfdir=/etc", "--libexecdir=/usr/lib/qemu",
    "--localstatedir=/var", "--with-git-submodules=ignore", "--disable-strip",
    "--without-default-features", "--target-list=", "--disable-system", "--disable-user",
    "--enable-tools", "--enable-virtiofsd", "--enable-seccomp", "--enable-cap-ng",
    "--enable-vhost-user",
)
# What `dpkg-buildflags` prints on Debian 12 (CFLAGS, then CPPFLAGS; LDFLAGS), as
# debian/rules passes them to configure; {src} is the source tree.
DEBIAN_CFLAGS = (
    "-g", "-O2", "-ffile-prefix-map={src}=.", "-fstack-protector-strong", "-Wformat",
    "-Werror=format-security", "-Wdate-time", "-D_FORTIFY_SOURCE=2",
)
DEBIAN_LDFLAGS = ("-Wl,-z,relro", "-Wl,--as-needed")
# The instrumented build. No _FORTIFY_SOURCE (QEMU passes -U_FORTIFY_SOURCE first): its
# checking wrappers would keep some memory functions away from ASan's interceptors.
SANITIZE = "-fsanitize=address,undefined"
SANITIZE_CFLAGS = (
    SANITIZE, "-fsanitize-coverage=trace-pc-guard", "-fno-omit-frame-pointer", "-g", "-O1",
    "-ffile-prefix-map={src}=.",
)


@dataclass(frozen=True)
class Extra:
    """One of our C files (in ``csrc/``), compiled on its own and added to the link."""

    source: str
    cflags: tuple[str, ...]
    wraps: tuple[str, ...] = ()  # symbols routed through __wrap_<name> (-Wl,--wrap=)


_PLAIN = ("-O2", "-g", "-fPIE", "-Wall", "-Wextra")
COV_RUNTIME = Extra("cov_runtime.c", _PLAIN)
SANITIZER_SANDBOX = Extra("sanitizer_sandbox.c", _PLAIN, wraps=("seccomp_load",))
PLANTED_BUG = Extra("planted_bug.c", (SANITIZE, "-fno-omit-frame-pointer", "-g", "-O1",
                                      "-fPIE", "-Wall"), wraps=("fstatvfs64",))


@dataclass(frozen=True)
class Variant:
    """How one variant is built."""

    name: str
    description: str
    cc: str
    cflags: tuple[str, ...]  # --extra-cflags ({src}: the source tree)
    ldflags: tuple[str, ...]  # --extra-ldflags
    instrumentation: str = ""
    tree: str = ""  # the build tree (another variant's to share its objects); "": own
    extras: tuple[Extra, ...] = ()
    test_only: bool = False
    patches: tuple[str, ...] = ()  # csrc/ patches applied (-p1) to a copy of the source
    # QEMU sources recompiled (with the tree's own command) with these -D defines and
    # linked instead of the tree's objects: the planted-bug test variants of c-dax.
    defines: tuple[str, ...] = ()
    recompile: tuple[str, ...] = ()
    # The protocol kind: "c" (built here) or "rust" (rust-cov: fuseproto.daemons.rust_build).
    kind: str = "c"

    @property
    def patch_digest(self) -> str:
        """sha256 of the patches, in order ("" without patches)."""
        if not self.patches:
            return ""
        h = hashlib.sha256()
        for p in self.patches:
            h.update((CSRC / p).read_bytes())
        return h.hexdigest()

    @property
    def tree_name(self) -> str:
        return self.tree or self.name


# Our DAX implementation (see the patch's header for what it does).
DAX_PATCHES = ("dax/0001-dax.patch",)
DAX_OPTIONS = ("-o", "dax")  # the daemon argument that turns it on


def has_dax(inst: Installation) -> bool:
    """Whether ``inst`` is a build with our DAX patch (``c-dax`` and its variants)."""
    spec = VARIANTS.get(getattr(inst, "variant", ""))
    return spec is not None and DAX_PATCHES[0] in spec.patches


def dax_options(window_size: int) -> list[str]:
    """The daemon arguments that turn our DAX implementation on for a window of
    ``window_size`` bytes (the one place that spells them)."""
    return [*DAX_OPTIONS, "-o", f"dax_window={window_size}"]
# Planted bugs of the patch (#ifdef FUSEPROTO_DAX_BUG_<NAME>), one test variant each.
DAX_BUGS = {
    "align": "SETUPMAPPING's foffset alignment not checked",
    "window-end": "the window's end checked one page too far",
    "count": "REMOVEMAPPING's count taken from the length",
    "access": "a read-only handle mapped writable",
    "unmap": "REMOVEMAPPING leaves the last page of each batch mapped",
}
DAX_BUG_SOURCES = ("tools/virtiofsd/fuse_lowlevel.c", "tools/virtiofsd/passthrough_ll.c")

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("c-src", "gcc, Debian 12's flags (a control)", "gcc", DEBIAN_CFLAGS,
            DEBIAN_LDFLAGS),
    Variant("c-asan-cov", "clang, ASan + UBSan + edge coverage map", "clang",
            SANITIZE_CFLAGS, (SANITIZE,), "asan+ubsan+sancov",
            extras=(COV_RUNTIME, SANITIZER_SANDBOX)),
    Variant("c-asan-cov-planted", "c-asan-cov + a planted heap overflow (tests only)",
            "clang", SANITIZE_CFLAGS, (SANITIZE,), "asan+ubsan+sancov", tree="c-asan-cov",
            extras=(COV_RUNTIME, SANITIZER_SANDBOX, PLANTED_BUG), test_only=True),
    Variant("c-dax", "c-src + our DAX patch (-o dax)", "gcc", DEBIAN_CFLAGS,
            DEBIAN_LDFLAGS, patches=DAX_PATCHES),
    Variant("c-dax-asan-cov", "c-asan-cov + our DAX patch (-o dax)", "clang",
            SANITIZE_CFLAGS, (SANITIZE,), "asan+ubsan+sancov",
            extras=(COV_RUNTIME, SANITIZER_SANDBOX), patches=DAX_PATCHES),
    *(Variant(f"c-dax-bug-{bug}", f"c-dax + a planted DAX bug: {why} (tests only)", "gcc",
              DEBIAN_CFLAGS, DEBIAN_LDFLAGS, tree="c-dax", patches=DAX_PATCHES,
              test_only=True, defines=(f"FUSEPROTO_DAX_BUG_{bug.upper().replace('-', '_')}",),
              recompile=DAX_BUG_SOURCES)
      for bug, why in DAX_BUGS.items()),
    # The Rust virtiofsd of Debian 13 with an edge map (built by rust_build, on demand).
    Variant(rust_build.NAME, rust_build.DESCRIPTION, "rustc", (), (),
            rust_build.INSTRUMENTATION, kind="rust"),
)}
DEFAULT_BUILDS = ("c-src", "c-asan-cov", "c-dax", "c-dax-asan-cov")
# Programs a build runs, and the Debian packages they come from.
TOOLS = {"gcc": "gcc", "clang": "clang", "ninja": "ninja-build", "meson": "meson",
         "pkg-config": "pkg-config", "dpkg-source": "dpkg-dev", "python3": "python3",
         "patch": "patch"}


def builds_dir() -> Path:
    return daemons_dir() / "builds"


def install_dir(variant: str) -> Path:
    return builds_dir() / f"{variant}-{SOURCE_VERSION.replace(':', '_')}"


def build(variant: str, *, jobs: int | None = None) -> Installation:
    """The installation of ``variant``, built now if it is not in the cache (a second
    call returns at once). Serialised with other builds by a lock file."""
    spec = VARIANTS.get(variant)
    if spec is None:
        raise DaemonError(f"unknown build variant {variant!r} (one of {', '.join(VARIANTS)})")
    if spec.kind == "rust":
        return rust_build.build(variant, jobs=jobs)
    existing = find(variant)
    if existing is not None and not _stale(spec, existing):
        return existing
    builds_dir().mkdir(parents=True, exist_ok=True)
    with build_lock(builds_dir() / ".lock"):
        existing = find(variant)
        if existing is not None and not _stale(spec, existing):
            return existing
        _check_tools(spec)
        log_path = builds_dir() / f"{variant}.log"
        with open(log_path, "w") as log:
            steps = _Steps(variant, log, log_path)
            inst = _build(spec, steps, jobs or os.cpu_count() or 1)
        shutil.move(str(log_path), Path(inst.root) / "build.log")
        return inst


def resolve(spec: str, kind: str | None = None) -> Installation:
    """A daemon by name or path: ``c`` / ``rust`` (packaged; installed if needed), a build
    variant (``c-src``, ``c-asan-cov``, ...; built if needed), or the path of a
    virtiofsd binary or wrapper script (``kind``: its protocol dialect, default
    detected), kept as given."""
    if spec in KINDS:
        return find(spec) or install(spec)
    if spec in VARIANTS:
        return build(spec)
    path = os.path.abspath(spec)
    inst = Installation.from_path(path, kind)
    inst.binary = path  # a wrapper stays a wrapper
    return inst


# -- steps --------------------------------------------------------------------------------
@dataclass
class _Steps:
    """Runs and logs the build's commands; remembers each step's time for build.json."""

    variant: str
    log: IO[str]
    log_path: Path
    times: dict[str, float] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.log.write(text.rstrip("\n") + "\n")
        self.log.flush()

    def run(self, step: str, argv: list[str], cwd: Path) -> None:
        self.note(f"\n## {step}: (cd {cwd} && {shlex.join(argv)})")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT)
            rc = proc.returncode
        except OSError as e:
            self.note(f"cannot run: {e}")
            rc = -1
        took = time.monotonic() - t0
        self.times[step] = round(self.times.get(step, 0.0) + took, 1)
        self.note(f"## {step}: exit {rc} after {took:.1f} s")
        if rc != 0:
            raise self.failed(step, f"exit {rc}")

    def failed(self, step: str, why: str) -> DaemonError:
        self.log.flush()
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])
        except OSError:
            tail = ""
        return DaemonError(f"building {self.variant}: step {step!r} failed ({why}); "
                           f"log {self.log_path}, its tail:\n{tail}")


def _stale(spec: Variant, inst: Installation) -> bool:
    """A patched variant whose build.json names other patches than csrc/ holds now."""
    if not spec.patches:
        return False
    built = build_record(inst.variant or spec.name)
    return built is None or built.get("patch_sha256") != spec.patch_digest


def _build(spec: Variant, steps: _Steps, jobs: int) -> Installation:
    t0 = time.monotonic()
    src = _source(steps)
    if spec.patches:
        src = _patched_source(spec, src, steps)
    tree = _tree(VARIANTS[spec.tree_name], src, steps, jobs)
    final = install_dir(spec.name)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=builds_dir()))
    try:
        binary = work / "virtiofsd"
        link_extra: list[str] = []
        replaced = _recompile(spec, tree, src, work, steps) if spec.recompile else {}
        if spec.extras or replaced:
            objs = work / "obj"
            objs.mkdir(exist_ok=True)
            for extra in spec.extras:
                obj = objs / (Path(extra.source).stem + ".o")
                steps.run(f"compile {extra.source}",
                          [spec.cc, *extra.cflags, "-c", str(CSRC / extra.source), "-o", str(obj)],
                          objs)
                link_extra += [str(obj), *(f"-Wl,--wrap={w}" for w in extra.wraps)]
            link = [replaced.get(a, a) for a in _link_command(tree, binary, steps)]
            steps.run("link", [*link, *link_extra], tree)
        else:
            shutil.copy2(tree / TARGET, binary)
        _check_binary(binary, steps)
        inst = Installation(kind="c", version=SOURCE_VERSION, root=str(final),
                            binary=str(final / "virtiofsd"), variant=spec.name,
                            instrumentation=spec.instrumentation)
        # The objects stay beside the binary (obj/); the recipe names them relative to it.
        shown = [os.path.relpath(a, work) if a.startswith(str(work)) else a for a in link_extra]
        recipe = _recipe(spec, src, shown, steps, binary, time.monotonic() - t0)
        publish(work, final, inst, recipe)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return inst


def _source(steps: _Steps) -> Path:
    """The unpacked source tree (fetched and unpacked once)."""
    version = SOURCE_VERSION.split(":", 1)[-1]
    dest = builds_dir() / "source" / f"{SOURCE_PACKAGE}-{version}"
    if (dest / "configure").exists():
        return dest
    t0 = time.monotonic()
    try:
        apt = PrivateApt.for_suites(SOURCE_SUITE, sources=True)
        dsc = apt.source(SOURCE_PACKAGE, SOURCE_VERSION)
    except DaemonError as e:
        steps.note(f"fetch failed: {e}")
        raise steps.failed("fetch source", str(e)) from e
    steps.times["fetch source"] = round(time.monotonic() - t0, 1)
    steps.note(f"## fetch source: {dsc}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        steps.run("unpack source", ["dpkg-source", "-x", str(dsc), str(tmp / "src")], tmp)
        (tmp / "src").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _patch_files(patch: Path) -> set[str]:
    """The files a -p1 patch changes."""
    return {line[6:].split("\t")[0].strip() for line in patch.read_text().splitlines()
            if line.startswith("+++ b/")}


def _patched_source(spec: Variant, src: Path, steps: _Steps) -> Path:
    """``src`` with ``spec.patches`` applied, as a copy made of hard links but for the
    patched files (kept; made again when the patches change, the files touched by the
    old or the new patches getting a new mtime so that ninja recompiles them)."""
    dest = src.with_name(f"{src.name}+{spec.tree_name}")
    stamp = dest / ".fuseproto-patches.json"
    digest = spec.patch_digest
    old: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(stamp.read_text())
    if old.get("sha256") == digest:
        return dest
    files: set[str] = set()
    for p in spec.patches:
        files |= _patch_files(CSRC / p)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    steps.run("copy source", ["cp", "-al", str(src), str(tmp)], src.parent)
    try:
        for rel in sorted(files):  # a real copy: patching must not write through a link
            target = tmp / rel
            if target.exists():
                target.unlink()
                shutil.copy2(src / rel, target)
        for p in spec.patches:
            steps.run(f"patch {p}", ["patch", "-p1", "--forward", "--no-backup-if-mismatch",
                                     "-i", str(CSRC / p)], tmp)
        now = time.time()
        for rel in sorted(files | set(old.get("files", []))):
            if (tmp / rel).exists():
                if rel not in files:  # back to the plain file: a copy, then a new mtime
                    (tmp / rel).unlink()
                    shutil.copy2(src / rel, tmp / rel)
                os.utime(tmp / rel, (now, now))
        (tmp / stamp.name).write_text(json.dumps({"sha256": digest, "patches": spec.patches,
                                                  "files": sorted(files)}, indent=2) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _tree(spec: Variant, src: Path, steps: _Steps, jobs: int) -> Path:
    """QEMU's build directory for ``spec``, configured and with virtiofsd built (kept:
    a stamp file marks it complete; an incomplete one is started over)."""
    tree = builds_dir() / "tree" / spec.name
    stamp = tree / "fuseproto-built"
    if stamp.exists() and (tree / TARGET).exists():
        if spec.patches:  # the patched copy may have changed: ninja rebuilds what did
            steps.run("ninja", ["ninja", "-j", str(jobs), TARGET], tree)
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    try:
        steps.run("configure", _configure_argv(spec, src), tree)
        steps.run("ninja", ["ninja", "-j", str(jobs), TARGET], tree)
        stamp.write_text(shlex.join(_configure_argv(spec, src)) + "\n")
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    return tree


def _configure_argv(spec: Variant, src: Path) -> list[str]:
    cflags = " ".join(f.format(src=src) for f in spec.cflags)
    return [str(src / "configure"), f"--cc={spec.cc}", *CONFIGURE_OPTIONS,
            f"--with-pkgversion=Debian {SOURCE_VERSION}, fuseproto {spec.name}",
            f"--extra-cflags={cflags}", f"--extra-ldflags={' '.join(spec.ldflags)}"]


def _recompile(spec: Variant, tree: Path, src: Path, work: Path,
               steps: _Steps) -> dict[str, str]:
    """Compile ``spec.recompile`` with the tree's own commands plus ``spec.defines``
    into ``work/obj``; returns {the tree's object: ours} for the link command."""
    proc = subprocess.run(["ninja", "-t", "commands", TARGET], cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise steps.failed("recompile", f"ninja -t commands: {proc.stderr.strip()}")
    objs = work / "obj"
    objs.mkdir(exist_ok=True)
    out: dict[str, str] = {}
    for rel in spec.recompile:
        for line in proc.stdout.splitlines():
            argv = shlex.split(line)
            if "-c" not in argv or "-o" not in argv:
                continue
            source = argv[argv.index("-c") + 1]
            if os.path.normpath(tree / source) != os.path.normpath(src / rel):
                continue
            i = argv.index("-o")
            ours = objs / (Path(rel).name + ".o")
            out[argv[i + 1]] = str(ours)
            argv[i + 1] = str(ours)
            for dep in ("-MD", "-MQ", "-MF"):  # no depfile next to the tree's
                while dep in argv:
                    j = argv.index(dep)
                    del argv[j:j + (1 if dep == "-MD" else 2)]
            steps.run(f"recompile {rel}", [*argv, *(f"-D{d}" for d in spec.defines)], tree)
            break
        else:
            raise steps.failed("recompile", f"no compile command for {rel}")
    return out


def _link_command(tree: Path, output: Path, steps: _Steps) -> list[str]:
    """QEMU's own link command for virtiofsd (``ninja -t commands``), writing ``output``
    instead: our objects and --wrap flags go after it."""
    proc = subprocess.run(["ninja", "-t", "commands", TARGET], cwd=tree,
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise steps.failed("link", f"ninja -t commands: {proc.stderr.strip()}")
    argv = shlex.split(lines[-1])
    try:
        i = argv.index("-o")
    except ValueError:
        raise steps.failed("link", f"no -o in {lines[-1][:200]}") from None
    if argv[i + 1] != TARGET:
        raise steps.failed("link", f"last command writes {argv[i + 1]}, not {TARGET}")
    argv[i + 1] = str(output)
    return argv


def _check_binary(binary: Path, steps: _Steps) -> None:
    """The result runs and says it is QEMU 7.2's virtiofsd."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise steps.failed("check", str(e)) from e
    out = proc.stdout + proc.stderr
    steps.note(f"\n## check: {binary} --version:\n{out}")
    if "virtiofsd version 7.2" not in out:
        raise steps.failed("check", f"--version printed {out.strip()[:200]!r}")


def _recipe(spec: Variant, src: Path, link_extra: list[str], steps: _Steps, binary: Path,
            seconds: float) -> dict[str, Any]:
    return {
        "variant": spec.name,
        "description": spec.description,
        "source": f"{SOURCE_PACKAGE} {SOURCE_VERSION} ({SOURCE_SUITE})",
        "configure": _configure_argv(VARIANTS[spec.tree_name], src),
        "target": TARGET,
        "link_extra": link_extra,
        "compiler": _first_line([spec.cc, "--version"]),
        "seconds": round(seconds, 1),
        "steps": steps.times,
        "size": binary.stat().st_size,
        "test_only": spec.test_only,
        "patches": list(spec.patches),
        "patch_sha256": spec.patch_digest,
        "defines": list(spec.defines),
    }


def _first_line(argv: list[str]) -> str:
    with contextlib.suppress(OSError):
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else ""
    return ""


def _check_tools(spec: Variant) -> None:
    needed = [spec.cc, "ninja", "meson", "pkg-config", "dpkg-source", "python3"]
    if spec.patches:
        needed.append("patch")
    missing = sorted({TOOLS[t] for t in needed if shutil.which(t) is None})
    if missing:
        raise DaemonError(f"building {spec.name} needs the Debian package(s) "
                          f"{', '.join(missing)} (scripts/setup.sh installs every build "
                          "dependency listed in scripts/apt-packages.txt)")


def recipe(variant: str) -> dict[str, Any] | None:
    """The ``build.json`` of a built variant (recipe, step times, size), else None."""
    if variant == rust_build.NAME:
        return rust_build.recipe()
    return build_record(variant)


