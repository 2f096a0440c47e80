"""The real virtiofsd daemons fuseproto drives: where they come from and how they run.

* :mod:`~fuseproto.daemons.archive`: Debian's archive through a private apt configuration
  (the system's sources are never edited): newest versions, downloads, ``dpkg -x``.
* :mod:`~fuseproto.daemons.install`: install (cached) and find the C virtiofsd of QEMU 7.2
  and the Rust virtiofsd 1.13 (:class:`Installation`, :func:`install`, :func:`find`).
* :mod:`~fuseproto.daemons.variants`: build QEMU 7.2's C virtiofsd from Debian's source, in
  variants (``c-src``, ``c-asan-cov`` with ASan/UBSan and an edge-coverage map, ...;
  :data:`VARIANTS`, :func:`build`), cached like the installations; :func:`resolve` takes
  any daemon name (``c``, ``rust``, a variant) or path.
* :mod:`~fuseproto.daemons.detect`: a binary's kind and version, the host's glibc.
* :mod:`~fuseproto.daemons.process`: one running daemon (:class:`Daemon`): start, watch,
  stop by PID, sandbox mode, and removal of its socket, pid file and log on every path.

``from fuseproto import daemons; daemons.install("rust")`` is the usual entrance. Nothing
here imports the transports (the vhost-user frontend starts a :class:`Daemon`, not the
other way round).
"""

from .archive import PrivateApt, cache_root, extract, newest_header, system_archive_uri
from .detect import detect_kind, glibc_version, kind_from_help, kind_from_version, version_text
from .install import KINDS, SPECS, DaemonSpec, Installation, daemons_dir, find, install, installed
from .process import (
    C_PID_DIR,
    SANDBOXES,
    Daemon,
    describe_status,
    pid_file_paths,
    remove_pid_file,
    sweep_stale_pid_files,
)
from .variants import (
    DEFAULT_BUILDS,
    SOURCE_VERSION,
    VARIANTS,
    Variant,
    build,
    dax_options,
    has_dax,
    recipe,
    resolve,
)

__all__ = [
    "C_PID_DIR",
    "DEFAULT_BUILDS",
    "KINDS",
    "SANDBOXES",
    "SOURCE_VERSION",
    "SPECS",
    "VARIANTS",
    "Daemon",
    "DaemonSpec",
    "Installation",
    "PrivateApt",
    "Variant",
    "build",
    "cache_root",
    "daemons_dir",
    "dax_options",
    "has_dax",
    "describe_status",
    "detect_kind",
    "extract",
    "find",
    "glibc_version",
    "install",
    "installed",
    "kind_from_help",
    "kind_from_version",
    "newest_header",
    "pid_file_paths",
    "recipe",
    "remove_pid_file",
    "sweep_stale_pid_files",
    "resolve",
    "system_archive_uri",
    "version_text",
]
