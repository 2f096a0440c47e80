"""The reference DAX window: managers, window devices, invariants, simulator.

* :mod:`.messages` -- SETUPMAPPING / REMOVEMAPPING as :class:`DaxMessage` (codec-built)
* :mod:`.device` -- :class:`ModelDevice`, :class:`MmapDevice`; :mod:`.virtiofsd` --
  :class:`VirtiofsdDevice` (a real daemon) and :class:`ClientBackend`
* :mod:`.manager` -- the :class:`DaxManager` interface; :mod:`.registry` -- the managers
  by name (:data:`MANAGERS`) and ``module:factory`` plug-ins (:func:`load_manager`)
* :mod:`.osv` -- :class:`OsvDaxManager` (the seed's OSv manager; seed defects on flags)
* :mod:`.linux` -- :class:`LinuxDaxManager` (the policy of Linux fs/fuse/dax.c)
* :mod:`.invariants` -- :class:`DaxChecker`, :func:`check_trace`
* :mod:`.simulator`, :mod:`.traces`, :mod:`.belady` -- ``fuseproto dax simulate``;
  :mod:`.workload` -- a read workload recorded from a real virtiofsd (the ``real`` trace)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DaxMessage": "messages",
    "ModelDevice": "device",
    "MmapDevice": "device",
    "WindowDevice": "device",
    "WindowFault": "device",
    "FileStore": "host",
    "HostDirectory": "host",
    "FuseBackend": "host",
    "DaxManager": "manager",
    "ReadResult": "manager",
    "MANAGERS": "registry",
    "load_manager": "registry",
    "OsvDaxManager": "osv",
    "OsvVirtiofs": "osv",
    "LinuxDaxManager": "linux",
    "DaxChecker": "invariants",
    "InvariantViolation": "invariants",
    "check_trace": "invariants",
    "VirtiofsdDevice": "virtiofsd",
    "ClientBackend": "virtiofsd",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
