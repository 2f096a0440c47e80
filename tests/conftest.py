# Shared fixtures. Append-only: each area adds its own import below.
from fixtures_daemons import *  # noqa: F401,F403  (daemon/vhost-user fixtures)
from relay_rig import ring  # noqa: F401  (the capture relay rig: tests/test_capture_relay_*.py)
from require_kernel import pytest_runtest_makereport  # noqa: F401  (FUSEPROTO_REQUIRE_KERNEL)
