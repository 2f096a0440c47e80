"""Shared fixtures for tests that drive real virtiofsd daemons.

Imported by ``tests/conftest.py``. Daemons are installed on first use (cached under
``~/.cache/fuseproto/daemons``), so a fresh CI machine needs only network access to the
Debian archive. Every fixture stops what it started by PID and removes its temporary
directories even when the test fails.

The ``installation`` fixture (and ``daemon``, ``vhost`` built on it) runs a test on the
packaged ``c`` and ``rust`` daemons; the modules named in :data:`BUILT_VARIANT_MODULES`
(tests of the C daemon's behaviour) also run on source-built variants (``c-src``: it
must behave like the packaged C daemon), built on first use (cached; ``make setup``
builds them beforehand).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuseproto import daemons

DAEMON_KINDS = list(daemons.KINDS)
# Test modules whose daemon tests also run on these source-built variants (each one
# adds that module's daemon tests once more to the suite's time: keep the list short).
BUILT_VARIANT_MODULES: dict[str, tuple[str, ...]] = {
    "test_client_ops": ("c-src",),
    "test_daemons": ("c-src",),
}


def pytest_generate_tests(metafunc) -> None:
    """``daemon_kind`` (behind ``installation``): the packaged kinds, plus the built
    variants :data:`BUILT_VARIANT_MODULES` gives the test's module."""
    if "daemon_kind" in metafunc.fixturenames:
        extra = BUILT_VARIANT_MODULES.get(metafunc.module.__name__.rpartition(".")[2], ())
        metafunc.parametrize("daemon_kind", [*DAEMON_KINDS, *extra])


@pytest.fixture(scope="session")
def daemon_installations() -> dict[str, daemons.Installation]:
    """Both daemons, installed if needed (once per test session)."""
    return {kind: daemons.install(kind) for kind in DAEMON_KINDS}


_built: dict[str, daemons.Installation] = {}


def built_installation(variant: str) -> daemons.Installation:
    """A source-built variant, built now if needed (cached; once per test session)."""
    if variant not in _built:
        _built[variant] = daemons.build(variant)
    return _built[variant]


@pytest.fixture
def installation(daemon_installations, daemon_kind) -> daemons.Installation:
    """The daemon a test runs on: ``c``, ``rust`` or a built variant (``c-src``)."""
    if daemon_kind in daemon_installations:
        return daemon_installations[daemon_kind]
    return built_installation(daemon_kind)


@pytest.fixture
def scratch_dir() -> Iterator[str]:
    """A temporary directory removed afterwards whatever happens (not pytest's retained
    tmp_path: nothing of a daemon run may outlive the test)."""
    path = tempfile.mkdtemp(prefix="fuseproto-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dir(scratch_dir) -> str:
    """The directory a daemon shares (inside scratch_dir, next to its socket)."""
    path = os.path.join(scratch_dir, "shared")
    os.mkdir(path)
    return path


@pytest.fixture
def socket_path(scratch_dir) -> str:
    return os.path.join(scratch_dir, "vhost.sock")


@pytest.fixture
def daemon(installation, shared_dir, socket_path) -> Iterator[daemons.Daemon]:
    """A started daemon (not yet connected), stopped by PID afterwards."""
    d = daemons.Daemon(installation, shared_dir, socket_path)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def vhost(daemon):
    """A connected VhostUserTransport to ``daemon`` (closed afterwards, which also stops
    the daemon)."""
    from fuseproto.transport.vhost_user import VhostUserTransport

    t = VhostUserTransport(daemon.socket_path, daemon=daemon, timeout=5.0)
    try:
        yield t
    finally:
        t.close()


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def child_pids() -> set[int]:
    """PIDs whose parent is this process (to catch leaked daemons)."""
    me = os.getpid()
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{name}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me:
                out.add(int(name))
    return out


def pid_dir_files() -> set[str]:
    """Names in the C daemon's pid-file directory (/run/virtiofsd), empty if none."""
    try:
        return set(os.listdir(daemons.C_PID_DIR))
    except FileNotFoundError:
        return set()


def stale_pid_files(names: set[str]) -> set[str]:
    """Those of ``names`` in /run/virtiofsd whose daemon is gone: the file names a PID
    that no longer runs, or is empty. A file of a live daemon (another test process's on
    a shared machine) is not ours to judge."""
    stale = set()
    for name in names:
        try:
            text = Path(daemons.C_PID_DIR, name).read_text().strip()
        except FileNotFoundError:
            continue  # removed meanwhile by the daemon's owner
        if not text.isdigit():
            stale.add(name)
            continue
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            stale.add(name)
        except PermissionError:
            pass
    return stale


@pytest.fixture
def no_leaks():
    """Asserts that the test leaves no new fd, child process, daemon log or daemon pid
    file (/run/virtiofsd, where the C daemon writes one per socket) behind."""
    fds_before = open_fds()
    kids_before = child_pids()
    logs_before = _own_logs()
    pids_before = pid_dir_files()
    yield
    leaked_logs = _own_logs() - logs_before
    assert not leaked_logs, f"leaked daemon logs: {leaked_logs}"
    new_pid_files = stale_pid_files(pid_dir_files() - pids_before)
    if new_pid_files:
        # Other processes on this machine may run daemons too: give a file whose daemon
        # just exited a moment to be removed by the code that owns it.
        time.sleep(0.5)
        new_pid_files = stale_pid_files(new_pid_files)
    assert not new_pid_files, f"leaked pid files in {daemons.C_PID_DIR}: {new_pid_files}"
    leaked_kids = child_pids() - kids_before
    assert not leaked_kids, f"leaked child processes: {leaked_kids}"
    # /proc/self/fd listing itself opens an fd; compare by number.
    leaked = {fd for fd in open_fds() - fds_before
              if os.path.exists(f"/proc/self/fd/{fd}")}
    descr = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked
             if os.path.exists(f"/proc/self/fd/{fd}")}
    # matplotlib keeps every font file it has loaded open for the life of the process
    # (a cache of FT2Font objects): the first plot in a process is not a leak.
    descr = {fd: path for fd, path in descr.items() if _MPL_DATA not in path}
    assert not descr, f"leaked fds: {descr}"


_MPL_DATA = os.sep + os.path.join("matplotlib", "mpl-data") + os.sep


def _own_logs() -> set[str]:
    """Temporary logs of this process's daemons (virtiofsd-<kind>-<our pid>-*.log)."""
    tmp = tempfile.gettempdir()
    mine = f"-{os.getpid()}-"
    return {n for n in os.listdir(tmp)
            if n.startswith("virtiofsd-") and mine in n and n.endswith(".log")}
