"""Sans-IO FUSE session: pairs replies with requests, remembers what INIT negotiated.

A :class:`Session` does no I/O. Give it the bytes that went one way or the other, in any
interleaving, and it gives back decoded messages (from :mod:`fuseproto.wire.codec`):

* ``feed_request(data) -> Request``: a request seen on the wire (sent by the kernel or
  any other FUSE client). It is registered as in flight under its ``unique``.
* ``feed_reply(data) -> Reply | Notification``: a reply (paired with its request by
  ``unique``; ``reply.request`` is that request) or, for ``unique == 0``, a notification.
* ``build_request(opcode, body, **hdr) -> (unique, bytes)``: the client side; allocates a
  unique and registers the request.
* ``build_reply(request, body, error=0) -> bytes``: the server side; completes the request.

Contract (the one the fuzzers check): **any exception other than**
:class:`~fuseproto.errors.DecodeError` **or** :class:`~fuseproto.errors.ProtocolError`
**escaping** ``feed_request`` **or** ``feed_reply`` **is a bug**, whatever the bytes.
``RemoteProtocolError`` means the bytes were well formed but broke the protocol in this
session's state (a reply to a unique nobody waits for, a unique used twice while in
flight, too many requests in flight); ``LocalProtocolError`` means our own caller did
that through ``build_*``. A message that raises leaves the session as it was, with one
exception that mirrors the kernel: a reply whose header names a request in flight but
whose body does not decode still completes that request (the kernel ends it with EIO),
so nothing waits forever; the DecodeError then carries the request as ``.request``.

Rules the session applies (fuse.h and Documentation/filesystems/fuse.rst):

* Every request gets exactly one reply, except FORGET, BATCH_FORGET and NOTIFY_REPLY
  (never answered) and INTERRUPT (answered only to say "not now": -EAGAIN, the kernel
  sends it again; or -ENOSYS, interrupts are not supported). The kernel gives an
  INTERRUPT the unique of the request it interrupts with bit 0 set; its body names that
  request. An INTERRUPT for a request that is no longer in flight is not an error (the
  reply and the interrupt crossed); it is returned and otherwise ignored. The reply to an
  interrupted request is ordinary (often -EINTR).
* A reply's error is 0 or a negative errno above -512 (the kernel rejects others); a
  reply with an error has no body.
* A request the kernel resends after FUSE_NOTIFY_RESEND carries FUSE_UNIQUE_RESEND
  (bit 63) in its unique; it replaces the original, which is no longer answered.
* INIT: the request proposes a version and flags, the reply chooses. Afterwards ``minor``
  is ``min(request minor, reply minor)`` and ``flags`` is the reply's ``flags | flags2 <<
  32`` (``flags2`` only counts when FUSE_INIT_EXT is set); every later message is decoded
  at that minor. Until INIT completes, messages are decoded at the constructor's
  ``minor``.
* Memory is bounded: at most ``max_pending`` requests in flight (each pending entry keeps
  its decoded request, so the worst case is about ``max_pending * max_write`` bytes);
  one more is refused with a ProtocolError, not stored. Interrupt records are bounded by
  the requests in flight (at most one per request).

A Session is not thread-safe; serialise calls if several threads share one.
"""

from __future__ import annotations

import enum
import errno
import operator
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import (
    DecodeError,
    LengthMismatchError,
    LocalProtocolError,
    RemoteProtocolError,
    TruncatedError,
)
from .wire import codec, structs
from .wire.constants import (
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_KERNEL_VERSION,
    FUSE_UNIQUE_RESEND,
    InitFlags,
    fuse_opcode,
    opcode_name,
)

__all__ = [
    "ReplyExpectation",
    "REPLY_EXPECTATION",
    "Session",
    "DEFAULT_MAX_PENDING",
    "InitNegotiation",
    "negotiate_init",
    "init_flags",
]

DEFAULT_MAX_PENDING = 1024

# fuse_out_header.error must lie in (-512, 0] for a reply (fs/fuse/dev.c rejects the
# rest; 512 is ERESTARTSYS, the start of the kernel-internal errnos).
_MIN_ERROR = -511

# The kernel allocates request uniques in steps of 2 and marks an INTERRUPT by setting
# bit 0 of the interrupted request's unique (FUSE_INT_REQ_BIT in fs/fuse/fuse_i.h).
_UNIQUE_STEP = 2
_INT_REQ_BIT = 1
_UNIQUE_MASK = (1 << 64) - 1
_ALLOC_MASK = _UNIQUE_MASK & ~FUSE_UNIQUE_RESEND  # allocated uniques never carry RESEND

_OUT_HEADER = structs.fast("fuse_out_header")
_OUT_HEADER_SIZE = _OUT_HEADER.size
_out_unpack = _OUT_HEADER.struct.unpack_from


class ReplyExpectation(enum.Enum):
    """How many replies a request of an opcode gets."""

    ONE = "one"  # exactly one reply
    NONE = "none"  # never answered
    OPTIONAL = "optional"  # INTERRUPT: a header-only -EAGAIN / -ENOSYS, or nothing


# The table of exceptions to "one reply per request"; every other opcode, known or not,
# expects exactly one reply.
REPLY_EXPECTATION: Mapping[int, ReplyExpectation] = types.MappingProxyType(
    {
        fuse_opcode.FUSE_FORGET: ReplyExpectation.NONE,
        fuse_opcode.FUSE_BATCH_FORGET: ReplyExpectation.NONE,
        fuse_opcode.FUSE_NOTIFY_REPLY: ReplyExpectation.NONE,
        fuse_opcode.FUSE_INTERRUPT: ReplyExpectation.OPTIONAL,
    }
)


# The same table as plain-int sets, for the per-request hot path (an IntEnum member hashes
# and compares as its int, so `opcode in _NO_REPLY_OPS` holds for members and ints alike).
_NO_REPLY_OPS = frozenset(
    int(op) for op, e in REPLY_EXPECTATION.items() if e is ReplyExpectation.NONE
)
_OPTIONAL_REPLY_OPS = frozenset(
    int(op) for op, e in REPLY_EXPECTATION.items() if e is ReplyExpectation.OPTIONAL
)
_NOT_ONE_REPLY_OPS = _NO_REPLY_OPS | _OPTIONAL_REPLY_OPS
_le, _eq = operator.le, operator.eq
_UNIQUE_OF = operator.attrgetter("unique")
_OPCODE_OF = operator.attrgetter("opcode")
_TARGET_OF = operator.attrgetter("target")
_INIT_OPS = frozenset({int(fuse_opcode.FUSE_INIT), int(fuse_opcode.CUSE_INIT)})
_INTERRUPT = int(fuse_opcode.FUSE_INTERRUPT)
# Opcodes _register handles beyond entering the request (interrupts, no reply, INIT).
_PLAIN_EXCLUDED = _NOT_ONE_REPLY_OPS | _INIT_OPS
# Session.check_valid's invariants, in the order it evaluates them.
_INVARIANTS = (
    "at most max_pending requests in flight",
    "no request under unique 0",
    "each request under its own unique",
    "only requests that get a reply are in flight",
    "one interrupt record per interrupted request",
    "interrupted requests are in flight",
    "each interrupt record names the request it is filed under",
    "no interrupt under a unique in flight",
)


class _Init(enum.Enum):
    NONE = "none"  # no INIT seen yet
    SENT = "sent"  # INIT request in flight
    DONE = "done"  # INIT answered successfully
    FAILED = "failed"  # INIT answered with an error (another INIT may follow)


@dataclass
class _Interrupt:
    request: Any  # the INTERRUPT request
    target: int  # unique of the interrupted request
    may_resend: bool = False  # answered -EAGAIN: the kernel will send it again


class Session:
    """One FUSE connection's protocol state. See the module docstring for the contract."""

    def __init__(
        self,
        *,
        minor: int = FUSE_KERNEL_MINOR_VERSION,
        max_pending: int = DEFAULT_MAX_PENDING,
        first_unique: int = 2,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if first_unique <= 0 or first_unique & _INT_REQ_BIT:
            raise ValueError("first_unique must be a positive even number")
        self.max_pending = max_pending
        self._default_minor = minor
        self._kinds: dict[Any, codec.RequestKind] = {}
        self.minor = minor
        self._pending: dict[int, Any] = {}
        self._interrupts: dict[int, _Interrupt] = {}  # by the INTERRUPT's own unique
        self._interrupt_of: dict[int, int] = {}  # target unique -> INTERRUPT unique
        # Read-only live views, made once (the session fuzzer's oracle reads both after
        # every message).
        #: Requests in flight, by unique.
        self.pending: Mapping[int, Any] = types.MappingProxyType(self._pending)
        #: Interrupted requests in flight: target unique -> INTERRUPT unique.
        self.interrupts: Mapping[int, int] = types.MappingProxyType(self._interrupt_of)
        self._next_unique = first_unique
        self._init = _Init.NONE
        self.init_in: Any = None  # body of the INIT request (fuse_init_in fields)
        self.init_out: Any = None  # body of the successful INIT reply (fuse_init_out)
        self.offered_flags = InitFlags(0)  # what the INIT request offered
        self.flags = InitFlags(0)  # what the INIT reply chose (see the property)

    # -- views --------------------------------------------------------------------------

    @property
    def flags(self) -> InitFlags:
        """What the INIT reply chose (flags | flags2 << 32)."""
        return self._flags

    @flags.setter
    def flags(self, value: int) -> None:
        self._flags = InitFlags(value)
        self._flags_int = int(value)  # what every request is encoded with
        self._kinds = {}

    @property
    def minor(self) -> int:
        """The protocol minor requests are encoded and replies decoded with."""
        return self._minor

    @minor.setter
    def minor(self, value: int) -> None:
        self._minor = value
        self._kinds = {}

    @property
    def next_unique(self) -> int:
        """The unique :meth:`build_request` will use next (if it is free)."""
        return self._next_unique

    @property
    def initialized(self) -> bool:
        return self._init is _Init.DONE

    def _init_out_field(self, name: str) -> int | None:
        if self.init_out is None:
            return None
        value = _get(self.init_out, name)
        return None if value is None else int(value)

    @property
    def max_write(self) -> int | None:
        """fuse_init_out.max_write once INIT completed, else None."""
        return self._init_out_field("max_write")

    @property
    def max_readahead(self) -> int | None:
        return self._init_out_field("max_readahead")

    @property
    def max_pages(self) -> int | None:
        return self._init_out_field("max_pages")

    @property
    def time_gran(self) -> int | None:
        return self._init_out_field("time_gran")

    @property
    def map_alignment(self) -> int | None:
        """fuse_init_out.map_alignment (log2 of the DAX mapping alignment), when the
        reply set FUSE_MAP_ALIGNMENT, else None."""
        if not self.flags & InitFlags.FUSE_MAP_ALIGNMENT:
            return None
        return self._init_out_field("map_alignment")

    def expects_reply(self, request_or_opcode: Any) -> bool:
        """Whether a request of this opcode must be answered (INTERRUPT: no)."""
        opcode = getattr(request_or_opcode, "opcode", request_or_opcode)
        return opcode not in _NOT_ONE_REPLY_OPS

    def check_valid(self) -> None:
        """Assert the internal invariants (for tests and fuzzers): at most ``max_pending``
        in flight, none under unique 0, each under its own unique and one that gets a
        reply; one interrupt record per interrupted request in flight, naming it, under
        a unique not in flight. Raises AssertionError naming every broken one.

        Every invariant is evaluated on every call, as whole-table operations with one
        branch in all: the session fuzzer calls this after every message with this module
        instrumented, where a loop per entry or a block per ``assert`` was most of its
        cost."""
        pending, interrupts, interrupt_of = self._pending, self._interrupts, self._interrupt_of
        # (operator's comparisons: a compare operator is a traced call under atheris,
        # and these tell the fuzzer nothing about the input.)
        held = (
            _le(len(pending), self.max_pending),
            0 not in pending,
            _eq(list(map(_UNIQUE_OF, pending.values())), list(pending)),
            _NOT_ONE_REPLY_OPS.isdisjoint(map(_OPCODE_OF, pending.values())),
            _eq(len(interrupt_of), len(interrupts)),
            _le(interrupt_of.keys(), pending.keys()),
            # With the lengths equal: the records' targets are distinct and each names
            # the request interrupt_of files it under.
            _eq(dict(zip(map(_TARGET_OF, interrupts.values()), interrupts, strict=True)),
                interrupt_of),
            pending.keys().isdisjoint(interrupt_of.values()),
        )
        if not all(held):
            broken = [name for name, ok in zip(_INVARIANTS, held, strict=True) if not ok]
            raise AssertionError(f"session invariants broken: {'; '.join(broken)}")

    # -- the client side: we send requests ---------------------------------------------------

    def kind(self, opcode: Any) -> codec.RequestKind:
        """The codec's :class:`~fuseproto.wire.codec.RequestKind` of ``opcode`` at the
        negotiated minor and flags (remembered until either changes)."""
        k = self._kinds.get(opcode)
        if k is None:
            k = self._kinds[opcode] = codec.kind(opcode, self._minor, self._flags_int)
        return k

    def build_request(
        self,
        opcode: Any,
        body: Any,
        *,
        unique: int | None = None,
        nodeid: int = 0,
        uid: int = 0,
        gid: int = 0,
        pid: int = 0,
        minor: int | None = None,
        flags: int | None = None,
        **hdr: Any,
    ) -> tuple[int, bytes]:
        """Encode a request, allocate its unique and register it as in flight.

        The keywords are ``encode_request``'s (nodeid, uid, gid, pid, ext, length,
        total_extlen, padding) and optionally ``unique`` to choose one; ``minor`` and
        ``flags`` default to the negotiated ones. For INTERRUPT the default unique is the
        target's with bit 0 set. Returns ``(unique, bytes)``.
        """
        if minor is None and flags is None:
            k = self._kinds.get(opcode) or self.kind(opcode)
        else:
            k = codec.kind(opcode, self._minor if minor is None else minor,
                           self._flags_int if flags is None else flags)
        allocated = unique is None
        if unique is None:
            if opcode == _INTERRUPT:
                unique = (_get(body, "unique") or 0) | _INT_REQ_BIT
                allocated = False
            else:
                pending = self._pending
                if len(pending) >= self.max_pending and opcode not in _NOT_ONE_REPLY_OPS:
                    raise LocalProtocolError(
                        f"more than max_pending={self.max_pending} requests in flight"
                    )
                unique = self._next_unique
                if unique in pending or unique in self._interrupts:
                    unique = self._free_unique()
        try:
            # The Request decode_request(data) would give, without decoding data again.
            request = (k.request(body, unique, nodeid, uid, gid, pid, **hdr) if hdr
                       else k.request(body, unique, nodeid, uid, gid, pid))
        except DecodeError as exc:
            raise LocalProtocolError(
                f"the request built for unique {unique} does not decode: {exc}"
            ) from exc
        if allocated and opcode not in _NOT_ONE_REPLY_OPS and opcode not in _INIT_OPS:
            # _register's checks for this case all passed above: the unique is non-zero,
            # free (not pending, not an interrupt's) and without the RESEND bit, and
            # there is room.
            self._pending[unique] = request
        else:
            self._register(request, LocalProtocolError)
        if allocated:
            # Advance only once the request is in: a refused request uses no unique.
            # (_step, inline: this is every request's path.)
            self._next_unique = ((unique + _UNIQUE_STEP) & _ALLOC_MASK) or _UNIQUE_STEP
        return unique, request.raw

    def _free_unique(self) -> int:
        """The first unique from ``next_unique`` on that is not in use."""
        unique = self._next_unique
        # Uniques in use are at most max_pending plus as many interrupts.
        for _ in range(2 * self.max_pending + 2):
            if unique not in self._pending and unique not in self._interrupts:
                return unique
            unique = _step(unique)
        raise LocalProtocolError("no free unique")  # unreachable: the tables are bounded

    # -- observing requests ----------------------------------------------------------------

    def feed_request(self, data: bytes) -> Any:
        """Decode a request sent by the peer (e.g. the kernel) and register it."""
        request = codec.decode_request(data, self._minor, flags=self._flags_int)
        self._register(request, RemoteProtocolError)
        return request

    def _register(self, request: Any, error: type[Exception]) -> None:
        """Enter a decoded request into the tables, or raise ``error`` and change nothing."""
        unique = request.unique
        opcode = request.opcode
        pending = self._pending
        # The common case, tested at once (one branch, where the checks below are one
        # each: this module is instrumented under the session fuzzer): a request that
        # expects one reply, is not INIT, under a free non-zero unique without the
        # RESEND bit, with room. Exactly the case in which every check below passes and
        # nothing else is done but to enter it.
        if ((unique != 0) & (unique not in pending) & (opcode not in _PLAIN_EXCLUDED)
                & (unique not in self._interrupts) & (not unique & FUSE_UNIQUE_RESEND)
                & (len(pending) < self.max_pending)):
            pending[unique] = request
            return
        if unique == 0:
            raise error(f"{opcode_name(opcode)} request with unique 0 (reserved for notifications)")
        if unique in pending:
            raise error(
                f"unique {unique} used by {opcode_name(opcode)} while "
                f"{opcode_name(pending[unique].opcode)} with that unique is in flight"
            )
        if opcode in _NOT_ONE_REPLY_OPS:
            if opcode in _OPTIONAL_REPLY_OPS:
                self._register_interrupt(request, error)
            return
        if unique in self._interrupts:
            raise error(
                f"unique {unique} used by {opcode_name(opcode)} while an INTERRUPT "
                "with that unique is outstanding"
            )
        replaced = None
        if unique & FUSE_UNIQUE_RESEND:
            original = unique & ~FUSE_UNIQUE_RESEND
            if original in pending:
                replaced = original
        if replaced is None and len(pending) >= self.max_pending:
            raise error(f"more than max_pending={self.max_pending} requests in flight")
        if opcode in _INIT_OPS:
            if self._init in (_Init.SENT, _Init.DONE):
                raise error(f"second {opcode_name(opcode)} (the first is {self._init.value})")
            self._learn_init_request(request)
        if replaced is not None:
            self._complete(replaced)
        pending[unique] = request

    def _register_interrupt(self, request: Any, error: type[Exception]) -> None:
        unique = request.unique
        target = _get(request.body, "unique")
        existing = self._interrupts.get(unique)
        if existing is not None:
            if existing.target == target and existing.may_resend:
                # The kernel sends it again after our -EAGAIN.
                existing.request = request
                existing.may_resend = False
                return
            raise error(f"INTERRUPT unique {unique} used twice while outstanding")
        if target not in self._pending or target in self._interrupt_of:
            # The interrupted request already completed (its reply crossed this
            # INTERRUPT), or is already interrupted: nothing to track.
            return
        self._interrupts[unique] = _Interrupt(request, target)
        self._interrupt_of[target] = unique

    def _learn_init_request(self, request: Any) -> None:
        body = request.body
        self._init = _Init.SENT
        self.init_in = body
        self.offered_flags = init_flags(body)
        minor = _get(body, "minor")
        if _get(body, "major") == FUSE_KERNEL_VERSION and isinstance(minor, int):
            self.minor = min(minor, self._default_minor)

    # -- observing replies -------------------------------------------------------------------

    def feed_reply(self, data: bytes) -> Any:
        """Decode a reply (paired by unique) or a notification (unique 0)."""
        if len(data) < _OUT_HEADER_SIZE:
            _peek_out_header(data)  # raises TruncatedError
        length, error, unique = _out_unpack(data)
        if unique == 0:
            return codec.decode_notification(data)
        if length != len(data):
            raise LengthMismatchError(
                f"fuse_out_header.len is {length} but the message has {len(data)} bytes",
                offset=0,
                path="fuse_out_header.len",
            )
        if not _MIN_ERROR <= error <= 0:
            raise RemoteProtocolError(
                f"reply to unique {unique} with error {error} "
                "(must be 0 or a negative errno above -512)"
            )
        if self._interrupts:
            interrupt = self._interrupts.get(unique)
            if interrupt is not None:
                reply = self.kind(_INTERRUPT).decode_reply(data, interrupt.request)
                self._after_interrupt_reply(unique, interrupt, reply.error)
                return reply
        request = self._pending.get(unique)
        if request is None:
            raise RemoteProtocolError(f"reply to unique {unique}, which is not in flight")
        opcode = request.opcode
        try:
            reply = (self._kinds.get(opcode) or self.kind(opcode)).decode_reply(data, request)
        except DecodeError as exc:
            # As the kernel: a reply that names a request in flight completes it (EIO).
            self._complete(unique)
            exc.request = request  # type: ignore[attr-defined]
            raise
        if opcode in _INIT_OPS:
            self._learn_init_reply(reply.error, reply.body)
        del self._pending[unique]
        if self._interrupt_of:
            self._complete(unique)
        return reply

    def _after_interrupt_reply(self, unique: int, interrupt: _Interrupt, error: int) -> None:
        if error == -errno.EAGAIN:
            interrupt.may_resend = True
        else:
            del self._interrupts[unique]
            del self._interrupt_of[interrupt.target]

    def _learn_init_reply(self, error: int, body: Any) -> None:
        result = negotiate_init(self.init_in, None if error else body,
                                max_minor=self._default_minor)
        if result is None:
            self._init = _Init.FAILED
            return
        self._init = _Init.DONE
        self.init_out = body
        self.flags = result.flags
        self.minor = result.minor

    def cancel(self, unique: int) -> None:
        """Forget a request built by :meth:`build_request` that never reached the peer
        (the transport refused it); its unique becomes free again. Unknown uniques are
        ignored."""
        self._complete(unique)

    def _complete(self, unique: int) -> None:
        self._pending.pop(unique, None)
        int_unique = self._interrupt_of.pop(unique, None)
        if int_unique is not None:
            self._interrupts.pop(int_unique, None)

    # -- the server side: we answer requests ------------------------------------------------

    def build_reply(self, request: codec.Request, body: Any, error: int = 0) -> bytes:
        """Encode the reply to ``request`` (a Request from :meth:`feed_request`) and
        complete it. ``error`` is 0 or a negative errno; with an error, ``body`` is
        ignored. Answering an INTERRUPT is allowed (header only, -EAGAIN or -ENOSYS)."""
        if not _MIN_ERROR <= error <= 0:
            raise LocalProtocolError(f"reply error {error} is not 0 or a negative errno > -512")
        unique = request.unique
        interrupt = self._interrupts.get(unique)
        if interrupt is not None and interrupt.request is request:
            if error == 0:
                raise LocalProtocolError("an INTERRUPT is answered only with an error")
            data = self.kind(request.opcode).encode_reply(None, unique=unique, error=error,
                                                          request=request)
            self._after_interrupt_reply(unique, interrupt, error)
            return data
        if self._pending.get(unique) is not request:
            raise LocalProtocolError(
                f"no {opcode_name(request.opcode)} request with unique {unique} is in flight"
            )
        data = self.kind(request.opcode).encode_reply(
            None if error else body, unique=unique, error=error, request=request
        )
        if request.opcode in _INIT_OPS:
            self._learn_init_reply(error, body if not error else None)
        self._complete(unique)
        return data

    def build_notification(self, code: int, body: Any) -> bytes:
        """Encode a notification (server to kernel; unique 0)."""
        return codec.encode_notification(code, body)


# -- helpers --------------------------------------------------------------------------------


def _step(unique: int) -> int:
    """The next unique the allocator tries: even, non-zero, without the RESEND bit."""
    nxt = (unique + _UNIQUE_STEP) & _ALLOC_MASK
    return nxt or _UNIQUE_STEP


def _peek_out_header(data: bytes) -> tuple[int, int, int]:
    """(len, error, unique) of a reply or notification, through the schema's fast path."""
    if len(data) < _OUT_HEADER.size:
        raise TruncatedError(
            f"{len(data)} bytes is shorter than fuse_out_header ({_OUT_HEADER.size})",
            offset=len(data),
            path="fuse_out_header",
        )
    return _OUT_HEADER.struct.unpack_from(data)


def _get(body: Any, name: str) -> Any:
    if isinstance(body, dict):  # a Container or a dict: first, no ABC check
        return body.get(name)
    if body is None:
        return None
    if isinstance(body, Mapping):
        return body.get(name)
    return getattr(body, name, None)


def init_flags(body: Any) -> InitFlags:
    """The 64-bit flags of a fuse_init_in or fuse_init_out body: ``flags | flags2 << 32``,
    where ``flags2`` counts only when FUSE_INIT_EXT is set in ``flags`` (as Linux reads
    them)."""
    flags = int(_get(body, "flags") or 0) & 0xFFFFFFFF
    flags2 = 0
    if flags & InitFlags.FUSE_INIT_EXT:
        flags2 = int(_get(body, "flags2") or 0)
    return InitFlags.from_words(flags, flags2)


@dataclass(frozen=True)
class InitNegotiation:
    """What an INIT exchange settled: every later message is encoded and decoded with it."""

    minor: int  # min(offered minor, the reply's minor, max_minor)
    flags: InitFlags  # the reply's flags, as the kernel takes them (not masked by the offer)
    offered: InitFlags  # what the INIT request offered


def negotiate_init(offer: Any, reply: Any, *,
                   max_minor: int = FUSE_KERNEL_MINOR_VERSION) -> InitNegotiation | None:
    """The one INIT negotiation (the session, the client and the fuzz harness use it).

    ``offer`` is the INIT request's body (fuse_init_in fields, or None if unknown) and
    ``reply`` the successful reply's body (None for an error reply). Returns None when the
    reply does not establish a session (no body, or another major version). The flags are
    the reply's: Linux's process_init_reply tests each bit of the reply, whether offered or
    not, so a daemon that grants a bit it was not offered (FUSE_SETXATTR_EXT, say) changes
    the layouts that follow exactly as it would with a kernel."""
    if reply is None or _get(reply, "major") != FUSE_KERNEL_VERSION:
        return None
    minor = max_minor
    reply_minor = _get(reply, "minor")
    if isinstance(reply_minor, int):
        minor = min(minor, reply_minor)
    offered_minor = _get(offer, "minor")
    if isinstance(offered_minor, int):
        minor = min(minor, offered_minor)
    return InitNegotiation(max(0, minor), init_flags(reply), init_flags(offer))
