"""Live mode of the DAX target: the same inputs drive managers whose device is a real
DAX daemon (``c-dax``, or one of its planted-bug variants), through the real window.

``FUSEPROTO_DAX_DEVICE=c-dax`` (any build with our DAX patch) makes
:func:`~fuseproto.fuzz.dax_target.check_dax` call :func:`check_live`. One daemon is
started per process, on first use (:class:`LiveSession`: a scratch directory with four
files, ``open_dax_daemon`` with a :data:`LIVE_WINDOW` window, each file looked up and
opened read-only and read-write), and stopped by PID when the process exits (or after a
daemon failure, before the next input starts a new one).

Per input: one REMOVEMAPPING of the whole window gives the daemon a clean window (the
window must then hold nothing: a daemon that leaves a range mapped is caught here too);
the input's geometry is clamped to the live window (a :class:`RefusingDevice` over the
daemon's device narrows it, as in the model); each file's size is what the guest believes
(``ClientBackend.note_size``: the host files stay :data:`LIVE_FILE` bytes, their first
:data:`PATTERN_BYTES` random); the program runs with every invariant on the daemon's actual
mappings (the device's extent map *is* the backend channel's FS_MAP / FS_UNMAP); and then
:func:`~fuseproto.dax.virtiofsd.check_backend_record` judges this input's part of the
backend-channel record: alignment, inside the window, each request mapped / unmapped
exactly as asked (nothing when refused), mapped bytes == the window's pages, no writable
map of a read-only handle.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
from typing import Any

from .. import scratch
from ..dax.device import RefusingDevice
from ..dax.invariants import InvariantViolation
from ..dax.messages import DaxMessage, removemapping
from ..dax.virtiofsd import (
    ClientBackend,
    LiveDax,
    RecordEntry,
    check_backend_record,
    open_dax_daemon,
)
from ..errors import FuseError, FuseprotoError
from ..wire.constants import FUSE_ROOT_ID
from .dax_ops import NODES, Program, decode_program, pattern_bytes
from .dax_run import run_program

__all__ = ["LIVE_FILE", "LIVE_WINDOW", "LiveSession", "LiveStage", "check_live",
           "close_session", "session"]

LIVE_WINDOW = 32 << 20  # the daemon's window (geometries are clamped to it)
LIVE_FILE = 3 * LIVE_WINDOW + (1 << 20)  # host file size (sparse past PATTERN_BYTES)
PATTERN_BYTES = 8 << 20


class LiveSession:
    """One DAX daemon, its window and four opened files, for many inputs."""

    def __init__(self, device: str) -> None:
        from ..daemons import resolve

        self.name = device
        self.root = scratch.directory("daxlive")
        self.live: LiveDax | None = None
        self.fds: dict[int, int] = {}  # nodeid -> our fd on the host file (the oracle)
        try:
            shared = os.path.join(self.root, "shared")
            os.mkdir(shared)
            names = {n: f"f{n}" for n in NODES}
            for n, name in names.items():
                path = os.path.join(shared, name)
                with open(path, "wb") as f:
                    f.write(pattern_bytes(n, 0, PATTERN_BYTES))
                    f.truncate(LIVE_FILE)
            self.live = open_dax_daemon(resolve(device), shared, LIVE_WINDOW)
            client = self.live.client
            self.nodes: dict[int, int] = {}
            self.ro: dict[int, int] = {}
            self.rw: dict[int, int] = {}
            for n, name in names.items():
                nid = client.lookup(FUSE_ROOT_ID, name).nodeid
                self.nodes[n] = nid
                self.ro[nid] = client.open(nid, os.O_RDONLY).fh
                self.rw[nid] = client.open(nid, os.O_RDWR).fh
                self.fds[nid] = os.open(os.path.join(shared, name), os.O_RDONLY | os.O_CLOEXEC)
            self.backend = ClientBackend(client)
            self.access = {fh: os.O_RDONLY for fh in self.ro.values()}
            self.access.update({fh: os.O_RDWR for fh in self.rw.values()})
            self.inputs = 0
        except BaseException:
            self.close()
            raise

    @property
    def alignment(self) -> int:
        assert self.live is not None
        return self.live.map_alignment

    def reset(self) -> None:
        """A clean window for the next input: one REMOVEMAPPING of all of it."""
        assert self.live is not None
        err = self.live.device.submit(removemapping(0, [(0, LIVE_WINDOW)]))
        left = self.live.window.mappings()
        if err or left:
            raise InvariantViolation(_violation(
                "exact_ranges", f"a REMOVEMAPPING of the whole window answered {err} and "
                f"left {len(left)} mapping(s), e.g. [{left[0].moffset:#x}, {left[0].end:#x})"
                if left else f"a REMOVEMAPPING of the whole window answered {err}"))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.live is not None:
            live, self.live = self.live, None
            live.close()  # stops the daemon (by PID) and gives the window back
        shutil.rmtree(self.root, ignore_errors=True)


def _violation(name: str, detail: str) -> Any:
    from ..dax.violations import Violation

    return Violation(name, detail)


class LiveStage:
    """A :class:`~fuseproto.fuzz.dax_run.Stage` over a :class:`LiveSession`."""

    reuse_nodes = False  # a daemon's node ids are its own

    def __init__(self, sess: LiveSession, program: Program) -> None:
        geo = program.geometry
        assert sess.live is not None
        self.sess = sess
        self.backend = sess.backend
        align = geo.map_alignment
        if align is not None and align < sess.alignment:
            align = sess.alignment
        self.device = RefusingDevice(sess.live.device, window_size=geo.window_size,
                                     map_alignment=align)

    def node(self, n: int) -> int:
        return self.sess.nodes[n]

    def set_file(self, nodeid: int, size: int, key: int) -> None:
        self.backend.note_size(nodeid, min(size, LIVE_FILE))

    def oracle(self, nodeid: int, offset: int, size: int) -> bytes:
        return os.pread(self.sess.fds[nodeid], size, offset)

    def fh(self, nodeid: int, write: bool) -> int:
        return (self.sess.rw if write else self.sess.ro)[nodeid]

    def probe(self, msg: DaxMessage) -> int:
        """Sent as built (a lying count included), recorded like the device's requests."""
        live = self.sess.live
        assert live is not None
        first = len(live.handler.events)
        client = live.client
        try:
            client.result(client.submit_unchecked(msg.opcode, msg.body, nodeid=msg.nodeid))
            err = 0
        except FuseError as e:
            err = e.errno or errno.EIO
        live.device.log.append(RecordEntry(msg, err, tuple(live.handler.events[first:])))
        return err


_SESSION: LiveSession | None = None


def session(device: str) -> LiveSession:
    """The process's live session on ``device`` (started now if there is none)."""
    global _SESSION
    if _SESSION is not None and _SESSION.name != device:
        close_session()
    if _SESSION is None:
        _SESSION = LiveSession(device)
        atexit.register(close_session)
    return _SESSION


def close_session() -> None:
    global _SESSION
    if _SESSION is not None:
        sess, _SESSION = _SESSION, None
        sess.close()


def check_live(data: bytes, device: str) -> None:
    """One input against the live daemon ``device`` (raises what the model would, and
    InvariantViolation for what the backend-channel record shows)."""
    program = decode_program(data)
    if program is None:
        return
    sess = session(device)
    assert sess.live is not None
    try:
        sess.reset()
        live = sess.live
        # The record of this input alone (it starts from an empty window); requests to
        # the backend channel come only while a request is served, so none is in flight.
        del live.device.log[:]
        del live.handler.events[:]
        program = Program(program.geometry.clamp(LIVE_WINDOW), program.ops)
        run_program(program, LiveStage(sess, program))
        sess.inputs += 1
        found = check_backend_record(
            live.handler.events, LIVE_WINDOW, live.map_alignment, log=live.device.log,
            handle_access=sess.access,
            mapped_bytes=live.window.window.mapped_pages() * os.sysconf("SC_PAGE_SIZE"))
        if found:
            raise InvariantViolation(found[0])
    except FuseprotoError as e:
        if not isinstance(e, InvariantViolation):  # the daemon or the channel failed
            close_session()
        raise
    except OSError:
        close_session()
        raise
