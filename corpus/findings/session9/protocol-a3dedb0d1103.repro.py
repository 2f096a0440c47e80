#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: protocol
# signature: protocol:control:c-dax-asan-cov:unsolicited:SET_PROTOCOL_FEATURES+SET_VRING_CALL[fds=bad]
# a reply (SET_VRING_CALL) to SET_PROTOCOL_FEATURES, which asks for none
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"one","first_invalid":"SET_PROTOCOL_FEATURES+SET_VRING_CALL[fds=bad]","log_tail":"virtio_session_mount: Waiting for vhost-user socket connection...\\nvirtio_session_mount: Received vhost-user socket connection\\nvirtio_loop: Entry\\nvirtio_loop: Unexpected poll revents 11\\nvirtio_loop: Exit","key":["protocol","unsolicited"],"finding":{"kind":"protocol","signature":"protocol:control:c-dax-asan-cov:unsolicited:SET_PROTOCOL_FEATURES+SET_VRING_CALL[fds=bad]","detail":"a reply (SET_VRING_CALL) to SET_PROTOCOL_FEATURES, which asks for none"},"program":[{"request":1,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_FEATURES"},{"request":13,"index":0,"value":null,"mode":"std","fds":"bad","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_CALL"},{"request":16,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_PROTOCOL_FEATURES"},{"request":36,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_MAX_MEM_SLOTS"},{"request":2,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_FEATURES"},{"request":9,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_ADDR"},{"request":13,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_CALL"},{"request":12,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_KICK"},{"request":13,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_CALL"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
