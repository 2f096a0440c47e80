"""The FUSE wire format: constants, structs, messages and the codec. Pure: no I/O.

``constants``: IntEnum/IntFlag under the header's names (and ``opcode_name``);
``structs``: one construct per struct of fuse.h, each with one layout derivation
(``FastLayout.tree``); ``messages``: the per-opcode request/reply/notification tables in
fuse.h's order, built from ``parts`` (body parts), ``constructs`` (custom constructs) and
``ext`` (the extension area); ``codegen``: the one code generator behind every fast path;
``decoded``: the Request / Reply / Notification objects; ``codec``: the one entrance
(``codec.kind(opcode, minor, flags)`` and the module functions that reach it).
"""

from . import constants, structs
from .codec import (
    Notification,
    Reply,
    Request,
    RequestKind,
    decode_notification,
    decode_reply,
    decode_request,
    encode_notification,
    encode_reply,
    encode_request,
    kind,
    make_request,
    reply_area,
)
from .constants import InitFlags, fuse_notify_code, fuse_opcode

__all__ = [
    "constants",
    "structs",
    "InitFlags",
    "fuse_notify_code",
    "fuse_opcode",
    "Notification",
    "Reply",
    "Request",
    "decode_notification",
    "decode_reply",
    "decode_request",
    "encode_notification",
    "encode_reply",
    "encode_request",
    "RequestKind",
    "kind",
    "make_request",
    "reply_area",
]
