#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on rust-cov: crash
# signature: crash:rust-cov:panic:server.rs:1730:29: mid > len
# rust virtiofsd worker panicked after FUSE_CREATE: server.rs:1730:29: mid > len
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"rust-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/rust-cov-1.13.2-1+deb13u1/virtiofsd","daemon_version":"virtiofsd 1.13.2","daemon_variant":"rust-cov","daemon_instrumentation":"sancov","finding":{"kind":"crash","signature":"crash:rust-cov:panic:server.rs:1730:29: mid > len","detail":"rust virtiofsd worker panicked after FUSE_CREATE: server.rs:1730:29: mid > len"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"2b000000856dfa151200000000010000010000000000000000000000000000000100000000000000a41100","variant":0,"area":4112},{"hex":"40000000120400002800000000010020020000020000000000000008000000000100000000000110010000000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"30000000220000004800000000010000020000000000000000000000000000000100000000000000ffffff7f00000000","variant":0,"area":4112},{"hex":"480000002b000000580000000001000001000000000000000000000000000000000020000000000000000000000000000f0000000000000000100000000000000000000000000000","variant":0,"area":4112},{"hex":"38000000c4956fc42a0000000001000002000000000000000040000000000000010000000000000001000000000000000100000000000000","variant":3,"area":69648},{"hex":"350000009c4ea3fb1e0000000001000001000000000000000000000000000000010000000000000002000000000800006861726400","variant":0,"area":4112},{"hex":"80000000a3e167a94400000000010000020000000000000000000000000000000100000000000000000000000000000001000000000000000000000000000000ff0f00000000000001000000010000000000000000000000acf7bf1df4b212bfc8c36e4b6acdc5bfb4703179ed3d0664c9ba9c7b24ac908f24f7ec7ffac0ff9f","variant":0,"area":4112},{"hex":"620000002300000012000000000100000100000000000000ffffffff000000000100000000000000a41100000000000012000000000000002e00983c3ed9e28ac29ddd0fd5ca285681bf85ef4e1dfc1d6c81402b77f767d14ac13e7eca8d487a21ee","variant":1,"area":8208}],"daemon_config":{"kind":"rust","label":"security_label=on,submounts=announce,inode_handles=prefer","args":["--security-label","--announce-submounts","--inode-file-handles=prefer"],"xattr":true,"choice":[0,0,0,0,0,0,1,1,1,0,0]}}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
