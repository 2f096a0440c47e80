"""fuseproto.scratch: scratch entries name their owner; a later process sweeps the entries
of owners that died (SIGKILL leaves no chance to clean up), never a live owner's, never
one a mount or a live daemon's pid file still holds, never anything not named by us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fuseproto import libc, scratch

MAKER = textwrap.dedent("""
    import os, signal, sys
    from fuseproto import scratch
    d = scratch.directory("proxy", base=sys.argv[1])
    open(os.path.join(d, "daemon.sock.pid"), "w").write(sys.argv[2])
    os.mkdir(os.path.join(d, "share"))
    f = scratch.file_path("cov", sys.argv[1])
    open(f, "wb").write(b"x")
    print(d, f, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _killed_owner(base: str, pid_in_file: int = 999_999_999) -> tuple[str, str]:
    """Make a dir and a file in ``base`` from a child that is then SIGKILLed (and reaped)."""
    p = subprocess.run([sys.executable, "-c", MAKER, base, str(pid_in_file)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    d, f = p.stdout.split()
    assert os.path.isdir(d) and os.path.isfile(f)
    return d, f


def test_names_carry_the_owner(tmp_path):
    d = scratch.directory("guest-run", base=str(tmp_path))
    assert os.path.basename(d).startswith(f"fuseproto-guest-run-p{os.getpid()}-")
    f = scratch.file_path("cov", str(tmp_path))
    assert os.path.basename(f).startswith(f"fuseproto-cov-p{os.getpid()}-")
    with pytest.raises(ValueError, match="kind"):
        scratch.directory("../etc", base=str(tmp_path))


def test_dead_owner_entries_are_swept_live_ones_kept(tmp_path):
    base = str(tmp_path)
    mine = scratch.directory("fuzz", base=base)  # (its once-per-process sweep: nothing yet)
    d, f = _killed_owner(base)
    other = tmp_path / "fuseproto-notours"  # not our name form
    other.mkdir()
    link = tmp_path / "fuseproto-proxy-p999999999-link"  # a symlink with our name form
    link.symlink_to(mine)
    removed = scratch.sweep(base)
    assert sorted(removed) == sorted([d, f])
    assert not os.path.exists(d) and not os.path.exists(f)
    assert os.path.isdir(mine) and other.is_dir() and link.is_symlink()


def test_first_scratch_of_a_process_sweeps(tmp_path):
    base = str(tmp_path)
    d, f = _killed_owner(base)
    code = ("import sys; from fuseproto import scratch; "
            "print(scratch.directory('chain', base=sys.argv[1]))")
    p = subprocess.run([sys.executable, "-c", code, base], capture_output=True, text=True,
                       timeout=60, check=True)
    assert not os.path.exists(d) and not os.path.exists(f)
    assert os.path.isdir(p.stdout.strip())  # its own (dead now too: swept next time)


def test_live_pid_file_keeps_the_dir(tmp_path):
    base = str(tmp_path)
    daemon = subprocess.Popen(["sleep", "60"])
    try:
        d, f = _killed_owner(base, pid_in_file=daemon.pid)
        assert scratch.sweep(base) == [f]
        assert os.path.isdir(d)
    finally:
        daemon.kill()
        daemon.wait()
    assert scratch.sweep(base) == [d]


def test_mount_inside_keeps_the_dir(tmp_path):
    base = str(tmp_path)
    d, _f = _killed_owner(base)
    share = os.path.join(d, "share")
    libc.mount("tmpfs", share, "tmpfs", 0, "size=1m")
    try:
        open(os.path.join(share, "precious"), "w").close()
        assert d not in scratch.sweep(base)
        assert os.path.exists(os.path.join(share, "precious"))
    finally:
        libc.umount2(share)
    assert scratch.sweep(base) == [d]
