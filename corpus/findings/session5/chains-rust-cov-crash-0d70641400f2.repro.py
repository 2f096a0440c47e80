#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# chains on rust-cov: crash
# signature: crash:chain:rust-cov:panic:vhost_user.rs:277:18: called 'Result::unwrap()' on an 'Err' value: ProcessQueue(InvalidCString(FromBytesWithNulError { kind: NotNulTerminated }))
# rust virtiofsd worker panicked after FUSE_LOOKUP: vhost_user.rs:277:18: called 'Result::unwrap()' on an 'Err' value: ProcessQueue(InvalidCString(FromBytesWithNulError { kind: NotNulTerminated }))
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"chains","daemon":"rust-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/rust-cov-1.13.2-1+deb13u1/virtiofsd","daemon_variant":"rust-cov","layout":"gap","indirect":true,"finding":{"kind":"crash","signature":"crash:chain:rust-cov:panic:vhost_user.rs:277:18: called \'Result::unwrap()\' on an \'Err\' value: ProcessQueue(InvalidCString(FromBytesWithNulError { kind: NotNulTerminated }))","detail":"rust virtiofsd worker panicked after FUSE_LOOKUP: vhost_user.rs:277:18: called \'Result::unwrap()\' on an \'Err\' value: ProcessQueue(InvalidCString(FromBytesWithNulError { kind: NotNulTerminated }))"},"log_tail":"[2026-11-30T11:27:01Z WARN  virtiofsd::limits] Failure when trying to set the limit to 1000000, the hard limit (20000) of open file descriptors is used instead.\\n[2026-11-30T11:27:01Z INFO  virtiofsd] Waiting for vhost-user socket connection...\\n[2026-11-30T11:27:01Z INFO  virtiofsd] Client connected, servicing requests\\nWarning: Cannot announce submounts, client does not support it\\n\\nthread \'vring_worker\' panicked at /build/src/src/vhost_user.rs:277:18:\\ncalled `Result::unwrap()` on an `Err` value: ProcessQueue(InvalidCString(FromBytesWithNulError { kind: NotNulTerminated }))\\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace","inputs":[{"request":"500000001c000000700000000000000003000000000000000000000000000000000000000000000001000000000000000000000000000000001000000000000000000000000000000000000000000000","area":4112,"cuts":[44,28,76,54,40,80,46,64],"splits":[2747,1560,1991,133,2221],"order":"normal","indirect":true,"ops":[]},{"request":"330000000100000074000000000000000100000000000000000000000000000000000000000000002f6574632f70617373776400","area":144,"cuts":[41,24],"splits":[40,43,97,23,17],"order":"normal","indirect":false,"ops":[]}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
