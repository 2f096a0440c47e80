"""The FUSE wire format: constants, structs, messages and the codec. Pure: no I/O.

Submodules are imported here when present; ``codec`` (and ``messages``) are optional so
the package imports while they are being written.
"""

from importlib.util import find_spec as _find_spec

from . import structs

if _find_spec(f"{__name__}.constants") is not None:
    from . import constants  # noqa: F401
if _find_spec(f"{__name__}.codec") is not None:
    from . import codec  # noqa: F401

__all__ = ["codec", "constants", "structs"]

if _find_spec(f"{__name__}.codec") is not None:
    from .codec import (  # noqa: F401
        Notification,
        Reply,
        Request,
        decode_notification,
        decode_reply,
        decode_request,
        encode_notification,
        encode_reply,
        encode_request,
    )

    __all__ += [
        "Notification",
        "Reply",
        "Request",
        "decode_notification",
        "decode_reply",
        "decode_request",
        "encode_notification",
        "encode_reply",
        "encode_request",
    ]
