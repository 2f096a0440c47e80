"""The ``fuseproto`` command. Thin: each subcommand lives in ``fuseproto.commands.<name>``
and exposes ``register(subparsers)``; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per subcommand group; each defines register(subparsers) which adds its parser
# and sets ``func`` (called with the parsed args, returns the exit code).
COMMAND_MODULES = [
    "capture",
    "dax",
    "daemons",
    "decode",
    "fuzz",
    "guest",
    "mount",
    "wireshark",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fuseproto",
        description="Toolkit and fuzzer for the FUSE wire protocol as virtio-fs carries it.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"fuseproto.commands.{name}").register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return f"fuseproto {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
