"""What a virtiofsd binary is: its kind (``c`` or ``rust``), the version it reports, and
the host's glibc (which decides whether the Rust daemon needs a private one).

Both are asked of the binary itself by running it with ``--version`` / ``--help`` (with a
timeout); nothing here starts a daemon that serves anything.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from typing import Protocol

from ..errors import DaemonError


class Runnable(Protocol):
    """Anything that knows the command prefix running a daemon (an ``Installation``)."""

    binary: str

    def argv(self) -> list[str]: ...


def glibc_version() -> tuple[int, int]:
    """The host's glibc as (major, minor); (0, 0) when it cannot be told."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _output(argv: Sequence[str]) -> str:
    """stdout + stderr of a short informational run (``--version``, ``--help``)."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DaemonError(f"cannot run {' '.join(argv)}: {e}")
    return proc.stdout + proc.stderr


def version_text(inst: Runnable) -> str:
    """What the daemon itself says its version is (first line of ``--version``)."""
    lines = _output([*inst.argv(), "--version"]).strip().splitlines()
    return lines[0] if lines else ""


def kind_from_version(text: str) -> str | None:
    """``c`` / ``rust`` from a ``--version`` line, None if it names neither: QEMU's C
    daemon prints "virtiofsd version 7.2.x (...)", the Rust one "virtiofsd 1.13.2"."""
    if re.search(r"virtiofsd version \d", text) or "QEMU" in text:
        return "c"
    if re.match(r"virtiofsd v?\d", text):
        return "rust"
    return None


def kind_from_help(text: str) -> str:
    """``c`` / ``rust`` from ``--help`` output: the Rust daemon's options are GNU-style
    long ones such as ``--shared-dir``; the C one takes FUSE-style ``-o source=``."""
    return "rust" if "--shared-dir" in text else "c"


def detect_kind(path: str | os.PathLike[str]) -> str:
    """``c`` or ``rust`` for the virtiofsd binary (or wrapper script) at ``path``: from what
    ``--version`` says, else from ``--help``. Raises DaemonError if it cannot be run."""
    binary = os.fspath(path)
    try:
        lines = _output([binary, "--version"]).strip().splitlines()
    except DaemonError:
        lines = []
    kind = kind_from_version(lines[0]) if lines else None
    return kind or kind_from_help(_output([binary, "--help"]))
