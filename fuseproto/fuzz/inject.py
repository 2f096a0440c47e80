"""The test-only hook that plants a bug before a fuzz target runs.

``FUSEPROTO_FUZZ_INJECT=module:function`` (several separated by commas) makes every fuzz
harness, the campaign's in-process loop and ``fuseproto fuzz replay`` import ``module``
and call ``function()`` first. Tests use it to break a decoder or a manager on purpose
and show that the fuzzer catches it; nothing in fuseproto itself ships a fault.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["ENV", "apply", "apply_from_env"]

ENV = "FUSEPROTO_FUZZ_INJECT"


def apply(spec: str) -> None:
    for item in filter(None, (s.strip() for s in spec.split(","))):
        module, _, func = item.partition(":")
        if not func:
            raise ValueError(f"{ENV}: expected module:function, got {item!r}")
        getattr(importlib.import_module(module), func)()


def apply_from_env() -> None:
    spec = os.environ.get(ENV)
    if spec:
        apply(spec)
