"""fuseproto: the FUSE wire protocol as virtio-fs carries it.

Layers (data flows one way; nothing imports upward): ``fuseproto.wire`` (pure schemas,
and the codec: the one entrance, ``codec.kind``) -> ``fuseproto.session`` (sans-IO:
pairing, INIT negotiation) -> ``fuseproto.client`` over any ``transport.Transport``.

Where I/O happens: ``fuseproto.transport`` moves bytes (vhost-user sockets, eventfds,
shared memory, /dev/fuse) and never parses FUSE; ``fuseproto.daemons`` fetches, installs
and runs virtiofsd; ``fuseproto.fuseserver`` and ``fuseproto.bridge`` are applications
that serve or forward a kernel mount; ``fuseproto.capture`` reads and writes pcap files;
``fuseproto.dax`` has window devices (a real mmap'd window, a daemon) and trace files;
``fuseproto.fuzz`` runs daemons and writes reports. ``wire`` and ``session`` do none.
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
