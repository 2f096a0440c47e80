"""``fuseproto dax ...``: the DAX window simulator (and trace recording).

Thin: the work is in ``fuseproto.dax.simulator`` and ``fuseproto.dax.traces``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import scratch

SIZE_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = SIZE_SUFFIX.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in SIZE_SUFFIX else t) * mult)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dax",
        help="DAX window managers: simulate traces, record traces",
        description="DAX window managers (OSv, Linux, or your own module:factory) "
        "against traces, beside Belady's optimal MIN policy.",
    )
    dsub = p.add_subparsers(dest="dax_command", metavar="SUBCOMMAND")

    s = dsub.add_parser(
        "simulate",
        help="replay read traces against managers; hit ratio, message counts, plot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Replay read traces against DAX managers with a window smaller than the\n"
            "working set. For each trace, manager and window size it reports the chunk\n"
            "hit ratio (a chunk a read touches that was already mapped), SETUPMAPPING and\n"
            "REMOVEMAPPING counts (messages and entries), bytes mapped per byte read and\n"
            "bytes that fell back to FUSE_READ, beside Belady's MIN on the same chunks.\n\n"
            "Traces: sequential, random, zipf, small (many small files), mix, real (FUSE\n"
            "traffic of a mixed read workload captured from a real virtiofsd, shipped as\n"
            "corpus/captures/dax-reads.pcap), strace (a real program's reads recorded\n"
            "with strace), or a file written by `fuseproto dax record`: a capture\n"
            "(.pcap) or a trace (JSON lines).\n\n"
            "Managers: osv, linux, or module:factory -- a factory called as\n"
            "factory(device, backend, **options) returning a fuseproto.dax.DaxManager."
        ),
        epilog=(
            "examples:\n"
            "  fuseproto dax simulate --trace zipf --trace real\n"
            "  fuseproto dax simulate --trace sequential --window 64M --window 256M\n"
            "  fuseproto dax simulate --manager osv --manager mypkg.dax:make --plot hit.png\n"
            "  fuseproto dax simulate --trace mix --option osv:aggressive=true --json out.json"
        ),
    )
    s.add_argument(
        "--trace",
        action="append",
        metavar="NAME|FILE",
        help="trace to replay (repeatable; default: all built-in traces)",
    )
    s.add_argument(
        "--manager",
        action="append",
        metavar="NAME|MODULE:FACTORY",
        help="manager to run (repeatable; default: osv and linux)",
    )
    s.add_argument(
        "--window",
        action="append",
        type=_size,
        metavar="SIZE",
        help="window size, e.g. 64M (repeatable; default: 1/16, 1/8, 1/4 and 1/2 "
        "of each trace's working set)",
    )
    s.add_argument(
        "--chunk",
        type=_size,
        default=2 << 20,
        metavar="SIZE",
        help="chunk size for the hit accounting and MIN (default 2M, the range "
        "size of both reference managers)",
    )
    s.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MANAGER:KEY=VALUE",
        help="a manager option, e.g. osv:aggressive=true, osv:chunk_size=4194304, "
        "linux:background=off (repeatable)",
    )
    s.add_argument("--no-min", action="store_true", help="skip Belady's MIN")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic traces")
    s.add_argument(
        "--plot", metavar="PNG", help="write hit ratio vs window size (needs matplotlib)"
    )
    s.add_argument("--json", metavar="FILE", help="write every result as JSON ('-': stdout)")
    s.add_argument("--check", action="store_true", help="run the invariant checker along (slower)")
    s.set_defaults(func=_simulate)

    r = dsub.add_parser(
        "record",
        help="record a trace: a real program's reads (strace), a real daemon's traffic, or "
        "a real guest's reads",
        description="Run COMMAND under strace and save its regular-file reads as a trace; "
        "or, with --from-daemon, drive a real virtiofsd with a mixed read workload through "
        "the vhost-user transport, capture the traffic and save the capture (OUTPUT.pcap) "
        "or the trace of its FUSE_READs (OUTPUT.jsonl[.gz]); or, with --from-guest, boot a "
        "real Linux guest (fuseproto guest) that makes the same workload's reads with "
        "O_DIRECT on a share the daemon serves, recorded through the capture proxy. Either "
        "is replayed with "
        "`fuseproto dax simulate --trace OUTPUT`.",
    )
    r.add_argument("output", help="file to write (.pcap, .jsonl or .jsonl.gz)")
    r.add_argument(
        "--from-daemon",
        metavar="KIND",
        choices=["c", "rust"],
        help="record the workload against this virtiofsd (c or rust; installed if needed)",
    )
    r.add_argument(
        "--from-guest",
        metavar="DAEMON",
        help="record a real Linux guest (QEMU, `fuseproto guest`) making the workload's "
        "reads with O_DIRECT on a share this daemon serves (c, rust, a built variant), "
        "through the recording proxy",
    )
    r.add_argument(
        "--virtiofsd",
        metavar="PATH",
        help="record against this virtiofsd binary (or a wrapper that execs one); implies "
        "--from-daemon",
    )
    r.add_argument(
        "--virtiofsd-kind",
        choices=["c", "rust"],
        help="with --virtiofsd: which daemon PATH is (default: detected from --version)",
    )
    r.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="with --from-daemon / --from-guest: file sizes relative to the default workload",
    )
    r.add_argument("--seed", type=int, default=0,
                   help="with --from-daemon / --from-guest: workload seed")
    r.add_argument("command", nargs=argparse.REMAINDER, help="command to run (strace mode)")
    r.set_defaults(func=_record)

    def _usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_usage)


def _options(specs: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for spec in specs:
        mgr, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        if not key or not _:
            raise SystemExit(f"--option {spec!r}: expected MANAGER:KEY=VALUE")
        val: object = value
        if value.lower() in ("true", "false"):
            val = value.lower() == "true"
        else:
            try:
                val = int(value, 0)
            except ValueError:
                pass
        out.setdefault(mgr, {})[key] = val
    return out


def _simulate(args: argparse.Namespace) -> int:
    from fuseproto.dax import simulator, traces
    from fuseproto.dax.registry import MANAGERS

    names = args.trace or list(traces.TRACE_NAMES)
    managers = args.manager or list(MANAGERS)
    options = _options(args.option)
    results = []
    print(simulator.format_table([]).splitlines()[0])
    for name in names:
        trace = traces.make_trace(name, args.seed)
        sizes = args.window or sorted(
            {
                max(2, int(trace.working_set * f) // args.chunk) * args.chunk
                for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2)
            }
        )
        print(
            f"# {trace.name}: {len(trace.accesses)} reads, {len(trace.files)} files, "
            f"working set {trace.working_set >> 20} MiB",
            file=sys.stderr,
        )
        for w in sizes:
            runs = [
                simulator.simulate(
                    trace, m, w, chunk=args.chunk, options=options.get(m), check=args.check, name=m
                )
                for m in managers
            ]
            if not args.no_min:
                runs.append(simulator.simulate_min(trace, w, chunk=args.chunk))
            for r in runs:
                print(simulator.format_table([r]).splitlines()[2], flush=True)
            results.extend(runs)
    if args.plot:
        simulator.plot_hit_ratio(results, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.json:
        text = json.dumps([r.as_dict() for r in results], indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0


def _record(args: argparse.Namespace) -> int:
    import shlex

    from fuseproto.dax import traces

    if args.from_guest:
        return _record_guest(args)
    if args.from_daemon or args.virtiofsd:
        return _record_daemon(args)
    if not args.command:
        raise SystemExit("record: give a command to run, or --from-daemon KIND")
    trace = traces.record_strace(shlex.join(args.command), name="recorded")
    traces.save(trace, args.output)
    print(f"{len(trace.accesses)} reads of {len(trace.files)} files -> {args.output}")
    return 0


def _record_daemon(args: argparse.Namespace) -> int:
    import os
    import shutil

    from fuseproto import daemons
    from fuseproto.dax import traces, workload

    if args.command:
        raise SystemExit("record --from-daemon runs its own workload: no command")
    if args.virtiofsd:
        from fuseproto.fuzz.harness import resolve_installation

        installation = resolve_installation(args.virtiofsd, args.virtiofsd_kind)
    else:
        installation = daemons.install(args.from_daemon)
    as_pcap = args.output.endswith((".pcap", ".pcapng"))
    tmp = None if as_pcap else scratch.directory("record")
    pcap = args.output if tmp is None else os.path.join(tmp, "reads.pcap")
    try:
        files, reads = workload.record_daemon_reads(
            installation, pcap, scale=args.scale, seed=args.seed
        )
        trace = traces.from_capture(pcap, "real")
        if not as_pcap:
            traces.save(trace, args.output)
        size = os.path.getsize(pcap)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{installation.kind} virtiofsd {installation.version}: {len(reads)} READs of "
        f"{len(trace.files)} files ({trace.working_set >> 20} MiB), capture {size} bytes "
        f"-> {args.output}"
    )
    return 0


def _record_guest(args: argparse.Namespace) -> int:
    import os
    import shutil

    from fuseproto.dax import traces
    from fuseproto.errors import DaemonError, GuestError
    from fuseproto.guest.reads import record_guest_reads

    if args.command or args.from_daemon or args.virtiofsd:
        raise SystemExit("record --from-guest runs its own workload: no command, no "
                         "--from-daemon / --virtiofsd")
    as_pcap = args.output.endswith((".pcap", ".pcapng"))
    tmp = None if as_pcap else scratch.directory("record")
    pcap = args.output if tmp is None else os.path.join(tmp, "reads.pcap")
    try:
        try:
            got = record_guest_reads(args.from_guest, pcap, scale=args.scale, seed=args.seed)
        except (GuestError, DaemonError) as e:
            print(f"record --from-guest: FAILED: {e}")
            return 1
        trace = traces.from_capture(pcap, "guest")
        if not as_pcap:
            traces.save(trace, args.output)
        size = os.path.getsize(pcap)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    g = got.run.guest
    print(
        f"guest {g.release} on {args.from_guest}: {len(trace.accesses)} READs of "
        f"{len(trace.files)} files ({trace.working_set >> 20} MiB) in {g.seconds:.1f} s, "
        f"capture {size} bytes -> {args.output}"
    )
    return 0
