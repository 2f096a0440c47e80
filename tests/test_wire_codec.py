"""Codec specifics: REMOVEMAPPING limits, compat sizes per minor, forced lengths, errors."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from construct import Container

from fuseproto.errors import (
    DecodeError,
    EncodeError,
    LengthMismatchError,
    LimitExceededError,
    TrailingDataError,
    TruncatedError,
)
from fuseproto.wire import codec, messages
from fuseproto.wire import constants as C

O = C.fuse_opcode  # noqa: E741


def in_header(opcode, body, unique=1, nodeid=1, extlen=0):
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, nodeid, 0, 0, 0, extlen, 0) + body


def removemapping(count, entries):
    return in_header(O.FUSE_REMOVEMAPPING, struct.pack("<I", count) + b"".join(
        struct.pack("<QQ", m, n) for m, n in entries))


# --- REMOVEMAPPING ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 256])
def test_removemapping_counts_ok(n):
    entries = [(i << 21, 1 << 21) for i in range(n)]
    data = removemapping(n, entries)
    req = codec.decode_request(data)
    assert req.body.count == n
    assert [(e.moffset, e.len) for e in req.body.entries] == entries
    built = codec.encode_request(O.FUSE_REMOVEMAPPING, Container(entries=[
        Container(moffset=m, len=n_) for m, n_ in entries]), unique=1, nodeid=1)
    assert built == data


def test_removemapping_257_is_limit_exceeded():
    data = removemapping(257, [(i, 1) for i in range(257)])
    with pytest.raises(LimitExceededError) as ei:
        codec.decode_request(data)
    assert ei.value.path == "count" and ei.value.offset == 40


@pytest.mark.parametrize("count,present", [(2, 1), (1, 2), (1, 0), (3, 2)])
def test_removemapping_length_mismatch(count, present):
    data = removemapping(count, [(0, 1)] * present)
    with pytest.raises(LengthMismatchError):
        codec.decode_request(data)


def test_removemapping_partial_entry_is_length_mismatch():
    data = in_header(O.FUSE_REMOVEMAPPING, struct.pack("<I", 1) + b"\0" * 15)
    with pytest.raises(LengthMismatchError):
        codec.decode_request(data)


def test_removemapping_huge_count_no_allocation():
    data = removemapping(2**32 - 1, [])
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            codec.decode_request(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # The construct schema too.
    with pytest.raises(Exception):  # noqa: B017 -- a construct error, translated by the codec
        messages.request_body(O.FUSE_REMOVEMAPPING).parse(data[40:])


def test_removemapping_forced_count():
    data = codec.encode_request(O.FUSE_REMOVEMAPPING, Container(count=5, entries=[]), unique=1)
    assert struct.unpack_from("<I", data, 40)[0] == 5
    with pytest.raises(LengthMismatchError):
        codec.decode_request(data)


def test_batch_forget_huge_count():
    data = in_header(O.FUSE_BATCH_FORGET, struct.pack("<II", 2**32 - 1, 0))
    with pytest.raises(LengthMismatchError):
        codec.decode_request(data)


def test_ioctl_retry_iovec_limit():
    body = struct.pack("<iIII", 0, messages.FUSE_IOCTL_RETRY, 200, 57)
    data = struct.pack("<IiQ", 16 + len(body), 0, 1) + body
    with pytest.raises(LimitExceededError):
        codec.decode_reply(data, O.FUSE_IOCTL)


# --- compat sizes ---------------------------------------------------------------------------

def _entry_out_len(minor):
    req = codec.decode_request(in_header(O.FUSE_LOOKUP, b"a\0"), minor)
    return len(codec.encode_reply(req, Container(nodeid=2, attr=Container(ino=2)), unique=1, minor=minor)) - 16


@pytest.mark.parametrize("minor", [22, 23, 36, 46])
def test_sizes_at_minor(minor):
    # 7.22..7.46 all use the full entry_out/attr_out/write_in/mknod_in/statfs.
    assert _entry_out_len(minor) == 128
    attr = codec.encode_reply(O.FUSE_GETATTR, Container(attr=Container()), unique=1, minor=minor)
    assert len(attr) - 16 == 104
    w = codec.encode_request(O.FUSE_WRITE, Container(data=b"xy"), unique=1, minor=minor)
    assert len(w) - 40 - 2 == 40
    m = codec.encode_request(O.FUSE_MKNOD, Container(mode=1, name=b"n"), unique=1, minor=minor)
    assert len(m) - 40 - 2 == 16
    s = codec.encode_reply(O.FUSE_STATFS, Container(st=Container()), unique=1, minor=minor)
    assert len(s) - 16 == 80
    for data in (w, m):
        assert codec.encode_request(data[4:8] and struct.unpack_from("<I", data, 4)[0],
                                    codec.decode_request(data, minor).body, unique=1,
                                    minor=minor) == data


def _plain(parts):
    return None if parts is None else [
        (type(p).__name__, sorted((k, v) for k, v in vars(p).items()
                                  if isinstance(v, int | str | tuple | type(None))))
        for p in parts]


def test_layouts_change_only_at_minor_steps():
    """The cached parts lookups key by messages.layout_step: every rule must give the same
    layout at a minor as at its step (a rule comparing with a minor not in MINOR_STEPS
    fails here), and one parts tuple serves every minor of a step."""
    minors = [*range(0, 16), 22, 23, 36, 46, 47, 255, 1 << 31]
    for table, extra in ((messages.REQUESTS, (False, True)), (messages.REPLIES, (None, 0, 1))):
        for op, rule in table.items():
            for x in extra:
                for minor in minors:
                    step = messages.layout_step(minor)
                    assert step <= minor and (step == 0 or step in messages.MINOR_STEPS)
                    assert _plain(rule(minor, x)) == _plain(rule(step, x)), (op, minor, x)
    assert messages.request_parts(O.FUSE_WRITE, 12) is messages.request_parts(O.FUSE_WRITE, 200)
    assert messages.request_parts(O.FUSE_WRITE, 8) is not messages.request_parts(O.FUSE_WRITE, 9)
    assert messages.reply_parts(O.FUSE_STATFS, 3) is messages.reply_parts(O.FUSE_STATFS, 0)


@pytest.mark.parametrize("minor,init_in,init_out", [(22, 16, 24), (23, 16, 64), (36, 64, 64), (46, 64, 64)])
def test_init_sizes_per_minor(minor, init_in, init_out):
    """A kernel at ``minor`` sends init_in of its size; a daemon at ``minor`` answers likewise."""
    in_body = Container(major=7, minor=minor, max_readahead=1 << 17, flags=0)
    if init_in == 64:
        in_body.flags2 = 0
    rq = codec.encode_request(O.FUSE_INIT, in_body, unique=1)
    assert len(rq) - 40 == init_in
    req = codec.decode_request(rq, minor)
    assert req.body.minor == minor and ("flags2" in req.body) == (init_in == 64)
    out_body = Container(major=7, minor=minor, max_readahead=1 << 17, flags=0,
                         max_background=16, congestion_threshold=12, max_write=1 << 20)
    if init_out == 64:
        out_body.update(dict(time_gran=1, max_pages=32, map_alignment=0, flags2=0))
    rp = codec.encode_reply(req, out_body, unique=1, minor=minor)
    assert len(rp) - 16 == init_out
    rep = codec.decode_reply(rp, req, minor)
    assert rep.body.max_write == 1 << 20
    assert codec.encode_reply(req, rep.body, unique=1, minor=minor) == rp


def test_init_bad_size():
    with pytest.raises(LengthMismatchError):
        codec.decode_request(in_header(O.FUSE_INIT, b"\0" * 20))


@pytest.mark.parametrize("minor", [22, 23, 36, 46])
def test_setxattr_ext_is_a_flag(minor):
    body = Container(flags=0, name=b"user.a", value=b"v")
    short = codec.encode_request(O.FUSE_SETXATTR, body, unique=1, minor=minor)
    long_ = codec.encode_request(O.FUSE_SETXATTR, body, unique=1, minor=minor,
                                 flags=messages.FUSE_SETXATTR_EXT)
    assert len(long_) - len(short) == 8
    assert codec.decode_request(short, minor).body.value == b"v"
    assert codec.decode_request(long_, minor, flags=messages.FUSE_SETXATTR_EXT).body.value == b"v"
    with pytest.raises(DecodeError):
        codec.decode_request(long_, minor)  # read as 8-byte setxattr_in: name/size disagree


# --- headers, forced lengths, errors ----------------------------------------------------------

def test_forced_len_and_total_extlen():
    data = codec.encode_request(O.FUSE_LOOKUP, Container(name=b"a"), unique=1, length=999)
    assert struct.unpack_from("<I", data)[0] == 999
    with pytest.raises(LengthMismatchError) as ei:
        codec.decode_request(data)
    assert ei.value.path == "fuse_in_header.len"
    data = codec.encode_request(O.FUSE_LOOKUP, Container(name=b"a"), unique=1, total_extlen=100)
    with pytest.raises(LengthMismatchError):
        codec.decode_request(data)


def test_forced_write_size_and_raw_body():
    data = codec.encode_request(O.FUSE_WRITE, Container(size=10, data=b"abc"), unique=1)
    with pytest.raises(LengthMismatchError):
        codec.decode_request(data)
    raw = codec.encode_request(O.FUSE_GETATTR, b"\1\2", unique=1)
    assert raw[40:] == b"\1\2"
    with pytest.raises(TruncatedError):
        codec.decode_request(raw)


def test_error_reply_has_no_body():
    r = codec.encode_reply(O.FUSE_LOOKUP, None, unique=3, error=-2)
    rep = codec.decode_reply(r, O.FUSE_LOOKUP)
    assert rep.error == -2 and rep.body is None and rep.unique == 3
    with pytest.raises(TrailingDataError):
        codec.decode_reply(struct.pack("<IiQ", 20, -2, 3) + b"\0" * 4, O.FUSE_LOOKUP)


def test_read_reply_longer_than_requested():
    req = codec.decode_request(codec.encode_request(O.FUSE_READ, Container(size=4), unique=1))
    ok = codec.encode_reply(req, Container(data=b"abcd"), unique=1)
    assert codec.decode_reply(ok, req).body.data == b"abcd"
    bad = codec.encode_reply(req, Container(data=b"abcde"), unique=1)
    with pytest.raises(LimitExceededError):
        codec.decode_reply(bad, req)
    assert codec.decode_reply(bad, O.FUSE_READ).body.data == b"abcde"  # no request: no limit


def test_notification_checks():
    with pytest.raises(DecodeError):
        codec.decode_notification(struct.pack("<IiQ", 16, 7, 5))  # unique != 0
    with pytest.raises(DecodeError):
        codec.decode_notification(struct.pack("<IiQ", 16, -2, 0))  # not a code
    with pytest.raises(DecodeError):
        codec.decode_notification(struct.pack("<IiQ", 26, 3, 0) + struct.pack("<QII", 1, 2, 0)[:10])


def test_unknown_opcode_kept_raw():
    req = codec.decode_request(in_header(777, b"\xde\xad"))
    assert req.opcode == 777 and req.body == b"\xde\xad"
    assert codec.encode_request(777, req.body, unique=1, nodeid=1) == in_header(777, b"\xde\xad")


def test_name_with_nul_cannot_be_encoded():
    with pytest.raises(EncodeError):
        codec.encode_request(O.FUSE_LOOKUP, Container(name=b"a\0b"), unique=1)


def test_missing_name_is_encode_error():
    with pytest.raises(EncodeError):
        codec.encode_request(O.FUSE_LOOKUP, Container(), unique=1)


@pytest.mark.parametrize("ext", [
    struct.pack("<II", 0, 32),               # size 0 (would loop forever if accepted)
    struct.pack("<II", 12, 32) + b"\0" * 4,  # not a multiple of 8
    struct.pack("<II", 16, 32) + struct.pack("<I", 99) + b"\0" * 4,  # nr_groups too big
    struct.pack("<II", 8, 2),                # two secctx announced, none present
])
def test_bad_extensions(ext):
    data = in_header(O.FUSE_MKDIR, struct.pack("<II", 0, 0) + b"d\0" + ext, extlen=len(ext) // 8)
    with pytest.raises(DecodeError):
        codec.decode_request(data)


def test_memoryview_and_bytearray_inputs():
    data = in_header(O.FUSE_LOOKUP, b"x\0")
    assert codec.decode_request(bytearray(data)) == codec.decode_request(memoryview(data))


@pytest.mark.parametrize(
    "build",
    [
        lambda: codec.encode_request(O.FUSE_LOOKUP, Container(name=1 << 32), unique=2),
        lambda: codec.encode_request(
            O.FUSE_WRITE,
            Container(fh=1, offset=0, write_flags=0, lock_owner=0, flags=0, padding=0,
                      data=1 << 32),
            unique=2,
        ),
        lambda: codec.encode_reply(
            O.FUSE_IOCTL,
            Container(result=0, flags=0, in_iovs=0, out_iovs=0, in_iov=[], out_iov=[],
                      data=(1 << 32) - 1),
            unique=2,
        ),
        lambda: codec.encode_reply(
            O.FUSE_READDIR,
            Container(entries=[Container(ino=2, off=1, namelen=9, type=8, name=(1 << 32) - 1)]),
            unique=2,
        ),
    ],
)
def test_int_where_bytes_belong_is_refused_without_allocating(build):
    """bytes(n) would allocate n zero bytes: a mutated body must get EncodeError, not 4 GiB."""
    tracemalloc.start()
    try:
        with pytest.raises(EncodeError):
            build()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
