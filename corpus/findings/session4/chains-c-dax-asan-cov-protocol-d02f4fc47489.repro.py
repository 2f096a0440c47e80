#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# chains on c-dax-asan-cov: protocol
# signature: protocol:chain:c-dax-asan-cov:no-reply-written
# request completed with 0 reply bytes (area 24)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"chains","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"gap","indirect":true,"finding":{"kind":"protocol","signature":"protocol:chain:c-dax-asan-cov:no-reply-written","detail":"request completed with 0 reply bytes (area 4112)"},"log_tail":"virtio_session_mount: Waiting for vhost-user socket connection...\\nvirtio_session_mount: Received vhost-user socket connection\\nvirtio_loop: Entry\\nfv_queue_set_started: qidx=0 started=1\\nfv_queue_set_started: qidx=1 started=1\\nfv_queue_thread: Start for queue 1 kick_fd 11\\nfv_queue_thread: Start for queue 0 kick_fd 8\\nvirtio_send_data_iov: elem 0 too short for out_header\\nvirtio_send_msg: elem 0 too short for out_header","inputs":[{"request":"500000000f000000700000000000000002000000000000000000000000000000000000000000000000000000000000000000000000000000001000000000000000000000000000000000000000000000","area":4112,"cuts":[24,2,3],"splits":[],"order":"normal","indirect":false,"ops":[["indirect-tail",1651]]}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
