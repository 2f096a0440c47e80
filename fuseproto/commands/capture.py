"""``fuseproto capture proxy``: record a VMM's virtio-fs traffic with a vhost-user proxy."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import stat
import sys
from types import FrameType
from typing import Any

from .. import scratch

_EPILOG = """\
how it works:
  The proxy listens on --listen where the VMM (QEMU's vhost-user-fs-pci chardev) expects
  the daemon, and connects to the daemon's socket: --daemon-socket names a virtiofsd you
  started, --daemon starts one itself (on --shared-dir, in a temporary directory, stopped
  by PID at the end). Every vhost-user message is forwarded unchanged, file descriptors
  included; the proxy's data plane (a small C program built with gcc on first use and
  cached) maps the guest memory read-only, is handed the kick and call eventfds (the
  daemon gets eventfds of the proxy's own) and forwards each kick and call after reading
  the rings, so every FUSE request and reply lands in the capture (decode it with
  `fuseproto decode`). Backend-channel
  messages (DAX FS_MAP / FS_UNMAP) and anything the proxy cannot read are written as
  annotation records; the traffic goes on regardless.

example (QEMU):
  fuseproto capture proxy --listen /tmp/vfs.sock --daemon rust --shared-dir /srv/share \\
      -w guest.pcap &
  qemu-system-x86_64 ... -chardev socket,id=vfs,path=/tmp/vfs.sock \\
      -device vhost-user-fs-pci,chardev=vfs,tag=share ...

readiness:
  Once the listening socket exists (and the daemon, with --daemon, is up), the proxy
  prints "fuseproto capture proxy: listening on PATH" on stderr and, with --ready-fd N,
  writes "ready\\n" to fd N and closes it.

ending:
  With --once (the default) the proxy exits 0 when the VMM disconnects (the daemon's
  connection is closed too, and a daemon it started exits and is reaped). SIGINT, SIGTERM
  and SIGHUP close both connections and the capture and exit 0. Each record reaches the file
  before the kick or call it came with is passed on (whole records, nothing buffered),
  so the capture is valid even if the proxy is killed (its data plane, a process of its
  own, finishes the record it is writing and exits).

exit status:
  0 the VMM disconnected, or a signal; 1 the daemon closed the connection or died first;
  2 bad usage, or the daemon or the sockets could not be set up.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "capture",
        help="record virtio-fs traffic (a vhost-user proxy between a VMM and virtiofsd)",
        description="Record FUSE traffic from sources fuseproto does not drive itself.",
    )
    csub = p.add_subparsers(dest="capture_command", metavar="SUBCOMMAND")
    x = csub.add_parser(
        "proxy",
        help="a recording vhost-user proxy between a VMM (QEMU) and virtiofsd",
        description="Sit between a VMM and a virtiofsd, forward everything unchanged and "
        "record every FUSE request and reply to a pcap file.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("--listen", required=True, metavar="VMM.sock",
                   help="the vhost-user socket to create for the VMM to connect to (must "
                   "not exist)")
    which = x.add_mutually_exclusive_group(required=True)
    which.add_argument("--daemon-socket", metavar="DAEMON.sock",
                       help="the socket of a virtiofsd that is already listening")
    which.add_argument("--daemon", metavar="c|rust|VARIANT|PATH",
                       help="start this virtiofsd (packaged c or rust, a built variant such "
                       "as c-dax, or a binary's path) on --shared-dir")
    x.add_argument("--shared-dir", metavar="DIR",
                   help="with --daemon: the host directory the daemon serves")
    x.add_argument("--daemon-args", default="", metavar="ARGS",
                   help="with --daemon: extra daemon arguments, one shell-quoted string "
                   "(e.g. \"-o cache=always\")")
    x.add_argument("--dax-window", type=_size, metavar="BYTES",
                   help="with --daemon and a DAX build (c-dax): turn DAX on for a window of "
                   "this size (the VMM's cache-size), e.g. 64M")
    x.add_argument("-w", "--write", required=True, metavar="FILE",
                   help="the pcap file to write (replaced if it exists)")
    x.add_argument("--snaplen", type=_size, default=None, metavar="BYTES",
                   help="record at most this many bytes of each message, as tcpdump -s "
                   "(the rest is not even read: cheap for large READs and WRITEs; "
                   "`fuseproto decode` shows what was cut); default: whole messages, up "
                   "to 16M")
    x.add_argument("--once", action=argparse.BooleanOptionalAction, default=True,
                   help="exit when the VMM disconnects (default); --no-once waits for the "
                   "next connection (a new daemon per connection with --daemon; session N "
                   "is written to FILE with .N before its extension)")
    x.add_argument("--ready-fd", type=int, metavar="N",
                   help="write 'ready\\n' to this inherited fd (then close it) once listening")
    x.add_argument("--scan-interval", type=float, default=0.001, metavar="S",
                   help="while requests are in flight, also read the rings every S seconds "
                   "(default 0.001; every 50 us while the driver has its interrupts off): a "
                   "guest draining its used ring takes replies no call announced, and may "
                   "reuse their buffers before the next call")
    x.add_argument("--quiet", action="store_true", help="no status lines on stderr")
    x.set_defaults(func=run_proxy)

    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib")
    try:
        if t and t[-1] in units:
            return int(t[:-1], 0) * units[t[-1]]
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64M)") from None


def _fail(text: str) -> int:
    print(f"fuseproto capture proxy: {text}", file=sys.stderr, flush=True)
    return 2


def run_proxy(args: argparse.Namespace) -> int:
    from ..errors import FuseprotoError

    def say(text: str) -> None:
        if not args.quiet:
            print(f"fuseproto capture proxy: {text}", file=sys.stderr, flush=True)

    if args.daemon is not None and not args.shared_dir:
        return _fail("--daemon needs --shared-dir")
    if args.daemon is None and (args.shared_dir or args.daemon_args or args.dax_window):
        return _fail("--shared-dir, --daemon-args and --dax-window go with --daemon")
    if args.shared_dir and not os.path.isdir(args.shared_dir):
        return _fail(f"--shared-dir {args.shared_dir!r} is not a directory")
    if os.path.lexists(args.listen):
        return _fail(f"--listen {args.listen} already exists")
    if args.snaplen is not None and args.snaplen < 16:
        return _fail("--snaplen: at least 16 (a FUSE reply header)")
    if args.scan_interval <= 0:
        return _fail("--scan-interval must be positive")
    from ..capture.relay import RelayError, executable

    try:
        executable()  # the data plane: built now on first use (cached), before "ready"
    except RelayError as e:
        return _fail(str(e))
    starter = None
    if args.daemon is not None:
        try:
            starter = _DaemonStarter(args)
        except (FuseprotoError, ValueError) as e:
            return _fail(str(e))

    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    caught: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, on_signal) for s in sigs}
    old_wakeup = signal.set_wakeup_fd(stop_w)
    listener: socket.socket | None = None
    output = _Output(args.write, args.snaplen)
    try:
        try:
            output.open(0)  # the first file now: a bad path is an error before "ready"
            if starter is not None:
                starter.start()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listener.bind(args.listen)
            listener.listen(1)
        except (FuseprotoError, OSError) as e:
            return _fail(str(e))
        if starter is not None:
            say(f"started {starter.describe()} on {starter.socket_path}")
        say(f"listening on {args.listen}")
        if args.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
        session = 0
        while True:
            rc = _one_session(args, listener, stop_r, output, session, starter, caught, say)
            if rc is not None:
                return rc
            session += 1
    finally:
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(args.listen).st_mode):
                    os.unlink(args.listen)
        if starter is not None:
            starter.cleanup()
        output.close()
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(stop_r)
        os.close(stop_w)


def _one_session(args: argparse.Namespace, listener: socket.socket, stop_r: int,
                 output: _Output, session: int, starter: _DaemonStarter | None,
                 caught: list[int], say: Any) -> int | None:
    """Serve one VMM connection; returns the exit code, or None to wait for the next."""
    import select

    from ..capture.proxy import RecordingProxy, connect_daemon
    from ..capture.relay import RelayError
    from ..errors import TransportError

    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(stop_r, select.POLLIN)
    while not caught:
        if any(fd == listener.fileno() for fd, _ in poller.poll(1000)):
            break
        if starter is not None and not starter.alive():
            print(f"fuseproto capture proxy: the daemon is gone before the VMM came "
                  f"({starter.describe()})", file=sys.stderr)
            return 1
    if caught:
        say(f"{signal.Signals(caught[0]).name}: closing the capture")
        return 0
    vmm, _ = listener.accept()
    try:
        path = starter.socket_path if starter is not None else args.daemon_socket
        daemon = connect_daemon(path, alive=starter.alive if starter is not None else None)
    except TransportError as e:
        vmm.close()
        print(f"fuseproto capture proxy: {e}", file=sys.stderr)
        return 1
    try:
        capture = output.open(session)
        proxy = RecordingProxy(vmm, daemon, capture, scan_interval=args.scan_interval,
                               snaplen=args.snaplen, log=say)
    except (OSError, RelayError) as e:
        vmm.close()
        daemon.close()
        output.close()
        print(f"fuseproto capture proxy: {e}", file=sys.stderr)
        return 1
    say(f"VMM connected; recording to {output.path} (relay pid {proxy.relay.pid})")
    try:
        ended = proxy.run(stop_r)
    finally:
        proxy.close()
        output.close()  # this session's file is complete
    st = proxy.stats
    fate = ""
    if starter is not None:
        fate = f"; {starter.finish()}"
    say(f"session ended by the {ended}: {st.requests} requests, {st.replies} replies, "
        f"{st.notes} annotations, {st.kicks} kicks, {st.calls} calls recorded, "
        f"{st.rekicks} kicks repeated, {st.call_swaps} call fds replaced{fate}")
    if ended == "signal":
        if caught:
            say(f"{signal.Signals(caught[0]).name}: capture closed")
        return 0
    if ended == "daemon":
        print(f"fuseproto capture proxy: the daemon closed the connection ({proxy.why})",
              file=sys.stderr)
        return 1
    if args.once:
        return 0
    if starter is not None:
        starter.start()
    return None


class _Output:
    """The capture file of each session: FILE for the first, FILE.1.pcap-style names
    (the session number before the extension) for the next ones with --no-once: one FUSE
    session per file, as `fuseproto decode` pairs one INIT per capture."""

    def __init__(self, path: str, snaplen: int | None) -> None:
        self.first = path
        self.snaplen = snaplen
        self.path = path
        self.session = -1
        self._file: Any = None

    def open(self, session: int) -> Any:
        from ..capture.proxy import open_capture

        if session == self.session:
            return self._file
        self.close()
        stem, ext = os.path.splitext(self.first)
        self.path = self.first if session == 0 else f"{stem}.{session}{ext}"
        # The pcap header now; the proxy's relay appends each record with one write as
        # it reads it (nothing is buffered in a process), so the file is valid at any
        # moment, even after a SIGKILL of the proxy.
        self._file = open_capture(self.path, self.snaplen)
        self.session = session
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.session = -1


class _DaemonStarter:
    """--daemon: one virtiofsd per VMM connection, in a private temporary directory."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..daemons import dax_options, has_dax, resolve

        self.inst = resolve(args.daemon)
        extra = shlex.split(args.daemon_args)
        if args.dax_window:
            if not has_dax(self.inst):
                raise ValueError(f"--dax-window: {args.daemon} is not a DAX build (c-dax)")
            extra = [*dax_options(args.dax_window), *extra]
        self.extra = extra
        self.shared_dir = os.path.abspath(args.shared_dir)
        self.tmp = scratch.directory("proxy")
        self.socket_path = os.path.join(self.tmp, "daemon.sock")
        self.daemon: Any = None

    def start(self) -> None:
        from ..daemons import Daemon

        self.daemon = Daemon(self.inst, self.shared_dir, self.socket_path,
                             extra_args=self.extra)
        self.daemon.start()

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.running()

    def describe(self) -> str:
        return "no daemon" if self.daemon is None else self.daemon.describe()

    def finish(self) -> str:
        """The session is over: give the daemon a moment to exit on its own, then stop it
        by PID (socket, pid file and log removed); returns its fate."""
        d = self.daemon
        if d is None:
            return "no daemon"
        d.wait_exit(3.0)
        fate: str = d.describe()
        d.stop()
        self.daemon = None
        return fate

    def cleanup(self) -> None:
        if self.daemon is not None:
            self.finish()
        with contextlib.suppress(OSError):
            os.rmdir(self.tmp)
