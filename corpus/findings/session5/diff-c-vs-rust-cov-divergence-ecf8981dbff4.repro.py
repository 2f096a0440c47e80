#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# diff: divergence
# signature: diff:c-vs-rust-cov:FUSE_GETXATTR:errno:-9/-61
# FUSE_GETXATTR: errno: errno -9 (EBADF) vs -61 (unsupported)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"diff","pair":"c-vs-rust-cov","daemons":["c","rust-cov"],"daemon_kinds":["c","rust"],"daemon_binaries":["/root/.cache/fuseproto/daemons/c-1_7.2+dfsg-7+deb12u18+b3/root/usr/lib/qemu/virtiofsd","/root/.cache/fuseproto/daemons/builds/rust-cov-1.13.2-1+deb13u1/virtiofsd"],"finding":{"kind":"divergence","signature":"diff:c-vs-rust-cov:FUSE_GETXATTR:errno:-9/-61","detail":"errno -9 (EBADF) vs -61 (unsupported)","step":5},"program":[{"op":"FUSE_INIT","fields":{"major":7,"minor":46,"max_readahead":131072,"flags":1681924131,"flags2":2,"unused":[0,0,0,0,0,0,0,0,0,0,0]},"node":0,"length":null,"variant":0,"group":0},{"op":"FUSE_LOOKUP","fields":{"name":{"hex":"656d707479"}},"node":1,"length":null,"variant":0,"group":0},{"op":"FUSE_LOOKUP","fields":{"name":{"hex":"2e"}},"node":1,"length":null,"variant":0,"group":0},{"op":"FUSE_OPEN","fields":{"flags":2,"open_flags":0},"node":-1,"length":null,"variant":0,"group":0},{"op":"FUSE_BATCH_FORGET","fields":{"count":null,"dummy":0,"entries":[{"nodeid":-1,"nlookup":1},{"nodeid":-2,"nlookup":1}]},"node":0,"length":null,"variant":0,"group":0},{"op":"FUSE_GETXATTR","fields":{"size":256,"padding":0,"name":{"hex":"757365722e78"}},"node":-1,"length":null,"variant":0,"group":0}],"replies":["10000000f7ffffff287e000000010000","10000000c3ffffffb893000000010000"],"requests":[[{"hex":"680000001a0000001e7e000000010000000000000000000000000000000000000100000000000000070000002e0000000000020023204064020000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"2e00000001000000207e000000010000010000000000000000000000000000000100000000000000656d70747900","variant":0,"area":144},{"hex":"2a00000001000000227e0000000100000100000000000000000000000000000001000000000000002e00","variant":0,"area":144},{"hex":"300000000e000000247e0000000100000300000000000000000000000000000001000000000000000200000000000000","variant":0,"area":32},{"hex":"500000002a000000267e00000001000000000000000000000000000000000000010000000000000002000000000000000300000000000000010000000000000002000000000000000100000000000000","variant":0,"area":0},{"hex":"3700000016000000287e0000000100000300000000000000000000000000000001000000000000000001000000000000757365722e7800","variant":0,"area":272}],[{"hex":"680000001a000000ae93000000010000000000000000000000000000000000000100000000000000070000002e0000000000020023204064020000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"2e00000001000000b093000000010000010000000000000000000000000000000100000000000000656d70747900","variant":0,"area":144},{"hex":"2a00000001000000b2930000000100000100000000000000000000000000000001000000000000002e00","variant":0,"area":144},{"hex":"300000000e000000b4930000000100000100000000000000000000000000000001000000000000000200000000000000","variant":0,"area":32},{"hex":"500000002a000000b69300000001000000000000000000000000000000000000010000000000000002000000000000000100000000000000010000000000000002000000000000000100000000000000","variant":0,"area":0},{"hex":"3700000016000000b8930000000100000100000000000000000000000000000001000000000000000001000000000000757365722e7800","variant":0,"area":272}]],"setup":"none: a sequence program (fuseproto.fuzz.sequences) on each daemon, fresh identical shares (fuseproto.fuzz.harness), INIT is its first request"}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
