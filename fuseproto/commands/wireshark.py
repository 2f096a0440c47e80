"""``fuseproto wireshark [-o FILE | --install]``: write the Wireshark dissector plugin."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_EPILOG = """\
The plugin is Lua, generated from fuseproto's own schema (every struct, request, reply and
notification the codec knows, field names as in fuse.h). It dissects fuseproto captures:
link type LINKTYPE_USER0 (147; --linktype for USER1..15) with the 16-byte pseudo-header of
docs/capture.md. Replies are decoded by their request's opcode: the request with the same
unique (paired on the first pass: use tshark -2), else the pseudo-header's opcode hint.

examples:
  fuseproto wireshark --install                   then: wireshark session.pcap
  fuseproto wireshark -o fuse.lua && tshark -X lua_script:fuse.lua -2 -V -r session.pcap
  tshark -Y 'fuse.in_header.opcode == 15' -r session.pcap     (READ requests; --install first)
"""


def plugin_dir() -> Path:
    """Wireshark's personal Lua plugin folder (~/.local/lib/wireshark/plugins)."""
    return Path(os.path.expanduser("~")) / ".local" / "lib" / "wireshark" / "plugins"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wireshark",
        help="write the Wireshark/tshark dissector (a Lua plugin) for fuseproto captures",
        description="Write a Wireshark dissector for fuseproto's pcap captures, generated "
        "from the codec's schema.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE",
                       help="write the plugin to FILE (default: standard output)")
    where.add_argument("--install", action="store_true",
                       help="write it to ~/.local/lib/wireshark/plugins/fuseproto.lua, where "
                       "Wireshark and tshark load it at start")
    p.add_argument("--linktype", type=int, default=None, metavar="N",
                   help="the captures' link type, 147..162 (default 147, LINKTYPE_USER0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..capture.frames import LINKTYPE_FUSE
    from ..capture.wireshark import PLUGIN_NAME, lua_plugin

    try:
        src = lua_plugin(LINKTYPE_FUSE if args.linktype is None else args.linktype)
    except ValueError as e:
        print(f"fuseproto wireshark: {e}", file=sys.stderr)
        return 2
    if args.install:
        path = plugin_dir() / PLUGIN_NAME
    elif args.output and args.output != "-":
        path = Path(args.output)
    else:
        sys.stdout.write(src)
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(src)
        tmp.replace(path)
    except OSError as e:
        print(f"fuseproto wireshark: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
