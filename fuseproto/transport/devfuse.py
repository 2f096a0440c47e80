"""The kernel's ``/dev/fuse`` as a transport: mount a FUSE file system and serve it.

:class:`DevFuseMount` owns one kernel connection: it opens ``/dev/fuse``, mounts it with
mount(2) (through ctypes, no ``fusermount`` helper), reads whole requests and writes whole
replies as bytes, and always unmounts and closes, also when the body of the ``with`` block
fails. It never looks inside a message.

:class:`DevFuseServer` is the small server loop on top: every request goes through a
:class:`fuseproto.Session` (which decodes it with the codec), is handed to a handler, and
the handler's answer is encoded by the same session and written back.

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

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from construct import Container

from ..errors import (
    DecodeError,
    EncodeError,
    FuseprotoError,
    ProtocolError,
    TransportError,
    TransportTimeout,
)
from ..wire import structs
from ..wire.codec import encode_reply, encode_request
from ..wire.constants import InitFlags, fuse_opcode

if TYPE_CHECKING:
    from ..session import Session

_OUT_HEADER = structs.FAST["fuse_out_header"]
_OUT_HEADER_SIZE = _OUT_HEADER.size
_FORGETS = (fuse_opcode.FUSE_FORGET, fuse_opcode.FUSE_BATCH_FORGET)
# Replies whose payload is bounded by the request's ``size`` field.
_SIZED_REPLIES = (
    fuse_opcode.FUSE_READ,
    fuse_opcode.FUSE_READDIR,
    fuse_opcode.FUSE_READDIRPLUS,
    fuse_opcode.FUSE_GETXATTR,
    fuse_opcode.FUSE_LISTXATTR,
)
# fuse_ioctl_out + iovec lists of an IOCTL retry (FUSE_IOCTL_MAX_IOV * 16 each way).
_IOCTL_RETRY_ROOM = 16 + 2 * 256 * 16

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

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc = lib
    return _libc


def sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2); raises OSError with the errno."""
    libc = _load_libc()
    rc = libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount({target!r}, {fstype!r}): {os.strerror(err)}")


def sys_umount2(target: str, flags: int = 0) -> None:
    """umount2(2); raises OSError with the errno."""
    libc = _load_libc()
    if libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount2({target!r}, {flags:#x}): {os.strerror(err)}")


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
            sys_mount(
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
                sys_umount2(self.mountpoint, 0)
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
            sys_umount2(self.mountpoint, MNT_DETACH)
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

        Raises TransportError when the connection is gone (unmounted or aborted).
        """
        fd = self.fd
        if fd is None or self.aborted:
            raise TransportError("device closed or connection aborted")
        deadline = None if timeout is None else time.monotonic() + timeout
        buf = bytearray(max(bufsize, FUSE_MIN_READ_BUFFER))
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            poller = select.poll()
            poller.register(fd, select.POLLIN)
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
            raise ReplyRejectedError(exc.errno, len(data)) from exc
        if n != len(data):
            raise TransportError(f"short write to /dev/fuse: {n} of {len(data)}")
        return True


# -- server loop ----------------------------------------------------------------------


Handler = Callable[[Any], Any]

#: A handler returns this to answer later, from any thread, with DevFuseServer.complete().
DEFER: Any = object()


@dataclass
class ServedMessage:
    """One request seen by the server and what was done with it (for tests and logs)."""

    raw: bytes
    request: Any = None
    reply_raw: bytes | None = None
    error: int = 0
    accepted: bool | None = None  # the kernel took the reply (False: ENOENT, gone)
    failure: BaseException | None = None


@dataclass
class ServerStats:
    """What a server saw; bounded (the oldest messages are dropped)."""

    messages: list[ServedMessage] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    notifications: list[bytes] = field(default_factory=list)
    max_messages: int = 100_000

    def record(self, msg: ServedMessage) -> None:
        self.messages.append(msg)
        if len(self.messages) > self.max_messages:
            del self.messages[: len(self.messages) - self.max_messages]

    def fail(self, msg: ServedMessage | None, exc: BaseException) -> None:
        if msg is not None:
            msg.failure = exc
        if len(self.failures) < self.max_messages:
            self.failures.append(exc)


class DevFuseServer:
    """Serve a :class:`DevFuseMount` with a handler, one request at a time.

    ``handler(request)`` gets a decoded codec ``Request`` and returns the reply body
    (whatever ``encode_reply`` takes for that opcode), or :data:`DEFER` to answer later
    with :meth:`complete`; raising ``OSError`` replies with ``-errno``. For requests that
    take no reply (FORGET, BATCH_FORGET, NOTIFY_REPLY, INTERRUPT) the return value is
    ignored. Anything that goes wrong otherwise (a request that does not decode, a
    handler bug, a reply the kernel rejects) is recorded in ``stats.failures`` and, where
    a request waits, answered with -EIO, so that no caller hangs.
    """

    def __init__(
        self,
        mount: DevFuseMount,
        handler: Handler,
        *,
        session: Session | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        if session is None:
            from ..session import Session

            session = Session()
        self.mount = mount
        self.handler = handler
        self.session = session
        self.poll_interval = poll_interval
        self.stats = ServerStats()
        self._lock = threading.Lock()  # the session is not thread-safe
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed_reason: BaseException | None = None

    @property
    def bufsize(self) -> int:
        # Room for the largest request: WRITE header + max_write payload, or SETXATTR.
        max_write = self.session.max_write or 0
        return max(FUSE_MIN_READ_BUFFER, max_write + PAGE_SIZE, XATTR_SIZE_MAX + PAGE_SIZE)

    def handle_one(self, timeout: float | None = None) -> bool:
        """Serve at most one request. False when none arrived within ``timeout``."""
        raw = self.mount.read_request(self.bufsize, timeout)
        if raw is None:
            return False
        msg = ServedMessage(raw=raw)
        self.stats.record(msg)
        try:
            with self._lock:
                request = self.session.feed_request(raw)
                expects_reply = self.session.expects_reply(request)
        except (DecodeError, ProtocolError) as exc:
            self.stats.fail(msg, exc)
            return True
        msg.request = request
        self._dispatch(msg, request, expects_reply)
        return True

    def _dispatch(self, msg: ServedMessage, request: Any, expects_reply: bool) -> None:
        """Answer one decoded request (the handler's way; the bridge forwards instead)."""
        body: Any = None
        error = 0
        try:
            body = self.handler(request)
        except FuseprotoError as exc:
            self.stats.fail(msg, exc)
            error = -errno.EIO
        except OSError as exc:
            error = -(exc.errno or errno.EIO)
        except Exception as exc:  # a handler bug: answer EIO so the caller is not stuck
            self.stats.fail(msg, exc)
            error = -errno.EIO
        if not expects_reply or (body is DEFER and not error):
            return
        self._reply(msg, request, body, error)

    def complete(self, request: Any, body: Any = None, error: int = 0) -> bool:
        """Answer a request the handler deferred; True when the kernel took the reply."""
        msg = next((m for m in reversed(self.stats.messages) if m.request is request), None)
        return self._reply(msg, request, body, error)

    def _reply(self, msg: ServedMessage | None, request: Any, body: Any, error: int) -> bool:
        with self._lock:
            try:
                reply = self.session.build_reply(request, None if error else body, error=error)
            except EncodeError as exc:
                # The body does not fit the schema: the kernel still gets an answer.
                self.stats.fail(msg, exc)
                error = -errno.EIO
                reply = self.session.build_reply(request, None, error=error)
            except ProtocolError as exc:  # e.g. answered twice: nothing to send
                self.stats.fail(msg, exc)
                return False
        return self._write(msg, reply, error)

    def _write(self, msg: ServedMessage | None, reply: bytes, error: int) -> bool:
        if msg is not None:
            msg.reply_raw = reply
            msg.error = error
        try:
            accepted = self.mount.write_reply(reply)
        except ReplyRejectedError as exc:
            self.stats.fail(msg, exc)
            accepted = False
        if msg is not None:
            msg.accepted = accepted
        return accepted

    def notify(self, code: int, body: Any) -> bool:
        """Send a notification to the kernel. False when the kernel reports ENOENT (the
        inode or entry it names is not cached); ReplyRejectedError if it refuses it."""
        with self._lock:
            data = self.session.build_notification(code, body)
        self.stats.notifications.append(data)
        return self.mount.write_reply(data)

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` or until the connection goes away."""
        while not self._stop.is_set():
            try:
                self.handle_one(self.poll_interval)
            except TransportError as exc:
                self.closed_reason = exc
                return

    def start(self) -> DevFuseServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name="devfuse-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TransportTimeout("devfuse server thread did not stop")
            self._thread = None

    def __enter__(self) -> DevFuseServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class DevFuseBridge(DevFuseServer):
    """Serve a kernel mount by forwarding every request to another transport.

    ``transport`` is anything with the contract's ``submit(request_bytes, reply_size)``
    and ``wait(token, timeout)`` (e.g. :class:`~fuseproto.transport.vhost_user.
    VhostUserTransport` in front of virtiofsd). Requests go through unchanged; each reply
    is checked by the session (paired by unique, decoded at the negotiated minor) before
    it is written to the kernel, and one that fails is replaced by -EIO. FORGET and
    BATCH_FORGET go out on the high-priority queue (as virtio-fs sends them) with no reply
    buffer. INTERRUPT is not forwarded (virtio-fs has no interrupts): the kernel gets
    -ENOSYS, which tells it to stop sending them. Requests are forwarded one at a time.

    One request is adjusted: the kernel offers FUSE_ALLOW_IDMAP in INIT but fails the
    connection if a daemon accepts it on a mount without ``default_permissions`` (virtiofs
    always sets that option; a plain FUSE mount need not). For such a mount the bridge
    re-encodes INIT through the codec without that offer.
    """

    def __init__(
        self,
        mount: DevFuseMount,
        transport: Any,
        *,
        session: Session | None = None,
        timeout: float = 10.0,
        poll_interval: float = 0.1,
    ) -> None:
        super().__init__(mount, self._unused_handler, session=session, poll_interval=poll_interval)
        self.transport = transport
        self.timeout = timeout

    @staticmethod
    def _unused_handler(request: Any) -> Any:
        raise AssertionError("the bridge forwards; it has no handler")

    def reply_size(self, request: Any) -> int:
        """The reply buffer to offer: out header + what the request may get back."""
        body = request.body
        op = request.opcode
        want = 0
        if op in _SIZED_REPLIES:
            want = int(body.get("size", 0))
        elif op == fuse_opcode.FUSE_IOCTL:
            want = int(body.get("out_size", 0)) + _IOCTL_RETRY_ROOM
        # Every fixed reply (fuse_statx_out is the largest, 256) and a READLINK target
        # (PATH_MAX) fit in a page.
        return _OUT_HEADER_SIZE + max(want, PAGE_SIZE)

    def forwarded(self, request: Any) -> bytes:
        """The bytes to send on for ``request``: its own, except INIT (see above)."""
        if request.opcode != fuse_opcode.FUSE_INIT or self.mount.default_permissions:
            return request.raw
        body = request.body
        offered = InitFlags.from_words(body.get("flags", 0), body.get("flags2", 0) or 0)
        if not offered & InitFlags.FUSE_ALLOW_IDMAP:
            return request.raw
        lo, hi = InitFlags(offered & ~InitFlags.FUSE_ALLOW_IDMAP).words()
        adjusted = Container(body, flags=lo, flags2=hi)
        h = request.header
        return encode_request(
            request.opcode,
            adjusted,
            unique=h.unique,
            nodeid=h.nodeid,
            uid=h.uid,
            gid=h.gid,
            pid=h.pid,
            ext=request.ext or None,
        )

    def _dispatch(self, msg: ServedMessage, request: Any, expects_reply: bool) -> None:
        op = request.opcode
        if op == fuse_opcode.FUSE_INTERRUPT:
            with self._lock:
                tracked = request.unique in self.session.interrupts.values()
            if tracked:
                self._reply(msg, request, None, -errno.ENOSYS)
            return
        try:
            if not expects_reply:
                self.transport.submit(request.raw, 0, hiprio=op in _FORGETS)
                return
            token = self.transport.submit(self.forwarded(request), self.reply_size(request))
            raw = self.transport.wait(token, self.timeout)
        except TransportError as exc:
            self.stats.fail(msg, exc)
            if expects_reply:
                self._reply(msg, request, None, -errno.EIO)
            return
        with self._lock:
            try:
                self.session.feed_reply(raw)
            except (DecodeError, ProtocolError) as exc:
                self.stats.fail(msg, exc)
                still_waiting = self.session.pending.get(request.unique) is request
            else:
                still_waiting = None
        if still_waiting is None:
            self._write(msg, raw, _reply_error(raw))
        elif still_waiting:
            self._reply(msg, request, None, -errno.EIO)
        else:
            # The session completed it (a body that did not decode): answer EIO directly.
            self._write(
                msg,
                encode_reply(request, None, unique=request.unique, error=-errno.EIO),
                -errno.EIO,
            )


def _reply_error(raw: bytes) -> int:
    return int(_OUT_HEADER.parse(raw)["error"])


@contextlib.contextmanager
def serve(
    mountpoint: str | os.PathLike[str],
    handler: Handler,
    *,
    session: Session | None = None,
    **mount_options: Any,
) -> Iterator[DevFuseServer]:
    """Mount, serve in a thread, and on exit always unmount, stop and close."""
    mount = DevFuseMount(mountpoint, **mount_options)
    mount.open()
    try:
        server = DevFuseServer(mount, handler, session=session)
        server.start()
        try:
            yield server
        finally:
            try:
                mount.unmount()
            finally:
                server.stop()
    finally:
        mount.close()
