"""``fuseproto fuzz``: campaign, run, replay, shrink, list (thin: see fuseproto.fuzz)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fuzz", help="coverage-guided fuzzers and the fuzz campaign",
        description="Coverage-guided fuzzers (atheris) for the FUSE codec, the sans-IO session,"
        " DAX window managers and real virtiofsd daemons; fuzz/README.md has the details.")
    fsub = p.add_subparsers(dest="fuzz_command", metavar="SUBCOMMAND")

    c = fsub.add_parser(
        "campaign", help="run every target for a while and write a report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the in-process targets (wire_decode, session, dax) under atheris, then"
        " structure-aware requests and stateful request programs against each virtiofsd"
        " (restarted by PID after every crash), shrink new findings, and write"
        " OUT/report.md and OUT/report.json.",
        epilog="examples:\n  fuseproto fuzz campaign --seconds 100 --out out/run1\n"
        "  fuseproto fuzz campaign --virtiofsd ./my-virtiofsd --virtiofsd-kind rust\n"
        "  fuseproto fuzz campaign --no-daemon --dax-manager mypkg.mydax:make")
    c.add_argument("--daemon", action="append", default=None, metavar="c|rust|VARIANT|PATH",
                   help="daemon to fuzz: a packaged kind, a built variant (c-dax-asan-cov, "
                   "c-asan-cov, c-src, ...) or a binary (repeatable; default: c-dax-asan-cov "
                   "when built, else c-asan-cov, else c; and rust-cov when built, else "
                   "rust)")
    c.add_argument("--virtiofsd", action="append", default=None, metavar="PATH",
                   help="a virtiofsd binary (or a wrapper script that execs one) to fuzz; "
                   "repeatable, same as --daemon PATH")
    _kind_option(c)
    c.add_argument("--no-daemon", action="store_true", help="skip the virtiofsd target")
    c.add_argument("--no-below-fuse", action="store_true",
                   help="skip the hostile descriptor chains and vhost-user control-plane "
                   "programs each daemon gets otherwise")
    c.add_argument("--no-diff", action="store_true",
                   help="skip the differential target (C vs Rust daemon on identical shares; "
                   "run when the daemons include both kinds)")
    c.add_argument("--no-configs", action="store_true",
                   help="start every daemon with its default options (otherwise the "
                   "single-request loop gives each daemon options of its own: cache mode, "
                   "xattr mapping, ACLs, locks, thread pool, ...; a finding's reproducer "
                   "names them)")
    c.add_argument("--sequence-share", type=float, default=0.3, metavar="F",
                   help="share of each daemon's time spent on stateful sequence programs "
                   "(default 0.3)")
    c.add_argument("--shrink-share", type=float, default=0.2, metavar="F",
                   help="share of each daemon's time for minimizing its new findings "
                   "(default 0.2; 0: no shrinking)")
    _corpus_options(c)
    c.add_argument("--seconds", type=float, default=120.0, help="total time budget")
    _jobs_option(c)
    c.add_argument("--out", default="out/fuzz", help="report directory (default out/fuzz)")
    c.add_argument("--target", action="append", default=None,
                   help="in-process target(s) to run (default: all available)")
    c.add_argument("--engine", choices=("atheris", "inprocess"), default="atheris")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--dax-manager", default=None, metavar="osv|linux|MODULE:FACTORY",
                   help="fix the DAX target's manager (default: each built-in in turn)")
    c.add_argument("--hang-timeout", type=float, default=0.5,
                   help="seconds without a reply before a daemon counts as hung (then 2 s "
                   "of grace: a reply in it makes the request slow, noted, not a finding)")
    c.add_argument("--known", action="append", default=None, metavar="PATH",
                   help="findings seen before: a directory of reproducers (searched "
                   "recursively: *.json, *.repro.py), a report.json, or one reproducer; "
                   "repeatable. The report marks each finding new or known and lists new "
                   "ones first (default: ./corpus/findings when it exists)")
    c.add_argument("--no-known", action="store_true",
                   help="compare with no known findings (every finding is listed as new)")
    c.set_defaults(func=_campaign)

    r = fsub.add_parser(
        "run", help="run one target (other args go to libFuzzer)",
        description="Run one target. The options below may come before or after the target;"
        " any other argument (and everything after --) goes to libFuzzer.",
        epilog="example: fuseproto fuzz run wire_decode --seconds 60 -- -runs=100000")
    r.add_argument("target", help="wire_decode | session | dax | virtiofsd | diff | chains | "
                   "control_plane")
    _run_options(r)
    r.add_argument("libfuzzer_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    r.set_defaults(func=_run, run_parser=r)

    rp = fsub.add_parser(
        "replay", help="re-run a reproducer and say what it does",
        description="Re-run a reproducer written by a campaign (a crash-* input of an in-process"
        " target, or a virtiofsd JSON reproducer, minimized or not) and report whether the same"
        " signature comes back. Exit status 1: it reproduced, 0: it did not.")
    rp.add_argument("file")
    rp.add_argument("--target", default=None, help="default: from the file")
    rp.add_argument("--daemon", default=None, help="virtiofsd: c | rust | PATH (default: "
                    "the one in the reproducer)")
    rp.add_argument("--virtiofsd", default=None, metavar="PATH",
                    help="virtiofsd: replay against this binary (same as --daemon PATH)")
    _kind_option(rp)
    rp.add_argument("--json", action="store_true", help="print a JSON verdict")
    rp.set_defaults(func=_replay)

    sh = fsub.add_parser(
        "shrink", help="minimize a virtiofsd reproducer (writes NAME.min.json)",
        description="Delta-debug a virtiofsd reproducer: fewer requests, then fewer bytes per"
        " request, keeping only candidates that give the same signature against a fresh daemon.")
    sh.add_argument("file")
    sh.add_argument("--daemon", default=None, help="c | rust | PATH (default: the one in "
                    "the reproducer)")
    sh.add_argument("--virtiofsd", default=None, metavar="PATH",
                    help="shrink against this binary (same as --daemon PATH)")
    _kind_option(sh)
    sh.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    sh.add_argument("--hang-timeout", type=float, default=0.5)
    sh.add_argument("--json", action="store_true", help="print the result as JSON")
    sh.set_defaults(func=_shrink)

    ls = fsub.add_parser("list", help="list the targets")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _run_options(p: argparse.ArgumentParser) -> None:
    """The options of ``fuzz run`` (also parsed again from what follows the target)."""
    p.add_argument("--seconds", type=float, default=60.0)
    _jobs_option(p)
    p.add_argument("--daemon", default="c", help="for virtiofsd: c | rust | a built variant "
                   "(c-asan-cov, c-src) | PATH")
    p.add_argument("--virtiofsd", default=None, metavar="PATH",
                   help="for virtiofsd: this binary (same as --daemon PATH)")
    _kind_option(p)
    p.add_argument("--against", default="rust", metavar="rust|VARIANT|PATH",
                   help="for diff: the second daemon, compared with --daemon (default rust)")
    p.add_argument("--sequences", action="store_true",
                   help="for virtiofsd: run stateful sequence programs, not single requests")
    p.add_argument("--configs", action="store_true",
                   help="for virtiofsd single requests: give each daemon started options "
                   "of its own (fuseproto.daemons.options), chosen by what they reached")
    p.add_argument("--feedback", choices=("auto", "coverage", "outcome"), default="auto",
                   help="for virtiofsd: what keeps an input: the daemon's new edges (an "
                   "instrumented daemon; auto) or new outcome classes only")
    _corpus_options(p)
    p.add_argument("--out", default="out/fuzz-run")
    p.add_argument("--engine", choices=("atheris", "inprocess"), default="atheris")
    p.add_argument("--seed", type=int, default=0)


def split_run_args(args: argparse.Namespace) -> list[str]:
    """Take ``fuzz run``'s own options from the arguments after the target (argparse hands
    everything after the positional to the remainder) into ``args``; returns the rest,
    for libFuzzer: unknown arguments, and all that follows ``--``."""
    rest = list(args.libfuzzer_args)
    tail: list[str] = []
    if "--" in rest:
        cut = rest.index("--")
        rest, tail = rest[:cut], rest[cut + 1:]
    if {"-h", "--help"} & set(rest):  # help, not a libFuzzer run, wherever it is asked
        parser = getattr(args, "run_parser", None)
        if parser is not None:
            parser.print_help()
            raise SystemExit(0)
    own = argparse.ArgumentParser(prog="fuseproto fuzz run TARGET", add_help=False)
    _run_options(own)
    _, unknown = own.parse_known_args(rest, namespace=args)
    extra: list[str] = unknown + tail
    args.libfuzzer_args = extra
    return extra


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return n


def _jobs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=_positive, default=1, metavar="N",
                   help="parallel jobs: libFuzzer -fork=N for the atheris targets, N "
                   "daemons (or loops) in parallel for the others; one merged corpus and "
                   "report (default 1)")


def _corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus-dir", default=None, metavar="DIR",
                   help="virtiofsd: where inputs that lit new daemon edges are kept and "
                   "loaded from, one folder per target and daemon variant (default: "
                   "$FUSEPROTO_FUZZ_CORPUS or the fuseproto cache's fuzz-corpus/)")
    p.add_argument("--no-corpus", action="store_true",
                   help="virtiofsd: neither load nor keep a corpus between runs")


def _corpus_root(args: argparse.Namespace) -> Path | None:
    if args.no_corpus:
        return None
    if args.corpus_dir:
        return Path(args.corpus_dir)
    from ..fuzz.corpus import corpus_root

    return corpus_root()


def _kind_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--virtiofsd-kind", choices=("c", "rust"), default=None,
                   help="which daemon a PATH is: c (QEMU's, FUSE-style -o options) or rust "
                   "(default: detected from its --version)")


def _daemon_spec(args: argparse.Namespace, default: str | None) -> str | None:
    return getattr(args, "virtiofsd", None) or getattr(args, "daemon", None) or default


def _campaign(args: argparse.Namespace) -> int:
    from ..fuzz.campaign import run_campaign

    chosen = (args.daemon or []) + (args.virtiofsd or [])
    daemons = [] if args.no_daemon else (chosen or None)
    env = None
    if args.dax_manager:
        import os

        from ..fuzz.dax_target import ENV_MANAGER

        os.environ[ENV_MANAGER] = args.dax_manager  # the in-process loop reads it too
        env = {ENV_MANAGER: args.dax_manager}
    res = run_campaign(
        args.out, seconds=args.seconds, daemons=daemons, target_names=args.target,
        engine_name=args.engine, seed=args.seed, hang_timeout=args.hang_timeout, env=env,
        daemon_kind=args.virtiofsd_kind, sequence_share=args.sequence_share,
        diff=not args.no_diff, below_fuse=not args.no_below_fuse,
        shrink_share=args.shrink_share, corpus_root=_corpus_root(args), jobs=args.jobs,
        configs=not args.no_configs, known=[] if args.no_known else args.known,
        command=shlex.join(["fuseproto", *sys.argv[1:]]) if sys.argv else "",
        log=lambda m: print(f"[fuzz] {m}", file=sys.stderr, flush=True))
    out = Path(args.out)
    new = sum(1 for f in res.findings if not f.known)
    print(f"report: {out / 'report.md'} (and report.json); {len(res.findings)} finding(s), "
          f"{new} new")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..fuzz import campaign, engine, registry
    from ..fuzz.findings import FindingStore

    name = args.target.removesuffix(".py").removesuffix("_fuzzer")
    extra = split_run_args(args)
    if name == "diff":
        return _run_diff(args)
    if name in ("chains", "control_plane"):
        return _run_below_fuse(args, name)
    if name == "virtiofsd":
        from ..fuzz import harness, virtiofsd

        spec = _daemon_spec(args, "c")
        assert spec is not None
        inst = harness.resolve_installation(spec, args.virtiofsd_kind)
        label = harness.daemon_label(spec, inst)
        store = FindingStore(Path(args.out) / "findings")
        from ..fuzz.corpus import default_dir

        root = _corpus_root(args)
        mode = "sequences" if args.sequences else "requests"
        cdir = default_dir(f"virtiofsd-{mode}", label, root) if root is not None else None
        if args.jobs > 1:
            from ..fuzz import jobs

            st, _ = jobs.fuzz_live(mode, spec, jobs=args.jobs, seconds=args.seconds,
                                   store=store, label=label, seed=args.seed,
                                   kind=args.virtiofsd_kind, feedback=args.feedback,
                                   corpus_dir=cdir, workdir=Path(args.out),
                                   configs=args.configs)
            q = st.sequences
            print(f"{label}: {args.jobs} jobs" + (f", {q['programs']} programs, deepest "
                                                  f"state {q['deepest']}" if q else ""))
        elif args.sequences:
            from ..fuzz.sequences import fuzz_sequences

            st = fuzz_sequences(inst, seconds=args.seconds, store=store, seed=args.seed,
                                label=label, feedback=args.feedback, corpus_dir=cdir)
            q = st.sequences
            print(f"{label}: {q['programs']} programs, deepest state {q['deepest']}")
        else:
            st = virtiofsd.fuzz_daemon(inst, seconds=args.seconds, store=store,
                                       seed=args.seed, label=label, feedback=args.feedback,
                                       corpus_dir=cdir, configs=args.configs)
        edges = (f", {st.edges['edges']} of {st.edges['guards']} daemon edges "
                 f"({st.edges['feedback']} feedback), corpus {st.corpus_loaded} loaded / "
                 f"{st.corpus_saved} saved" if st.edges else "")
        print(f"{st.daemon} ({st.version}): {st.requests} requests, {st.per_second:.0f}/s, "
              f"{st.outcome_classes} outcome classes, {st.starts} daemon starts{edges}")
        for f in store:
            print(f"  {f.kind}: {f.signature} x{f.count}\n    {f.replay}")
        return 1 if len(store) else 0
    if args.engine == "atheris" and campaign.fuzz_dir() is not None:
        fz = campaign.fuzz_dir()
        assert fz is not None
        from ..fuzz.jobs import libfuzzer_argv

        argv = libfuzzer_argv(fz / f"{name}_fuzzer.py", args.jobs, Path(args.out), extra)
        if not any(a.startswith("-max_total_time") for a in extra):
            argv.append(f"-max_total_time={int(args.seconds)}")
        dic = fz / f"{name}.dict"
        if dic.exists() and not any(a.startswith("-dict") for a in extra):
            argv.append(f"-dict={dic}")
        argv += extra
        if not any(not a.startswith("-") for a in extra):
            work = Path(args.out) / "corpus" / name
            work.mkdir(parents=True, exist_ok=True)
            argv.append(str(work))
            seeds = campaign.corpus_dir(name)
            if seeds is not None:
                argv.append(str(seeds))
        return subprocess.call(argv)
    store = FindingStore(Path(args.out) / "findings")
    if args.jobs > 1:
        from ..fuzz.jobs import run_inprocess

        loop = run_inprocess(name, jobs=args.jobs, seconds=args.seconds, store=store,
                             seed=args.seed, workdir=Path(args.out))
    else:
        loop = engine.run_loop(registry.get_target(name), seconds=args.seconds,
                               seed=args.seed, store=store)
    print(f"{name}: {loop.iterations} inputs, {loop.per_second:.0f}/s, "
          f"corpus {loop.corpus_size}")
    for f in store:
        print(f"  {f.kind}: {f.signature} x{f.count}\n    {f.replay}")
    return 1 if len(store) else 0


def _run_below_fuse(args: argparse.Namespace, name: str) -> int:
    """``fuzz run chains`` / ``fuzz run control_plane``: below the FUSE layer, one daemon."""
    from ..fuzz import chains, control_plane, harness
    from ..fuzz.findings import FindingStore

    spec = _daemon_spec(args, "c") or "c"
    inst = harness.resolve_installation(spec, args.virtiofsd_kind)
    label = harness.daemon_label(spec, inst)
    store = FindingStore(Path(args.out) / "findings")
    if args.jobs > 1:
        from ..fuzz.jobs import run_loop_jobs

        print(f"{label}: {args.jobs} jobs")
    if name == "chains":
        st = (run_loop_jobs(name, [spec], jobs=args.jobs, seconds=args.seconds, store=store,
                            labels=[label], seed=args.seed, kind=args.virtiofsd_kind,
                            workdir=Path(args.out)) if args.jobs > 1 else
              chains.fuzz_chains(inst, seconds=args.seconds, store=store, seed=args.seed,
                                 label=label))
        print(f"{label}: {st.inputs} chains ({st.per_second:.1f}/s), {st.valid} valid "
              f"virtio, {len(st.classes)} outcome classes, {st.starts} daemon starts")
    else:
        cs = (run_loop_jobs(name, [spec], jobs=args.jobs, seconds=args.seconds, store=store,
                            labels=[label], seed=args.seed, kind=args.virtiofsd_kind,
                            workdir=Path(args.out)) if args.jobs > 1 else
              control_plane.fuzz_control_plane(inst, seconds=args.seconds, store=store,
                                               seed=args.seed, label=label))
        print(f"{label}: {cs.programs} programs ({cs.per_second:.1f}/s), {cs.steps} "
              f"messages, {cs.served} ended serving, {len(cs.classes)} outcome classes")
    for f in store:
        print(f"  {f.kind}: {f.signature} x{f.count}\n    {f.replay}")
    return 1 if len(store) else 0


def _run_diff(args: argparse.Namespace) -> int:
    """``fuzz run diff``: the differential target, --daemon (C) vs --against (Rust)."""
    from ..fuzz import harness
    from ..fuzz.diff import fuzz_diff
    from ..fuzz.findings import FindingStore

    specs = (_daemon_spec(args, "c") or "c", args.against)
    insts = [harness.resolve_installation(s, args.virtiofsd_kind if k == 0 else None)
             for k, s in enumerate(specs)]
    labels = (harness.daemon_label(specs[0], insts[0]),
              harness.daemon_label(specs[1], insts[1]))
    store = FindingStore(Path(args.out) / "findings")
    if args.jobs > 1:
        from ..fuzz.jobs import run_loop_jobs

        st = run_loop_jobs("diff", list(specs), jobs=args.jobs, seconds=args.seconds,
                           store=store, labels=list(labels), seed=args.seed,
                           kind=args.virtiofsd_kind, workdir=Path(args.out))
        print(f"{args.jobs} jobs")
    else:
        st = fuzz_diff(insts[0], insts[1], seconds=args.seconds, store=store, seed=args.seed,
                       labels=labels)
    print(f"{labels[0]} vs {labels[1]}: {st.programs} programs ({st.per_second:.1f}/s), "
          f"{st.requests} requests, {st.compared} answers compared, "
          f"{len(st.divergences)} kinds of divergence ({len(st.findings)} not allow-listed)")
    for sig, d in sorted(st.divergences.items()):
        why = f"allowed: {d['allowed']}" if d["allowed"] else "FINDING"
        print(f"  {sig} x{d['count']}: {d['detail'][:100]}\n    {why[:160]}")
    for f in store:
        print(f"  {f.kind}: {f.signature} x{f.count}\n    {f.replay}")
    return 1 if len(store) else 0


def _infer_target(path: Path, data: bytes) -> str:
    if data[:1] == b"{":
        try:
            doc = json.loads(data)
            if isinstance(doc, dict) and "target" in doc:
                return str(doc["target"])
        except ValueError:
            pass
    from ..fuzz.registry import TARGETS

    for part in (path.parent.name, path.name):
        for t in [*TARGETS, "virtiofsd", "chains", "control_plane"]:
            if part == t or part.startswith(t + "-") or part.startswith(t + "_"):
                return t
    raise SystemExit(f"cannot tell the target of {path}: give --target")


def _replay(args: argparse.Namespace) -> int:
    from ..fuzz import verdict as verdicts

    path = Path(args.file)
    data = path.read_bytes()
    target = args.target or _infer_target(path, data)
    verdict: dict[str, Any] = verdicts.verdict(
        target, json.loads(data) if target in verdicts.DAEMON_TARGETS else None, data,
        spec=_daemon_spec(args, None), kind=args.virtiofsd_kind)
    if args.json:
        print(json.dumps(verdict, indent=1, default=str))
    else:
        if verdict["reproduced"]:
            print(f"REPRODUCED {verdict.get('kind')}: {verdict.get('summary')}")
            if verdict.get("traceback"):
                print(verdict["traceback"])
        else:
            print(f"not reproduced ({target})"
                  + (f"; saw instead: {', '.join(verdict['seen'])}" if verdict.get("seen")
                     else ""))
    return 1 if verdict["reproduced"] else 0


def _shrink(args: argparse.Namespace) -> int:
    from ..fuzz import replay, shrink

    path = Path(args.file)
    doc = json.loads(path.read_text())
    if doc.get("target") != "virtiofsd":
        raise SystemExit(f"{path}: only virtiofsd reproducers (JSON) are shrunk")
    _, inst = replay.doc_installation(doc, _daemon_spec(args, None), args.virtiofsd_kind)
    res = shrink.shrink_file(path, inst, seconds=args.seconds, hang_timeout=args.hang_timeout)
    if args.json:
        print(json.dumps(res.to_json() | {"notes": res.notes}, indent=1))
    elif res.path:
        print(f"{res.before} -> {res.after} requests ({res.bytes_before} -> {res.bytes_after} "
              f"bytes), {res.replays} replays in {res.seconds:.1f} s"
              + ("" if res.complete else " (budget ran out)") + f": {res.path}")
    else:
        print(f"not shrunk: {'; '.join(res.notes)}")
    return 0 if res.path else 1


def _list(args: argparse.Namespace) -> int:
    from ..fuzz.registry import TARGETS, available_targets

    for n in available_targets():
        print(f"{n:12s} {TARGETS[n].description}")
    print(f"{'virtiofsd':12s} structure-aware FUSE requests to a real virtiofsd (c, rust, a "
          "built variant such as c-asan-cov, or a path): crashes, panics, hangs, protocol "
          "violations, ASan/UBSan reports; steered by the daemon's edges when it is "
          "instrumented; --sequences: stateful programs")
    print(f"{'diff':12s} the same sequence programs against two daemons (--daemon c, "
          "--against rust) on identical shares: every divergence not in the allow-list "
          "(fuseproto/fuzz/diff_allow.py) is a finding")
    print(f"{'chains':12s} hostile virtqueue descriptor chains to a real virtiofsd (odd "
          "splits, misordered, outside memory, across memory regions, loops, indirect "
          "tables): used.len past the area, crashes, panics; exits and stalls on valid chains")
    print(f"{'control_plane':12s} vhost-user front-end message programs to a fresh virtiofsd "
          "(boundary values, ring indices past the queue count, odd memory tables, fds, "
          "order): crashes, exits after valid steps, hangs, replies that break the protocol")
    return 0
