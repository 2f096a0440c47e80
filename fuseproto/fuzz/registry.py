"""Every in-process fuzz target by name: a plain table built from the target objects.

Importing this module imports each target's module and registers nothing anywhere; the
targets do not know about the table. The live-daemon target (``virtiofsd``) is not in it:
it drives a real daemon through :mod:`.harness` and is run by :mod:`.virtiofsd` and
:mod:`.sequences`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .dax_target import DAX
from .targets import SESSION, WIRE_DECODE, Target

__all__ = ["TARGETS", "get_target", "available_targets"]

#: name -> :class:`~.targets.Target`, in the order a campaign runs them.
TARGETS: Mapping[str, Target] = MappingProxyType({t.name: t for t in (WIRE_DECODE, SESSION, DAX)})


def get_target(name: str) -> Target:
    """A target by name (``wire_decode``, ``wire_decode_fuzzer``, ``..._fuzzer.py``)."""
    key = name.rsplit("/", 1)[-1].removesuffix(".py").removesuffix("_fuzzer")
    try:
        return TARGETS[key]
    except KeyError:
        raise KeyError(f"unknown fuzz target {name!r} (one of {', '.join(TARGETS)})") from None


def available_targets() -> list[str]:
    """The names of the targets whose required modules (atheris for ``dax``) import here."""
    return [name for name, t in TARGETS.items() if t.available]
