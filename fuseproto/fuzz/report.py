"""The campaign report: ``report.json`` (machine-readable) and ``report.md`` (for people).

Sections of the Markdown report, in order: Summary (one row per target: engine, time,
inputs, inputs/s, coverage, corpus, findings), Daemons (kind, version, binary), Daemon
coverage (per instrumented daemon: its edges over time, the feedback that steered, the
corpus carried over; the plot is ``edges.png``, drawn with matplotlib's Agg), Sequences
(per daemon: programs run, how deep they got, every SETUPMAPPING/REMOVEMAPPING shape and
the daemon's answer, findings only sequences reached), Differential (the diff target: C
vs Rust daemon on identical shares, every divergence with its count, a finding or the
allow-list's reason), Escape canaries (what was planted, and any breach per daemon),
Findings (one per signature: kind,
count, what, reproducer and its minimized twin, the ``fuseproto fuzz replay`` commands,
evidence), How to reproduce.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["write", "SECTIONS"]

SECTIONS = ("## Summary", "## Daemons", "## Daemon coverage", "## Sequences",
            "## Differential", "## Escape canaries", "## Findings", "## How to reproduce")
#: The plot of the daemons' edges over time, next to report.md.
PLOT = "edges.png"


def _cov(c: dict[str, int]) -> str:
    if "cov" in c:
        return f"cov {c['cov']}, ft {c.get('ft', 0)}"
    if "outcome_classes" in c:
        edges = f", {c['daemon_edges']} daemon edges" if "daemon_edges" in c else ""
        return f"{c['outcome_classes']} outcome classes{edges}"
    return "-"


def to_json(result: Any) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(result.started)),
        "seconds": round(result.seconds, 1),
        "command": result.command,
        "python": result.python,
        "atheris": result.atheris,
        "targets": [r.to_json() for r in result.results],
        "daemons": [{"daemon": r.daemon, "version": r.daemon_version,
                     "binary": r.daemon_binary}
                    for r in result.results if r.engine == "daemon"],
        "sequences": {r.daemon: r.sequences for r in result.results
                      if r.engine == "daemon" and r.sequences},
        # per live target on an instrumented daemon: the virtiofsd target under the
        # daemon's name, the below-FUSE ones as "<daemon> <target>"
        "daemon_edges": {(r.daemon if r.engine == "daemon" else f"{r.daemon} {r.target}"):
                         getattr(r, "edges", {}) for r in result.results
                         if r.engine in ("daemon", "below-fuse")
                         and getattr(r, "edges", None)},
        "diff": {r.daemon: getattr(r, "diff", {}) for r in result.results
                 if getattr(r, "diff", None)},
        "known": {"sources": result.known_sources, "signatures": result.known_count,
                  "new": sum(1 for f in result.findings if not f.known)},
        "findings": [f.to_json() for f in result.findings],
    }


def _md(result: Any, plotted: bool = False) -> str:
    j = to_json(result)
    lines = [
        "# fuseproto fuzz campaign",
        "",
        f"Started {j['started']}, {j['seconds']} s; Python {j['python']}, "
        f"atheris {j['atheris'] or 'not used'}."
        + (f" Command: `{j['command']}`." if j["command"] else ""),
        "",
        "## Summary",
        "",
        "| target | engine | daemon | seconds | inputs | inputs/s | coverage | corpus | "
        "findings | restarts |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in result.results:
        lines.append(
            f"| {r.target} | {r.engine} | {r.daemon or '-'} | {r.seconds:.1f} | {r.iterations} "
            f"| {r.per_second:.0f} | {_cov(r.coverage)} | {r.corpus_size} | {len(r.findings)} "
            f"| {r.restarts} |")
    errs = [r for r in result.results if r.error or r.notes]
    if errs:
        lines.append("")
        for r in errs:
            for n in r.notes:
                lines.append(f"- {r.target} {r.daemon or ''}: {n}")
            if r.error:
                lines.append(f"- **{r.target} {r.daemon or ''} error**: {r.error}")
    lines += ["", "Coverage: `cov`/`ft` are libFuzzer's edge and feature counts over the "
              "instrumented fuseproto modules; for the daemons, the number of distinct "
              "outcome classes (opcode x errno x reply size, or the failure) seen, and for "
              "an instrumented daemon the edges of its own code reached (SanitizerCoverage "
              "guards that fired).",
              "", "## Daemons", ""]
    daemons = [r for r in result.results if r.engine == "daemon"]
    if not daemons:
        lines.append("No daemon was fuzzed.")
    for r in daemons:
        e = getattr(r, "edges", {}) or {}
        inst = (f", the instrumented build ({e['instrumentation']}): memory errors are "
                "findings, its edges steer the fuzzer" if e.get("instrumentation") else "")
        lines.append(f"- `{r.daemon}`: {r.daemon_version or 'unknown version'}"
                     + (f", binary `{r.daemon_binary}`" if r.daemon_binary else "") + inst)
    lines += ["", "## Daemon coverage", ""]
    lines += _edges_md(j["daemon_edges"], plotted)
    lines += ["", "## Sequences", ""]
    lines += _sequences_md(daemons)
    lines += ["", "## Differential", ""]
    lines += _diff_md(j["diff"])
    lines += ["", "## Escape canaries", ""]
    lines += _canaries_md(result)
    lines += ["", "## Findings", ""]
    if not result.findings:
        lines.append("No findings.")
    else:
        lines += [_known_md(j["known"], len(result.findings)), ""]
    # New findings first; within each group, in the order they were found.
    ordered = sorted(result.findings, key=lambda f: bool(f.known))
    for i, f in enumerate(ordered, 1):
        where = f"{f.target}" + (f" ({f.daemon})" if f.daemon else "")
        known = f.known
        lines += [
            f"### {i}. {'' if known else 'NEW '}{f.kind}: {where}",
            "",
            f"- signature: `{f.signature}`",
            f"- known: seen before in `{known}`" if known else
            "- new: not in the known findings",
            f"- seen: {f.count} time(s)",
            f"- what: {f.summary}",
            f"- reproducer: `{f.reproducer}`",
            f"- replay: `{f.replay}`",
        ]
        if getattr(f, "script", ""):
            lines.append(f"- standalone reproducer: `python3 {f.script}` (prints reproduced "
                         "/ not reproduced; `--daemon SPEC` for another build)")
        if getattr(f, "pcap", ""):
            lines.append(f"- exchange: `{f.pcap}` (pcap, fuseproto's FUSE link type: "
                         "`fuseproto decode`, Wireshark)")
        lines += _minimized_md(f)
        ev = {k: v for k, v in f.evidence.items() if k not in ("log_tail", "report")}
        if ev:
            lines.append(f"- evidence: `{json.dumps(ev, default=str)[:600]}`")
        tail = f.evidence.get("log_tail")
        if f.evidence.get("report"):
            # A sanitizer report: the report itself (frames symbolized in `frames` above).
            lines += ["- sanitizer report:", "", "```", str(f.evidence["report"])[:3000], "```"]
        elif tail:
            lines += ["- daemon log tail:", "", "```", str(tail)[-800:], "```"]
        lines.append("")
    lines += [
        "## How to reproduce",
        "",
        "Each finding's `replay` line re-runs its reproducer: in-process targets decode the "
        "saved input again under the same oracle; virtiofsd reproducers (JSON: daemon, "
        "version, requests as hex) start a fresh sandboxed daemon, repeat the harness's "
        "setup and send the requests in order. `fuseproto fuzz replay FILE --json` prints a "
        "machine-readable verdict. `minimized` files (`fuseproto fuzz shrink FILE`) are "
        "the fewest, smallest requests that still give the same signature against a fresh "
        "daemon; they replay the same way.",
        "",
    ]
    return "\n".join(lines)


def _known_md(k: dict[str, Any], total: int) -> str:
    """The line before the findings: how many are new against which known-set."""
    if not k["sources"]:
        return (f"{total} finding(s); no known findings were given (`--known PATH`), so "
                "each is listed as new.")
    return (f"{total} finding(s): **{k['new']} new**, {total - k['new']} known (against "
            f"{k['signatures']} signatures in " + ", ".join(f"`{s}`" for s in k["sources"])
            + "). New ones come first.")


def _sequences_md(daemons: list[Any]) -> list[str]:
    from .sequences import DEPTHS

    runs = [r for r in daemons if r.sequences]
    if not runs:
        return ["No sequence programs were run."]
    lines = [
        "Each program is INIT (offering MAP_ALIGNMENT / INIT_EXT or not), then LOOKUP / "
        "CREATE / OPEN of scratch files with node ids and file handles taken from the "
        "daemon's own replies, READ/WRITE, SETUPMAPPING/REMOVEMAPPING, FORGET/BATCH_FORGET, "
        "INTERRUPT, several requests on one kick, DESTROY and requests after it; programs "
        "are mutated structurally (`fuseproto/fuzz/sequences.py`).",
        "",
        "| daemon | seconds | programs | requests | deepest state | programs per depth |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in runs:
        q = r.sequences
        depth = ", ".join(f"{d} {q['depths'][d]}" for d in DEPTHS if d in q.get("depths", {}))
        lines.append(f"| {r.daemon} | {q.get('seconds', 0)} | {q.get('programs', 0)} | "
                     f"{q.get('requests', 0)} | {q.get('deepest', '-')} | {depth} |")
    for r in runs:
        q = r.sequences
        lines += ["", f"Mappings attempted on `{r.daemon}`, by request shape: how many the "
                  "daemon accepted (answered 0), refused (errno x count), and what else "
                  "happened (a finding the request ran into, which an earlier request of "
                  "the program may have caused; no reply):", ""]
        lines += _mapping_shapes(q.get("mappings") or {})
        new = q.get("new_findings") or []
        lines.append("")
        lines.append(f"Findings only sequences reached on `{r.daemon}`: "
                     + (", ".join(f"`{s}`" for s in new) if new else "none"))
    return lines


def _mapping_shapes(maps: dict[str, int]) -> list[str]:
    """``{"OP shape: answer": n}`` as a table: one row per (op, shape)."""
    if not maps:
        return ["- none reached the daemon"]
    rows: dict[str, dict[str, Any]] = {}
    for key, n in maps.items():
        shape, _, answer = key.rpartition(": ")
        row = rows.setdefault(shape, {"ok": 0, "refused": {}, "other": {}})
        if answer == "0":
            row["ok"] += n
        elif answer.lstrip("-").isdigit():
            row["refused"][answer] = row["refused"].get(answer, 0) + n
        else:
            row["other"][answer] = row["other"].get(answer, 0) + n
    out = ["| request shape | accepted | refused | other |", "|---|---:|---|---|"]
    for shape, row in sorted(rows.items()):
        refused = ", ".join(f"{e} x{c}" for e, c in sorted(row["refused"].items(),
                                                          key=lambda kv: -kv[1]))
        other = ", ".join(f"{a} x{c}" for a, c in sorted(row["other"].items(),
                                                        key=lambda kv: -kv[1]))
        out.append(f"| {shape} | {row['ok']} | {refused or '-'} | {other or '-'} |")
    return out


def _diff_md(pairs: dict[str, dict[str, Any]]) -> list[str]:
    if not pairs:
        return ["No differential run (it needs a C and a Rust daemon among the daemons)."]
    lines = ["The same sequence programs on both daemons, each on a fresh, identically "
             "populated share; answers compared step by step (accepted vs refused, errno "
             "class, data, directory entries, the size / type / permissions / owner / link "
             "count of the same file; `fuseproto/fuzz/diff.py`). A divergence is a finding "
             "unless the allow-list (`fuseproto/fuzz/diff_allow.py`) explains it.",
             "",
             "| pair | seconds | programs | requests | answers compared | not compared | "
             "divergences | findings |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, q in pairs.items():
        lines.append(f"| {name} | {q.get('seconds', 0)} | {q.get('programs', 0)} | "
                     f"{q.get('requests', 0)} | {q.get('compared', 0)} | "
                     f"{q.get('uncompared', 0)} | {len(q.get('divergences') or {})} | "
                     f"{len(q.get('findings') or [])} |")
    for name, q in pairs.items():
        lines += ["", f"Divergences of `{name}` (`signature` xcount: an example; then "
                  "FINDING, or why it is allowed):", ""]
        divs = q.get("divergences") or {}
        if not divs:
            lines.append("- none: the two daemons agreed on every answer compared")
        for sig, d in divs.items():
            why = f"allowed: {d['allowed']}" if d.get("allowed") else "**FINDING**"
            lines.append(f"- `{sig}` x{d.get('count')}: {d.get('detail', '')[:160]}; {why}")
    return lines


def _canaries_md(result: Any) -> list[str]:
    live = [r for r in result.results if r.daemon]  # every target on a live daemon
    if not live:
        return ["No live daemon was fuzzed."]
    lines = ["Beside each daemon's share: a file and a directory holding unique random "
             "tokens, and inside the share symlinks out to them (`fuseproto/fuzz/"
             "canaries.py`). After every request (single requests, chains) or program "
             "(sequences, diff, control plane) the fuzzer checks that none was read (access time), written, linked, "
             "renamed or deleted and nothing was created beside the share; every reply is "
             "scanned for the tokens. Programs try `..`, absolute names, names with `/`, "
             "the symlinks out and handles or node ids of other files.", ""]
    escapes = [f for f in result.findings if f.kind == "escape"]
    for r in live:
        names = {r.daemon} | set((r.daemon or "").split("-vs-"))
        mine = [f for f in escapes if f.daemon in names]
        lines.append(f"- `{r.target}` on `{r.daemon}`: "
                     + (", ".join(f"`{f.signature}` x{f.count}" for f in mine) if mine
                        else "no breach"))
    return lines


def _edges_md(edges: dict[str, dict[str, Any]], plotted: bool) -> list[str]:
    if not edges:
        return ["No instrumented daemon was fuzzed (build one with `fuseproto daemons build "
                "c-asan-cov`): the daemons were steered by outcome classes only."]
    lines = ["| daemon (target) | instrumentation | feedback | guards | edges reached | after 10 s | "
             "after 25% | after 50% | single requests | corpus loaded / saved |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, e in edges.items():
        tl = e.get("timeline") or [[0, 0]]
        end = tl[-1][0] or 1

        def at(t: float, tl: list[list[float]] = tl) -> int:
            return int(max((p[1] for p in tl if p[0] <= t), default=0))

        lines.append(f"| {name} | {e.get('instrumentation') or '-'} | {e.get('feedback')} | "
                     f"{e.get('guards')} | {e.get('edges')} | {at(10)} | {at(end / 4)} | "
                     f"{at(end / 2)} | {e.get('requests_edges', '-')} | "
                     f"{e.get('corpus_loaded', 0)} / {e.get('corpus_saved', 0)} |")
    lines += ["", "Edges: distinct SanitizerCoverage edges of the daemon's own code that fired "
              "at least once (the daemons' start-up included; counted from the shared-memory "
              "map the daemon's coverage runtime writes, `fuseproto/fuzz/coverage.py`). "
              "`single requests`: edges when the single-request loop handed over to the "
              "sequence programs. Rows named `<daemon> chains` / `<daemon> control_plane`: "
              "the below-FUSE targets, each with its own map and clock. `report.json` has the full timelines "
              "(`daemon_edges.<daemon>.timeline`: [seconds, edges])."]
    if plotted:
        lines += ["", f"![daemon edges over time]({PLOT})"]
    return lines


def plot_edges(edges: dict[str, dict[str, Any]], path: Path) -> bool:
    """Draw each daemon's edges over time into ``path`` (PNG); False when there is nothing
    to draw or matplotlib is missing."""
    if not edges:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, e in edges.items():
        tl = e.get("timeline") or []
        if tl:
            ax.step([p[0] for p in tl], [p[1] for p in tl], where="post",
                    label=f"{name} ({e.get('feedback')})")
    ax.set_xlabel("seconds")
    ax.set_ylabel("daemon edges reached")
    ax.set_title("virtiofsd edges over time")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _minimized_md(f: Any) -> list[str]:
    sh = getattr(f, "shrink", None) or {}
    if getattr(f, "minimized", ""):
        return [f"- minimized: `{f.minimized}` ({sh.get('requests_before')} -> "
                f"{sh.get('requests_after')} requests, {sh.get('bytes_before')} -> "
                f"{sh.get('bytes_after')} bytes, {sh.get('replays')} replays, "
                f"{sh.get('seconds')} s" + ("" if sh.get("complete", True) else
                                            ", budget ran out") + ")",
                f"- replay minimized: `fuseproto fuzz replay {f.minimized}`"]
    if sh:
        why = "; ".join(sh.get("notes") or []) or sh.get("error", "")
        return [f"- minimized: no ({why})"]
    return []


def write(result: Any, out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "report.json", out / "report.md"
    j = to_json(result)
    jp.write_text(json.dumps(j, indent=1, default=str) + "\n")
    mp.write_text(_md(result, plot_edges(j["daemon_edges"], out / PLOT)))
    return mp, jp
