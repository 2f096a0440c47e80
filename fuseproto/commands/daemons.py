"""``fuseproto daemons install|list``: fetch and show the real virtiofsd builds."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "daemons", help="install and list real virtiofsd builds",
        description="The real virtiofsd builds fuseproto drives: C virtiofsd from QEMU 7.2"
        " (Debian 12 qemu-system-common) and Rust virtiofsd 1.13 (Debian 13), fetched by package"
        " name through a private apt configuration and unpacked under ~/.cache/fuseproto/daemons"
        " (FUSEPROTO_CACHE moves it). FUSEPROTO_VIRTIOFSD_C / FUSEPROTO_VIRTIOFSD_RUST point at"
        " your own builds.")
    dsub = p.add_subparsers(dest="daemons_command", metavar="ACTION")
    inst = dsub.add_parser("install", help="download and unpack virtiofsd (cached)")
    inst.add_argument("kind", nargs="*", metavar="{c,rust}",
                      help="which daemons (default: all)")
    inst.set_defaults(func=_install)
    ls = dsub.add_parser("list", help="show installed daemons")
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


def _list(args: argparse.Namespace) -> int:
    from .. import daemons

    found = daemons.installed()
    if args.virtiofsd:
        found.append(daemons.Installation.from_path(args.virtiofsd))
    if not found:
        print(f"no daemons installed under {daemons.daemons_dir()}; "
              "run `fuseproto daemons install`")
        return 1
    for inst in found:
        loader = " (private glibc)" if inst.loader else ""
        print(f"{inst.kind:5} {inst.version:28} {inst.binary}{loader}")
    return 0
