"""The daemons' own configurations: the command-line options that change what a virtiofsd
does with the same requests, grouped into *genes* (one choice each), per daemon kind.

A :class:`DaemonConfig` is one choice per gene: the extra arguments it adds to the
daemon's command line (:class:`~fuseproto.daemons.process.Daemon` ``extra_args``) and
whether xattrs stay on (the Daemon's ``xattr``; on by default). The empty config
(:data:`DEFAULT`) is the daemon as every other part of fuseproto runs it. The live fuzzer
(:mod:`fuseproto.fuzz.configs`) picks a config per daemon it starts, so a run reaches the
code behind each option (cache modes, lock handling, the xattr mapper, POSIX ACLs, the
thread pool, file handles for inodes, ...), not only the default configuration's.

Every alternative is one the daemon accepts with the others of its config (a test starts
each on the real daemons): the option spellings are the daemons' own (``virtiofsd
--help`` of QEMU 7.2's C daemon, ``-o name`` / ``--name=value``; the Rust daemon 1.13's
``--name [value]``). Mapping rules (``xattrmap``) use the syntax both daemons share
(QEMU docs/tools/virtiofsd.rst, "xattr-mapping"): ``:type:scope:key:prepend:`` rules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

from ..wire.constants import InitFlags

__all__ = ["Alt", "DaemonConfig", "DEFAULT", "GENES", "genes_for", "random_config", "mutate_config",
           "config_from_json"]

#: One rule set for the xattr mapper: every client name gets ``user.virtiofs.`` in front
#: on the host (the example of the C daemon's own help).
XATTRMAP_PREFIX = ":map::user.virtiofs.:"
#: Client ``trusted.`` names mapped under ``user.virtiofs.``, ``user.secret.`` names
#: refused, the rest passed through. (A rule refusing ``security.`` names stops the C
#: daemon at start: it maps ``security.capability`` for itself.)
XATTRMAP_RULES = (":prefix:client:trusted.:user.virtiofs.trusted.:"
                  ":bad:client:user.secret.::"
                  ":ok:all:::")


class Alt(NamedTuple):
    """One alternative of a gene: its label, the extra arguments, whether xattrs stay on,
    and INIT flags the daemon then demands of the client (both daemons refuse an INIT
    without FUSE_POSIX_ACL, FUSE_DONT_MASK and FUSE_SETXATTR_EXT when ACLs are on,
    without FUSE_SECURITY_CTX for labels)."""

    label: str
    args: tuple[str, ...] = ()
    xattr: bool = True
    init: int = 0


# A gene: (name, alternatives). The first alternative of each gene is the default.
Gene = tuple[str, tuple[Alt, ...]]
# ACLs: both daemons also want FUSE_DONT_MASK (the umask is theirs to apply) and
# FUSE_SETXATTR_EXT offered.
_ACL = int(InitFlags.FUSE_POSIX_ACL | InitFlags.FUSE_DONT_MASK | InitFlags.FUSE_SETXATTR_EXT)
_SECCTX = int(InitFlags.FUSE_SECURITY_CTX)
#: Capabilities the ``caps=drop`` daemon gives up (``-o modcaps=``): its permission checks
#: and ownership changes take their refusal paths.
_CAPS_DROPPED = "-dac_override:-fowner:-chown:-fsetid"
#: ``fds=few``: the daemon's descriptor limit (``--rlimit-nofile``), low enough that the
#: inodes a few hundred requests look up exhaust it (the EMFILE paths).
_FEW_FDS = 64
#: ``client_init=wide``: every other INIT flag a Linux client of the daemon's era may offer,
#: beside the harness's own (the daemon's INIT and each flag's later branches).
_WIDE_INIT = int(
    InitFlags.FUSE_ATOMIC_O_TRUNC | InitFlags.FUSE_EXPORT_SUPPORT | InitFlags.FUSE_DONT_MASK
    | InitFlags.FUSE_SPLICE_WRITE | InitFlags.FUSE_SPLICE_MOVE | InitFlags.FUSE_SPLICE_READ
    | InitFlags.FUSE_FLOCK_LOCKS | InitFlags.FUSE_HAS_IOCTL_DIR | InitFlags.FUSE_AUTO_INVAL_DATA
    | InitFlags.FUSE_READDIRPLUS_AUTO | InitFlags.FUSE_ASYNC_DIO | InitFlags.FUSE_WRITEBACK_CACHE
    | InitFlags.FUSE_NO_OPEN_SUPPORT | InitFlags.FUSE_PARALLEL_DIROPS
    | InitFlags.FUSE_HANDLE_KILLPRIV | InitFlags.FUSE_ABORT_ERROR | InitFlags.FUSE_CACHE_SYMLINKS
    | InitFlags.FUSE_NO_OPENDIR_SUPPORT | InitFlags.FUSE_EXPLICIT_INVAL_DATA
    | InitFlags.FUSE_SUBMOUNTS | InitFlags.FUSE_HANDLE_KILLPRIV_V2)

GENES: dict[str, tuple[Gene, ...]] = {
    "c": (
        ("cache", (Alt("auto"), Alt("none", ("-o", "cache=none")),
                   Alt("always", ("-o", "cache=always")))),
        ("xattr", (Alt("on"), Alt("off", ("-o", "no_xattr"), xattr=False),
                   Alt("posix_acl", ("-o", "posix_acl"), init=_ACL),
                   Alt("map-prefix", ("-o", f"xattrmap={XATTRMAP_PREFIX}")),
                   Alt("map-rules", ("-o", f"xattrmap={XATTRMAP_RULES}")))),
        ("locks", (Alt("none"), Alt("flock", ("-o", "flock")),
                   Alt("posix_lock", ("-o", "posix_lock")),
                   Alt("both", ("-o", "flock", "-o", "posix_lock")))),
        ("readdirplus", (Alt("default"), Alt("off", ("-o", "no_readdirplus")))),
        ("writeback", (Alt("off"), Alt("on", ("-o", "writeback")))),
        ("killpriv_v2", (Alt("default"), Alt("off", ("-o", "no_killpriv_v2")))),
        ("direct_io", (Alt("off"), Alt("allow", ("-o", "allow_direct_io")))),
        ("security_label", (Alt("off"), Alt("on", ("-o", "security_label"), init=_SECCTX))),
        ("submounts", (Alt("off"), Alt("announce", ("-o", "announce_submounts")))),
        ("threads", (Alt("inline"), Alt("pool-4", ("--thread-pool-size=4",)))),
        # The genes below change no reply the fuzzer sees on its own (an outcome class
        # hardly moves) but do change the daemon code a request runs: only daemon edges
        # tell them apart (the coverage feedback's ConfigChooser breeds from them).
        ("debug", (Alt("off"), Alt("on", ("-o", "debug")))),
        ("caps", (Alt("default"), Alt("drop", ("-o", f"modcaps={_CAPS_DROPPED}")))),
        ("fds", (Alt("default"), Alt("few", (f"--rlimit-nofile={_FEW_FDS}",)))),
        ("client_init", (Alt("harness"), Alt("wide", init=_WIDE_INIT))),
    ),
    "rust": (
        ("cache", (Alt("auto"), Alt("never", ("--cache", "never")),
                   Alt("metadata", ("--cache", "metadata")),
                   Alt("always", ("--cache", "always")))),
        ("xattr", (Alt("on"), Alt("off", xattr=False),
                   Alt("posix_acl", ("--posix-acl",), init=_ACL),
                   Alt("map-prefix", ("--xattrmap", XATTRMAP_PREFIX)),
                   Alt("map-rules", ("--xattrmap", XATTRMAP_RULES)))),
        ("readdirplus", (Alt("default"), Alt("off", ("--no-readdirplus",)))),
        ("writeback", (Alt("off"), Alt("on", ("--writeback",)))),
        ("killpriv_v2", (Alt("default"), Alt("on", ("--killpriv-v2",)))),
        ("direct_io", (Alt("off"), Alt("allow", ("--allow-direct-io",)))),
        ("security_label", (Alt("off"), Alt("on", ("--security-label",), init=_SECCTX))),
        ("submounts", (Alt("off"), Alt("announce", ("--announce-submounts",)))),
        ("inode_handles", (Alt("never"),
                           Alt("prefer", ("--inode-file-handles=prefer",)))),
        ("readonly", (Alt("rw"), Alt("ro", ("--readonly",)))),
        ("threads", (Alt("inline"), Alt("pool-4", ("--thread-pool-size", "4")))),
    ),
}


def genes_for(kind: str) -> tuple[Gene, ...]:
    """The genes of daemon kind ``kind`` (``c`` or ``rust``)."""
    try:
        return GENES[kind]
    except KeyError:
        raise ValueError(f"no option genes for daemon kind {kind!r}") from None


@dataclass(frozen=True)
class DaemonConfig:
    """One alternative per gene, by index (``choice[i]`` for gene ``i`` of ``kind``)."""

    kind: str
    choice: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        genes = genes_for(self.kind)
        if not self.choice:
            object.__setattr__(self, "choice", (0,) * len(genes))
        if len(self.choice) != len(genes) or any(
                not 0 <= c < len(g[1]) for c, g in zip(self.choice, genes, strict=True)):
            raise ValueError(f"not a {self.kind} daemon config: {self.choice}")

    def _picked(self) -> list[Alt]:
        return [g[1][c] for c, g in zip(self.choice, genes_for(self.kind), strict=True)]

    @property
    def args(self) -> list[str]:
        """The extra command-line arguments."""
        return [a for alt in self._picked() for a in alt.args]

    @property
    def xattr(self) -> bool:
        return all(alt.xattr for alt in self._picked())

    @property
    def init_flags(self) -> int:
        """INIT flags the client must offer for this config to serve (OR them in)."""
        flags = 0
        for alt in self._picked():
            flags |= alt.init
        return flags

    @property
    def label(self) -> str:
        """``gene=alternative`` for every gene off its default (``default`` for none)."""
        parts = [f"{g[0]}={g[1][c].label}" for c, g in zip(self.choice, genes_for(self.kind),
                                                         strict=True) if c]
        return ",".join(parts) or "default"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "label": self.label, "args": self.args,
                "xattr": self.xattr, "choice": list(self.choice)}


DEFAULT = {kind: DaemonConfig(kind) for kind in GENES}


def config_from_json(doc: dict[str, object]) -> DaemonConfig:
    """A config written by :meth:`DaemonConfig.to_json` (ValueError when it is not one).
    One written before genes were appended has the new genes at their defaults."""
    choice = doc.get("choice")
    if not isinstance(choice, list) or not all(isinstance(c, int) for c in choice):
        raise ValueError(f"not a daemon config: {doc!r}")
    kind = str(doc.get("kind"))
    missing = len(genes_for(kind)) - len(choice)
    return DaemonConfig(kind, tuple(choice) + (0,) * max(missing, 0))


def random_config(kind: str, rng: random.Random, p: float = 0.3) -> DaemonConfig:
    """Each gene off its default with probability ``p``, to a random alternative."""
    return DaemonConfig(kind, tuple(rng.randrange(1, len(g[1])) if rng.random() < p else 0
                                    for g in genes_for(kind)))


def mutate_config(cfg: DaemonConfig, rng: random.Random) -> DaemonConfig:
    """``cfg`` with one gene changed to another alternative."""
    genes = genes_for(cfg.kind)
    i = rng.randrange(len(genes))
    n = len(genes[i][1])
    choice = list(cfg.choice)
    choice[i] = (choice[i] + rng.randrange(1, n)) % n
    return DaemonConfig(cfg.kind, tuple(choice))
