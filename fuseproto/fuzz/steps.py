"""One step of a live sequence program (:mod:`.sequences`): the request's opcode and body,
with references into the pools the program fills as it runs.

Kept apart from the loop so that program generators (:mod:`.dax_programs`) and the loop
share one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from construct import Container

__all__ = ["Step", "C"]


@dataclass
class Step:
    """One request of a program (see :mod:`.sequences` for the references)."""

    op: int  # fuse_opcode value
    fields: Any = field(default_factory=Container)  # body as the codec's Container
    node: int = 0  # header nodeid: < 0 -> node pool reference, else literal
    length: int | None = None  # forced fuse_in_header.len (a lie), else derived
    variant: int = 0  # reply-area choice (harness.variant_area)
    group: int = 0  # same non-zero group as the previous step: same kick


def C(**kw: Any) -> Container:  # noqa: N802 -- reads like the Container it builds
    """A body: ``C(fh=-1, offset=0)``."""
    return Container(**kw)
