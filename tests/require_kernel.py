"""The CI switch FUSEPROTO_REQUIRE_KERNEL: a skipped kernel test is a failure.

Tests marked ``kernel`` skip when this process cannot mount FUSE file systems (not root,
no /dev/fuse): right on a developer's machine, but in CI (root, /dev/fuse present) such a
skip would hide that the kernel tests never ran. With ``FUSEPROTO_REQUIRE_KERNEL=1`` in
the environment (``.ci/run`` sets it), every skip of a ``kernel`` test is reported as a
failure naming the skip's reason. Imported by ``tests/conftest.py`` (pytest registers
the hook found there).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

REQUIRE_KERNEL = os.environ.get("FUSEPROTO_REQUIRE_KERNEL", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if not (REQUIRE_KERNEL and report.skipped and item.get_closest_marker("kernel")):
        return
    if hasattr(report, "wasxfail"):  # an expected failure, not a skip
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"FUSEPROTO_REQUIRE_KERNEL is set, but this kernel test was skipped: {reason}"
    )
