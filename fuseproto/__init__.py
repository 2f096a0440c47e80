"""fuseproto: the FUSE wire protocol as virtio-fs carries it.

Layers (data flows one way): ``fuseproto.wire`` (pure schemas and codec) ->
``fuseproto.session`` (sans-IO pairing of replies with requests) -> ``fuseproto.client``
and ``fuseproto.dax`` -> ``fuseproto.transport`` (the only place with I/O).
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors  # noqa: F401


def __getattr__(name: str) -> object:
    # Session is imported lazily so that `import fuseproto` stays cheap.
    if name == "Session":
        from .session import Session

        return Session
    raise AttributeError(name)
