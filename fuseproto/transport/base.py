"""The contract every transport keeps: what :class:`~fuseproto.client.Client` and the
/dev/fuse bridge call, and nothing more.

A transport moves whole FUSE messages as bytes and never parses them (the codec and the
session do). It hands out an opaque token per request; the token's type is the
transport's own business (``Inflight`` for the vhost-user frontend), so it is ``Any``
here. The leading arguments are positional-only: an implementation may name them as it
likes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Transport(Protocol):
    """Moves FUSE requests to a daemon and their replies back.

    Errors: ``TransportTimeout`` (no reply within the timeout; the request stays owned by
    the daemon), ``TransportError`` (connection or daemon gone; the transport stays
    broken). Never a hang."""

    def submit(self, request: bytes | Sequence[bytes | memoryview],
               reply_size: int | Sequence[int], /, *,
               hiprio: bool = False, kick: bool = True, tag: object = None) -> Any:
        """Put one request in flight and return its token.

        ``request`` is the whole FUSE request, or its device-readable segments in order;
        ``reply_size`` the writable area for the reply (0: no reply, e.g. FORGET), or its
        writable areas in order (:meth:`fuseproto.wire.codec.RequestKind.chain`).
        ``hiprio`` sends on the high-priority queue (FORGET, INTERRUPT); ``kick=False``
        defers the notification to :meth:`kick`; ``tag`` (a str or ``(opcode, unique)``)
        names the request in error messages only."""
        ...

    def wait(self, token: Any, timeout: float | None = None, /) -> bytes:
        """The reply bytes of ``token`` (once), waiting at most ``timeout`` seconds
        (None: the transport's default)."""
        ...

    def kick(self, queue: int = 1, /) -> None:
        """Notify the daemon of requests submitted with ``kick=False`` on ``queue``."""
        ...

    def close(self) -> None:
        """Release everything (safe twice and with requests in flight)."""
        ...


__all__ = ["Transport"]
