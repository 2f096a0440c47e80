#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: ubsan
# signature: ubsan:control:c-dax-asan-cov:member access within misaligned address N for type 'struct vring_used', which requires N byte alignm:libvhost-user.c:1131:?
# c virtiofsd: UndefinedBehaviorSanitizer member access within misaligned address N for type 'struct vring_used', which requires N byte alignm after probe GET_FEATURES
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"gap","first_invalid":"SET_VRING_ADDR[mode=unaligned]","log_tail":"virtio_session_mount: Waiting for vhost-user socket connection...\\nvirtio_session_mount: Received vhost-user socket connection\\nvirtio_loop: Entry\\n../../source/qemu-7.2+dfsg-7+deb12u18+c-dax-asan-cov/subprojects/libvhost-user/libvhost-user.c:1131:20: runtime error: member access within misaligned address 0x7fdbbfe14002 for type \'struct vring_used\', which requires 4 byte alignment\\n0x7fdbbfe14002: note: pointer points here","key":["ubsan","member access within misaligned address N for type \'struct vring_used\', which requires N byte alignm"],"finding":{"kind":"ubsan","signature":"ubsan:control:c-dax-asan-cov:member access within misaligned address N for type \'struct vring_used\', which requires N byte alignm:libvhost-user.c:1131:?","detail":"c virtiofsd: UndefinedBehaviorSanitizer member access within misaligned address N for type \'struct vring_used\', which requires N byte alignm after probe GET_FEATURES"},"program":[{"request":5,"index":null,"value":null,"mode":"std","fds":"std","need_reply":true,"size_delta":0,"flags":null,"name":"SET_MEM_TABLE"},{"request":9,"index":1,"value":null,"mode":"unaligned","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_ADDR"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
