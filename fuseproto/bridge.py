"""A kernel FUSE mount served by a virtiofsd: the kernel's requests forwarded over vhost-user.

:class:`DevFuseBridge` is an application that moves FUSE between two transports: it reads
requests from a :class:`~fuseproto.transport.devfuse.DevFuseMount`, sends them on to a
transport such as :class:`~fuseproto.transport.vhost_user.VhostUserTransport` in front of
a daemon, and writes the daemon's replies back to the kernel after the session has paired
and decoded them. It is :class:`~fuseproto.fuseserver.DevFuseServer` with the handler
replaced by forwarding.
"""

from __future__ import annotations

import errno
import math
from typing import Any

from construct import Container

from .errors import DaemonError, DecodeError, ProtocolError, TransportError, TransportTimeout
from .fuseserver import DevFuseServer, ServedMessage
from .session import Session
from .transport.base import Transport
from .transport.devfuse import DevFuseMount
from .wire.codec import Reply, encode_reply, encode_request
from .wire.constants import InitFlags, fuse_opcode

__all__ = ["DevFuseBridge"]

# virtio-fs sends these on the high-priority queue, with no reply buffer.
_FORGETS = (fuse_opcode.FUSE_FORGET, fuse_opcode.FUSE_BATCH_FORGET)


class DevFuseBridge(DevFuseServer):
    """Serve a kernel mount by forwarding every request to another transport.

    ``transport`` is anything with the contract's ``submit(request_bytes, reply_size)``
    and ``wait(token, timeout)`` (e.g. :class:`~fuseproto.transport.vhost_user.
    VhostUserTransport` in front of virtiofsd). Requests go through unchanged, each with
    the reply area Linux's virtio_fs would offer (:meth:`fuseproto.wire.codec.RequestKind.reply_area`
    at the negotiated minor); each reply is checked by the session (paired by unique,
    decoded at the negotiated minor) before it is written to the kernel, and one that
    fails is replaced by -EIO. A request waits for the daemon as long as it takes, as a
    kernel request does (``timeout`` None; a float restores a per-request limit, answered
    -EIO, for tests): answering EIO for a request the daemon may still carry out would be
    a lie (an rmdir answered EIO that still removes the directory). When the transport
    breaks -- the daemon died or closed the connection -- the bridge ends at once
    (:meth:`~fuseproto.fuseserver.DevFuseServer.end`): ``closed_reason`` names the
    daemon's fate, the kernel connection is aborted so nothing hangs, and no further
    request is read. FORGET and BATCH_FORGET go out on the high-priority queue
    (as virtio-fs sends them) with no reply buffer. INTERRUPT is not forwarded (virtio-fs
    has no interrupts): the kernel gets -ENOSYS, which tells it to stop sending them.
    Requests are forwarded one at a time.

    One request is adjusted: the kernel offers FUSE_ALLOW_IDMAP in INIT but fails the
    connection if a daemon accepts it on a mount without ``default_permissions`` (virtiofs
    always sets that option; a plain FUSE mount need not). For such a mount the bridge
    re-encodes INIT through the codec without that offer.
    """

    def __init__(
        self,
        mount: DevFuseMount,
        transport: Transport,
        *,
        session: Session | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.1,
        keep_messages: int = 1024,
    ) -> None:
        super().__init__(mount, _no_handler, session=session, poll_interval=poll_interval,
                         keep_messages=keep_messages)
        self.transport = transport
        self.timeout = timeout

    def forwarded(self, request: Any) -> bytes:
        """The bytes to send on for ``request``: its own, except INIT (see above)."""
        if request.opcode != fuse_opcode.FUSE_INIT or self.mount.default_permissions:
            return request.raw  # type: ignore[no-any-return]
        body = request.body
        offered = InitFlags.from_words(body.get("flags", 0), body.get("flags2", 0) or 0)
        if not offered & InitFlags.FUSE_ALLOW_IDMAP:
            return request.raw  # type: ignore[no-any-return]
        lo, hi = InitFlags(offered & ~InitFlags.FUSE_ALLOW_IDMAP).words()
        h = request.header
        return encode_request(
            request.opcode,
            Container(body, flags=lo, flags2=hi),
            unique=h.unique,
            nodeid=h.nodeid,
            uid=h.uid,
            gid=h.gid,
            pid=h.pid,
            ext=request.ext or None,
        )

    def idle(self) -> None:
        """An idle mount still ends at once when the daemon dies (not at the next
        request): the transport's daemon, if it owns one, is checked on every empty poll."""
        daemon = getattr(self.transport, "daemon", None)
        if daemon is not None and not daemon.running():
            self.end(DaemonError(daemon.describe()))

    def dispatch(self, msg: ServedMessage, request: Any, expects_reply: bool) -> None:
        """Forward ``request`` and write the daemon's checked reply (or -EIO) back."""
        op = request.opcode
        if op == fuse_opcode.FUSE_INTERRUPT:
            with self.session_lock:
                tracked = request.unique in self.session.interrupts.values()
            if tracked:
                self.reply(msg, request, None, -errno.ENOSYS)
            return
        try:
            if not expects_reply:
                self.transport.submit(request.raw, 0, hiprio=op in _FORGETS)
                return
            with self.session_lock:
                kind = self.session.kind(op)
            # As a guest would: WRITE/READ data in their own page-aligned segments.
            out, area = kind.chain(self.forwarded(request), request.body)
            token = self.transport.submit(out, area)
            raw = self.transport.wait(token, math.inf if self.timeout is None else self.timeout)
        except TransportTimeout as exc:  # only with a per-request timeout
            self.stats.fail(msg, exc)
            if expects_reply:
                self.reply(msg, request, None, -errno.EIO)
            return
        except TransportError as exc:
            # The daemon is gone: no answer will come for this or any request.
            self.stats.fail(msg, exc)
            self.end(exc)
            return
        with self.session_lock:
            try:
                reply = self.session.feed_reply(raw)
            except (DecodeError, ProtocolError) as exc:
                self.stats.fail(msg, exc)
                reply = None
            still_waiting = self.session.pending.get(request.unique) is request
        if isinstance(reply, Reply):
            self.write(msg, raw, reply.error)
        elif still_waiting:
            self.reply(msg, request, None, -errno.EIO)
        else:
            # The session completed it (a body that did not decode): answer EIO directly.
            self.write(
                msg,
                encode_reply(request, None, unique=request.unique, error=-errno.EIO),
                -errno.EIO,
            )


def _no_handler(request: Any) -> Any:
    raise AssertionError("the bridge forwards; it has no handler")
