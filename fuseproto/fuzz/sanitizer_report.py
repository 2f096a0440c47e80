"""AddressSanitizer / UndefinedBehaviorSanitizer reports in a daemon's log, read and
symbolized offline.

An instrumented daemon (``c-asan-cov``) runs with ``symbolize=0`` (its chroot sandbox and
seccomp filter leave no room for a symbolizer), so its report frames are ``module+offset``::

    ==4711==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x6020000000b1 ...
    READ of size 1 at 0x6020000000b1 thread T2
        #0 0x55d0c8a1b2c2  (/root/.cache/fuseproto/.../virtiofsd+0x1b2c2) (BuildId: 9f..)
    ...
    SUMMARY: AddressSanitizer: heap-buffer-overflow (/root/.../virtiofsd+0x1b2c2) ...

or, from UBSan (``print_stacktrace=1``; ``halt_on_error=1`` ends the process with
status 1, which is what tells it from the daemon's own ``exit(1)``)::

    ../../tools/virtiofsd/fuse_lowlevel.c:1234:17: runtime error: left shift of ...

:func:`parse_report` finds the first report in a log (its tool, kind, headline, the
frames of the first stack and the report text), :func:`symbolize` names the frames'
functions with ``llvm-symbolizer`` (Debian's ``llvm``) or ``addr2line`` against the
module (the daemon's binary), and :func:`report_signature` is what findings are
deduplicated by: tool, kind and the top symbolized frames.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace

__all__ = ["Frame", "SanitizerReport", "parse_report", "symbolize", "report_signature",
           "TOP_FRAMES", "SIGNAL_KINDS", "has_report"]

#: How many top frames a signature names.
TOP_FRAMES = 3

_ERROR = re.compile(r"^==(\d+)==ERROR: (AddressSanitizer|LeakSanitizer|"
                    r"UndefinedBehaviorSanitizer): ([\w-]+)(.*)$", re.M)
_RUNTIME = re.compile(r"^(\S+?):(\d+):(\d+): runtime error: (.*)$", re.M)
_FRAME = re.compile(
    r"^\s*#(\d+) (0x[0-9a-fA-F]+)"
    r"(?: in (\S+)(?: ([^\s(][^\s]*))?)?"  # symbolized: in FUNCTION [FILE:LINE:COL]
    r"\s*(?:\((?:([^()\s]+)\+(0x[0-9a-fA-F]+)|<unknown module>)\))?"  # (MODULE+0xOFF)
    r"(?: \(BuildId: [0-9a-fA-F]+\))?\s*$")
_END = re.compile(r"^(?:SUMMARY: \w+Sanitizer:.*|==\d+==ABORTING)$", re.M)
# Frames of the sanitizer runtime itself (interceptors, the report machinery) and of
# libc's abort path (an assertion or fortify failure caught with handle_abort=1) say how
# the report was raised, not where the bug is.
_RUNTIME_FRAME = re.compile(r"^(?:__asan_|__ubsan_|__sanitizer_|__interceptor_|"
                            r"__interception::|___interceptor_|__lsan_|"
                            r"(?:__)?pthread_kill(?:_implementation|_internal)?$|"
                            r"(?:__GI_)?raise$|(?:__GI_)?abort$|__assert_fail(?:_base)?$|"
                            r"__libc_message$|__fortify_fail$|__chk_fail$)")
#: Kinds of a report on a fatal signal (not a memory access the sanitizer checked).
SIGNAL_KINDS = ("ABRT", "SEGV", "BUS", "FPE", "ILL")


@dataclass(frozen=True)
class Frame:
    """One stack frame as the report gives it, with the function once symbolized."""

    index: int
    pc: int
    function: str | None = None
    location: str | None = None  # file:line[:col]
    module: str | None = None
    offset: int | None = None

    def describe(self) -> str:
        name = self.function or (f"{os.path.basename(self.module)}+{self.offset:#x}"
                                 if self.module and self.offset is not None else "?")
        return name + (f" {self.location}" if self.location else "")


@dataclass
class SanitizerReport:
    """The first sanitizer report in a log."""

    tool: str  # AddressSanitizer | UndefinedBehaviorSanitizer | LeakSanitizer
    kind: str  # heap-buffer-overflow, SEGV, ..., or UBSan's message with numbers as N
    headline: str  # the ERROR: line, or UBSan's "file:line:col: runtime error: ..." line
    text: str  # the report, from its first line to SUMMARY / ABORTING
    frames: list[Frame] = field(default_factory=list)  # the first stack
    location: str | None = None  # UBSan: the source location it names

    @property
    def short_tool(self) -> str:
        """``asan`` / ``ubsan`` / ``lsan``: the finding kind."""
        return {"AddressSanitizer": "asan", "UndefinedBehaviorSanitizer": "ubsan",
                "LeakSanitizer": "lsan"}.get(self.tool, self.tool.lower())

    def top_functions(self, n: int = TOP_FRAMES) -> list[str]:
        """The top ``n`` frames' names below the sanitizer runtime's own frames (function
        if known, else ``module+offset``)."""
        return [f.function or f.describe() for f in self._below_runtime()[:n]]

    def top_sites(self, n: int = TOP_FRAMES) -> list[str]:
        """The same frames as :meth:`top_functions`, each with its source line when the
        frame has one (``lo_write_buf@passthrough_ll.c:2085``): two faults in one function
        are two sites (lines are stable for one build)."""
        out = []
        for f in self._below_runtime()[:n]:
            name = f.function or f.describe()
            if f.function and f.location:
                path, _, rest = f.location.partition(":")
                line = rest.split(":")[0]
                name += f"@{os.path.basename(path)}" + (f":{line}" if line else "")
            out.append(name)
        return out

    def _below_runtime(self) -> list[Frame]:
        frames = [f for f in self.frames if not (f.function and _RUNTIME_FRAME.match(f.function))]
        return frames or self.frames


def has_report(log: str) -> bool:
    """Cheap test: does ``log`` hold the start of a sanitizer report?"""
    return "Sanitizer: " in log or ": runtime error: " in log


def _frames(text: str) -> list[Frame]:
    out: list[Frame] = []
    started = False
    for line in text.splitlines():
        m = _FRAME.match(line)
        if m is None:
            if started and not line.strip():
                break  # the first stack ends at a blank line
            continue
        started = True
        idx, pc, fn, loc, mod, off = m.groups()
        if started and out and int(idx) == 0:
            break  # a second stack without a blank line between
        out.append(Frame(int(idx), int(pc, 16), fn, loc, mod, int(off, 16) if off else None))
    return out


def parse_report(log: str) -> SanitizerReport | None:
    """The first ASan / UBSan report in ``log`` (None if there is none)."""
    m_err = _ERROR.search(log)
    m_rt = _RUNTIME.search(log)
    if m_err is None and m_rt is None:
        return None
    if m_err is not None and (m_rt is None or m_err.start() <= m_rt.start()):
        start = m_err.start()
        tool, kind = m_err.group(2), m_err.group(3)
        headline = m_err.group(0).strip()
        location = None
    else:
        assert m_rt is not None
        start = m_rt.start()
        tool = "UndefinedBehaviorSanitizer"
        msg = m_rt.group(4).strip()
        kind = re.sub(r"0x[0-9a-fA-F]+|-?\d+", "N", msg)[:100]
        headline = m_rt.group(0).strip()
        location = f"{os.path.basename(m_rt.group(1))}:{m_rt.group(2)}"
    end = _END.search(log, start)
    stop = log.find("\n", end.end()) if end is not None else -1
    text = log[start:stop if stop > 0 else len(log)][:16384]
    return SanitizerReport(tool, kind, headline, text, _frames(text), location)


# -- offline symbolization ---------------------------------------------------------------

_CACHE: dict[tuple[str, tuple[int, ...]], list[tuple[str | None, str | None]]] = {}


def _run_symbolizer(module: str, offsets: list[int]) -> list[tuple[str | None, str | None]]:
    """(function, file:line) per offset, from llvm-symbolizer, else addr2line; Nones when
    neither is there or the module has no symbols."""
    key = (module, tuple(offsets))
    if key in _CACHE:
        return _CACHE[key]
    addrs = [f"{o:#x}" for o in offsets]
    result: list[tuple[str | None, str | None]] = [(None, None)] * len(offsets)
    tool = shutil.which("llvm-symbolizer") or shutil.which("llvm-symbolizer-14")
    try:
        if tool:
            # One block per address, blank-line separated: function, file:line:col, and
            # more pairs for inlined frames (the first pair is the innermost).
            out = subprocess.run([tool, "--obj", module, "--functions=linkage",
                                  "--relative-address", *addrs], capture_output=True,
                                 text=True, timeout=30).stdout
            blocks = [b.splitlines() for b in out.strip().split("\n\n")]
            if len(blocks) == len(offsets):
                result = [_pair(b[0] if b else None, b[1] if len(b) > 1 else None)
                          for b in blocks]
        elif shutil.which("addr2line"):
            out = subprocess.run(["addr2line", "-f", "-e", module, *addrs],
                                 capture_output=True, text=True, timeout=30).stdout
            lines = out.splitlines()
            if len(lines) == 2 * len(offsets):
                result = [_pair(lines[2 * i], lines[2 * i + 1]) for i in range(len(offsets))]
    except (OSError, subprocess.SubprocessError):
        pass
    _CACHE[key] = result
    return result


def _pair(fn: str | None, loc: str | None) -> tuple[str | None, str | None]:
    fn = None if not fn or fn.startswith("??") else fn.strip()
    loc = None if not loc or loc.startswith("??") else loc.strip()
    if loc is not None:
        # Keep the file's basename and line (build directories differ between machines).
        path, _, rest = loc.partition(":")
        loc = f"{os.path.basename(path)}:{rest.split(':')[0]}" if rest else os.path.basename(path)
    return fn, loc


def symbolize(report: SanitizerReport, binary: str | None = None) -> SanitizerReport:
    """``report`` with its frames' functions named (offline, against each frame's module;
    a module whose basename is the daemon ``binary``'s is looked up there, the path the
    daemon saw inside its sandbox may not exist outside). Frames already symbolized or
    without a module stay as they are."""
    want: dict[str, list[int]] = {}
    for f in report.frames:
        if f.function is None and f.module and f.offset is not None:
            want.setdefault(f.module, []).append(f.offset)
    if not want:
        return report
    names: dict[tuple[str, int], tuple[str | None, str | None]] = {}
    for module, offs in want.items():
        same = binary is not None and os.path.basename(module) == os.path.basename(binary)
        path = binary if same and binary is not None else module
        if not os.path.exists(path):
            continue
        for off, pair in zip(offs, _run_symbolizer(path, offs), strict=True):
            names[(module, off)] = pair
    frames = []
    for f in report.frames:
        got = names.get((f.module or "", f.offset or 0)) if f.function is None else None
        if got is not None and got[0] is not None:
            f = replace(f, function=got[0], location=got[1] or f.location)
        frames.append(f)
    return replace(report, frames=frames)


def report_signature(report: SanitizerReport, n: int = TOP_FRAMES) -> str:
    """``<kind>:[<file:line>:]<f0>|<f1>|<f2>``: what a report is deduplicated by (no
    addresses, no pids; UBSan's source location when it names one; each frame as
    :meth:`SanitizerReport.top_sites` names it, with its line once symbolized).
    :func:`~.forensics.outcome_signature` puts the tool and the daemon in front."""
    frames = "|".join(report.top_sites(n)) or "?"
    where = f"{report.location}:" if report.location else ""
    return f"{report.kind}:{where}{frames}"
