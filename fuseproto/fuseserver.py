"""A FUSE file system server on a kernel mount: the kernel's requests answered by a handler.

:class:`DevFuseServer` serves a :class:`~fuseproto.transport.devfuse.DevFuseMount` (which
only moves bytes): every request goes through a :class:`fuseproto.session.Session` (which
decodes it with the codec), is handed to a handler, and the handler's answer is encoded by
the same session and written back. :func:`serve` mounts, serves in a thread and always
unmounts. The bridge to virtiofsd (:mod:`fuseproto.bridge`) is this server with the
handler replaced by forwarding.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    DecodeError,
    EncodeError,
    FuseprotoError,
    ProtocolError,
    TransportError,
    TransportTimeout,
)
from .session import Session
from .transport.devfuse import DevFuseMount, ReplyRejectedError, read_buffer_size

__all__ = ["DEFER", "DevFuseServer", "Handler", "ServedMessage", "ServerStats", "serve"]


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
    """What a server saw: counters for everything, and a bounded tail of the last
    ``max_messages`` messages (with their bytes), failures and notifications. Memory
    stays flat however long a mount lives; a capture file is where every message goes."""

    messages: list[ServedMessage] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    notifications: list[bytes] = field(default_factory=list)
    max_messages: int = 1024
    requests: int = 0  # requests read from the kernel
    replies: int = 0  # replies written (accepted or not)
    failed: int = 0  # failures seen (the tail keeps the last max_messages)
    errors: dict[int, int] = field(default_factory=dict)  # errno -> replies with it

    def _keep(self, items: list[Any], item: Any) -> None:
        items.append(item)
        if len(items) > self.max_messages:
            del items[: len(items) - self.max_messages]

    def record(self, msg: ServedMessage) -> None:
        self.requests += 1
        self._keep(self.messages, msg)

    def replied(self, error: int) -> None:
        self.replies += 1
        if error:
            self.errors[-error] = self.errors.get(-error, 0) + 1

    def fail(self, msg: ServedMessage | None, exc: BaseException) -> None:
        if msg is not None:
            msg.failure = exc
        self.failed += 1
        self._keep(self.failures, exc)

    def notified(self, data: bytes) -> None:
        self._keep(self.notifications, data)


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
        keep_messages: int = 1024,
    ) -> None:
        if session is None:
            session = Session()
        self.mount = mount
        self.handler = handler
        self.session = session
        self.poll_interval = poll_interval
        self.stats = ServerStats(max_messages=keep_messages)
        self.session_lock = threading.Lock()  # held around every use of the session
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed_reason: BaseException | None = None

    @property
    def bufsize(self) -> int:
        """The read buffer for the next request (room for the largest one)."""
        return read_buffer_size(self.session.max_write)

    def handle_one(self, timeout: float | None = None) -> bool:
        """Serve at most one request. False when none arrived within ``timeout``."""
        raw = self.mount.read_request(self.bufsize, timeout)
        if raw is None:
            return False
        msg = ServedMessage(raw=raw)
        self.stats.record(msg)
        try:
            with self.session_lock:
                request = self.session.feed_request(raw)
                expects_reply = self.session.expects_reply(request)
        except (DecodeError, ProtocolError) as exc:
            self.stats.fail(msg, exc)
            return True
        msg.request = request
        self.dispatch(msg, request, expects_reply)
        return True

    def dispatch(self, msg: ServedMessage, request: Any, expects_reply: bool) -> None:
        """Answer one decoded request: call the handler and reply with what it returns.

        The one step a subclass replaces (the bridge forwards instead)."""
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
        self.reply(msg, request, body, error)

    def complete(self, request: Any, body: Any = None, error: int = 0) -> bool:
        """Answer a request the handler deferred; True when the kernel took the reply."""
        msg = next((m for m in reversed(self.stats.messages) if m.request is request), None)
        return self.reply(msg, request, body, error)

    def reply(self, msg: ServedMessage | None, request: Any, body: Any, error: int) -> bool:
        """Encode the reply to ``request`` through the session (``body``, or ``error`` when
        non-zero) and write it; a body the schema refuses becomes -EIO. ``msg`` (may be
        None) records what was written. True when the kernel took it."""
        with self.session_lock:
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
        return self.write(msg, reply, error)

    def write(self, msg: ServedMessage | None, reply: bytes, error: int) -> bool:
        """Write an encoded reply (whose header says ``error``) and record it in ``msg``.
        True when the kernel took it; a reply it rejects is recorded as a failure."""
        if msg is not None:
            msg.reply_raw = reply
            msg.error = error
        self.stats.replied(error)
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
        with self.session_lock:
            data = self.session.build_notification(code, body)
        self.stats.notified(data)
        return self.mount.write_reply(data)

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`, :meth:`end`, or until the connection goes away."""
        while not self._stop.is_set():
            try:
                if not self.handle_one(self.poll_interval):
                    self.idle()
            except TransportError as exc:
                self.closed_reason = exc
                return

    def idle(self) -> None:
        """Called when a poll brought no request; the bridge checks on its daemon here."""

    def end(self, reason: BaseException) -> None:
        """Give up the whole connection at once (the peer that answers is gone): record
        ``reason`` as :attr:`closed_reason`, stop serving and abort the kernel connection,
        so every system call still waiting fails (ENOTCONN) instead of hanging. The mount
        stays until its owner unmounts it."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self._stop.set()
        with contextlib.suppress(OSError, FuseprotoError):
            self.mount.abort()

    @property
    def serving(self) -> bool:
        """Whether the serving thread runs (False once stopped or ended)."""
        return self._thread is not None and self._thread.is_alive()

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
