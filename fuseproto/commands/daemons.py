"""``fuseproto daemons install|build|list``: fetch, build and show the real virtiofsd builds."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "daemons", help="install, build and list real virtiofsd builds",
        description="The real virtiofsd builds fuseproto drives: C virtiofsd from QEMU 7.2"
        " (Debian 12 qemu-system-common) and Rust virtiofsd 1.13 (Debian 13), fetched by package"
        " name through a private apt configuration and unpacked under ~/.cache/fuseproto/daemons"
        " (FUSEPROTO_CACHE moves it); and QEMU 7.2's C virtiofsd built from Debian's qemu source"
        " package in variants (c-src: as Debian builds it; c-asan-cov: clang with ASan, UBSan"
        " and an edge-coverage map), and rust-cov: Debian 13's Rust virtiofsd built in a Debian 13"
        " chroot with an edge-coverage map (on demand). FUSEPROTO_VIRTIOFSD_C / FUSEPROTO_VIRTIOFSD_RUST point at"
        " your own builds.")
    dsub = p.add_subparsers(dest="daemons_command", metavar="ACTION")
    inst = dsub.add_parser("install", help="download and unpack virtiofsd (cached)")
    inst.add_argument("kind", nargs="*", metavar="{c,rust}",
                      help="which daemons (default: all)")
    inst.set_defaults(func=_install)
    bld = dsub.add_parser(
        "build", help="build virtiofsd variants from Debian's source (cached)",
        description="Fetch Debian 12's qemu source package and build virtiofsd with QEMU's"
        " own build system; a built variant is kept under ~/.cache/fuseproto/daemons/builds"
        " and a second run returns at once. Needs clang, meson, ninja-build, libglib2.0-dev,"
        " libcap-ng-dev, libseccomp-dev, libclang-rt-14-dev, dpkg-dev (scripts/setup.sh)."
        " rust-cov (not built by default) is built in a Debian 13 chroot made with debootstrap"
        " (root; 1.4 GB, 17-30 minutes the first time on 2 cores).")
    bld.add_argument("variant", nargs="*", metavar="VARIANT",
                     help="c-src, c-asan-cov, ..., rust-cov (default: c-src c-asan-cov c-dax"
                     " c-dax-asan-cov)")
    bld.add_argument("-j", "--jobs", type=int, default=None,
                     help="parallel compile jobs (default: the number of CPUs)")
    bld.set_defaults(func=_build)
    ls = dsub.add_parser("list", help="show installed and built daemons")
    ls.add_argument("--virtiofsd", metavar="PATH", help="also describe this build")
    ls.set_defaults(func=_list)

    def _usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_usage)


def _install(args: argparse.Namespace) -> int:
    from .. import daemons
    from ..errors import DaemonError

    rc = 0
    unknown = [k for k in args.kind if k not in daemons.KINDS]
    if unknown:
        print(f"unknown daemon kind(s): {', '.join(unknown)} (one of {', '.join(daemons.KINDS)})")
        return 2
    for kind in args.kind or daemons.KINDS:
        try:
            inst = daemons.install(kind)
        except DaemonError as e:
            print(f"{kind}: FAILED: {e}")
            rc = 1
            continue
        print(f"{kind}: {daemons.version_text(inst)} ({inst.version}) {inst.binary}")
    return rc


def _build(args: argparse.Namespace) -> int:
    import time

    from .. import daemons
    from ..errors import DaemonError

    unknown = [v for v in args.variant if v not in daemons.VARIANTS]
    if unknown:
        print(f"unknown variant(s): {', '.join(unknown)} (one of {', '.join(daemons.VARIANTS)})")
        return 2
    rc = 0
    for variant in args.variant or daemons.DEFAULT_BUILDS:
        cached = daemons.find(variant) is not None
        t0 = time.monotonic()
        try:
            inst = daemons.build(variant, jobs=args.jobs)
        except DaemonError as e:
            print(f"{variant}: FAILED: {e}")
            rc = 1
            continue
        how = "cached" if cached else f"built in {time.monotonic() - t0:.0f} s"
        print(f"{variant}: {how}: {inst.binary}")
    return rc


def _list(args: argparse.Namespace) -> int:
    from .. import daemons

    found = daemons.installed()
    if args.virtiofsd:
        found.append(daemons.Installation.from_path(args.virtiofsd))
    print(f"{'VARIANT':19} {'KIND':4} {'VERSION':28} {'INSTRUMENTATION':17} BINARY")
    for inst in found:
        notes = " (private glibc)" if inst.loader else ""
        spec = daemons.VARIANTS.get(inst.variant)
        if spec is not None and spec.test_only:
            notes += " (tests only)"
        print(f"{inst.variant:19} {inst.kind:4} {inst.version:28} "
              f"{inst.instrumentation or '-':17} {inst.binary}{notes}")
    have = {inst.variant for inst in found}
    for name in daemons.KINDS:
        if name not in have:
            print(f"{name:19} {name:4} {'not installed':28} {'-':17} "
                  f"(fuseproto daemons install {name})")
    for name, spec in daemons.VARIANTS.items():
        if name not in have:
            tests = " (tests only)" if spec.test_only else ""
            print(f"{name:19} {spec.kind:4} {'not built':28} {spec.instrumentation or '-':17} "
                  f"(fuseproto daemons build {name}){tests}")
    if not found:
        print(f"no daemons installed under {daemons.daemons_dir()}; "
              "run `fuseproto daemons install`")
        return 1
    return 0
