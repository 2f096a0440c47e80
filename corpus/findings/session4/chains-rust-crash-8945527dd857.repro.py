#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# chains on rust: crash
# signature: crash:chain:rust:panic:vhost_user.rs:268:18: called 'Result::unwrap()' on an 'Err' value: QueueReader(VolatileMemoryError(OutOfBounds { addr: N }))
# rust virtiofsd worker panicked after FUSE_GETATTR: vhost_user.rs:268:18: called 'Result::unwrap()' on an 'Err' value: QueueReader(VolatileMemoryError(OutOfBounds { addr: N }))
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"chains","daemon":"rust","daemon_binary":"/root/.cache/fuseproto/daemons/rust-1.13.2-1+deb13u1/root/usr/libexec/virtiofsd","daemon_variant":"rust","layout":"two","indirect":true,"finding":{"kind":"crash","signature":"crash:chain:rust:panic:vhost_user.rs:268:18: called \'Result::unwrap()\' on an \'Err\' value: QueueReader(VolatileMemoryError(OutOfBounds { addr: N }))","detail":"rust virtiofsd worker panicked after FUSE_GETATTR: vhost_user.rs:268:18: called \'Result::unwrap()\' on an \'Err\' value: QueueReader(VolatileMemoryError(OutOfBounds { addr: N }))"},"log_tail":"[2026-11-30T09:40:12Z WARN  virtiofsd::limits] Failure when trying to set the limit to 1000000, the hard limit (20000) of open file descriptors is used instead.\\n[2026-11-30T09:40:12Z INFO  virtiofsd] Waiting for vhost-user socket connection...\\n[2026-11-30T09:40:12Z INFO  virtiofsd] Client connected, servicing requests\\nWarning: Cannot announce submounts, client does not support it\\n\\nthread \'vring_worker\' panicked at /usr/share/cargo/registry/virtiofsd-1.13.2/src/vhost_user.rs:268:18:\\ncalled `Result::unwrap()` on an `Err` value: QueueReader(VolatileMemoryError(OutOfBounds { addr: 4303351824 }))\\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace","inputs":[{"request":"3800000003000000700000000000000001000000000000000000000000000000000000000000000000000000000000000000000000000000","area":120,"cuts":[12],"splits":[89],"order":"normal","indirect":true,"ops":[["huge",47077]]}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
