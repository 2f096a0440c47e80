"""Moving bytes: vhost-user (frontend, virtqueues, backend channel) and /dev/fuse.

:class:`Transport` is the contract the client is typed against."""
from fuseproto.transport.base import Transport

__all__ = ["Transport"]
