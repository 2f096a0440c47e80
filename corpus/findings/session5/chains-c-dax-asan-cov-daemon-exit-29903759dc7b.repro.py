#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# chains on c-dax-asan-cov: daemon-exit
# signature: daemon-exit:chain:c-dax-asan-cov:daemon-exit:Looped descriptor
# c virtiofsd exited with code 1 after FUSE_LOOKUP
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"chains","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"two","indirect":true,"finding":{"kind":"daemon-exit","signature":"daemon-exit:chain:c-dax-asan-cov:daemon-exit:Looped descriptor","detail":"c virtiofsd exited with code 1 after FUSE_LOOKUP"},"log_tail":"virtio_session_mount: Waiting for vhost-user socket connection...\\nvirtio_session_mount: Received vhost-user socket connection\\nvirtio_loop: Entry\\nfv_queue_set_started: qidx=0 started=1\\nfv_queue_set_started: qidx=1 started=1\\nfv_queue_thread: Start for queue 0 kick_fd 8\\nfv_queue_thread: Start for queue 1 kick_fd 11\\nfv_panic: libvhost-user: Looped descriptor","inputs":[{"request":"2d00000001000000700000000000000001000000000000000000000000000000000000000000000066696c6500","area":144,"cuts":[64,3],"splits":[62],"order":"normal","indirect":true,"ops":[["straddle",42554]]}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
