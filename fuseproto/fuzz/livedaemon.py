"""Which daemons the live targets run and how each one starts: the installation a spec
names (:func:`resolve_installation`) and its label in findings (:func:`daemon_label`),
the daemons a campaign picks unless told (:func:`default_daemons`), whether one is
instrumented (:func:`instrumented`), the chroot sandbox (:class:`SandboxedDaemon`), the
environment every daemon gets (:data:`SANITIZER_ENV`), the DAX window's size
(:data:`DAX_WINDOW`) and the files every fresh share holds (:func:`populate`).
:mod:`.harness` re-exports these names (its callers import them from there)."""

from __future__ import annotations

import os

from .. import daemons

__all__ = ["SANITIZER_ENV", "SandboxedDaemon", "DAX_WINDOW", "resolve_installation",
           "daemon_label", "default_daemons", "instrumented", "populate"]

#: The environment of every daemon the harness starts: what an ASan/UBSan build needs
#: (no leak check, no colours, no in-process symbolizer: the sandbox has none; reports
#: are symbolized offline), a fatal report aborts / halts. A plain daemon ignores it.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:color=never:symbolize=0:abort_on_error=1:handle_abort=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:color=never:symbolize=0",
}


class SandboxedDaemon(daemons.Daemon):
    """A :class:`Daemon` with the chroot sandbox for both kinds (the Rust one defaults to
    ``--sandbox none`` in :class:`Daemon`); the fuzzer sends hostile requests as root."""

    def argv(self) -> list[str]:
        args = super().argv()
        if self.kind == "rust" and "--sandbox" in args:
            args[args.index("--sandbox") + 1] = "chroot"
        return args


# The window a c-dax daemon maps into under the fuzzer: smaller than the moffsets the
# sequence programs try (2 MiB chunks up to 14 MiB + 4 MiB), so both in-window mappings
# (accepted) and ones past the end (which must be refused) come up.
DAX_WINDOW = 16 << 20


def resolve_installation(spec: str, kind: str | None = None) -> daemons.Installation:
    """``c`` / ``rust`` (installed, or installed now), a build variant's name
    (``c-asan-cov``, ``c-src``, ...: built now if it is not cached), or a path to a
    virtiofsd binary (or a wrapper script that execs one, kept as given); ``kind`` says
    which protocol dialect a path speaks (default: :func:`fuseproto.daemons.detect_kind`).
    The daemons package's own resolver (:func:`fuseproto.daemons.resolve`)."""
    return daemons.resolve(spec, kind)


def daemon_label(spec: str, inst: daemons.Installation) -> str:
    """How findings and reports name a daemon: ``c``/``rust``, a variant's name
    (``c-asan-cov``), or ``kind:basename`` for a path."""
    if spec in daemons.KINDS or spec in daemons.VARIANTS:
        return spec
    return f"{inst.kind}:{os.path.basename(spec)}"


def default_daemons() -> list[str]:
    """The daemons a campaign fuzzes unless told: the instrumented C build with our DAX
    patch ``c-dax-asan-cov`` when it is built (its edges steer the fuzzer, its sanitizers
    make memory errors findings, its mappings land in a real window and are judged),
    else ``c-asan-cov``, else the packaged ``c``; and ``rust-cov`` (the Rust daemon with
    an edge map, built on demand) when it is built, else the packaged ``rust``."""
    c = next((v for v in ("c-dax-asan-cov", "c-asan-cov") if daemons.find(v) is not None), "c")
    return [c, "rust-cov" if daemons.find("rust-cov") is not None else "rust"]


def instrumented(installation: daemons.Installation) -> bool:
    """The installation says it is built with SanitizerCoverage (``sancov``); a map whose
    header shows guards after a start says so too (:attr:`CoverageMap.instrumented`)."""
    return "sancov" in installation.instrumentation


def populate(shared: str) -> None:
    """The files every fresh daemon serves (node ids: see Started.set_up)."""
    with open(os.path.join(shared, "file"), "wb") as f:
        f.write(bytes(range(256)) * 256)  # 64 KiB, position-dependent content
    with open(os.path.join(shared, "small"), "wb") as f:
        f.write(b"hello world")
    open(os.path.join(shared, "empty"), "wb").close()
    os.mkdir(os.path.join(shared, "dir"))
    with open(os.path.join(shared, "dir", "inner"), "wb") as f:
        f.write(b"inner")
    os.symlink("file", os.path.join(shared, "link"))
