#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on c-dax-asan-cov: hang
# signature: hang:c-dax-asan-cov:FUSE_READDIRPLUS
# no reply to FUSE_READDIRPLUS within 0.5 s, daemon alive (state S)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_version":"virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18, fuseproto c-dax-asan-cov)","daemon_variant":"c-dax-asan-cov","daemon_instrumentation":"asan+ubsan+sancov","finding":{"kind":"hang","signature":"hang:c-dax-asan-cov:FUSE_READDIRPLUS","detail":"no reply to FUSE_READDIRPLUS within 0.5 s, daemon alive (state S)"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"2f000000639363d82c0000000001000002000000000000000000000000000000010000000000000008000010000020","variant":0,"area":4112},{"hex":"480000002b00000058000000000100000400000000000000000000000000000001000000000000000000000000000000000000000000000000100000000000000000000000000000","variant":0,"area":4112},{"hex":"500000002c0000003e0000000001000004000000000000000000000000000000010000000000000000000000000000000000000000000000d60ec3e20000000000000000000000000000000000000000","variant":0,"area":1048592}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
