#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on rust: crash
# signature: crash:rust:panic:server.rs:580:71: called 'Result::unwrap()' on an 'Err' value: SplitOutOfBounds(N)
# rust virtiofsd worker panicked after FUSE_READ: server.rs:580:71: called 'Result::unwrap()' on an 'Err' value: SplitOutOfBounds(N)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"rust","daemon_binary":"/root/.cache/fuseproto/daemons/rust-1.13.2-1+deb13u1/root/usr/libexec/virtiofsd","daemon_version":"virtiofsd 1.13.2","daemon_variant":"rust","daemon_instrumentation":"","finding":{"kind":"crash","signature":"crash:rust:panic:server.rs:580:71: called \'Result::unwrap()\' on an \'Err\' value: SplitOutOfBounds(N)","detail":"rust virtiofsd worker panicked after FUSE_READ: server.rs:580:71: called \'Result::unwrap()\' on an \'Err\' value: SplitOutOfBounds(N)"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"1f000000210000004600000000010000020000000000000000000000000000000100000000000000000000000000000001000000000000000000000000000000ff0f00000000000001000000010000000000000000000000","variant":0,"area":4112},{"hex":"600000002f0000005c0000000001000002000000000000000000000000000000010000000000000001000000000000000000000000000000020000000000000001000000000000000020000000000000ffff0000000000000000000000000000","variant":0,"area":24},{"hex":"4c000000310000006200000000010000020000000000000000000000000000000100000000000000020000000000000000000000000020000000000000002000000000000000200000000000","variant":0,"area":4112},{"hex":"350000000d0000001e0000000001000001000000000000000000000000000000010000000000000005000000000000006861726400","variant":0,"area":144},{"hex":"37000000bf7433906000000000010000020000000000000000000000000000000100000000000000000000000000000000000000000000","variant":0,"area":4112},{"hex":"500000000f000000220000000001000002000000000000000000000000000000010000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","variant":4,"area":15}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
