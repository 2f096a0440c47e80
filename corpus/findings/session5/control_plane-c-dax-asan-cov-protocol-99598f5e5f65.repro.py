#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: protocol
# signature: protocol:control:c-dax-asan-cov:stray-SET_VRING_CALL:SET_VRING_CALL[fds=bad]
# reply to GET_FEATURES is a SET_VRING_CALL reply (flags 0x5): a reply no request here asked for
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"one","first_invalid":"SET_VRING_CALL[fds=bad]","log_tail":"virtio_session_mount: Waiting for vhost-user socket connection...\\nvirtio_session_mount: Received vhost-user socket connection\\nvirtio_loop: Entry\\nvirtio_loop: Unexpected poll revents 11\\nvirtio_loop: Exit","key":["protocol","stray-SET_VRING_CALL"],"finding":{"kind":"protocol","signature":"protocol:control:c-dax-asan-cov:stray-SET_VRING_CALL:SET_VRING_CALL[fds=bad]","detail":"reply to GET_FEATURES is a SET_VRING_CALL reply (flags 0x5): a reply no request here asked for"},"program":[{"request":13,"index":null,"value":null,"mode":"std","fds":"bad","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_CALL"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
