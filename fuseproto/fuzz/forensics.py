"""Crash forensics for the live-daemon fuzzers: what one request did, where a daemon died,
and the signature a finding is deduplicated by.

:class:`Outcome` is the verdict on one request (its outcome class, and for a finding the
kind, a one-line detail and the evidence). :func:`crash_site` reads a daemon's log for the
place it died (an assertion as gcc or clang words it, a glibc fortify abort, a Rust
panic), :func:`death_outcome` and :func:`stall_outcome` turn an exit status or a missing
reply plus that log into an :class:`Outcome`, and :func:`outcome_signature` names a
finding so that repeats of the same bug land in one reproducer.

A sanitizer report in the log (an instrumented daemon: :mod:`.sanitizer_report`) makes
the death an ``asan`` / ``ubsan`` finding, whatever the status says (except an assertion
or fortify abort that ASan's ``handle_abort`` reported as ``ABRT``: that stays the crash
it is in a plain build, with the stack as evidence): ASan aborts
(``abort_on_error=1``: SIGABRT, like a failed assertion) and UBSan exits with status 1
(``halt_on_error=1``: like the daemon's own ``exit(1)``); the log is what tells them
apart. Its frames are symbolized offline against the daemon's binary, the report text
goes into the evidence, and the signature is the tool, the kind and the top frames.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from .. import daemons
from .sanitizer_report import SanitizerReport, has_report, parse_report, report_signature, symbolize

__all__ = ["Outcome", "FATAL", "SANITIZER_FINDINGS", "sanitizer_outcome", "crash_site", "peek_log", "read_new_log", "log_tail", "death_outcome",
           "stall_outcome", "outcome_signature", "PanicWatch", "HANG_GRACE", "count_slow",
           "slow_note"]

#: Sanitizer finding kinds (a report in the daemon's log; the daemon halts on it).
SANITIZER_FINDINGS = ("asan", "ubsan", "lsan")
#: Finding kinds after which the daemon is gone or unusable (a fresh one is started).
FATAL = ("crash", "daemon-exit", "hang", *SANITIZER_FINDINGS)
#: Seconds a live target waits past its hang timeout before a request with no reply counts
#: as hung. A reply in that time makes the request *slow*, counted but not a finding: an
#: ASan build that allocates what a fuzzed ``size`` asks (a 4 GiB GETXATTR buffer means
#: 512 MiB of shadow memory) answers in 0.5-1 s, and a loaded machine adds to that; before
#: this grace such replies were the most common "hang" of every campaign (GETXATTR,
#: LISTXATTR, 10-40 a campaign) and none of them replayed. A real hang costs this much more.
HANG_GRACE = 2.0


def count_slow(table: dict[str, list[float]], op: str, n: int, longest: float) -> None:
    """Add ``n`` slow replies to ``op`` in ``table`` (opcode name -> [count, longest wait
    in s]), the longest wait ``longest`` s among them."""
    have = table.get(op, [0, 0.0])
    table[op] = [have[0] + n, max(have[1], longest)]


def slow_note(table: dict[str, list[float]]) -> str | None:
    """The report's line on the slow replies of ``table`` (see :func:`count_slow`); None
    when there were none."""
    if not table:
        return None
    ops = sorted(table.items(), key=lambda kv: -kv[1][0])
    return (f"{sum(int(n) for n, _ in table.values())} slow replies (after the hang "
            "timeout, within its grace; not findings): " + ", ".join(
                f"{op} {int(n)} (longest {w:.2f} s)" for op, (n, w) in ops[:6]))


@dataclass
class Outcome:
    """What one request did. ``finding`` is None when nothing was wrong."""

    cls: str  # outcome class, e.g. "FUSE_READ:ok:4K" or "FUSE_LOOKUP:-2"
    finding: str | None = None  # crash | daemon-exit | hang | protocol | asan | ubsan
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    reply: bytes = b""


# Each pattern: a regex and how its groups make the site. What tells two sites apart is
# kept (file and line are stable for one daemon build; the assertion's own text); what
# varies between two hits of one site (numbers in a panic's message) becomes N.
_SITE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # C, gcc: "virtiofsd: ../../tools/virtiofsd/fuse_virtio.c:497: fv_queue_worker:
    # Assertion `0' failed."; clang prints the whole signature in place of the name
    # ("...: void fv_queue_worker(gpointer, gpointer): Assertion ..."): the identifier
    # right before the parameter list is the function, as gcc would name it.
    (re.compile(r"([\w.]+\.c):(\d+): (?:[^:\n]*?[\s*])?(\w+)(?:\([^\n]*?\))?: "
                r"Assertion `(.*)' failed"), "{0}:{1} {2}: Assertion '{3}' failed"),
    # glibc fortify: "*** invalid openat64 call: O_CREAT or O_TMPFILE without mode ***: terminated"
    (re.compile(r"\*\*\* (.+?) \*\*\*"), "{0}"),
    # Rust: "thread 'vring_worker' (81) panicked at .../src/vhost_user.rs:277:18:\n<message>"
    (re.compile(r"panicked at (?:[^\n]*/)?([\w.]+\.rs:\d+:\d+):\n([^\n]*)"), "{0}: {1#}"),
    # Rust before 1.73: "panicked at '<message>', src/vhost_user.rs:277:18"
    (re.compile(r"panicked at '([^']*)', (?:[^\n]*/)?([\w.]+\.rs:\d+:\d+)"), "{1}: {0#}"),
)


def crash_site(log: str) -> str | None:
    """Where the daemon died, from its log (the last such line): an assertion as
    ``file.c:LINE function: Assertion 'EXPR' failed`` (gcc's and clang's wording alike), a
    glibc fortify abort's message, a Rust panic as ``file.rs:LINE:COL: message`` with the
    message's numbers as N (values, not sites: ``InvalidXattrSize((N, N))``)."""
    for pat, fmt in _SITE_PATTERNS:
        matches = list(pat.finditer(log))
        if matches:
            groups = matches[-1].groups()
            masked = [re.sub(r"\d+", "N", g) for g in groups]
            text = fmt
            for i, g in enumerate(groups):
                text = text.replace(f"{{{i}#}}", masked[i]).replace(f"{{{i}}}", g)
            return text.replace("`", "'")[:240]
    return None


LOG_READ = 1 << 16  # bytes of a daemon's log read at a time, at most


def read_new_log(path: str, offset: int, limit: int = LOG_READ) -> tuple[str, int]:
    """What the log at ``path`` holds past ``offset``, and the offset to read from next
    time. When more than ``limit`` bytes are new, the *last* ``limit`` (a death's
    assertion, panic or sanitizer report is at the end; a daemon logging at debug level
    writes far more than that per request): ("", offset) if it cannot be read."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            start = max(offset, end - limit)
            f.seek(start)
            data = f.read(end - start)
    except OSError:
        return "", offset
    return data.decode(errors="replace"), start + len(data)


def peek_log(path: str, offset: int) -> str:
    """Up to 64 KiB of the log at ``path`` from ``offset`` ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 16).decode(errors="replace")
    except OSError:
        return ""


class PanicWatch:
    """Notices a Rust worker panic in a daemon's log as it is written: the process lives
    on with a dead queue, so only the log tells. :meth:`seen` costs one ``stat`` while the
    log does not grow and reads only what is new; it is true once a ``panicked at`` line
    *and* the message line after it are there (the site :func:`crash_site` needs)."""

    __slots__ = ("path", "offset", "_size")

    def __init__(self, path: str | None, offset: int = 0):
        self.path = path or ""
        self.offset = offset  # where the text that counts starts
        self._size = offset

    def seen(self) -> bool:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return False
        if size <= self._size:
            return False
        text = peek_log(self.path, self.offset)
        at = text.find("panicked at")
        if at < 0:
            self._size = size
            return False
        # Complete: the location line and the message line both end in a newline (an old
        # Rust writes "panicked at 'message', file" on one line).
        rest = text[at:]
        return rest.count("\n") >= (1 if "panicked at '" in rest else 2)


def log_tail(log: str, lines: int = 6) -> str:
    """The last ``lines`` lines of a log (the evidence a finding keeps)."""
    return "\n".join(log.strip().splitlines()[-lines:])


def sanitizer_outcome(kind: str, name: str, report: SanitizerReport, binary: str | None,
                      ev: dict[str, Any]) -> Outcome:
    """The ``asan`` / ``ubsan`` finding for ``report`` (seen after request ``name``),
    symbolized against ``binary``; ``ev`` is the evidence gathered so far."""
    rep = symbolize(report, binary)
    ev.update(sanitizer=rep.tool, sanitizer_kind=rep.kind, headline=rep.headline,
              frames=[f"#{f.index} {f.describe()}" for f in rep.frames[:12]],
              sanitizer_signature=report_signature(rep), report=rep.text[:8000])
    if rep.location:
        ev["source"] = rep.location
    top = " < ".join(rep.top_functions())
    return Outcome(f"{name}:{rep.short_tool}:{rep.kind}", rep.short_tool,
                   f"{kind} virtiofsd: {rep.tool} {rep.kind} after {name}"
                   + (f" in {top}" if top else ""), ev)


def death_outcome(kind: str, name: str, status: int, log: str, previous: list[str],
                  binary: str | None = None) -> Outcome:
    """The finding for a daemon that ended with wait ``status`` after request ``name``:
    a sanitizer finding when its log holds a report (symbolized against ``binary``), else
    a crash when a signal killed it, a daemon-exit otherwise (``log``: what it wrote since
    the request; ``previous``: the opcode names sent before it)."""
    report = parse_report(log) if has_report(log) else None
    site = crash_site(log)
    if report is not None and not (report.kind == "ABRT" and site is not None):
        return sanitizer_outcome(kind, name, report, binary, {
            "opcode": name, "status": daemons.describe_status(status), "previous": previous,
            "log_tail": log_tail(log)})
    # An assertion or fortify abort that ASan caught (handle_abort=1: an "ABRT" report) is
    # the same crash as in a plain build, with the same signature (its site); the
    # symbolized stack comes along as evidence.
    ev: dict[str, Any] = {"opcode": name, "status": daemons.describe_status(status),
                          "previous": previous, "log_tail": log_tail(log)}
    if site is not None:
        ev["site"] = site
    if report is not None:
        ev["frames"] = [f"#{f.index} {f.describe()}" for f in symbolize(report, binary).frames[:12]]
    at = f": {site}" if site else ""
    if os.WIFSIGNALED(status):
        try:
            sig = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            sig = f"signal {os.WTERMSIG(status)}"
        ev["signal"] = sig
        return Outcome(f"{name}:crash:{sig}", "crash",
                       f"{kind} virtiofsd killed by {sig} after {name}{at}", ev)
    return Outcome(f"{name}:exit:{os.WEXITSTATUS(status)}", "daemon-exit",
                   f"{kind} virtiofsd {ev['status']} after {name}{at}", ev)


def stall_outcome(kind: str, name: str, *, area: int, timeout: float, log: str,
                  previous: list[str], state: str, reply_expected: bool) -> Outcome:
    """No reply to request ``name`` within ``timeout`` s while the process lives: a worker
    panic when the log shows one (the queue is dead), no finding when a reply was optional
    (INTERRUPT), else a hang."""
    site = crash_site(log)
    ev: dict[str, Any] = {"opcode": name, "area": area, "timeout_s": timeout,
                          "previous": previous, "log_tail": log_tail(log)}
    if site is not None:
        ev["site"] = site
        return Outcome(f"{name}:panic", "crash",
                       f"{kind} virtiofsd worker panicked after {name}: {site}", ev)
    if not reply_expected:
        return Outcome(f"{name}:noreply")  # INTERRUPT may go unanswered
    return Outcome(f"{name}:hang", "hang",
                   f"no reply to {name} within {timeout} s, daemon alive (state {state})", ev)


def outcome_signature(label: str, out: Outcome) -> str | None:
    """The finding signature of an outcome on daemon ``label`` (None when it is not a
    finding): kind, daemon, and the crash site / signal, or the protocol rule broken."""
    if out.finding is None:
        return None
    if out.finding in SANITIZER_FINDINGS:
        return f"{out.finding}:{label}:{out.evidence.get('sanitizer_signature', '?')}"
    if out.finding == "escape":  # a canary breach (.canaries): what happened to which
        return f"escape:{label}:{out.evidence.get('breach')}:{out.evidence.get('canary')}"
    parts = out.cls.split(":")
    op = parts[0]
    site = out.evidence.get("site")
    if out.finding in ("crash", "daemon-exit"):
        how = out.evidence.get("signal") or out.evidence.get("status") or "panic"
        prev = out.evidence.get("previous") or []
        if site is None and "FUSE_INTERRUPT" in prev:
            # No site in the log: a recent INTERRUPT is the cause (a stale one answered into
            # the next request's buffer, which a FORGET or a header-only request lacks, or
            # on the same kick), whatever came next -- one signature, not one per opcode
            # that happened to follow it (minimized reproducers: INIT, INTERRUPT, 1-3 more).
            site = "after FUSE_INTERRUPT"
        return f"{out.finding}:{label}:{how}:{site or op}"
    if out.finding == "protocol":
        if len(parts) > 1 and parts[1] == "undecodable":
            return f"protocol:{label}:{op}:{':'.join(parts[1:])}"
        return f"protocol:{label}:{parts[1] if len(parts) > 1 else '?'}"
    return f"{out.finding}:{label}:{op}"
