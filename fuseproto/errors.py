"""The one exception hierarchy of fuseproto.

Contract (as in h11): a decoder given *any* bytes returns a message or raises
:class:`DecodeError` (or a subclass). Any other exception escaping a decoder is a bug
in fuseproto, and the fuzzers treat it as one.
"""

from __future__ import annotations

from typing import Any


class FuseprotoError(Exception):
    """Base of every error fuseproto raises on purpose."""


class DecodeError(FuseprotoError, ValueError):
    """Bytes that do not form a valid message.

    ``offset`` is the byte offset into the message where decoding failed (or None when
    unknown); ``path`` names the field, e.g. ``"fuse_in_header.len"``. ``reason`` is the
    message alone; ``str()`` adds the field and the offset (made when asked for: most
    DecodeErrors, a fuzzer's refused inputs, are caught and never shown).
    """

    def __init__(self, message: str, *, offset: int | None = None, path: str | None = None):
        super().__init__(message)
        self.offset = offset
        self.path = path
        self.reason = message

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(f"field {self.path}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{self.reason} ({', '.join(where)})" if where else str(self.reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class TruncatedError(DecodeError):
    """The message (or a field in it) ends before its declared or fixed length."""


class TrailingDataError(DecodeError):
    """Bytes remain after a message whose length is fully determined."""


class LengthMismatchError(DecodeError):
    """A length or count field disagrees with the bytes present."""


class LimitExceededError(DecodeError):
    """A count or size is above a protocol maximum (e.g. FUSE_REMOVEMAPPING_MAX_ENTRY)."""


class EncodeError(FuseprotoError, ValueError):
    """A message could not be built from the given values."""


class ProtocolError(FuseprotoError):
    """A well-formed message that breaks the protocol's rules in its context."""


class LocalProtocolError(ProtocolError):
    """We (the caller of the session) tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer did something the protocol forbids (e.g. a reply to an unknown unique)."""


class TransportError(FuseprotoError):
    """A transport failed: socket closed, timeout, ring corruption ..."""


class TransportTimeout(TransportError):
    """No reply within the deadline."""


class DaemonError(FuseprotoError):
    """A daemon (virtiofsd) could not be installed, started, or exited unexpectedly."""


class GuestError(FuseprotoError):
    """A test guest (QEMU with a Linux kernel) could not be prepared, booted or finished."""


class FuseError(FuseprotoError, OSError):
    """The file system answered a request with an error (``errno`` is positive)."""

    def __init__(self, errno_: int, opcode: Any = None, unique: int | None = None):
        import os

        self.opcode = opcode
        self.unique = unique
        name = getattr(opcode, "name", opcode)
        super().__init__(errno_, f"{os.strerror(errno_)} (reply to {name}, unique {unique})")


__all__ = [
    "FuseprotoError",
    "DecodeError",
    "TruncatedError",
    "TrailingDataError",
    "LengthMismatchError",
    "LimitExceededError",
    "EncodeError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "TransportError",
    "TransportTimeout",
    "DaemonError",
    "FuseError",
]
