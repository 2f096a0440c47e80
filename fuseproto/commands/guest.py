"""``fuseproto guest setup|run``: a real Linux guest (QEMU + Debian's kernel) on real
virtiofsd daemons."""

from __future__ import annotations

import argparse

_EPILOG = """\
how it works:
  QEMU (qemu-system-x86, TCG) boots Debian 12's cloud kernel with a busybox initramfs
  fuseproto builds; each daemon serves its own scratch share, prepared with the files the
  workload expects, and the guest mounts them all (virtio-fs, one device per daemon) and
  runs the workload in each: ls, cat, stat, write, mkdir, rmdir, rm, rename, symlink,
  truncate, chmod, extended attributes, an 8 MiB dd read and write, fsync, flock. Its
  results are checked in the guest's output and on the host. With -w, each daemon's
  traffic goes through a recording proxy (`fuseproto capture proxy`, a process of its own)
  and is written to DIR/guest-<daemon>.pcap (decode it with `fuseproto decode`).

files:
  The kernel, its virtio-fs modules and busybox come from Debian's archive by package name
  through a private apt configuration, and are kept under ~/.cache/fuseproto/guest
  (FUSEPROTO_CACHE moves it); `setup` fetches them once (scripts/setup.sh runs it).
  FUSEPROTO_QEMU names another qemu-system-x86_64; FUSEPROTO_GUEST_ACCEL another
  accelerator (default tcg).

exit status:
  0 every check passed; 1 a check failed or the guest did not finish; 2 the guest or a
  daemon could not be set up.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "guest", help="boot a real Linux guest on real virtiofsd daemons",
        description="A real Linux guest under QEMU mounting virtio-fs shares served by real "
        "virtiofsd daemons, running a scripted workload.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = p.add_subparsers(dest="guest_command", metavar="ACTION")
    st = gsub.add_parser("setup", help="fetch and build the guest's kernel and initramfs "
                         "(cached)")
    st.add_argument("--refresh", action="store_true",
                    help="look for a newer kernel in the archive even when one is cached")
    st.set_defaults(func=_setup)
    rn = gsub.add_parser("run", help="boot once and run the workload on each daemon")
    rn.add_argument("--daemon", action="append", metavar="c|rust|VARIANT|PATH",
                    help="a daemon to serve a share (repeatable; default: c and rust)")
    rn.add_argument("--timeout", type=float, default=240.0, metavar="S",
                    help="give up on the guest after S seconds (default: 240)")
    rn.add_argument("--keep", metavar="DIR",
                    help="put the shares in DIR (created; kept afterwards) instead of a "
                    "temporary directory")
    rn.add_argument("-w", "--write", metavar="DIR",
                    help="put a recording proxy (fuseproto capture proxy) between QEMU and "
                    "each daemon and write DIR/guest-<daemon>.pcap")
    rn.add_argument("--snaplen", type=int, metavar="BYTES",
                    help="with -w: record at most this many bytes of each message")
    rn.add_argument("--console", action="store_true", help="print the guest's serial console")
    rn.set_defaults(func=_run)

    def _usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_usage)


def _setup(args: argparse.Namespace) -> int:
    import os

    from .. import guest
    from ..errors import GuestError

    try:
        qemu = guest.find_qemu()
        assets = guest.prepare(refresh=args.refresh)
    except GuestError as e:
        print(f"guest: FAILED: {e}")
        return 2
    print(f"kernel   {assets.kernel_package}: {assets.kernel}")
    print(f"busybox  {assets.busybox_package}")
    print(f"initrd   {assets.initramfs} ({os.path.getsize(assets.initramfs) >> 10} KiB; "
          f"modules: {' '.join(guest.MODULES)})")
    print(f"qemu     {qemu}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    from ..errors import DaemonError, GuestError
    from ..guest.run import RecordingProxies, run_workload

    names = args.daemon or ["c", "rust"]
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    proxies = None
    if args.write:
        os.makedirs(args.write, exist_ok=True)
        proxies = RecordingProxies(os.path.abspath(args.write), snaplen=args.snaplen)
    try:
        run = run_workload(names, timeout=args.timeout, workdir=args.keep, interpose=proxies)
    except (GuestError, DaemonError) as e:
        print(f"guest: FAILED: {e}")
        return 2
    g = run.guest
    if args.console:
        print(g.console.rstrip())
    print(f"guest {g.release or '?'}: {g.seconds:.1f} s, QEMU exit {g.returncode}")
    for s in run.shares.values():
        verdict = "ok" if not s.problems else f"{len(s.problems)} problem(s)"
        results = len(s.guest.results) if s.guest else 0
        print(f"  {s.tag}: {s.daemon} {s.version}: {results} results, daemon "
              f"{s.daemon_exit}: {verdict}")
        for problem in s.problems:
            print(f"    {problem}")
        if args.keep:
            print(f"    share kept at {s.share}")
        if proxies is not None:
            print(f"    capture {proxies.captures[s.tag]} (proxy {proxies.exits.get(s.tag)})")
    for problem in run.problems():
        if problem.startswith("guest:"):
            print(f"  {problem}")
    return 1 if run.problems() else 0
