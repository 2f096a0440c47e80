"""The DAX managers by name: a plain table, and ``module:factory`` plug-ins.

:data:`MANAGERS` maps each built-in name to its factory; :func:`load_manager` resolves a
name from that table or imports ``package.module:factory``. Importing this module only
imports the two reference policies; it registers nothing anywhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .linux import LinuxDaxManager
from .manager import ManagerFactory
from .osv import OsvDaxManager

__all__ = ["MANAGERS", "load_manager"]

#: The built-in managers, name -> factory called as ``factory(device, backend, **options)``.
MANAGERS: Mapping[str, ManagerFactory] = MappingProxyType(
    {
        "osv": OsvDaxManager,
        "linux": LinuxDaxManager,
    }
)


def load_manager(spec: str) -> ManagerFactory:
    """``"osv"``, ``"linux"`` or ``"package.module:factory"`` -> a factory called as
    ``factory(device, backend, **options)``."""
    factory = MANAGERS.get(spec)
    if factory is not None:
        return factory
    if ":" not in spec:
        raise ValueError(
            f"unknown manager {spec!r}: use one of {sorted(MANAGERS)} or 'module:factory'"
        )
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj  # type: ignore[no-any-return]
