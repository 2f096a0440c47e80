#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: ubsan
# signature: ubsan:control:c-dax-asan-cov:member access within null pointer of type 'struct fv_QueueInfo':fuse_virtio.c:736:fv_queue_cleanup_thread@fuse_virtio.c:736|fv_queue_set_started@fuse_virtio.c:822|vu_get_vring_base_exec@libvhost-user.c:1173
# c virtiofsd: UndefinedBehaviorSanitizer member access within null pointer of type 'struct fv_QueueInfo' after GET_VRING_BASE in fv_queue_cleanup_thread < fv_queue_set_started < vu_get_vring_base_exec
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"two","first_invalid":"request 35","log_tail":"    #1 0x559a95bba9da  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x2499da) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #2 0x559a95d55767  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3e4767) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #3 0x559a95d40c08  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3cfc08) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #4 0x559a95bb7798  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x246798) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #5 0x559a95bc3be1  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x252be1) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #6 0x7f091c6f0249  (/lib/x86_64-linux-gnu/libc.so.6+0x27249) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #7 0x7f091c6f0304  (/lib/x86_64-linux-gnu/libc.so.6+0x27304) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #8 0x559a95abc2a0  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x14b2a0) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n\\nSUMMARY: UndefinedBehaviorSanitizer: undefined-behavior ../../source/qemu-7.2+dfsg-7+deb12u18+c-dax-asan-cov/tools/virtiofsd/fuse_virtio.c:736:30 in","key":["ubsan","member access within null pointer of type \'struct fv_QueueInfo\'"],"finding":{"kind":"ubsan","signature":"ubsan:control:c-dax-asan-cov:member access within null pointer of type \'struct fv_QueueInfo\':fuse_virtio.c:736:fv_queue_cleanup_thread@fuse_virtio.c:736|fv_queue_set_started@fuse_virtio.c:822|vu_get_vring_base_exec@libvhost-user.c:1173","detail":"c virtiofsd: UndefinedBehaviorSanitizer member access within null pointer of type \'struct fv_QueueInfo\' after GET_VRING_BASE in fv_queue_cleanup_thread < fv_queue_set_started < vu_get_vring_base_exec"},"program":[{"request":35,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"request 35"},{"request":11,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_VRING_BASE"},{"request":11,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_VRING_BASE"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
