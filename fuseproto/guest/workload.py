"""The guest's scripted workload on one share, and what the host expects of it.

:func:`prepare_share` fills a directory on the host with the files ``workload.sh`` (beside
this module) reads, renames and removes; the guest runs the script in its mount of that
directory (ls, cat, stat, write, append, mkdir, rmdir, rm, rename, symlink, truncate,
chmod, extended attributes, an 8 MiB dd read and write with fsync, fsync/fdatasync,
flock). :func:`check_guest` compares the result lines the guest printed with what the host
put there, :func:`check_host` compares the directory afterwards with what the guest did.
Each returns a list of problems (empty: all as expected), worded for a test's message.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from .assets import package_text
from .vm import TagRun

HELLO = b"hello from the host\n"
RENAME_ME = b"rename me\n"
GROW = b"grow\n"
SHRINK_SIZE = 4096
BIG_SIZE = 8 << 20
HOST_XATTR = ("user.host", b"from-the-host")
GUEST_XATTR = ("user.guest", b"from-the-guest")
# What the guest finds on the share (sorted as ls sorts in the C locale).
HOST_NAMES = sorted(["hello.txt", "sub", "host-link", "xattr.txt", "remove-me.txt",
                     "rename-me.txt", "shrink.txt", "grow.txt", "big.bin"])
# What the share holds after the workload.
FINAL_NAMES = sorted({*HOST_NAMES, "guest.txt", "guest-dir", "renamed.txt", "guest-link",
                      "guest-big.bin"} - {"remove-me.txt", "rename-me.txt"})


def script() -> bytes:
    """The workload (busybox sh), run by the guest's ``/init`` in each mount's root."""
    return package_text("workload.sh")


def big_content() -> bytes:
    """The 8 MiB file the guest reads and copies (the same bytes on every run)."""
    return random.Random(0x5EED).randbytes(BIG_SIZE)


def prepare_share(path: str | os.PathLike[str]) -> None:
    """Fill the empty directory ``path`` with what the workload expects."""
    root = Path(path)

    def put(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        os.chmod(root / name, 0o644)

    put("hello.txt", HELLO)
    (root / "sub").mkdir()
    put("sub/inner.txt", b"inner\n")
    os.symlink("hello.txt", root / "host-link")
    put("xattr.txt", b"has a user xattr\n")
    os.setxattr(root / "xattr.txt", *HOST_XATTR)
    put("remove-me.txt", b"the guest removes me\n")
    put("rename-me.txt", RENAME_ME)
    put("shrink.txt", b"s" * SHRINK_SIZE)
    put("grow.txt", GROW)
    put("big.bin", big_content())


def expected_results() -> dict[str, list[str]]:
    """``@@r`` key -> the words the guest must print after it."""
    hello = HELLO.decode().split()
    big_sha = hashlib.sha256(big_content()).hexdigest()
    return {
        "ls": HOST_NAMES,
        "ls_sub": ["inner.txt"],
        "cat": hello,
        "stat": [str(len(HELLO)), "regular", "file", "644", "directory"],
        "host_link": ["hello.txt", *hello],
        "getxattr_host": [HOST_XATTR[1].decode()],
        "write": ["0"],
        "cat_guest": ["written", "by", "the", "guest"],
        "append": ["0"],
        "mkdir": ["0"],
        "rmdir": ["0"],
        "rm": ["0"],
        "gone": ["0"],
        "rename": ["0", *RENAME_ME.decode().split()],
        "symlink": ["0", "hello.txt", *hello],
        "truncate_down": ["0", "1000"],
        "truncate_up": ["0", "3000000"],
        "chmod": ["0", "600"],
        "setxattr": ["ok"],
        "setxattr_doomed": ["ok"],
        "removexattr": ["ok"],
        "getxattr": [GUEST_XATTR[1].decode()],
        "listxattr": [GUEST_XATTR[0]],
        "read_big": [big_sha],
        "write_big": ["0"],
        "reread_big": [str(BIG_SIZE), big_sha],
        "fsync": ["ok"],
        "sync_file": ["0"],
        "flock": ["held", "contended=EWOULDBLOCK", "after-unlock=ok"],
        "end": [],
    }


def check_guest(run: TagRun | None) -> list[str]:
    """Problems with what the guest printed for one share (missing or wrong results, a
    workload that did not finish)."""
    if run is None:
        return ["the guest printed nothing for this share"]
    problems = []
    if run.status != 0:
        problems.append(f"workload exit status {run.status}")
    for key, want in expected_results().items():
        got = run.results.get(key)
        if got != want:
            problems.append(f"{key}: guest printed {got}, expected {want}")
    return problems


def check_host(path: str | os.PathLike[str]) -> list[str]:
    """Problems with the share ``path`` after the workload: names, contents, sizes,
    modes, symlinks and extended attributes as the guest left them."""
    root = Path(path)
    problems: list[str] = []

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what}: {got!r} on the host, expected {want!r}")

    def read(name: str) -> bytes | None:
        try:
            return (root / name).read_bytes()
        except OSError as e:
            problems.append(f"{name}: {e.strerror} on the host")
            return None

    expect("names", sorted(os.listdir(root)), FINAL_NAMES)
    expect("guest.txt", read("guest.txt"), b"written by the guest\nappended\n")
    if (root / "guest.txt").exists():
        expect("guest.txt mode", oct(os.stat(root / "guest.txt").st_mode & 0o777), oct(0o600))
        expect("guest.txt xattrs", sorted(os.listxattr(root / "guest.txt")), [GUEST_XATTR[0]])
        expect("guest.txt user.guest", os.getxattr(root / "guest.txt", GUEST_XATTR[0]),
               GUEST_XATTR[1])
    expect("guest-dir/inner.txt", read("guest-dir/inner.txt"), b"inside\n")
    expect("renamed.txt", read("renamed.txt"), RENAME_ME)
    expect("guest-link", os.readlink(root / "guest-link") if (root / "guest-link").is_symlink()
           else None, "hello.txt")
    expect("shrink.txt", read("shrink.txt"), b"s" * 1000)
    grown = read("grow.txt")
    if grown is not None:
        expect("grow.txt size", len(grown), 3000000)
        expect("grow.txt content (head, zero bytes after it)",
               (grown[:len(GROW)], grown[len(GROW):].count(0)), (GROW, 3000000 - len(GROW)))
    big = read("guest-big.bin")
    if big is not None:
        expect("guest-big.bin sha256", hashlib.sha256(big).hexdigest(),
               hashlib.sha256(big_content()).hexdigest())
    expect("xattr.txt user.host", os.getxattr(root / "xattr.txt", HOST_XATTR[0]), HOST_XATTR[1])
    return problems
