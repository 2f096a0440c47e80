"""``fuseproto fuzz``: campaign, run, replay, list (thin: see fuseproto.fuzz)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("fuzz", help="coverage-guided fuzzers and the fuzz campaign")
    fsub = p.add_subparsers(dest="fuzz_command", metavar="SUBCOMMAND")

    c = fsub.add_parser("campaign", help="run every target for a while and write a report")
    c.add_argument("--daemon", action="append", default=None, metavar="c|rust|PATH",
                   help="daemon to fuzz (repeatable; default: c and rust)")
    c.add_argument("--no-daemon", action="store_true", help="skip the virtiofsd target")
    c.add_argument("--seconds", type=float, default=120.0, help="total time budget")
    c.add_argument("--out", default="out/fuzz", help="report directory (default out/fuzz)")
    c.add_argument("--target", action="append", default=None,
                   help="in-process target(s) to run (default: all available)")
    c.add_argument("--engine", choices=("atheris", "inprocess"), default="atheris")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--dax-manager", default=None, metavar="osv|linux|MODULE:FACTORY",
                   help="fix the DAX target's manager (default: each built-in in turn)")
    c.add_argument("--hang-timeout", type=float, default=0.5,
                   help="seconds without a reply before a daemon counts as hung")
    c.set_defaults(func=_campaign)

    r = fsub.add_parser("run", help="run one target (extra args go to libFuzzer)")
    r.add_argument("target", help="wire_decode | session | dax | virtiofsd")
    r.add_argument("--seconds", type=float, default=60.0)
    r.add_argument("--daemon", default="c", help="for virtiofsd: c | rust | PATH")
    r.add_argument("--out", default="out/fuzz-run")
    r.add_argument("--engine", choices=("atheris", "inprocess"), default="atheris")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("libfuzzer_args", nargs=argparse.REMAINDER)
    r.set_defaults(func=_run)

    rp = fsub.add_parser("replay", help="re-run a reproducer and say what it does")
    rp.add_argument("file")
    rp.add_argument("--target", default=None, help="default: from the file")
    rp.add_argument("--daemon", default=None, help="virtiofsd: c | rust | PATH (default: "
                    "the one in the reproducer)")
    rp.add_argument("--json", action="store_true", help="print a JSON verdict")
    rp.set_defaults(func=_replay)

    ls = fsub.add_parser("list", help="list the targets")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _campaign(args: argparse.Namespace) -> int:
    from ..fuzz.campaign import run_campaign

    daemons = [] if args.no_daemon else (args.daemon or ["c", "rust"])
    env = None
    if args.dax_manager:
        import os

        from ..fuzz.dax_target import ENV_MANAGER

        os.environ[ENV_MANAGER] = args.dax_manager  # the in-process loop reads it too
        env = {ENV_MANAGER: args.dax_manager}
    res = run_campaign(
        args.out, seconds=args.seconds, daemons=daemons, target_names=args.target,
        engine_name=args.engine, seed=args.seed, hang_timeout=args.hang_timeout, env=env,
        command=shlex.join(["fuseproto", *sys.argv[1:]]) if sys.argv else "",
        log=lambda m: print(f"[fuzz] {m}", file=sys.stderr, flush=True))
    out = Path(args.out)
    print(f"report: {out / 'report.md'} (and report.json); {len(res.findings)} finding(s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..fuzz import campaign, engine, targets
    from ..fuzz.findings import FindingStore

    name = args.target.removesuffix(".py").removesuffix("_fuzzer")
    extra = [a for a in args.libfuzzer_args if a != "--"]
    if name == "virtiofsd":
        from ..fuzz import virtiofsd

        store = FindingStore(Path(args.out) / "findings")
        st = virtiofsd.fuzz_daemon(virtiofsd.resolve_installation(args.daemon),
                                   seconds=args.seconds, store=store, seed=args.seed)
        print(f"{st.daemon} ({st.version}): {st.requests} requests, {st.per_second:.0f}/s, "
              f"{st.outcome_classes} outcome classes, {st.starts} daemon starts")
        for f in store:
            print(f"  {f.kind}: {f.signature} x{f.count}\n    {f.replay}")
        return 1 if len(store) else 0
    if args.engine == "atheris" and campaign.fuzz_dir() is not None:
        fz = campaign.fuzz_dir()
        assert fz is not None
        argv = [sys.executable, str(fz / f"{name}_fuzzer.py")]
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
    st = engine.run_loop(targets.get_target(name), seconds=args.seconds, seed=args.seed,
                         store=store)
    print(f"{name}: {st.iterations} inputs, {st.per_second:.0f}/s, corpus {st.corpus_size}")
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
    from ..fuzz.targets import TARGETS

    for part in (path.parent.name, path.name):
        for t in list(TARGETS) + ["dax", "virtiofsd"]:
            if part == t or part.startswith(t + "-") or part.startswith(t + "_"):
                return t
    raise SystemExit(f"cannot tell the target of {path}: give --target")


def _replay(args: argparse.Namespace) -> int:
    from ..fuzz import inject
    from ..fuzz.findings import classify_exception

    path = Path(args.file)
    data = path.read_bytes()
    target = args.target or _infer_target(path, data)
    verdict: dict[str, Any]
    if target == "virtiofsd":
        from ..fuzz import virtiofsd

        doc = json.loads(data)
        spec = args.daemon or doc.get("daemon", "c")
        if spec not in ("c", "rust") and ":" in spec:
            spec = doc.get("daemon_binary", spec)
        outs = virtiofsd.replay_daemon(doc, virtiofsd.resolve_installation(spec))
        label = doc.get("daemon", spec)
        expected = doc.get("finding", {}).get("signature")
        hits = [(virtiofsd.outcome_signature(label, o), o) for o in outs if o.finding]
        match = [o for sig, o in hits if sig == expected]
        hit = match[0] if match else (hits[-1][1] if hits else None)
        verdict = {"target": target, "daemon": spec, "reproduced": bool(match),
                   "requests_sent": len(outs), "expected": expected,
                   "seen": sorted({sig for sig, _ in hits if sig})}
        if hit is not None:
            verdict.update(kind=hit.finding, summary=hit.detail, outcome=hit.cls,
                           evidence=hit.evidence)
    else:
        from ..fuzz.targets import get_target

        inject.apply_from_env()
        t = get_target(target)
        try:
            t.check(data)
            verdict = {"target": target, "reproduced": False}
        except (Exception, AssertionError) as e:  # noqa: B014
            kind, sig, summary = classify_exception(e)
            verdict = {"target": target, "reproduced": True, "kind": kind, "signature": sig,
                       "summary": summary,
                       "traceback": "".join(traceback.format_exception(e))[-3000:]}
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


def _list(args: argparse.Namespace) -> int:
    from ..fuzz.campaign import available_inprocess_targets
    from ..fuzz.targets import get_target

    for n in available_inprocess_targets():
        print(f"{n:12s} {get_target(n).description}")
    print(f"{'virtiofsd':12s} structure-aware FUSE requests to a real virtiofsd (c, rust or a "
          "path): crashes, panics, hangs, protocol violations")
    return 0
