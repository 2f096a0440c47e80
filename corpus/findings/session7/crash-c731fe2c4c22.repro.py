#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on rust-cov: crash
# signature: crash:rust-cov:panic:server.rs:1104:61: called 'Result::unwrap()' on an 'Err' value: SplitOutOfBounds(N)
# rust virtiofsd worker panicked after FUSE_READDIRPLUS: server.rs:1104:61: called 'Result::unwrap()' on an 'Err' value: SplitOutOfBounds(N)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"rust-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/rust-cov-1.13.2-1+deb13u1/virtiofsd","daemon_version":"virtiofsd 1.13.2","daemon_variant":"rust-cov","daemon_instrumentation":"sancov","finding":{"kind":"crash","signature":"crash:rust-cov:panic:server.rs:1104:61: called \'Result::unwrap()\' on an \'Err\' value: SplitOutOfBounds(N)","detail":"rust virtiofsd worker panicked after FUSE_READDIRPLUS: server.rs:1104:61: called \'Result::unwrap()\' on an \'Err\' value: SplitOutOfBounds(N)"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"40000000409f1c884a00000000010000010000000000000000000000000000000100000000008000420000000000000012400000000000106372656174656400","variant":0,"area":4112},{"hex":"50000000300000003e0000000001000004000000000000000000000000000000010000000000000000000000000000000000000000000000ff0000000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"300000002a00000008000000000100000000000000000000000000000000000001000000000000000000000000000000","variant":0,"area":0},{"hex":"2c0000004bdc5f86020000000001000001000000000000000000000000000000010000000000000066696c65","variant":0,"area":4112},{"hex":"30000000180000003600000000010000060000000000000000000000000000000100000000000000757365722e667a00","variant":0,"area":4112},{"hex":"80000000230000004a0000000001000001000000000000000000000000000000010000000800000042080000a40100001200000000000000637265617465640040000000010000001f0000000000000073656375726974792e73656c696e75780060ca4b9b256ac6db233e3c71db2c02f3ed908a439a158a8b292d591f6bf32d","variant":3,"area":69648},{"hex":"38000000140000002a0000000001000002000000000000000000000000000000010000000000000001000000000000000500000000000000","variant":3,"area":69648},{"hex":"500000001c0000003c0000000001000004000000000000000f00000000000000010000000000000001000000000000000000000000000000ff0f00800000000000000000000000000000000000000000","variant":3,"area":1048592},{"hex":"480000002b00000058000000000100000200000000000000000000000000000000002000000000000000000000000000000000000000000000100000000000000100000000000000","variant":0,"area":4112},{"hex":"500000002c0000003e0000000001000004000000000000000000000000000000010000000000000001000000000000000000000000000000000000000000000000000000000000000000000000000000","variant":4,"area":15}],"daemon_config":{"kind":"rust","label":"readdirplus=off,submounts=announce,readonly=ro","args":["--no-readdirplus","--announce-submounts","--readonly"],"xattr":true,"choice":[0,0,1,0,0,0,0,1,0,1,0]}}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
