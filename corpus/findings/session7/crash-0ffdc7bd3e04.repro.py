#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on c-dax-asan-cov: crash
# signature: crash:c-dax-asan-cov:SIGABRT:fuse_virtio.c:506 fv_queue_worker: Assertion '0' failed
# c virtiofsd killed by SIGABRT after opcode_-1: fuse_virtio.c:506 fv_queue_worker: Assertion '0' failed
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_version":"virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18, fuseproto c-dax-asan-cov)","daemon_variant":"c-dax-asan-cov","daemon_instrumentation":"asan+ubsan+sancov","finding":{"kind":"crash","signature":"crash:c-dax-asan-cov:SIGABRT:fuse_virtio.c:506 fv_queue_worker: Assertion \'0\' failed","detail":"c virtiofsd killed by SIGABRT after opcode_-1: fuse_virtio.c:506 fv_queue_worker: Assertion \'0\' failed"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"280000003100000026000000000100000100000000000000000000000000000001","variant":0,"area":4112}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
