"""``fuseproto dax ...``: the DAX window simulator (and trace recording).

Thin: the work is in ``fuseproto.dax.simulator`` and ``fuseproto.dax.traces``.
"""

from __future__ import annotations

import argparse
import json
import sys

SIZE_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = SIZE_SUFFIX.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in SIZE_SUFFIX else t) * mult)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
            "Traces: sequential, random, zipf, small (many small files), mix, real (a\n"
            "trace recorded with strace from a real workload, shipped with fuseproto),\n"
            "or a trace file written by `fuseproto dax record` (JSON lines).\n\n"
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
        help="record a trace of a real program's reads (strace)",
        description="Run COMMAND under strace and save its regular-file reads "
        "as a trace for `fuseproto dax simulate --trace FILE`.",
    )
    r.add_argument("output", help="trace file to write (.jsonl or .jsonl.gz)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="command to run")
    r.set_defaults(func=_record)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


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

    names = args.trace or [*traces.GENERATORS, "real"]
    managers = args.manager or ["osv", "linux"]
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

    if not args.command:
        raise SystemExit("record: give a command to run")
    trace = traces.record_strace(shlex.join(args.command), name="recorded")
    traces.save(trace, args.output)
    print(f"{len(trace.accesses)} reads of {len(trace.files)} files -> {args.output}")
    return 0
