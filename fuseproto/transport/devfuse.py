"""The kernel's ``/dev/fuse`` as a transport: mount a FUSE file system, move its bytes.

:class:`DevFuseMount` owns one kernel connection: it opens ``/dev/fuse``, mounts it with
mount(2) (:func:`fuseproto.libc.mount`, no ``fusermount`` helper), reads whole requests
and writes whole replies as bytes, aborts the connection through fusectl, and always
unmounts and closes, also when the body of the ``with`` block fails. It never looks
inside a message: serving a mount with a handler is :mod:`fuseproto.fuseserver`,
forwarding it to virtiofsd is :mod:`fuseproto.bridge`.

Facts used here (from Documentation/filesystems/fuse.rst and the mount(2) and umount(2)
manual pages): the mount data of a ``fuse`` file system names the device fd, the root
mode, and the owner; a read from the device needs a buffer of at least
FUSE_MIN_READ_BUFFER (8192) bytes and room for the largest request (a WRITE of
``max_write`` bytes, or a SETXATTR of up to XATTR_SIZE_MAX = 65536); a read returns
ENODEV once the connection is gone; a write of a reply to a request that the kernel no
longer waits for (it was interrupted or aborted) fails with ENOENT; closing the last fd
of the device aborts the connection, as does writing to
``/sys/fs/fuse/connections/<N>/abort``, where N is the minor device number of the mount.
"""
from __future__ import annotations

import errno
import os
import select
import threading
import time

from .. import libc
from ..errors import TransportError

# mount(2) flags (<sys/mount.h>).
MS_NOSUID = 0x2
MS_NODEV = 0x4
# umount2(2) flags.
MNT_FORCE = 0x1
MNT_DETACH = 0x2

# Documentation/filesystems/fuse.rst: a read buffer smaller than this is refused (EINVAL).
FUSE_MIN_READ_BUFFER = 8192
# linux/limits.h: the largest xattr value; a SETXATTR request carries it whole.
XATTR_SIZE_MAX = 65536
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

FUSECTL_DIR = "/sys/fs/fuse/connections"


def read_buffer_size(max_write: int | None) -> int:
    """The read buffer that holds any request: a WRITE of ``max_write`` bytes (as INIT
    negotiated it; None before INIT) plus its headers, a SETXATTR of XATTR_SIZE_MAX, and
    never less than FUSE_MIN_READ_BUFFER."""
    return max(FUSE_MIN_READ_BUFFER, (max_write or 0) + PAGE_SIZE, XATTR_SIZE_MAX + PAGE_SIZE)


def unavailable_reason(device: str = "/dev/fuse") -> str | None:
    """Why this process cannot mount kernel FUSE file systems, or None if it can."""
    if os.geteuid() != 0:
        return "mounting with mount(2) needs root"
    if not os.path.exists(device):
        return f"no {device}"
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot open {device}: {exc}"
    return None


def find_mount_device(mountpoint: str) -> tuple[int, int] | None:
    """(major, minor) of the newest mount on ``mountpoint`` (an absolute, resolved path)
    from /proc/self/mountinfo.

    Read from mountinfo rather than stat(2): a stat of a FUSE mount point waits for the
    daemon, and this is also used when the daemon is the thing that hangs.
    """
    # No realpath() here: resolving the mount point itself would stat the FUSE root.
    target = os.fspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            # mountinfo(5): id parent major:minor root mount_point ...; octal escapes.
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                major, minor = fields[2].split(":")
                found = (int(major), int(minor))
    return found


def _unescape_mountinfo(path: str) -> str:
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


class ReplyRejectedError(TransportError):
    """The kernel refused a reply or notification we wrote (e.g. EINVAL: malformed)."""

    def __init__(self, errno_: int, size: int) -> None:
        self.errno = errno_
        super().__init__(f"/dev/fuse rejected a {size}-byte write: {os.strerror(errno_)}")


class DevFuseMount:
    """One kernel FUSE connection: /dev/fuse opened and mounted on ``mountpoint``.

    Use as a context manager; on exit the file system is unmounted (lazily with
    MNT_DETACH if it is busy) and the device closed, which aborts the connection and
    fails any system call still waiting for the daemon.
    """

    def __init__(
        self,
        mountpoint: str | os.PathLike[str],
        *,
        subtype: str = "fuseproto",
        fsname: str = "fuseproto",
        rootmode: int = 0o40000,
        allow_other: bool = False,
        default_permissions: bool = False,
        max_read: int | None = None,
        extra_options: tuple[str, ...] = (),
        device: str = "/dev/fuse",
    ) -> None:
        self.mountpoint = os.path.realpath(os.fspath(mountpoint))
        self.subtype = subtype
        self.fsname = fsname
        self.rootmode = rootmode
        self.allow_other = allow_other
        self.default_permissions = default_permissions
        self.max_read = max_read
        self.extra_options = extra_options
        self.device = device
        self.fd: int | None = None
        self.mounted = False
        self.connection: int | None = None  # the N of /sys/fs/fuse/connections/N
        self.aborted = False  # the device was released by abort()
        self._fd_lock = threading.Lock()
        # read_request's buffer, kept between calls: a fresh one of max_write + headers
        # (1 MiB and more) per request cost ~0.15 ms of allocation and page faults.
        self._rbuf = bytearray(FUSE_MIN_READ_BUFFER)

    # -- life cycle ---------------------------------------------------------------------

    def mount_options(self, fd: int) -> str:
        opts = [
            f"fd={fd}",
            f"rootmode={self.rootmode:o}",
            f"user_id={os.getuid()}",
            f"group_id={os.getgid()}",
        ]
        if self.allow_other:
            opts.append("allow_other")
        if self.default_permissions:
            opts.append("default_permissions")
        if self.max_read is not None:
            opts.append(f"max_read={self.max_read}")
        opts.extend(self.extra_options)
        return ",".join(opts)

    def open(self) -> DevFuseMount:
        if self.fd is not None:
            raise TransportError("already open")
        fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        self.fd = fd
        try:
            libc.mount(
                self.fsname,
                self.mountpoint,
                f"fuse.{self.subtype}",
                MS_NOSUID | MS_NODEV,
                self.mount_options(fd),
            )
        except OSError as exc:
            self._close_fd()
            raise TransportError(f"mount of {self.mountpoint} failed: {exc}") from exc
        self.mounted = True
        dev = find_mount_device(self.mountpoint)
        self.connection = dev[1] if dev else None
        return self

    def __enter__(self) -> DevFuseMount:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, *, timeout: float = 5.0) -> None:
        """Unmount and close. Never raises for a mount that is already gone."""
        try:
            self.unmount(timeout=timeout)
        finally:
            self._close_fd()

    def unmount(self, *, timeout: float = 5.0) -> None:
        """Unmount; falls back to a lazy unmount (MNT_DETACH) when busy or stuck.

        A plain umount2 of a healthy FUSE mount does not wait for the daemon, but it can
        (writeback of dirty pages) when the daemon is stuck; so the plain attempt runs in
        a helper thread, and if it does not finish in ``timeout`` the connection is
        aborted first, which completes it.
        """
        if not self.mounted:
            return
        result: list[BaseException | None] = []

        def attempt() -> None:
            try:
                libc.umount2(self.mountpoint, 0)
                result.append(None)
            except BaseException as exc:  # reported to the caller below
                result.append(exc)

        worker = threading.Thread(target=attempt, name="devfuse-umount", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            self.abort()
            worker.join(timeout)
        exc = result[0] if result else None
        if exc is None and result:
            self.mounted = False
            return
        if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
            # Not a mount point (any more): someone else unmounted it.
            self.mounted = False
            return
        try:
            libc.umount2(self.mountpoint, MNT_DETACH)
        except OSError as exc2:
            if exc2.errno != errno.EINVAL:
                raise TransportError(f"cannot unmount {self.mountpoint}: {exc2}") from exc2
        self.mounted = False

    def abort(self) -> None:
        """Abort the connection: every request in flight fails, reads end.

        Uses the fusectl ``abort`` file when fusectl is mounted. Otherwise it releases the
        device, whose last release aborts the connection: /dev/null is dup2()ed over the
        fd rather than closing it, so a server thread still holding the number can never
        read from some other file that happens to reuse it.
        """
        if self.connection is not None:
            path = os.path.join(FUSECTL_DIR, str(self.connection), "abort")
            try:
                with open(path, "w") as f:
                    f.write("1")
                return
            except OSError:
                pass
        with self._fd_lock:
            if self.fd is None:
                return
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.dup2(null, self.fd, inheritable=False)
            finally:
                os.close(null)
            self.aborted = True

    def _close_fd(self) -> None:
        with self._fd_lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    # -- messages -------------------------------------------------------------------------

    def read_request(self, bufsize: int, timeout: float | None = None) -> bytes | None:
        """One whole request as bytes, or None if none arrived within ``timeout``.

        Raises TransportError when the connection is gone (unmounted or aborted). One
        reader at a time (the buffer is reused).
        """
        fd = self.fd
        if fd is None or self.aborted:
            raise TransportError("device closed or connection aborted")
        deadline = None if timeout is None else time.monotonic() + timeout
        size = max(bufsize, FUSE_MIN_READ_BUFFER)
        if len(self._rbuf) != size:
            self._rbuf = bytearray(size)
        buf = self._rbuf
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                events = poller.poll(None if remaining is None else int(remaining * 1000) + 1)
            except InterruptedError:
                continue
            if not events:
                return None
            _, ev = events[0]
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and not ev & select.POLLIN:
                raise TransportError(f"/dev/fuse connection gone (poll events {ev:#x})")
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    # The request was interrupted/aborted while being read: read again.
                    continue
                if exc.errno == errno.ENODEV:
                    raise TransportError("/dev/fuse connection gone (ENODEV)") from exc
                raise TransportError(f"read from /dev/fuse failed: {exc}") from exc
            if n == 0 or self.aborted:
                raise TransportError("/dev/fuse connection aborted")
            return bytes(memoryview(buf)[:n])

    def write_reply(self, data: bytes) -> bool:
        """Write one whole reply (or notification). Returns False when the kernel no
        longer waits for that request (ENOENT: interrupted or aborted). Any other failure,
        notably EINVAL for a reply the kernel rejects, raises TransportError."""
        fd = self.fd
        if fd is None or self.aborted:
            raise TransportError("device closed or connection aborted")
        try:
            n = os.write(fd, data)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            if exc.errno in (errno.ENODEV, errno.EBADF):
                raise TransportError("/dev/fuse connection gone") from exc
            raise ReplyRejectedError(exc.errno or errno.EIO, len(data)) from exc
        if n != len(data):
            raise TransportError(f"short write to /dev/fuse: {n} of {len(data)}")
        return True
