#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# chains on rust: crash
# signature: crash:chain:rust:panic:vhost_user.rs:268:18: called 'Result::unwrap()' on an 'Err' value: QueueReader(FindMemoryRegion)
# rust virtiofsd worker panicked after FUSE_READDIR: vhost_user.rs:268:18: called 'Result::unwrap()' on an 'Err' value: QueueReader(FindMemoryRegion)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"chains","daemon":"rust","daemon_binary":"/root/.cache/fuseproto/daemons/rust-1.13.2-1+deb13u1/root/usr/libexec/virtiofsd","daemon_variant":"rust","layout":"gap","indirect":true,"finding":{"kind":"crash","signature":"crash:chain:rust:panic:vhost_user.rs:268:18: called \'Result::unwrap()\' on an \'Err\' value: QueueReader(FindMemoryRegion)","detail":"rust virtiofsd worker panicked after FUSE_LOOKUP: vhost_user.rs:268:18: called \'Result::unwrap()\' on an \'Err\' value: QueueReader(FindMemoryRegion)"},"log_tail":"[2026-11-30T09:40:11Z WARN  virtiofsd::limits] Failure when trying to set the limit to 1000000, the hard limit (20000) of open file descriptors is used instead.\\n[2026-11-30T09:40:11Z INFO  virtiofsd] Waiting for vhost-user socket connection...\\n[2026-11-30T09:40:11Z INFO  virtiofsd] Client connected, servicing requests\\nWarning: Cannot announce submounts, client does not support it\\n\\nthread \'vring_worker\' panicked at /usr/share/cargo/registry/virtiofsd-1.13.2/src/vhost_user.rs:268:18:\\ncalled `Result::unwrap()` on an `Err` value: QueueReader(FindMemoryRegion)\\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace","inputs":[{"request":"2d00000001000000700000000000000001000000000000000000000000000000000000000000000066696c6500","area":144,"cuts":[32,36,27],"splits":[],"order":"normal","indirect":false,"ops":[["outside",29847]]}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
