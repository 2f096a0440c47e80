"""What the wire oracle decoded of the input it checked last, for the mutators.

libFuzzer mutates the input it has just run (-mutate_depth mutations in a row), so the
structure-aware mutators' decode of their parent (:mod:`.mutate`) repeats one the oracle
(:mod:`.oracles`) has just made. The oracle notes each (:func:`remember`, after
:func:`forget` at the start of an input) and the mutators ask :func:`decoded`, which
decodes only what was not noted. A decode is a function of its key and the bytes, so
the message is the one decoding would give; the mutators change copies of it
(:func:`.mutate.mutate_body`). The wire envelope the two parse is kept the same way
(:func:`envelope`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import DecodeError
from ..wire import codec
from .inputs import WireInput, parse_wire_input

__all__ = ["remember", "forget", "decoded", "envelope"]

_ENVELOPE: list[Any] = [None, None]  # the bytes parsed last, their envelope

_DECODED: list[tuple[tuple[Any, ...], bytes, Any]] = []
_DECODED_MAX = 4
_DECODERS: dict[str, Callable[..., Any]] = {
    "request": lambda data, minor, flags: codec.decode_request(data, minor, flags=flags),
    "reply": codec.decode_reply,
    "notification": codec.decode_notification,
}


def _decoded_key(kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if kind == "reply":  # (request or opcode, minor): a Request by its bytes
        request, minor = args
        return (kind, int(getattr(request, "opcode", request)), minor,
                getattr(request, "raw", None))
    return (kind, *args)


def remember(kind: str, data: bytes, args: tuple[Any, ...], message: Any) -> None:
    """Note that the ``kind`` decoder (``request``: args ``(minor, flags)``, ``reply``:
    ``(request, minor)``, ``notification``: ``()``) gave ``message`` for ``data`` (None:
    it refused); :func:`forget` drops every note."""
    _DECODED.append((_decoded_key(kind, args), data, message))
    if len(_DECODED) > _DECODED_MAX:
        del _DECODED[0]


def forget() -> None:
    """Drop what :func:`remember` noted."""
    _DECODED.clear()


def decoded(kind: str, data: bytes, *args: Any) -> Any:
    """The message the ``kind`` decoder gives for ``data`` with ``args`` (see
    :func:`remember`), or None where it raises DecodeError: a noted one, else decoded."""
    if _DECODED:
        key = _decoded_key(kind, args)
        for k, d, message in _DECODED:
            if k == key and d == data:
                return message
    try:
        return _DECODERS[kind](data, *args)
    except DecodeError:
        return None


def envelope(data: bytes) -> WireInput | None:
    """:func:`~.inputs.parse_wire_input` of ``data``: the last one made when ``data``
    are the bytes it was made of (the oracle's, when the mutator gets the input just
    checked)."""
    last = _ENVELOPE
    if last[0] is data or last[0] == data:
        return last[1]  # type: ignore[no-any-return]
    w = parse_wire_input(data)
    last[0], last[1] = data, w
    return w
