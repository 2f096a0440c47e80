"""Constants of ``linux/fuse.h`` (protocol 7.46), named exactly as in the header.

Enums of the header are ``IntEnum`` classes under the C enum's name (``fuse_opcode``,
``fuse_notify_code``, ``fuse_ext_type``, ``fuse_uring_cmd``). Each family of ``#define``
bit flags is an ``IntFlag`` with ``boundary=KEEP`` so unknown bits survive a roundtrip:

==========================  =====================================================
class                       header names
==========================  =====================================================
``InitFlags``               INIT ``flags`` (bits 0-31) and ``flags2`` (bit 32+,
                            i.e. ``flags | flags2 << 32``), FUSE_ASYNC_READ ...
``FOPEN``                   FOPEN_*  (fuse_open_out.open_flags)
``FATTR``                   FATTR_*  (fuse_setattr_in.valid)
``CuseInitFlags``           CUSE_UNRESTRICTED_IOCTL (cuse_init_in/out.flags)
``ReleaseFlags``            FUSE_RELEASE_*  (fuse_release_in.release_flags)
``GetattrFlags``            FUSE_GETATTR_*  (getattr_flags)
``LkFlags``                 FUSE_LK_*  (fuse_lk_in.lk_flags)
``WriteFlags``              FUSE_WRITE_*  (fuse_write_in.write_flags)
``ReadFlags``               FUSE_READ_*  (fuse_read_in.read_flags)
``IoctlFlags``              FUSE_IOCTL_* except FUSE_IOCTL_MAX_IOV (a count)
``PollFlags``               FUSE_POLL_*  (fuse_poll_in.flags)
``FsyncFlags``              FUSE_FSYNC_*  (fuse_fsync_in.fsync_flags)
``AttrFlags``               FUSE_ATTR_*  (fuse_attr.flags)
``OpenFlags``               FUSE_OPEN_*  (fuse_open_in/create_in.open_flags)
``SetxattrFlags``           FUSE_SETXATTR_* flags (fuse_setxattr_in.setxattr_flags)
``NotifyInvalEntryFlags``   FUSE_EXPIRE_ONLY (fuse_notify_inval_entry_out.flags)
``SetupmappingFlags``       FUSE_SETUPMAPPING_FLAG_* (fuse_setupmapping_in.flags)
``UringEntFlags``           FUSE_URING_ENT_* (fuse_uring_ent_in_out.flags)
``UringCmdFlags``           FUSE_URING_ZERO_COPY (fuse_uring_cmd_req.flags)
==========================  =====================================================

The classes for prefixes that are also opcode names (FUSE_RELEASE, FUSE_READ, ...) are
CamelCase so the module can also export every header name as a plain module attribute:
``constants.FUSE_LOOKUP``, ``constants.FOPEN_KEEP_CACHE`` and ``constants.FUSE_PASSTHROUGH``
are the enum members themselves. Aliases of the header (FUSE_DIRECT_IO_RELAX,
FUSE_WRITE_KILL_PRIV) are enum aliases. Function-like macros are functions here
(``FUSE_REC_ALIGN``, ``FUSE_DIRENT_ALIGN``, ``FUSE_DIRENT_SIZE``,
``FUSE_DIRENTPLUS_SIZE``); the ``*_SIZE`` ones take ``namelen`` instead of a pointer.

Not exported (see ``tests/test_constants.py``): the include guard, and
``FUSE_NOTIFY_CODE_MAX`` -- a moving sentinel of older headers (7 at 7.38), not a code.
"""

from __future__ import annotations

from enum import KEEP, IntEnum, IntFlag

# --- versions and plain numbers ---------------------------------------------------------

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 46
FUSE_ROOT_ID = 1
FUSE_MIN_READ_BUFFER = 8192

# Sizes of struct prefixes older minors use (see structs.compat / structs.COMPAT_SIZES).
FUSE_COMPAT_ENTRY_OUT_SIZE = 120
FUSE_COMPAT_ATTR_OUT_SIZE = 96
FUSE_COMPAT_MKNOD_IN_SIZE = 8
FUSE_COMPAT_WRITE_IN_SIZE = 24
FUSE_COMPAT_STATFS_SIZE = 48
FUSE_COMPAT_SETXATTR_IN_SIZE = 8
FUSE_COMPAT_INIT_OUT_SIZE = 8
FUSE_COMPAT_22_INIT_OUT_SIZE = 24

CUSE_INIT_INFO_MAX = 4096
FUSE_IOCTL_MAX_IOV = 256

# fuse_in_header.unique bit the kernel sets on a request it resends (FUSE_NOTIFY_RESEND).
FUSE_UNIQUE_RESEND = 1 << 63
# uid/gid the kernel sends when the caller's id has no mapping: (uint32_t)-1.
FUSE_INVALID_UIDGID = 0xFFFFFFFF

# offsetof(struct fuse_dirent, name) and offsetof(struct fuse_direntplus, dirent.name).
FUSE_NAME_OFFSET = 24
FUSE_NAME_OFFSET_DIRENTPLUS = 152

# The header defines this as PAGE_SIZE / sizeof(struct fuse_removemapping_one): the one
# page a REMOVEMAPPING request may carry. virtio-fs guests we target use 4 KiB pages.
PAGE_SIZE = 4096
FUSE_REMOVEMAPPING_MAX_ENTRY = PAGE_SIZE // 16

# io_uring: sizes of the in_out and op_in areas of fuse_uring_req_header.
FUSE_URING_IN_OUT_HEADER_SZ = 128
FUSE_URING_OP_IN_OUT_SZ = 128

# /dev/fuse ioctls, encoded with the generic Linux _IOC layout
# (dir << 30 | size << 16 | type << 8 | nr; _IOW = 1, _IOR = 2), as on x86 and arm64.
FUSE_DEV_IOC_MAGIC = 229


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (FUSE_DEV_IOC_MAGIC << 8) | nr


FUSE_DEV_IOC_CLONE = _ioc(2, 0, 4)  # _IOR(.., 0, uint32_t)
FUSE_DEV_IOC_BACKING_OPEN = _ioc(1, 1, 16)  # _IOW(.., 1, struct fuse_backing_map)
FUSE_DEV_IOC_BACKING_CLOSE = _ioc(1, 2, 4)  # _IOW(.., 2, uint32_t)
FUSE_DEV_IOC_SYNC_INIT = _ioc(0, 3, 0)  # _IO(.., 3)


def FUSE_REC_ALIGN(x: int) -> int:
    """Round ``x`` up to a multiple of 8 (sizeof(uint64_t)): dirent records are aligned."""
    return (x + 7) & ~7


FUSE_DIRENT_ALIGN = FUSE_REC_ALIGN


def FUSE_DIRENT_SIZE(namelen: int) -> int:
    """Bytes one fuse_dirent record with a ``namelen``-byte name occupies, padding included."""
    return FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen)


def FUSE_DIRENTPLUS_SIZE(namelen: int) -> int:
    """Bytes one fuse_direntplus record with a ``namelen``-byte name occupies."""
    return FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET_DIRENTPLUS + namelen)


# --- enums ------------------------------------------------------------------------------


class fuse_opcode(IntEnum):
    FUSE_LOOKUP = 1
    FUSE_FORGET = 2  # no reply
    FUSE_GETATTR = 3
    FUSE_SETATTR = 4
    FUSE_READLINK = 5
    FUSE_SYMLINK = 6
    FUSE_MKNOD = 8
    FUSE_MKDIR = 9
    FUSE_UNLINK = 10
    FUSE_RMDIR = 11
    FUSE_RENAME = 12
    FUSE_LINK = 13
    FUSE_OPEN = 14
    FUSE_READ = 15
    FUSE_WRITE = 16
    FUSE_STATFS = 17
    FUSE_RELEASE = 18
    FUSE_FSYNC = 20
    FUSE_SETXATTR = 21
    FUSE_GETXATTR = 22
    FUSE_LISTXATTR = 23
    FUSE_REMOVEXATTR = 24
    FUSE_FLUSH = 25
    FUSE_INIT = 26
    FUSE_OPENDIR = 27
    FUSE_READDIR = 28
    FUSE_RELEASEDIR = 29
    FUSE_FSYNCDIR = 30
    FUSE_GETLK = 31
    FUSE_SETLK = 32
    FUSE_SETLKW = 33
    FUSE_ACCESS = 34
    FUSE_CREATE = 35
    FUSE_INTERRUPT = 36
    FUSE_BMAP = 37
    FUSE_DESTROY = 38
    FUSE_IOCTL = 39
    FUSE_POLL = 40
    FUSE_NOTIFY_REPLY = 41
    FUSE_BATCH_FORGET = 42  # no reply
    FUSE_FALLOCATE = 43
    FUSE_READDIRPLUS = 44
    FUSE_RENAME2 = 45
    FUSE_LSEEK = 46
    FUSE_COPY_FILE_RANGE = 47
    FUSE_SETUPMAPPING = 48  # virtio-fs DAX window
    FUSE_REMOVEMAPPING = 49  # virtio-fs DAX window
    FUSE_SYNCFS = 50
    FUSE_TMPFILE = 51
    FUSE_STATX = 52
    FUSE_COPY_FILE_RANGE_64 = 53
    CUSE_INIT = 4096
    # Byte-swapped CUSE_INIT / FUSE_INIT: reserved so a peer of the other endianness
    # is recognised rather than misread.
    CUSE_INIT_BSWAP_RESERVED = 1048576
    FUSE_INIT_BSWAP_RESERVED = 436207616


class fuse_notify_code(IntEnum):
    FUSE_NOTIFY_POLL = 1
    FUSE_NOTIFY_INVAL_INODE = 2
    FUSE_NOTIFY_INVAL_ENTRY = 3
    FUSE_NOTIFY_STORE = 4
    FUSE_NOTIFY_RETRIEVE = 5
    FUSE_NOTIFY_DELETE = 6
    FUSE_NOTIFY_RESEND = 7
    FUSE_NOTIFY_INC_EPOCH = 8
    FUSE_NOTIFY_PRUNE = 9


class fuse_ext_type(IntEnum):
    """fuse_ext_header.type of a request extension (after the body, total_extlen * 8)."""

    # Types 0..31 are security contexts (the value is how many); FUSE_MAX_NR_SECCTX is
    # the last of that range.
    FUSE_MAX_NR_SECCTX = 31
    FUSE_EXT_GROUPS = 32


class fuse_uring_cmd(IntEnum):
    FUSE_IO_URING_CMD_INVALID = 0
    FUSE_IO_URING_CMD_REGISTER = 1
    FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2
    FUSE_IO_URING_CMD_ADD_QUEUE = 3
    FUSE_IO_URING_CMD_ADD_BUFPOOL = 4


# --- flags ------------------------------------------------------------------------------


class InitFlags(IntFlag, boundary=KEEP):
    """fuse_init_in/out ``flags | flags2 << 32`` (flags2 exists from 7.36, FUSE_INIT_EXT)."""

    FUSE_ASYNC_READ = 1 << 0
    FUSE_POSIX_LOCKS = 1 << 1
    FUSE_FILE_OPS = 1 << 2
    FUSE_ATOMIC_O_TRUNC = 1 << 3
    FUSE_EXPORT_SUPPORT = 1 << 4
    FUSE_BIG_WRITES = 1 << 5
    FUSE_DONT_MASK = 1 << 6
    FUSE_SPLICE_WRITE = 1 << 7
    FUSE_SPLICE_MOVE = 1 << 8
    FUSE_SPLICE_READ = 1 << 9
    FUSE_FLOCK_LOCKS = 1 << 10
    FUSE_HAS_IOCTL_DIR = 1 << 11
    FUSE_AUTO_INVAL_DATA = 1 << 12
    FUSE_DO_READDIRPLUS = 1 << 13
    FUSE_READDIRPLUS_AUTO = 1 << 14
    FUSE_ASYNC_DIO = 1 << 15
    FUSE_WRITEBACK_CACHE = 1 << 16
    FUSE_NO_OPEN_SUPPORT = 1 << 17
    FUSE_PARALLEL_DIROPS = 1 << 18
    FUSE_HANDLE_KILLPRIV = 1 << 19
    FUSE_POSIX_ACL = 1 << 20
    FUSE_ABORT_ERROR = 1 << 21
    FUSE_MAX_PAGES = 1 << 22
    FUSE_CACHE_SYMLINKS = 1 << 23
    FUSE_NO_OPENDIR_SUPPORT = 1 << 24
    FUSE_EXPLICIT_INVAL_DATA = 1 << 25
    FUSE_MAP_ALIGNMENT = 1 << 26  # virtio-fs DAX: init_out.map_alignment is valid
    FUSE_SUBMOUNTS = 1 << 27
    FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
    FUSE_SETXATTR_EXT = 1 << 29
    FUSE_INIT_EXT = 1 << 30  # flags2 is valid
    FUSE_INIT_RESERVED = 1 << 31
    FUSE_SECURITY_CTX = 1 << 32
    FUSE_HAS_INODE_DAX = 1 << 33
    FUSE_CREATE_SUPP_GROUP = 1 << 34
    FUSE_HAS_EXPIRE_ONLY = 1 << 35
    FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36
    FUSE_DIRECT_IO_RELAX = FUSE_DIRECT_IO_ALLOW_MMAP  # older name of the same bit
    FUSE_PASSTHROUGH = 1 << 37
    FUSE_NO_EXPORT_SUPPORT = 1 << 38
    FUSE_HAS_RESEND = 1 << 39
    FUSE_ALLOW_IDMAP = 1 << 40
    FUSE_OVER_IO_URING = 1 << 41
    FUSE_REQUEST_TIMEOUT = 1 << 42
    FUSE_HAS_IO_URING_BUFPOOL = 1 << 43

    @classmethod
    def from_words(cls, flags: int, flags2: int = 0) -> InitFlags:
        """Join the two 32-bit INIT words."""
        return cls((flags & 0xFFFFFFFF) | (flags2 & 0xFFFFFFFF) << 32)

    def words(self) -> tuple[int, int]:
        """Split into ``(flags, flags2)`` as the INIT structs carry them."""
        return int(self) & 0xFFFFFFFF, (int(self) >> 32) & 0xFFFFFFFF


class FOPEN(IntFlag, boundary=KEEP):
    FOPEN_DIRECT_IO = 1 << 0
    FOPEN_KEEP_CACHE = 1 << 1
    FOPEN_NONSEEKABLE = 1 << 2
    FOPEN_CACHE_DIR = 1 << 3
    FOPEN_STREAM = 1 << 4
    FOPEN_NOFLUSH = 1 << 5
    FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
    FOPEN_PASSTHROUGH = 1 << 7
    FOPEN_IO_URING_ZERO_COPY = 1 << 8


class FATTR(IntFlag, boundary=KEEP):
    FATTR_MODE = 1 << 0
    FATTR_UID = 1 << 1
    FATTR_GID = 1 << 2
    FATTR_SIZE = 1 << 3
    FATTR_ATIME = 1 << 4
    FATTR_MTIME = 1 << 5
    FATTR_FH = 1 << 6
    FATTR_ATIME_NOW = 1 << 7
    FATTR_MTIME_NOW = 1 << 8
    FATTR_LOCKOWNER = 1 << 9
    FATTR_CTIME = 1 << 10
    FATTR_KILL_SUIDGID = 1 << 11


class CuseInitFlags(IntFlag, boundary=KEEP):
    CUSE_UNRESTRICTED_IOCTL = 1 << 0


class ReleaseFlags(IntFlag, boundary=KEEP):
    FUSE_RELEASE_FLUSH = 1 << 0
    FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1


class GetattrFlags(IntFlag, boundary=KEEP):
    FUSE_GETATTR_FH = 1 << 0


class LkFlags(IntFlag, boundary=KEEP):
    FUSE_LK_FLOCK = 1 << 0


class WriteFlags(IntFlag, boundary=KEEP):
    FUSE_WRITE_CACHE = 1 << 0
    FUSE_WRITE_LOCKOWNER = 1 << 1
    FUSE_WRITE_KILL_SUIDGID = 1 << 2
    FUSE_WRITE_KILL_PRIV = FUSE_WRITE_KILL_SUIDGID  # older name of the same bit


class ReadFlags(IntFlag, boundary=KEEP):
    FUSE_READ_LOCKOWNER = 1 << 1


class IoctlFlags(IntFlag, boundary=KEEP):
    FUSE_IOCTL_COMPAT = 1 << 0
    FUSE_IOCTL_UNRESTRICTED = 1 << 1
    FUSE_IOCTL_RETRY = 1 << 2
    FUSE_IOCTL_32BIT = 1 << 3
    FUSE_IOCTL_DIR = 1 << 4
    FUSE_IOCTL_COMPAT_X32 = 1 << 5


class PollFlags(IntFlag, boundary=KEEP):
    FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0


class FsyncFlags(IntFlag, boundary=KEEP):
    FUSE_FSYNC_FDATASYNC = 1 << 0


class AttrFlags(IntFlag, boundary=KEEP):
    FUSE_ATTR_SUBMOUNT = 1 << 0
    FUSE_ATTR_DAX = 1 << 1  # per-inode DAX (with FUSE_HAS_INODE_DAX)


class OpenFlags(IntFlag, boundary=KEEP):
    FUSE_OPEN_KILL_SUIDGID = 1 << 0


class SetxattrFlags(IntFlag, boundary=KEEP):
    FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0


class NotifyInvalEntryFlags(IntFlag, boundary=KEEP):
    FUSE_EXPIRE_ONLY = 1 << 0


class SetupmappingFlags(IntFlag, boundary=KEEP):
    FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0
    FUSE_SETUPMAPPING_FLAG_READ = 1 << 1


class UringEntFlags(IntFlag, boundary=KEEP):
    FUSE_URING_ENT_ZERO_COPY = 1 << 0


class UringCmdFlags(IntFlag, boundary=KEEP):
    FUSE_URING_ZERO_COPY = 1 << 0


ENUMS: tuple[type[IntEnum] | type[IntFlag], ...] = (
    fuse_opcode,
    fuse_notify_code,
    fuse_ext_type,
    fuse_uring_cmd,
    InitFlags,
    FOPEN,
    FATTR,
    CuseInitFlags,
    ReleaseFlags,
    GetattrFlags,
    LkFlags,
    WriteFlags,
    ReadFlags,
    IoctlFlags,
    PollFlags,
    FsyncFlags,
    AttrFlags,
    OpenFlags,
    SetxattrFlags,
    NotifyInvalEntryFlags,
    SetupmappingFlags,
    UringEntFlags,
    UringCmdFlags,
)

# Every member (aliases included) is also a module attribute, as the header's names are
# global in C: constants.FUSE_SETUPMAPPING is fuse_opcode.FUSE_SETUPMAPPING.
for _enum in ENUMS:
    for _member_name, _member in _enum.__members__.items():
        assert _member_name not in globals(), _member_name
        globals()[_member_name] = _member
del _enum, _member_name, _member


def opcode_or_int(value: int) -> fuse_opcode | int:
    """``fuse_opcode(value)`` if known, else ``value`` itself (unknown opcodes stay ints)."""
    try:
        return fuse_opcode(value)
    except ValueError:
        return value


def notify_code_or_int(value: int) -> fuse_notify_code | int:
    """``fuse_notify_code(value)`` if known, else ``value`` itself."""
    try:
        return fuse_notify_code(value)
    except ValueError:
        return value


_OPCODE_NAMES = {int(op): op.name for op in fuse_opcode}


def opcode_name(opcode: object) -> str:
    """fuse.h's name of a request opcode (``FUSE_GETATTR``), or ``opcode_N`` for a number
    the header does not name. The one spelling every message, finding id and report uses."""
    try:
        return _OPCODE_NAMES[int(opcode)]  # type: ignore[call-overload]
    except KeyError:
        return f"opcode_{int(opcode)}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return f"opcode_{opcode}"
