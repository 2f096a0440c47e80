#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on rust: crash
# signature: crash:rust:panic:file_traits.rs:153:1: called 'Result::unwrap()' on an 'Err' value: TryFromIntError(())
# rust virtiofsd worker panicked after FUSE_WRITE: file_traits.rs:153:1: called 'Result::unwrap()' on an 'Err' value: TryFromIntError(())
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"rust","daemon_binary":"/root/.cache/fuseproto/daemons/rust-1.13.2-1+deb13u1/root/usr/libexec/virtiofsd","daemon_version":"virtiofsd 1.13.2","daemon_variant":"rust","daemon_instrumentation":"","finding":{"kind":"crash","signature":"crash:rust:panic:file_traits.rs:153:1: called \'Result::unwrap()\' on an \'Err\' value: TryFromIntError(())","detail":"rust virtiofsd worker panicked after FUSE_WRITE: file_traits.rs:153:1: called \'Result::unwrap()\' on an \'Err\' value: TryFromIntError(())"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"32000000010000000200000000010000010000000000000000000000000000000100000000000000757365722e7465737400","variant":0,"area":144},{"hex":"500000001c0000003c000000000100000400000000000000000000000000000001000000000000000100000000000000000000000000000000100000000000000000000000000000ffff000000000000","variant":0,"area":4112},{"hex":"650000001000000024000000000100000200000000000000000000000000000001000000000000000000000000000000efecc9d2f5bd88e11500000000000000000000000000000000000000000000007772697474656e206279207468652066757a7a6572","variant":0,"area":24}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
