#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on c-asan-cov: asan
# signature: asan:c-asan-cov:heap-use-after-free:virtio_send_msg@fuse_virtio.c:270|fuse_send_msg@fuse_lowlevel.c:167|fuse_send_reply_iov_nofree@fuse_lowlevel.c:191
# c virtiofsd: AddressSanitizer heap-use-after-free after FUSE_BMAP in virtio_send_msg < fuse_send_msg < fuse_send_reply_iov_nofree
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"c-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_version":"virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18, fuseproto c-asan-cov)","daemon_variant":"c-asan-cov","daemon_instrumentation":"asan+ubsan+sancov","finding":{"kind":"asan","signature":"asan:c-asan-cov:heap-use-after-free:virtio_send_msg@fuse_virtio.c:270|fuse_send_msg@fuse_lowlevel.c:167|fuse_send_reply_iov_nofree@fuse_lowlevel.c:191","detail":"c virtiofsd: AddressSanitizer heap-use-after-free after FUSE_MKNOD in virtio_send_msg < fuse_send_msg < fuse_send_reply_iov_nofree"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"2d0000000a000000167f000000010000010000000000000000000000000000000100000000000000676f6e6500","variant":0,"area":4112},{"hex":"300000002400000000000000010000000000000000000000000000000000000001000000000000000200000000000000","variant":0,"area":4112},{"hex":"3d000000080000001200000000010000010000000000000000000000000000000100000000000000ffff00000000000012000000000000006669666f00","variant":0,"area":144}],"daemon_config":{"kind":"c","label":"fds=few","args":["--rlimit-nofile=64"],"xattr":true,"choice":[0,0,0,0,0,0,0,0,0,0,0,0,1,0]}}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
