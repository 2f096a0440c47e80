"""Bugs planted on purpose, to show the fuzzers catch them (FUSEPROTO_FUZZ_INJECT hook).

Each function patches fuseproto in the current process; tests call them through
``monkeypatch`` (in-process) or name them in ``FUSEPROTO_FUZZ_INJECT=fuzz_faults:<name>``
with ``tests/`` on PYTHONPATH (atheris subprocesses, ``fuseproto fuzz replay``).
"""

from __future__ import annotations

from fuseproto.session import Session
from fuseproto.wire import messages


def name_off_by_one() -> None:
    """The fast path drops the last byte of names of 200 bytes or more (a NAME_MAX-style
    off-by-one): such messages still decode, but no longer roundtrip."""
    original = messages.Name.parse

    def parse(self, buf, off, end, body):
        off2, body = original(self, buf, off, end, body)
        name = body[self.field]
        if len(name) >= 200:
            body[self.field] = name[:-1]
        return off2, body

    messages.Name.parse = parse


def session_keyerror() -> None:
    """feed_reply looks the unique up with [] instead of .get(): a reply to an unknown
    unique raises KeyError instead of RemoteProtocolError."""
    original = Session.feed_reply

    def feed_reply(self, data):
        if len(data) >= 16:
            unique = int.from_bytes(data[8:16], "little")
            if unique and unique not in self._pending and unique not in self._interrupts:
                return self._pending[unique]
        return original(self, data)

    Session.feed_reply = feed_reply


def osv_no_forget(device, backend, **options):
    """A ``module:factory`` DAX manager: OSv's with its seed defect "no_forget" (FORGET
    leaves the node's mappings in place, so a reused node id reads the old file)."""
    from fuseproto.dax.osv import OsvDaxManager

    return OsvDaxManager(device, backend, chunk_size=16 * 1024, seed_defects={"no_forget"})
