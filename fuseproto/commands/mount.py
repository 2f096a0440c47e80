"""``fuseproto mount``: a kernel FUSE mount served by a real virtiofsd, through the bridge."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

_EPILOG = """\
how it works:
  The daemon (virtiofsd) is started on SHARE and driven over vhost-user by fuseproto's own
  frontend, as a VMM would; MOUNTPOINT is a kernel FUSE mount whose requests the bridge
  forwards to the daemon unchanged and whose replies it checks (paired and decoded by a
  session) before the kernel sees them. -w records every request and reply to a pcap
  file (decode it with `fuseproto decode`).

ending:
  SIGINT (Ctrl-C), SIGTERM and SIGHUP unmount, stop the daemon, remove its socket and
  temporary files, and exit 0. If the daemon dies or closes the connection, the bridge
  says so at once, aborts the kernel connection (every waiting call fails with ENOTCONN
  instead of hanging), unmounts, and exits 1 naming the daemon's fate. A request waits
  for the daemon as long as it takes, as a kernel FUSE request does (--timeout sets a
  limit, answered EIO, for debugging).

exit status:
  0 unmounted on a signal or by someone else; 1 the daemon died or the connection broke;
  2 bad usage, or the daemon or the mount could not be set up.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mount",
        help="mount a directory through a real virtiofsd (kernel FUSE bridged to vhost-user)",
        description="Serve SHARE at MOUNTPOINT through a real virtiofsd: kernel FUSE "
        "requests forwarded over vhost-user by fuseproto's frontend.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("share", metavar="SHARE", help="the host directory the daemon serves")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory to mount on")
    p.add_argument("--daemon", default="c", metavar="c|rust|VARIANT|PATH",
                   help="the virtiofsd: packaged c or rust, a built variant (c-src, ...), "
                   "or a path to a binary (default: c)")
    p.add_argument("-w", "--write", metavar="FILE", help="record every message to a pcap file")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="answer EIO to a request the daemon has not answered in S seconds "
                   "(default: wait, as the kernel does)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (mount option allow_other)")
    p.add_argument("--quiet", action="store_true", help="no status lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bridge import DevFuseBridge
    from ..capture import CaptureRecorder
    from ..daemons import resolve
    from ..errors import FuseprotoError
    from ..transport.devfuse import DevFuseMount, find_mount_device, unavailable_reason
    from ..transport.vhost_user import VhostUserTransport

    def say(text: str) -> None:
        if not args.quiet:
            print(f"fuseproto mount: {text}", file=sys.stderr, flush=True)

    why = unavailable_reason()
    if why is not None:
        print(f"fuseproto mount: cannot mount here: {why}", file=sys.stderr)
        return 2
    for what, path in (("SHARE", args.share), ("MOUNTPOINT", args.mountpoint)):
        if not os.path.isdir(path):
            print(f"fuseproto mount: {what} {path!r} is not a directory", file=sys.stderr)
            return 2

    # Signals only set a flag; the main thread does the unmounting in order.
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    recorder: Any = None
    transport: Any = None
    mount: Any = None
    bridge: Any = None
    try:
        try:
            inst = resolve(args.daemon)
            recorder = CaptureRecorder(args.write) if args.write else None
            transport = VhostUserTransport.spawn(inst, os.path.abspath(args.share), tap=recorder)
            mount = DevFuseMount(args.mountpoint, subtype="fuseproto",
                                 fsname=f"fuseproto:{args.daemon}",
                                 allow_other=args.allow_other)
            mount.open()
        except (FuseprotoError, OSError) as exc:
            print(f"fuseproto mount: {exc}", file=sys.stderr)
            return 2
        bridge = DevFuseBridge(mount, transport, timeout=args.timeout)
        bridge.start()
        say(f"{args.mountpoint} serves {args.share} through {transport.daemon.describe()}; "
            "SIGINT, SIGTERM or SIGHUP unmounts")
        daemon = transport.daemon
        # The bridge ends the connection itself when the daemon dies (idle or not).
        while not stop.wait(0.2) and bridge.serving:
            pass
        if caught:
            say(f"{signal.Signals(caught[0]).name}: unmounting")
            return 0
        if not daemon.running():
            print(f"fuseproto mount: the daemon is gone ({daemon.describe()}); the "
                  f"connection was aborted and {args.mountpoint} unmounted", file=sys.stderr)
            return 1
        reason = bridge.closed_reason
        if reason is not None and find_mount_device(args.mountpoint) is not None:
            print(f"fuseproto mount: the connection broke: {reason}", file=sys.stderr)
            return 1
        say(f"{args.mountpoint} was unmounted")
        return 0
    finally:
        _teardown(mount, bridge, transport, recorder)
        for s, h in old.items():
            signal.signal(s, h)


def _teardown(mount: Any, bridge: Any, transport: Any, recorder: Any) -> None:
    """Unmount first (lazily if busy), then stop the bridge, the device, the daemon (by
    PID, with its socket, pid file and log) and the capture; each step even if one
    before it failed."""
    steps = []
    if mount is not None:
        steps.append(mount.unmount)
    if bridge is not None:
        steps.append(bridge.stop)
    if mount is not None:
        steps.append(mount.close)
    if transport is not None:
        steps.append(transport.close)
    if recorder is not None:
        steps.append(recorder.close)
    for step in steps:
        with contextlib.suppress(Exception):
            step()
