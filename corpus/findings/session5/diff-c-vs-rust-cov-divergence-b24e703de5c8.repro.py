#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# diff: divergence
# signature: diff:c-vs-rust-cov:FUSE_READ:errno:-21/-9
# FUSE_READ: errno: errno -21 (EISDIR) vs -9 (EBADF)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"diff","pair":"c-vs-rust-cov","daemons":["c","rust-cov"],"daemon_kinds":["c","rust"],"daemon_binaries":["/root/.cache/fuseproto/daemons/c-1_7.2+dfsg-7+deb12u18+b3/root/usr/lib/qemu/virtiofsd","/root/.cache/fuseproto/daemons/builds/rust-cov-1.13.2-1+deb13u1/virtiofsd"],"finding":{"kind":"divergence","signature":"diff:c-vs-rust-cov:FUSE_READ:errno:-21/-9","detail":"errno -21 (EISDIR) vs -9 (EBADF)","step":3},"program":[{"op":"FUSE_INIT","fields":{"major":7,"minor":46,"max_readahead":131072,"flags":1681924131,"flags2":0,"unused":[0,0,0,0,0,0,0,0,0,0,0]},"node":0,"length":null,"variant":0,"group":0},{"op":"FUSE_LOOKUP","fields":{"name":{"hex":"66696c65"}},"node":1,"length":null,"variant":0,"group":40810},{"op":"FUSE_OPEN","fields":{"flags":0,"open_flags":0},"node":-1,"length":null,"variant":0,"group":40810},{"op":"FUSE_READ","fields":{"fh":-1,"offset":0,"size":100,"read_flags":0,"lock_owner":0,"flags":0},"node":-1,"length":null,"variant":3,"group":25577},{"op":"FUSE_LOOKUP","fields":{"name":{"hex":"736d616c6c"}},"node":1,"length":null,"variant":0,"group":0}],"replies":["10000000ebfffffffa70000000010000","10000000f7ffffff9e83000000010000"],"requests":[[{"hex":"680000001a000000f470000000010000000000000000000000000000000000000100000000000000070000002e0000000000020023204064000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"2d00000001000000f67000000001000001000000000000000000000000000000010000000000000066696c6500","variant":0,"area":144,"batch":2},{"hex":"300000000e000000f8700000000100000100000000000000000000000000000001000000000000000000000000000000","variant":0,"area":32,"batch":2},{"hex":"500000000f000000fa7000000001000002000000000000000000000000000000010000000000000000000000000000000000000000000000640000000000000000000000000000000000000000000000","variant":3,"area":65652},{"hex":"2e00000001000000fc70000000010000010000000000000000000000000000000100000000000000736d616c6c00","variant":0,"area":144}],[{"hex":"680000001a0000009883000000010000000000000000000000000000000000000100000000000000070000002e0000000000020023204064000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"2d000000010000009a8300000001000001000000000000000000000000000000010000000000000066696c6500","variant":0,"area":144,"batch":2},{"hex":"300000000e0000009c830000000100000100000000000000000000000000000001000000000000000000000000000000","variant":0,"area":32,"batch":2},{"hex":"500000000f0000009e8300000001000002000000000000000000000000000000010000000000000000000000000000000000000000000000640000000000000000000000000000000000000000000000","variant":3,"area":65652},{"hex":"2e00000001000000a083000000010000010000000000000000000000000000000100000000000000736d616c6c00","variant":0,"area":144}]],"setup":"none: a sequence program (fuseproto.fuzz.sequences) on each daemon, fresh identical shares (fuseproto.fuzz.harness), INIT is its first request"}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
