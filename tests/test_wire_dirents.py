"""READDIR / READDIRPLUS replies refused at the end of a long chain of records.

Dirents.parse walks the records' chain by their namelen fields before it makes a record
(a fuzzer's replies mostly fail at the end): the refusal is the one a record-by-record
parse gives (the same error, field and offset), and the construct reference refuses
the same replies."""

from __future__ import annotations

import pytest
from construct import ConstructError

from fuseproto.errors import TruncatedError
from fuseproto.wire import codec, messages
from fuseproto.wire.constants import fuse_opcode

READDIR, READDIRPLUS = int(fuse_opcode.FUSE_READDIR), int(fuse_opcode.FUSE_READDIRPLUS)


def _reply(op: int, n: int) -> bytes:
    entries = [{"ino": i + 1, "off": i + 1, "type": 8, "name": b"f%d" % i} for i in range(n)]
    if op == READDIRPLUS:
        entries = [{"entry_out": {"nodeid": e["ino"]}, "dirent": e} for e in entries]
    return codec.encode_reply(op, {"entries": entries}, unique=7)


def _refused(op: int, data: bytes) -> TruncatedError:
    with pytest.raises(TruncatedError) as info:
        codec.decode_reply(data, op)
    with pytest.raises(ConstructError):
        messages.reply_body(op).parse(data[16:])
    return info.value


def _with_len(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data[4:]


@pytest.mark.parametrize("op", [READDIR, READDIRPLUS])
def test_a_long_chain_decodes(op):
    data = _reply(op, 200)
    body = codec.decode_reply(data, op).body
    assert len(body["entries"]) == 200
    assert codec.encode_reply(op, body, unique=7) == data


@pytest.mark.parametrize("op", [READDIR, READDIRPLUS])
@pytest.mark.parametrize("namelen", [300, 4000, 0xFFFF_FFFF])
def test_the_last_record_running_past_the_reply(op, namelen):
    data = bytearray(_reply(op, 200))
    # The last record starts where the 199 before it end: its namelen written over.
    at = len(_reply(op, 199)) + (144 if op == READDIRPLUS else 16)
    data[at:at + 4] = namelen.to_bytes(4, "little")
    e = _refused(op, bytes(data))
    assert e.path == "entries.namelen"
    assert e.offset == len(data)
    assert f"namelen={namelen} runs past the reply" in str(e)


@pytest.mark.parametrize("op", [READDIR, READDIRPLUS])
@pytest.mark.parametrize("cut", [1, 8, 23])
def test_a_partial_header_after_the_last_record(op, cut):
    data = _with_len(_reply(op, 200) + b"\0" * cut)
    e = _refused(op, data)
    assert e.path == "entries"
    assert e.offset == len(data)
    assert "partial dirent header" in str(e)
