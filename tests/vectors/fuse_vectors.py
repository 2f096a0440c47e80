"""Golden vectors: FUSE messages written byte by byte from linux/fuse.h (7.46) by hand.

Independent of fuseproto's schema: every struct is packed here with its own ``struct``
format string read off the header, and every vector states the body it must decode to.
Each vector is a dict::

    kind      "request" | "reply" | "notification"
    opcode    int (requests/replies; the request's opcode for a reply) or code
    data      the whole message (bytes)
    body      the expected decoded body (dict / list / bytes / None)
    minor     protocol minor to decode at (default 46)
    flags     negotiated INIT flags (default 0)
    request   for replies: the request vector's name whose decoded Request to pass
    ext       for requests: the expected extension records (default [])
    name      unique id
"""

from __future__ import annotations

import struct

LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17
RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 18, 20, 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, GETLK, SETLK, SETLKW, ACCESS = 27, 28, 29, 30, 31, 32, 33, 34
CREATE, INTERRUPT, BMAP, DESTROY, IOCTL, POLL, NOTIFY_REPLY, BATCH_FORGET = 35, 36, 37, 38, 39, 40, 41, 42
FALLOCATE, READDIRPLUS, RENAME2, LSEEK, COPY_FILE_RANGE, SETUPMAPPING = 43, 44, 45, 46, 47, 48
REMOVEMAPPING, SYNCFS, TMPFILE, STATX, COPY_FILE_RANGE_64, CUSE_INIT = 49, 50, 51, 52, 53, 4096
FUSE_SETXATTR_EXT = 1 << 29
FUSE_IOCTL_RETRY = 1 << 2


def in_header(opcode: int, body: bytes, unique: int, nodeid: int = 1, ext: bytes = b"",
              uid: int = 1000, gid: int = 1000, pid: int = 4242) -> bytes:
    # fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32,
    # total_extlen u16, padding u16 -- 40 bytes
    n = 40 + len(body) + len(ext)
    return struct.pack("<IIQQIIIHH", n, opcode, unique, nodeid, uid, gid, pid, len(ext) // 8, 0) + body + ext


def out_header(body: bytes, unique: int, error: int = 0) -> bytes:
    # fuse_out_header: len u32, error i32, unique u64 -- 16 bytes
    return struct.pack("<IiQ", 16 + len(body), error, unique) + body


# --- structs, each returning (bytes, expected dict) ----------------------------------------

def attr(ino: int, size: int = 4096, mode: int = 0o100644, full: bool = True):
    names = ["ino", "size", "blocks", "atime", "mtime", "ctime", "atimensec", "mtimensec",
             "ctimensec", "mode", "nlink", "uid", "gid", "rdev", "blksize", "flags"]
    vals = [ino, size, 8, 1700000000, 1700000001, 1700000002, 11, 12, 13, mode, 1, 1000,
            1000, 0, 4096, 0]
    if not full:  # FUSE_COMPAT_*: attr stops after rdev
        return struct.pack("<6Q8I", *vals[:14]), dict(zip(names[:14], vals[:14], strict=True))
    return struct.pack("<6Q10I", *vals), dict(zip(names, vals, strict=True))


def entry_out(nodeid: int, full: bool = True):
    ab, ad = attr(nodeid, full=full)
    b = struct.pack("<4Q2I", nodeid, 7, 1, 2, 500, 600) + ab
    return b, dict(nodeid=nodeid, generation=7, entry_valid=1, attr_valid=2,
                   entry_valid_nsec=500, attr_valid_nsec=600, attr=ad)


def attr_out(ino: int, full: bool = True):
    ab, ad = attr(ino, full=full)
    return struct.pack("<QII", 3, 99, 0) + ab, dict(attr_valid=3, attr_valid_nsec=99, dummy=0, attr=ad)


def open_out(fh: int):
    return struct.pack("<QIi", fh, 0x2, -1), dict(fh=fh, open_flags=2, backing_id=-1)


def read_in(fh: int, offset: int, size: int):
    return (struct.pack("<QQIIQII", fh, offset, size, 0, 0, 0x8000, 0),
            dict(fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0x8000, padding=0))


def file_lock():
    return struct.pack("<QQII", 0, 100, 1, 77), dict(start=0, end=100, type=1, pid=77)


def lk_in():
    lb, ld = file_lock()
    return struct.pack("<QQ", 5, 0xABCD) + lb + struct.pack("<II", 0, 0), dict(
        fh=5, owner=0xABCD, lk=ld, lk_flags=0, padding=0)


def release_in():
    return struct.pack("<QIIQ", 9, 0x8002, 1, 0x1234), dict(fh=9, flags=0x8002, release_flags=1, lock_owner=0x1234)


def fsync_in():
    return struct.pack("<QII", 9, 1, 0), dict(fh=9, fsync_flags=1, padding=0)


def copy_in():
    v = (1, 0, 5, 2, 4096, 65536, 0)
    return struct.pack("<7Q", *v), dict(zip(["fh_in", "off_in", "nodeid_out", "fh_out", "off_out", "len", "flags"], v, strict=True))


def sx_time(s):
    return struct.pack("<qIi", s, 5, 0), dict(tv_sec=s, tv_nsec=5, __reserved=0)


def statx_out():
    t = [sx_time(1700000000 + i) for i in range(4)]
    st = struct.pack("<IIQIIIHHQQQQ", 0x7FF, 4096, 0, 1, 1000, 1000, 0o100644, 0, 2, 10, 8, 0)
    st += b"".join(x[0] for x in t) + struct.pack("<4I", 0, 0, 8, 1) + struct.pack("<14Q", *([0] * 14))
    sd = dict(mask=0x7FF, blksize=4096, attributes=0, nlink=1, uid=1000, gid=1000, mode=0o100644,
              __spare0=[0], ino=2, size=10, blocks=8, attributes_mask=0,
              atime=t[0][1], btime=t[1][1], ctime=t[2][1], mtime=t[3][1], rdev_major=0,
              rdev_minor=0, dev_major=8, dev_minor=1, __spare2=[0] * 14)
    return struct.pack("<QIIQQ", 4, 0, 0, 0, 0) + st, dict(attr_valid=4, attr_valid_nsec=0, flags=0, spare=[0, 0], stat=sd)


def dirent(ino, off, typ, name: bytes, pad_with: bytes = b"\0"):
    rec = struct.pack("<QQII", ino, off, len(name), typ) + name
    pad = pad_with * (-len(rec) % 8)
    return rec + pad, dict(ino=ino, off=off, namelen=len(name), type=typ, name=name, pad=pad)


def direntplus(nodeid, off, name: bytes):
    eb, ed = entry_out(nodeid)
    rec = eb + struct.pack("<QQII", nodeid, off, len(name), 8) + name
    pad = b"\0" * (-len(rec) % 8)
    return rec + pad, dict(entry_out=ed, dirent=dict(ino=nodeid, off=off, namelen=len(name), type=8, name=name), pad=pad)


VECTORS: list[dict] = []


def req(name, opcode, body: bytes, expected, unique, nodeid=1, ext=b"", ext_expected=(), **kw):
    VECTORS.append(dict(name=name, kind="request", opcode=opcode,
                        data=in_header(opcode, body, unique, nodeid, ext), body=expected,
                        ext=list(ext_expected), **kw))


def rep(name, request, opcode, body: bytes, expected, unique, error=0, **kw):
    VECTORS.append(dict(name=name, kind="reply", opcode=opcode, request=request,
                        data=out_header(body, unique, error), body=expected, **kw))


def ntf(name, code, body: bytes, expected):
    VECTORS.append(dict(name=name, kind="notification", opcode=code,
                        data=struct.pack("<IiQ", 16 + len(body), code, 0) + body, body=expected))


# LOOKUP
req("lookup", LOOKUP, b"hello.txt\0", dict(name=b"hello.txt"), 2)
eb, ed = entry_out(2)
rep("lookup_reply", "lookup", LOOKUP, eb, ed, 2)
rep("lookup_enoent", "lookup", LOOKUP, b"", None, 2, error=-2)
# FORGET (no reply on the wire; an empty reply body decodes as {})
req("forget", FORGET, struct.pack("<Q", 3), dict(nlookup=3), 3, nodeid=2)
rep("forget_reply", "forget", FORGET, b"", {}, 3)
# GETATTR
req("getattr", GETATTR, struct.pack("<IIQ", 1, 0, 9), dict(getattr_flags=1, dummy=0, fh=9), 4, nodeid=2)
ab, ad = attr_out(2)
rep("getattr_reply", "getattr", GETATTR, ab, ad, 4)
# SETATTR
sv = [0x8 | 0x1, 0, 9, 100, 0, 0, 0, 0, 0, 0, 0, 0o100600, 0, 0, 0, 0]
sn = ["valid", "padding", "fh", "size", "lock_owner", "atime", "mtime", "ctime", "atimensec",
      "mtimensec", "ctimensec", "mode", "unused4", "uid", "gid", "unused5"]
req("setattr", SETATTR, struct.pack("<IIQQQQQQ8I", *sv), dict(zip(sn, sv, strict=True)), 5, nodeid=2)
rep("setattr_reply", "setattr", SETATTR, ab, ad, 5)
# READLINK
req("readlink", READLINK, b"", {}, 6, nodeid=3)
rep("readlink_reply", "readlink", READLINK, b"../target", dict(link=b"../target"), 6)
# SYMLINK: the new entry's name, then the link target
req("symlink", SYMLINK, b"lnk\0../target\0", dict(name=b"lnk", link=b"../target"), 7)
eb3, ed3 = entry_out(3)
rep("symlink_reply", "symlink", SYMLINK, eb3, ed3, 7)
# MKNOD
req("mknod", MKNOD, struct.pack("<4I", 0o10644, 0, 0o22, 0) + b"fifo\0",
    dict(mode=0o10644, rdev=0, umask=0o22, padding=0, name=b"fifo"), 8)
rep("mknod_reply", "mknod", MKNOD, eb3, ed3, 8)
# MKDIR with supplementary groups and a security context in the extension area
grp = struct.pack("<III", 24, 32, 2) + struct.pack("<II", 10, 20) + b"\0" * 4
sec_ent = struct.pack("<II", 6, 0) + b"security.selinux\0" + b"u:r:x\0"
sec_ent += b"\0" * (-len(sec_ent) % 8)
sec = struct.pack("<II", 8 + len(sec_ent), 1) + sec_ent
req("mkdir", MKDIR, struct.pack("<II", 0o755, 0o22) + b"dir\0",
    dict(mode=0o755, umask=0o22, name=b"dir"), 9, ext=grp + sec,
    ext_expected=[dict(size=24, type=32, nr_groups=2, groups=[10, 20], pad=b"\0" * 4),
                  dict(size=8 + len(sec_ent), type=1, secctx=[dict(
                      size=6, padding=0, name=b"security.selinux", ctx=b"u:r:x\0",
                      pad=b"\0" * (-(8 + 17 + 6) % 8))])])
rep("mkdir_reply", "mkdir", MKDIR, eb3, ed3, 9)
# UNLINK / RMDIR
req("unlink", UNLINK, b"f\0", dict(name=b"f"), 10)
rep("unlink_reply", "unlink", UNLINK, b"", {}, 10)
req("rmdir", RMDIR, b"d\0", dict(name=b"d"), 11)
rep("rmdir_reply", "rmdir", RMDIR, b"", {}, 11)
# RENAME: fuse_rename_in, old name, new name
req("rename", RENAME, struct.pack("<Q", 5) + b"old\0new\0", dict(newdir=5, name=b"old", newname=b"new"), 12)
rep("rename_reply", "rename", RENAME, b"", {}, 12)
# LINK: fuse_link_in, new name
req("link", LINK, struct.pack("<Q", 3) + b"hard\0", dict(oldnodeid=3, name=b"hard"), 13)
rep("link_reply", "link", LINK, eb3, ed3, 13)
# OPEN
req("open", OPEN, struct.pack("<II", 0x8002, 0), dict(flags=0x8002, open_flags=0), 14, nodeid=2)
ob, od = open_out(9)
rep("open_reply", "open", OPEN, ob, od, 14)
# READ
rb, rd = read_in(9, 0, 4096)
req("read", READ, rb, rd, 15, nodeid=2)
rep("read_reply", "read", READ, b"hello world\n", dict(data=b"hello world\n"), 15)
# WRITE: size must equal the data present
wdata = bytes(range(256)) * 16
wv = (9, 4096, len(wdata), 1, 0, 0x8002, 0)
req("write", WRITE, struct.pack("<QQIIQII", *wv) + wdata,
    dict(zip(["fh", "offset", "size", "write_flags", "lock_owner", "flags", "padding"], wv, strict=True), data=wdata), 16, nodeid=2)
rep("write_reply", "write", WRITE, struct.pack("<II", 4096, 0), dict(size=4096, padding=0), 16)
# STATFS
sf = (1000, 500, 400, 100, 50, 4096, 255, 4096, 0)
req("statfs", STATFS, b"", {}, 17)
rep("statfs_reply", "statfs", STATFS, struct.pack("<5Q4I6I", *sf, *([0] * 6)),
    dict(st=dict(zip(["blocks", "bfree", "bavail", "files", "ffree", "bsize", "namelen", "frsize", "padding"], sf, strict=True), spare=[0] * 6)), 17)
# RELEASE
relb, reld = release_in()
req("release", RELEASE, relb, reld, 18, nodeid=2)
rep("release_reply", "release", RELEASE, b"", {}, 18)
# FSYNC
fb, fd = fsync_in()
req("fsync", FSYNC, fb, fd, 20, nodeid=2)
rep("fsync_reply", "fsync", FSYNC, b"", {}, 20)
# SETXATTR: 8-byte fuse_setxattr_in unless FUSE_SETXATTR_EXT was negotiated
req("setxattr", SETXATTR, struct.pack("<II", 5, 1) + b"user.k\0" + b"value",
    dict(size=5, flags=1, name=b"user.k", value=b"value"), 21, nodeid=2)
req("setxattr_ext", SETXATTR, struct.pack("<IIII", 5, 1, 1, 0) + b"user.k\0" + b"value",
    dict(size=5, flags=1, setxattr_flags=1, padding=0, name=b"user.k", value=b"value"), 121, nodeid=2,
    flags=FUSE_SETXATTR_EXT)
rep("setxattr_reply", "setxattr", SETXATTR, b"", {}, 21)
# GETXATTR: size 0 asks for the size, else the value
req("getxattr_size", GETXATTR, struct.pack("<II", 0, 0) + b"user.k\0", dict(size=0, padding=0, name=b"user.k"), 22, nodeid=2)
rep("getxattr_size_reply", "getxattr_size", GETXATTR, struct.pack("<II", 5, 0), dict(size=5, padding=0), 22)
req("getxattr", GETXATTR, struct.pack("<II", 64, 0) + b"user.k\0", dict(size=64, padding=0, name=b"user.k"), 122, nodeid=2)
rep("getxattr_reply", "getxattr", GETXATTR, b"value", dict(value=b"value"), 122)
# LISTXATTR
req("listxattr_size", LISTXATTR, struct.pack("<II", 0, 0), dict(size=0, padding=0), 23, nodeid=2)
rep("listxattr_size_reply", "listxattr_size", LISTXATTR, struct.pack("<II", 14, 0), dict(size=14, padding=0), 23)
req("listxattr", LISTXATTR, struct.pack("<II", 100, 0), dict(size=100, padding=0), 123, nodeid=2)
rep("listxattr_reply", "listxattr", LISTXATTR, b"user.a\0user.b\0", dict(value=b"user.a\0user.b\0"), 123)
# REMOVEXATTR
req("removexattr", REMOVEXATTR, b"user.k\0", dict(name=b"user.k"), 24, nodeid=2)
rep("removexattr_reply", "removexattr", REMOVEXATTR, b"", {}, 24)
# FLUSH
req("flush", FLUSH, struct.pack("<QIIQ", 9, 0, 0, 0x1234), dict(fh=9, unused=0, padding=0, lock_owner=0x1234), 25, nodeid=2)
rep("flush_reply", "flush", FLUSH, b"", {}, 25)
# INIT (7.46 kernel), reply 64 bytes
iv = (7, 46, 131072, 0x73FFFFFB, 0x3FF)
req("init", INIT, struct.pack("<5I11I", *iv, *([0] * 11)),
    dict(zip(["major", "minor", "max_readahead", "flags", "flags2"], iv, strict=True), unused=[0] * 11), 26, nodeid=0)
ov = (7, 46, 131072, 0x40000000 | 0x1, 16, 12, 1 << 20, 1, 256, 0, 0x1, 0, 0)
on = ["major", "minor", "max_readahead", "flags", "max_background", "congestion_threshold",
      "max_write", "time_gran", "max_pages", "map_alignment", "flags2", "max_stack_depth", "request_timeout"]
rep("init_reply", "init", INIT, struct.pack("<4IHHIIHHIIH11H", *ov, *([0] * 11)),
    dict(zip(on, ov, strict=True), unused=[0] * 11), 26)
# INIT from a 7.31 kernel (16 bytes) answered by a 7.22 daemon (24 bytes)
req("init_31", INIT, struct.pack("<4I", 7, 31, 131072, 0x1), dict(major=7, minor=31, max_readahead=131072, flags=1), 126, nodeid=0, minor=31)
rep("init_22_reply", "init_31", INIT, struct.pack("<4IHHI", 7, 22, 131072, 1, 12, 9, 1 << 17),
    dict(major=7, minor=22, max_readahead=131072, flags=1, max_background=12, congestion_threshold=9, max_write=1 << 17), 126, minor=22)
# OPENDIR
req("opendir", OPENDIR, struct.pack("<II", 0x10000, 0), dict(flags=0x10000, open_flags=0), 27)
rep("opendir_reply", "opendir", OPENDIR, ob, od, 27)
# READDIR, a non-zero pad kept
rdb, rdd = read_in(9, 0, 4096)
req("readdir", READDIR, rdb, rdd, 28)
d1 = dirent(1, 1, 4, b".")
d2 = dirent(1, 2, 4, b"..")
d3 = dirent(2, 3, 8, b"hello.txt", pad_with=b"\xaa")
d4 = dirent(5, 4, 8, b"exactly8")
rep("readdir_reply", "readdir", READDIR, d1[0] + d2[0] + d3[0] + d4[0], dict(entries=[d1[1], d2[1], d3[1], d4[1]]), 28)
# RELEASEDIR / FSYNCDIR
req("releasedir", RELEASEDIR, relb, reld, 29)
rep("releasedir_reply", "releasedir", RELEASEDIR, b"", {}, 29)
req("fsyncdir", FSYNCDIR, fb, fd, 30)
rep("fsyncdir_reply", "fsyncdir", FSYNCDIR, b"", {}, 30)
# GETLK / SETLK / SETLKW
lkb, lkd = lk_in()
req("getlk", GETLK, lkb, lkd, 31, nodeid=2)
flb, fld = file_lock()
rep("getlk_reply", "getlk", GETLK, flb, dict(lk=fld), 31)
req("setlk", SETLK, lkb, lkd, 32, nodeid=2)
rep("setlk_reply", "setlk", SETLK, b"", {}, 32)
req("setlkw", SETLKW, lkb, lkd, 33, nodeid=2)
rep("setlkw_reply", "setlkw", SETLKW, b"", {}, 33)
# ACCESS
req("access", ACCESS, struct.pack("<II", 4, 0), dict(mask=4, padding=0), 34, nodeid=2)
rep("access_reply", "access", ACCESS, b"", {}, 34)
# CREATE: reply fuse_entry_out + fuse_open_out, merged flat
req("create", CREATE, struct.pack("<4I", 0x8041, 0o100644, 0o22, 0) + b"new\0",
    dict(flags=0x8041, mode=0o100644, umask=0o22, open_flags=0, name=b"new"), 35)
rep("create_reply", "create", CREATE, eb3 + ob, dict(ed3, **od), 35)
# INTERRUPT
req("interrupt", INTERRUPT, struct.pack("<Q", 15), dict(unique=15), 36, nodeid=0)
rep("interrupt_reply", "interrupt", INTERRUPT, b"", None, 36, error=-11)
# BMAP
req("bmap", BMAP, struct.pack("<QII", 10, 4096, 0), dict(block=10, blocksize=4096, padding=0), 37, nodeid=2)
rep("bmap_reply", "bmap", BMAP, struct.pack("<Q", 1234), dict(block=1234), 37)
# DESTROY
req("destroy", DESTROY, b"", {}, 38)
rep("destroy_reply", "destroy", DESTROY, b"", {}, 38)
# IOCTL: in data of in_size bytes; reply with data, and a retry reply with iovecs
req("ioctl", IOCTL, struct.pack("<QIIQII", 9, 0, 0x5401, 0x7FFF0000, 4, 64) + b"\1\2\3\4",
    dict(fh=9, flags=0, cmd=0x5401, arg=0x7FFF0000, in_size=4, out_size=64, data=b"\1\2\3\4"), 39, nodeid=2)
rep("ioctl_reply", "ioctl", IOCTL, struct.pack("<iIII", 0, 0, 0, 0) + b"out!",
    dict(result=0, flags=0, in_iovs=0, out_iovs=0, in_iov=[], out_iov=[], data=b"out!"), 39)
rep("ioctl_retry_reply", "ioctl", IOCTL, struct.pack("<iIII", 0, FUSE_IOCTL_RETRY, 1, 2) + struct.pack("<6Q", 0x1000, 8, 0x2000, 16, 0x3000, 4),
    dict(result=0, flags=FUSE_IOCTL_RETRY, in_iovs=1, out_iovs=2, in_iov=[dict(base=0x1000, len=8)],
         out_iov=[dict(base=0x2000, len=16), dict(base=0x3000, len=4)], data=b""), 39)
# POLL
req("poll", POLL, struct.pack("<QQII", 9, 77, 1, 0x1), dict(fh=9, kh=77, flags=1, events=1), 40, nodeid=2)
rep("poll_reply", "poll", POLL, struct.pack("<II", 0x4, 0), dict(revents=4, padding=0), 40)
# NOTIFY_REPLY (kernel -> daemon, answers NOTIFY_RETRIEVE; unique = notify_unique)
req("notify_reply", NOTIFY_REPLY, struct.pack("<QQIIQQ", 0, 4096, 3, 0, 0, 0) + b"abc",
    dict(dummy1=0, offset=4096, size=3, dummy2=0, dummy3=0, dummy4=0, data=b"abc"), 41, nodeid=2)
rep("notify_reply_reply", "notify_reply", NOTIFY_REPLY, b"", {}, 41)
# BATCH_FORGET
req("batch_forget", BATCH_FORGET, struct.pack("<II", 2, 0) + struct.pack("<4Q", 2, 1, 3, 5),
    dict(count=2, dummy=0, entries=[dict(nodeid=2, nlookup=1), dict(nodeid=3, nlookup=5)]), 42, nodeid=0)
rep("batch_forget_reply", "batch_forget", BATCH_FORGET, b"", {}, 42)
# FALLOCATE
req("fallocate", FALLOCATE, struct.pack("<QQQII", 9, 0, 1 << 20, 1, 0), dict(fh=9, offset=0, length=1 << 20, mode=1, padding=0), 43, nodeid=2)
rep("fallocate_reply", "fallocate", FALLOCATE, b"", {}, 43)
# READDIRPLUS
req("readdirplus", READDIRPLUS, rdb, rdd, 44)
p1 = direntplus(2, 1, b"a")
p2 = direntplus(3, 2, b"longer-name.txt")
rep("readdirplus_reply", "readdirplus", READDIRPLUS, p1[0] + p2[0], dict(entries=[p1[1], p2[1]]), 44)
rep("readdirplus_empty", "readdirplus", READDIRPLUS, b"", dict(entries=[]), 44)
# RENAME2
req("rename2", RENAME2, struct.pack("<QII", 5, 2, 0) + b"a\0b\0", dict(newdir=5, flags=2, padding=0, name=b"a", newname=b"b"), 45)
rep("rename2_reply", "rename2", RENAME2, b"", {}, 45)
# LSEEK
req("lseek", LSEEK, struct.pack("<QQII", 9, 100, 3, 0), dict(fh=9, offset=100, whence=3, padding=0), 46, nodeid=2)
rep("lseek_reply", "lseek", LSEEK, struct.pack("<Q", 4096), dict(offset=4096), 46)
# COPY_FILE_RANGE (reply is fuse_write_out) and COPY_FILE_RANGE_64
cb, cd = copy_in()
req("copy_file_range", COPY_FILE_RANGE, cb, cd, 47, nodeid=2)
rep("copy_file_range_reply", "copy_file_range", COPY_FILE_RANGE, struct.pack("<II", 65536, 0), dict(size=65536, padding=0), 47)
req("copy_file_range_64", COPY_FILE_RANGE_64, cb, cd, 53, nodeid=2)
rep("copy_file_range_64_reply", "copy_file_range_64", COPY_FILE_RANGE_64, struct.pack("<Q", 1 << 33), dict(bytes_copied=1 << 33), 53)
# SETUPMAPPING / REMOVEMAPPING
req("setupmapping", SETUPMAPPING, struct.pack("<5Q", 9, 0x200000, 0x200000, 3, 0x400000),
    dict(fh=9, foffset=0x200000, len=0x200000, flags=3, moffset=0x400000), 48, nodeid=2)
rep("setupmapping_reply", "setupmapping", SETUPMAPPING, b"", {}, 48)
req("removemapping", REMOVEMAPPING, struct.pack("<I", 2) + struct.pack("<4Q", 0, 0x200000, 0x400000, 0x200000),
    dict(count=2, entries=[dict(moffset=0, len=0x200000), dict(moffset=0x400000, len=0x200000)]), 49, nodeid=2)
rep("removemapping_reply", "removemapping", REMOVEMAPPING, b"", {}, 49)
req("removemapping_0", REMOVEMAPPING, struct.pack("<I", 0), dict(count=0, entries=[]), 149, nodeid=2)
# SYNCFS
req("syncfs", SYNCFS, struct.pack("<Q", 0), dict(padding=0), 50)
rep("syncfs_reply", "syncfs", SYNCFS, b"", {}, 50)
# TMPFILE
req("tmpfile", TMPFILE, struct.pack("<4I", 0x410002, 0o100600, 0o22, 0) + b"tmp\0",
    dict(flags=0x410002, mode=0o100600, umask=0o22, open_flags=0, name=b"tmp"), 51)
rep("tmpfile_reply", "tmpfile", TMPFILE, eb3 + ob, dict(ed3, **od), 51)
# STATX
req("statx", STATX, struct.pack("<IIQII", 1, 0, 9, 0, 0x7FF), dict(getattr_flags=1, reserved=0, fh=9, sx_flags=0, sx_mask=0x7FF), 52, nodeid=2)
sxb, sxd = statx_out()
rep("statx_reply", "statx", STATX, sxb, sxd, 52)
# CUSE_INIT
req("cuse_init", CUSE_INIT, struct.pack("<4I", 7, 46, 0, 1), dict(major=7, minor=46, unused=0, flags=1), 60, nodeid=0)
cv = (7, 46, 0, 1, 65536, 65536, 240, 0)
rep("cuse_init_reply", "cuse_init", CUSE_INIT, struct.pack("<18I", *cv, *([0] * 10)) + b"DEVNAME=mydev\0",
    dict(zip(["major", "minor", "unused", "flags", "max_read", "max_write", "dev_major", "dev_minor"], cv, strict=True),
         spare=[0] * 10, info=b"DEVNAME=mydev\0"), 60)
# Unknown opcode: raw body kept
req("unknown_op", 200, b"\1\2\3", b"\1\2\3", 61)
rep("unknown_op_reply", "unknown_op", 200, b"\4\5", b"\4\5", 61)

# Compat sizes: a 7.8 peer (entry_out 120, attr_out 96, write_in 24), 7.11 (mknod_in 8),
# 7.3 (statfs 48). 7.22/7.23/7.36/7.46 are exercised by tests/test_wire_compat.py.
eb120, ed120 = entry_out(2, full=False)
req("lookup_m8", LOOKUP, b"x\0", dict(name=b"x"), 70, minor=8)
rep("lookup_reply_m8", "lookup_m8", LOOKUP, eb120, ed120, 70, minor=8)
ab96, ad96 = attr_out(2, full=False)
req("getattr_m8", GETATTR, struct.pack("<IIQ", 0, 0, 0), dict(getattr_flags=0, dummy=0, fh=0), 71, nodeid=2, minor=8)
rep("getattr_reply_m8", "getattr_m8", GETATTR, ab96, ad96, 71, minor=8)
req("write_m8", WRITE, struct.pack("<QQII", 9, 0, 3, 0) + b"abc", dict(fh=9, offset=0, size=3, write_flags=0, data=b"abc"), 72, nodeid=2, minor=8)
req("mknod_m11", MKNOD, struct.pack("<II", 0o10644, 0) + b"p\0", dict(mode=0o10644, rdev=0, name=b"p"), 73, minor=11)
req("statfs_m3", STATFS, b"", {}, 74, minor=3)
rep("statfs_reply_m3", "statfs_m3", STATFS, struct.pack("<5Q2I", *sf[:7]),
    dict(st=dict(zip(["blocks", "bfree", "bavail", "files", "ffree", "bsize", "namelen"], sf[:7], strict=True))), 74, minor=3)

# Notifications
ntf("notify_poll", 1, struct.pack("<Q", 77), dict(kh=77))
ntf("notify_inval_inode", 2, struct.pack("<Qqq", 2, 0, -1), dict(ino=2, off=0, len=-1))
ntf("notify_inval_entry", 3, struct.pack("<QII", 1, 5, 1) + b"hello\0", dict(parent=1, namelen=5, flags=1, name=b"hello"))
ntf("notify_store", 4, struct.pack("<QQII", 2, 0, 4, 0) + b"data", dict(nodeid=2, offset=0, size=4, padding=0, data=b"data"))
ntf("notify_retrieve", 5, struct.pack("<QQQII", 99, 2, 0, 4096, 0), dict(notify_unique=99, nodeid=2, offset=0, size=4096, padding=0))
ntf("notify_delete", 6, struct.pack("<QQII", 1, 2, 1, 0) + b"f\0", dict(parent=1, child=2, namelen=1, padding=0, name=b"f"))
ntf("notify_resend", 7, b"", {})
ntf("notify_inc_epoch", 8, b"", {})
ntf("notify_prune", 9, struct.pack("<IIQ", 3, 0, 0) + struct.pack("<3Q", 5, 6, 7), dict(count=3, padding=0, spare=0, entries=[5, 6, 7]))
ntf("notify_unknown", 50, b"\xff\xfe", b"\xff\xfe")

BY_NAME = {v["name"]: v for v in VECTORS}
assert len(BY_NAME) == len(VECTORS), "duplicate vector names"
