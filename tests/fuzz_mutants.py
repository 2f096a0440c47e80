"""Realistic bug variants (mutants) of fuseproto, to measure what the in-process fuzzers catch.

Each mutant is one plausible developer mistake in the codec (``fuseproto.wire``), the
session, the DAX managers (OSv, Linux) or the model window device: a copy of one function
or method with the mistake in it. :data:`MUTANTS` lists them with the fuzz target that
should catch each; ``tests/test_fuzz_mutants.py`` asserts the catch (fixed seed, bounded
run) and ``benchmarks/bench_time_to_catch.py`` measures inputs and seconds to catch.

Planting a mutant patches fuseproto in the current process. The same
``module:function`` hook style as ``tests/fuzz_faults.py``: every mutant is a function
here, so ``FUSEPROTO_FUZZ_INJECT=fuzz_mutants:<name>`` (``tests/`` on PYTHONPATH) plants
it in an atheris subprocess or ``fuseproto fuzz replay``. In-process, use
``with planted(name): ...``, which undoes every patch afterwards.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from construct import Container, ListContainer

from fuseproto import session as session_mod
from fuseproto.dax import device as device_mod
from fuseproto.dax import linux as linux_mod
from fuseproto.dax import osv as osv_mod
from fuseproto.dax.messages import FH_NONE, FLAG_READ, FLAG_WRITE
from fuseproto.dax.osv import MappingPart, OsvDaxManager
from fuseproto.errors import (
    DecodeError,
    LengthMismatchError,
    LimitExceededError,
    RemoteProtocolError,
    TruncatedError,
)
from fuseproto.fuzz import engine, registry
from fuseproto.fuzz.findings import FindingStore
from fuseproto.wire import codec, ext, parts, structs
from fuseproto.wire.constants import InitFlags, IoctlFlags

__all__ = ["MUTANTS", "Mutant", "hunt", "planted", "undo"]

_UNDO: list[tuple[Any, str, Any]] = []


def _patch(owner: Any, name: str, value: Any) -> None:
    """Replace ``owner.name`` (undone by :func:`undo`)."""
    _UNDO.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)
    codec._KINDS.clear()  # kinds cache fast paths made before the patch


def undo() -> None:
    """Restore everything the planted mutants replaced."""
    while _UNDO:
        owner, name, old = _UNDO.pop()
        setattr(owner, name, old)
    codec._KINDS.clear()


@dataclass(frozen=True)
class Mutant:
    name: str
    target: str  # the in-process fuzz target that should catch it
    where: str  # the function the mistake is in
    story: str  # the mistake, in one line
    plant: Callable[[], None]


MUTANTS: dict[str, Mutant] = {}


def _mutant(target: str, where: str, story: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        MUTANTS[fn.__name__] = Mutant(fn.__name__, target, where, story, fn)
        return fn

    return register


@contextmanager
def planted(name: str) -> Iterator[Mutant]:
    """Plant mutant ``name`` for the ``with`` block."""
    m = MUTANTS[name]
    try:
        m.plant()
        yield m
    finally:
        undo()


def hunt(name: str, *, seed: int, cap: int, store_dir: str | os.PathLike[str],
         seconds: float | None = None) -> engine.LoopStats:
    """Fuzz mutant ``name``'s target with it planted, through the in-process engine (what
    the campaign runs), until the first finding or ``cap`` inputs (or ``seconds``).
    ``stats.iterations`` is then the inputs it took.

    The seeds are made before the mutant is planted, as the checked-in corpus was made by
    the code before the change: an encoder bug must not also rewrite the seeds."""
    target = registry.TARGETS[MUTANTS[name].target]
    seeds = tuple(target.corpus())
    frozen = dataclasses.replace(target, corpus=lambda: iter(seeds))
    with planted(name):
        return engine.run_loop(frozen, iterations=cap, seconds=seconds, seed=seed,
                               store=FindingStore(store_dir), stop_on_finding=True)


# ==== codec (wire_decode) ==================================================================


@_mutant("wire_decode", "wire/parts.py Counted.parse",
         "the item count is taken from the bytes present, not from the count field")
def counted_count_from_length() -> None:
    def parse(self: Any, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        n = (end - off) // self.isize  # BUG: body[self.count_field] is never compared
        if self.limit is not None and n > self.limit:
            raise LimitExceededError(f"{n} items above the maximum {self.limit}",
                                     offset=off - self.back, path=self.count_field)
        if (end - off) % self.isize:
            raise LengthMismatchError("partial item", offset=end, path=self.field)
        if self.fl is None:
            items = ListContainer(struct.unpack_from(f"<{n}Q", buf, off))
        else:
            p = self.fl.parse
            items = ListContainer([p(buf, o) for o in range(off, off + n * self.isize,
                                                            self.isize)])
        body[self.field] = items
        return off + n * self.isize, body

    _patch(parts.Counted, "parse", parse)


@_mutant("wire_decode", "wire/parts.py Counted.parse",
         "off-by-one in the maximum: count >= limit refused (REMOVEMAPPING of 256 entries)")
def counted_limit_off_by_one() -> None:
    original = parts.Counted.parse

    def parse(self: Any, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        n = body[self.count_field]
        if self.limit is not None and n >= self.limit:  # BUG: > limit
            raise LimitExceededError(f"{self.count_field}={n} above the maximum {self.limit}",
                                     offset=off - self.back, path=self.count_field)
        return original(self, buf, off, end, body)

    _patch(parts.Counted, "parse", parse)


@_mutant("wire_decode", "wire/parts.py Sized.parse",
         "size only checked against truncation; the data is sliced by size, extra bytes kept")
def sized_accepts_extra_bytes() -> None:
    def parse(self: Any, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        n = body[self.size_field]
        if end - off < n:  # BUG: != (bytes after the data are silently skipped)
            raise LengthMismatchError(f"{self.size_field}={n} but {end - off} bytes present",
                                      offset=off, path=self.size_field)
        body[self.field] = buf[off:off + n]
        return end, body

    _patch(parts.Sized, "parse", parse)


@_mutant("wire_decode", "wire/parts.py Dirents.parse",
         "a dirent record ends after its name: the 8-byte alignment padding is forgotten")
def dirent_ignores_padding() -> None:
    dirent, direntplus = structs.FAST["fuse_dirent"], structs.FAST["fuse_direntplus"]

    def parse(self: Any, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        items = ListContainer()
        hsize = direntplus.size if self.plus else dirent.size
        parse_rec = direntplus.parse if self.plus else dirent.parse
        while off < end:
            if end - off < hsize:
                raise TruncatedError("partial dirent header", offset=end, path="entries")
            rec = parse_rec(buf, off)
            d = rec["dirent"] if self.plus else rec
            name_end = off + hsize + d["namelen"]
            rec_end = name_end  # BUG: off + align8(hsize + namelen)
            if rec_end > end:
                raise TruncatedError("dirent runs past the reply", offset=end,
                                     path="entries.namelen")
            d["name"] = buf[off + hsize:name_end]
            rec["pad"] = b""
            items.append(rec)
            off = rec_end
        if body is None:
            body = Container()
        body["entries"] = items
        return off, body

    _patch(parts.Dirents, "parse", parse)


@_mutant("wire_decode", "wire/parts.py Fixed.parse",
         "the truncation check compares the absolute end with the struct size (forgets off)")
def fixed_bounds_absolute() -> None:
    def parse(self: Any, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        if end < self.size:  # BUG: end - off < self.size
            raise TruncatedError(f"{self.struct_name} needs {self.size} bytes",
                                 offset=end, path=self.struct_name)
        c = self.fl.parse(buf, off)
        if body is None:
            return off + self.size, c
        for k, v in c.items():
            body[k] = v
        return off + self.size, body

    _patch(parts.Fixed, "parse", parse)


@_mutant("wire_decode", "wire/codec.py RequestKind.__init__",
         "unchecked minor for struct size: the fixed-reply fast path is built at the full "
         "struct size, so a 7.8 peer's replies decode with the 7.9+ layout")
def reply_fast_path_ignores_minor() -> None:
    original = codec.RequestKind.__init__

    def init(self: Any, opcode: int, minor: int, setxattr_ext: bool) -> None:
        original(self, opcode, minor, setxattr_ext)
        if self.fixed_reply_size is not None:
            name = self.reply_parts[0].struct_name
            st, parse = structs.fast_pair("fuse_out_header", name, None)  # BUG: part's size
            self.fixed_reply_size = st.size
            self._reply_parse = parse

    _patch(codec.RequestKind, "__init__", init)


@_mutant("wire_decode", "wire/codec.py _out_unpack",
         "wrong field width/sign: fuse_out_header is unpacked as <IIQ, error as a u32")
def out_header_error_unsigned() -> None:
    _patch(codec, "_out_unpack", struct.Struct("<IIQ").unpack_from)  # BUG: "<IiQ"


@_mutant("wire_decode", "wire/parts.py AnySize.build",
         "lost field on re-encode: fuse_init_in/out is built short unless flags carry "
         "FUSE_INIT_EXT, whatever fields the body holds")
def init_short_without_init_ext() -> None:
    init_ext = int(InitFlags.FUSE_INIT_EXT)

    def build(self: Any, body: Any) -> bytes:
        keys = {k for k, v in body.items() if v is not None} & self.all_fields
        if not (body.get("flags") or 0) & init_ext:  # BUG: the flag decides, not the fields
            keys -= {"flags2", "unused", "map_alignment", "max_stack_depth",
                     "request_timeout", "max_pages"}
        n = self.sizes[-1]
        for n in self.sizes:
            if keys <= self.variant_fields[n]:
                break
        return self.variants[n].build(body)

    _patch(parts.AnySize, "build", build)


@_mutant("wire_decode", "wire/parts.py IoctlOut.parse",
         "wrong flag bit: FUSE_IOCTL_RETRY tested as 1 << 1 (FUSE_IOCTL_UNRESTRICTED)")
def ioctl_retry_wrong_bit() -> None:
    original = parts.IoctlOut.parse
    wrong = int(IoctlFlags.FUSE_IOCTL_UNRESTRICTED)
    retry = int(IoctlFlags.FUSE_IOCTL_RETRY)

    def parse(self: Any, buf: bytes, off: int, end: int, body: Any) -> tuple[int, Any]:
        flags = body["flags"]
        body["flags"] = (flags & ~retry) | (retry if flags & wrong else 0)  # BUG: & RETRY
        try:
            return original(self, buf, off, end, body)
        finally:
            body["flags"] = flags

    _patch(parts.IoctlOut, "parse", parse)


@_mutant("wire_decode", "wire/ext.py parse_ext",
         "fuse_supp_groups.nr_groups is trusted: never compared with the record's size")
def ext_nr_groups_trusted() -> None:
    original = ext.parse_ext

    def parse_ext(buf: bytes, off: int, end: int) -> list[Container]:
        out: list[Container] = []
        while off < end:
            if end - off < 8:
                raise TruncatedError("partial fuse_ext_header", offset=off, path="ext.size")
            size, typ = struct.unpack_from("<II", buf, off)
            if typ != ext.FUSE_EXT_GROUPS or size < 12 or size % 8 or size > end - off:
                out += original(buf, off, off + size if 8 <= size <= end - off else end)
                off += size if 8 <= size <= end - off else end - off
                continue
            rend, p = off + size, off + 12
            (n,) = struct.unpack_from("<I", buf, off + 8)  # BUG: no check against size
            out.append(Container(size=size, type=typ, nr_groups=n,
                                 groups=ListContainer(struct.unpack_from(f"<{n}I", buf, p)),
                                 pad=buf[p + 4 * n:rend]))
            off = rend
        return out

    _patch(codec.messages, "parse_ext", parse_ext)


# ==== session ================================================================================


@_mutant("session", "session.py Session._register",
         "off-by-one in the bound: one request more than max_pending is accepted")
def session_pending_off_by_one() -> None:
    original = session_mod.Session._register

    def _register(self: Any, request: Any, error: type[Exception]) -> None:
        # The original's `len(pending) >= self.max_pending`, written as `>`.
        saved, self.max_pending = self.max_pending, self.max_pending + 1  # BUG
        try:
            original(self, request, error)
        finally:
            self.max_pending = saved

    _patch(session_mod.Session, "_register", _register)


@_mutant("session", "session.py Session.feed_reply",
         "the reply to an interrupted request removes it from pending but not its "
         "INTERRUPT record")
def session_interrupt_outlives_request() -> None:
    def feed_reply(self: Any, data: bytes) -> Any:
        if len(data) < 16:
            session_mod._peek_out_header(data)
        length, error, unique = struct.unpack_from("<IiQ", data)
        if unique == 0:
            return codec.decode_notification(data)
        if length != len(data):
            raise LengthMismatchError("len mismatch", offset=0, path="fuse_out_header.len")
        if not -511 <= error <= 0:
            raise RemoteProtocolError(f"reply with error {error}")
        interrupt = self._interrupts.get(unique)
        if interrupt is not None:
            reply = self.kind(session_mod._INTERRUPT).decode_reply(data, interrupt.request)
            self._after_interrupt_reply(unique, interrupt, reply.error)
            return reply
        request = self._pending.get(unique)
        if request is None:
            raise RemoteProtocolError(f"reply to unique {unique}, which is not in flight")
        try:
            reply = self.kind(request.opcode).decode_reply(data, request)
        except Exception as exc:
            self._complete(unique)
            exc.request = request  # type: ignore[attr-defined]
            raise
        if request.opcode in session_mod._INIT_OPS:
            self._learn_init_reply(reply.error, reply.body)
        del self._pending[unique]  # BUG: and the interrupt of it (self._complete)
        return reply

    _patch(session_mod.Session, "feed_reply", feed_reply)


@_mutant("session", "session.py Session.feed_reply",
         "the request is popped from pending before the reply's header is validated")
def session_pop_before_validate() -> None:
    original = session_mod.Session.feed_reply

    def feed_reply(self: Any, data: bytes) -> Any:
        if len(data) >= 16:
            length, error, unique = struct.unpack_from("<IiQ", data)
            if unique and not (length == len(data) and -511 <= error <= 0):
                self._complete(unique)  # BUG: popped before the header checks refuse it
        return original(self, data)

    _patch(session_mod.Session, "feed_reply", feed_reply)


@_mutant("session", "session.py Session.feed_reply",
         "reply paired to the wrong unique: bit 0 (the INTERRUPT bit) is stripped from "
         "the unique before the pending lookup")
def session_pairs_masked_unique() -> None:
    def feed_reply(self: Any, data: bytes) -> Any:
        if len(data) < 16:
            session_mod._peek_out_header(data)
        length, error, unique = struct.unpack_from("<IiQ", data)
        if unique == 0:
            return codec.decode_notification(data)
        if length != len(data):
            raise LengthMismatchError("len mismatch", offset=0, path="fuse_out_header.len")
        if not -511 <= error <= 0:
            raise RemoteProtocolError(f"reply with error {error}")
        interrupt = self._interrupts.get(unique)
        if interrupt is not None:
            reply = self.kind(session_mod._INTERRUPT).decode_reply(data, interrupt.request)
            self._after_interrupt_reply(unique, interrupt, reply.error)
            return reply
        key = unique & ~1  # BUG: the reply's unique as it is
        request = self._pending.get(key)
        if request is None:
            raise RemoteProtocolError(f"reply to unique {unique}, which is not in flight")
        try:
            reply = self.kind(request.opcode).decode_reply(data, request)
        except DecodeError as exc:
            self._complete(key)
            exc.request = request  # type: ignore[attr-defined]
            raise
        if request.opcode in session_mod._INIT_OPS:
            self._learn_init_reply(reply.error, reply.body)
        self._complete(key)
        return reply

    _patch(session_mod.Session, "feed_reply", feed_reply)


@_mutant("session", "session.py Session._register",
         "unique 0 (reserved for notifications) accepted for a request")
def session_accepts_unique_zero() -> None:
    original = session_mod.Session._register

    def _register(self: Any, request: Any, error: type[Exception]) -> None:
        if request.unique == 0 and request.opcode not in session_mod._NOT_ONE_REPLY_OPS:
            if len(self._pending) >= self.max_pending or 0 in self._pending:
                return original(self, request, error)
            self._pending[0] = request  # BUG: no "unique 0 is reserved" check
            return None
        return original(self, request, error)

    _patch(session_mod.Session, "_register", _register)


@_mutant("session", "session.py Session._register_interrupt",
         "a second INTERRUPT (another unique) of an already interrupted request is tracked "
         "too, overwriting the first's record")
def session_interrupt_twice() -> None:
    def _register_interrupt(self: Any, request: Any, error: type[Exception]) -> None:
        unique = request.unique
        target = request.body.get("unique") if request.body is not None else None
        existing = self._interrupts.get(unique)
        if existing is not None:
            if existing.target == target and existing.may_resend:
                existing.request = request
                existing.may_resend = False
                return
            raise error(f"INTERRUPT unique {unique} used twice while outstanding")
        if target not in self._pending:  # BUG: or target in self._interrupt_of
            return
        self._interrupts[unique] = session_mod._Interrupt(request, target)
        self._interrupt_of[target] = unique

    _patch(session_mod.Session, "_register_interrupt", _register_interrupt)


# ==== DAX managers: OSv ======================================================================


@_mutant("dax", "dax/osv.py OsvDaxManager.find",
         "a hit in the middle of a mapping reports the whole mapping's length (forgets the "
         "chunks before the hit)")
def osv_find_forgets_excess() -> None:
    def find(self: Any, nodeid: int, fstart: int) -> MappingPart | None:
        where = self._index.get((nodeid, fstart))
        if not where:
            return None
        m = self._mappings[self._owner[where[0]]]
        excess = fstart - m.fstart
        return MappingPart(m.nchunks, m.mstart + excess)  # BUG: m.nchunks - excess

    _patch(OsvDaxManager, "find", find)


@_mutant("dax", "dax/osv.py OsvDaxManager.dax_read",
         "the bytes a hit may serve ignore the offset inside the first chunk")
def osv_read_ignores_chunk_offset() -> None:
    def dax_read(self: Any, nodeid: int, fh: int, offset: int, read_amt: int, *,
                 file_size: int, aggressive: bool | None = None) -> Any:
        if not self.usable:
            return errno.ENOTSUP, b"", None, 0
        if aggressive is None:
            aggressive = self.aggressive
        c = self.chunk_size
        fstart, coffset = divmod(offset, c)
        setups = 0
        mp = self.find(nodeid, fstart)
        if mp is None:
            to_map = coffset + ((file_size - offset) if aggressive else read_amt)
            nchunks = -(-to_map // c)
            if nchunks > 1:
                nchunks = self._clip_to_unmapped(nodeid, fstart, nchunks)
            before = self.stats.setupmapping
            error, mp = self.map(nodeid, fh, nchunks, fstart, evict=True)
            setups = self.stats.setupmapping - before
            if error:
                return error, b"", None, setups
        n = min(read_amt, mp.nchunks * c)  # BUG: mp.nchunks * c - coffset
        moffset = mp.mstart * c + coffset
        try:
            data = self.window_read(moffset, n, nodeid, offset)
        except device_mod.WindowFault as e:
            return e.errno or errno.EFAULT, b"", None, setups
        return 0, data, moffset, setups

    _patch(OsvDaxManager, "dax_read", dax_read)


@_mutant("dax", "dax/osv.py OsvDaxManager.map",
         "a new mapping is merged into the top one when the file chunks follow on, "
         "without checking that the top maps the same node")
def osv_merge_ignores_node() -> None:
    def map_(self: Any, nodeid: int, fh: int, nchunks: int, fstart: int,
             evict: bool = False) -> Any:
        mappings = self._mappings
        top = mappings[-1] if mappings else None
        empty = self.window_chunks - (top.mstart + top.nchunks if top is not None else 0)
        if evict and empty < nchunks and mappings:
            error, unmapped = self.unmap(nchunks - empty, deep=False)
            if error:
                return error, None
            empty += unmapped.nchunks
            top = mappings[-1] if mappings else None
        to_map = min(nchunks, empty)
        if to_map == 0:
            part = MappingPart(0, self.window_chunks - empty)
            return (0 if nchunks == 0 else errno.ENOBUFS), part
        mstart = self.window_chunks - empty
        error = self.map_ll(nodeid, fh, to_map, fstart, mstart)
        if error:
            return error, None
        if top is not None and top.fstart + top.nchunks == fstart:  # BUG: top.nodeid == nodeid
            top.nchunks += to_map
        else:
            mappings.append(osv_mod._Mapping(nodeid, to_map, fstart, mstart))
        idx = len(mappings) - 1
        owner, index = self._owner, self._index
        for k in range(to_map):
            owner[mstart + k] = idx
            index.setdefault((nodeid, fstart + k), []).append(mstart + k)
        return 0, MappingPart(to_map, mstart)

    _patch(OsvDaxManager, "map", map_)


@_mutant("dax", "dax/osv.py OsvDaxManager.unmap",
         "off-by-one in the eviction loop: the lowest evicted chunk keeps its index entry, "
         "so a later lookup finds a chunk that now holds other data")
def osv_evict_leaves_stale_chunk() -> None:
    def unmap(self: Any, nchunks: int, deep: bool = False) -> Any:
        mappings = self._mappings
        to_unmap, erase_first, from_last = 0, len(mappings), 0
        for i in range(len(mappings) - 1, -1, -1):
            if to_unmap >= nchunks:
                break
            m = mappings[i]
            if m.nchunks <= nchunks - to_unmap:
                erase_first = i
                to_unmap += m.nchunks
            else:
                from_last = nchunks - to_unmap
                to_unmap = nchunks
        if to_unmap == 0:
            return (0 if nchunks == 0 else errno.ENODATA), MappingPart(0, self.first_empty())
        top = mappings[-1].mstart + mappings[-1].nchunks
        if deep:
            error = self.unmap_ll(to_unmap, top - to_unmap)
            if error:
                return error, None
        for p in range(top - 1, top - to_unmap, -1):  # BUG: stops one chunk early
            self._drop_chunk(p)
        del mappings[erase_first:]
        if from_last > 0:
            mappings[-1].nchunks -= from_last
        return 0, MappingPart(to_unmap, top - to_unmap)

    _patch(OsvDaxManager, "unmap", unmap)


# ==== DAX managers: Linux ====================================================================


@_mutant("dax", "dax/linux.py LinuxDaxManager._inode_lookup_first",
         "inline reclaim takes the inode's lowest range even while it is in use (pinned)")
def linux_inline_reclaims_in_use() -> None:
    def _inode_lookup_first(self: Any, nodeid: int) -> Any:
        inode = self._inodes.get(nodeid)
        if inode is None or not inode.keys:
            return None
        return inode.tree[inode.keys[0]]  # BUG: the first with refcnt == 1

    _patch(linux_mod.LinuxDaxManager, "_inode_lookup_first", _inode_lookup_first)


@_mutant("dax", "dax/linux.py LinuxDaxManager._try_to_free",
         "the background worker reclaims the busy list's head without looking at its "
         "reference count")
def linux_worker_reclaims_in_use() -> None:
    def _try_to_free(self: Any, nr_to_free: int) -> int:
        nr_freed = 0
        busy = self._busy
        while nr_freed < nr_to_free and busy:
            pick = next(iter(busy.values()))  # BUG: skips no range in use
            del busy[pick.window_offset]
            busy[pick.window_offset] = pick
            self._reclaim_one_locked(pick.nodeid, pick)  # (nor does _lookup_and_reclaim)
            self._reinit_add_to_free_pool(pick)
            nr_freed += 1
        return nr_freed

    _patch(linux_mod.LinuxDaxManager, "_try_to_free", _try_to_free)


@_mutant("dax", "dax/linux.py LinuxDaxManager._reinit_add_to_free_pool",
         "a freed range goes to the head of the free list (appendleft), not the tail")
def linux_free_list_lifo() -> None:
    def _reinit_add_to_free_pool(self: Any, r: Any) -> None:
        del self._busy[r.window_offset]
        r.nodeid, r.start_idx = None, 0
        self._free.appendleft(r)  # BUG: append

    _patch(linux_mod.LinuxDaxManager, "_reinit_add_to_free_pool", _reinit_add_to_free_pool)


@_mutant("dax", "dax/linux.py LinuxDaxManager._fill",
         "operator precedence: pos - r.start_idx << shift is (pos - start_idx) << shift")
def linux_fill_precedence() -> None:
    def _fill(self: Any, r: Any, pos: int, length: int, i_size: int) -> tuple[int, int]:
        offset = pos - r.start_idx << self.shift  # BUG: pos - (r.start_idx << self.shift)
        n = min(length, r.length - offset)
        if pos + n > i_size:
            n = i_size - pos
        return r.window_offset + offset, n

    _patch(linux_mod.LinuxDaxManager, "_fill", _fill)


@_mutant("dax", "dax/linux.py LinuxDaxManager._setup_one_mapping",
         "the writable upgrade of a range registers it again in the inode and busy list")
def linux_upgrade_registers_again() -> None:
    def _setup_one_mapping(self: Any, nodeid: int, start_idx: int, r: Any, writable: bool,
                           upgrade: bool) -> int:
        err = self.send_setupmapping(
            nodeid, fh=FH_NONE, foffset=start_idx << self.shift, length=self.range_size,
            flags=FLAG_READ | (FLAG_WRITE if writable else 0), moffset=r.window_offset)
        if err:
            return err
        r.writable = writable
        # BUG: the three lines below belong under `if not upgrade:`
        r.nodeid, r.start_idx = nodeid, start_idx
        self._inodes.setdefault(nodeid, linux_mod._InodeDax()).insert(r)
        self._busy[r.window_offset] = r
        return 0

    _patch(linux_mod.LinuxDaxManager, "_setup_one_mapping", _setup_one_mapping)


@_mutant("dax", "dax/linux.py LinuxDaxManager._removemapping_list",
         "missed REMOVEMAPPING batch split at 256: all of an inode's ranges go in one message")
def linux_forget_no_batch_split() -> None:
    def _removemapping_list(self: Any, nodeid: int, ranges: list[Any]) -> int:
        if not ranges:
            return 0
        # BUG: batches of at most REMOVEMAPPING_MAX_ENTRY entries
        return self.send_removemapping(nodeid, [(r.window_offset, r.length) for r in ranges])

    _patch(linux_mod.LinuxDaxManager, "_removemapping_list", _removemapping_list)


@_mutant("dax", "dax/linux.py LinuxDaxManager.forget",
         "stale lookup after forget: the inode's ranges are freed but its index is kept "
         "(get instead of pop), so the node id still finds them")
def linux_forget_keeps_index() -> None:
    original = linux_mod.LinuxDaxManager.forget

    def forget(self: Any, nodeid: int) -> None:
        inode = self._inodes.get(nodeid)
        original(self, nodeid)
        if inode is not None:
            self._inodes[nodeid] = inode  # BUG: self._inodes.pop(nodeid)

    _patch(linux_mod.LinuxDaxManager, "forget", forget)


# ==== the model window device ================================================================


@_mutant("dax", "dax/device.py ModelDevice.read",
         "the file offset of a window byte is taken from the read's start, not the "
         "mapping's start")
def device_read_wrong_base() -> None:
    def read(self: Any, moffset: int, length: int) -> bytes:
        self._check_inside(moffset, length)
        if self.files is None:
            return bytes(length)
        out = bytearray()
        for start, end, m in self.segments(moffset, length):
            if m is None:
                out += bytes(end - start)
                continue
            data = self._bytes_of(m)
            if device_mod._past_eof(m, start, end, len(data)) is not None:
                raise device_mod.WindowFault(errno.EFAULT, "past the end of the file")
            f0 = m.foffset + (start - moffset)  # BUG: m.file_offset(start)
            chunk = data[f0:f0 + (end - start)]
            out += chunk
            out += bytes(end - start - len(chunk))
        return bytes(out)

    _patch(device_mod.ModelDevice, "read", read)


@_mutant("dax", "dax/device.py WindowDevice._setup",
         "no MAP_FIXED semantics: a new mapping is inserted without carving the old "
         "mappings it covers")
def device_setup_without_carve() -> None:
    def _setup(self: Any, nodeid: int, body: Any) -> int:
        if self._bad_setup(body.moffset, body.len, body.foffset):
            return errno.EINVAL
        m = device_mod.DeviceMapping(body.moffset, body.len, nodeid, body.foffset,
                                     body.flags, body.fh)
        try:
            m = self._apply_map(m)
        except OSError as e:
            return e.errno or errno.EIO
        self._insert(m)  # BUG: self._carve(m.moffset, m.end) first
        return 0

    _patch(device_mod.WindowDevice, "_setup", _setup)


@_mutant("dax", "dax/device.py WindowDevice.segments",
         "bisect off-by-one: bisect_left finds the mapping starting at the position but "
         "skips one that contains it, so a read from inside a mapping starts with a hole")
def device_segments_bisect() -> None:
    def segments(self: Any, moffset: int, length: int) -> list[tuple[int, int, Any]]:
        out: list[tuple[int, int, Any]] = []
        pos, end = moffset, moffset + length
        i = bisect.bisect_left(self._starts, pos)  # BUG: bisect_right(...) - 1
        while pos < end:
            m = self._ext[self._starts[i]] if i < len(self._starts) else None
            if m is not None and m.end <= pos:
                i += 1
                continue
            if m is None or m.moffset >= end:
                out.append((pos, end, None))
                break
            if m.moffset > pos:
                out.append((pos, m.moffset, None))
                pos = m.moffset
            stop = min(end, m.end)
            out.append((pos, stop, m))
            pos = stop
            i += 1
        return out

    _patch(device_mod.WindowDevice, "segments", segments)
