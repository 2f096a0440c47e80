#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: crash
# signature: crash:control:c-dax-asan-cov:SIGABRT:fuse_virtio.c:802 fv_queue_set_started: Assertion 'vud->qi[qidx]->kick_fd == -1' failed
# c virtiofsd killed by SIGABRT after probe GET_FEATURES: fuse_virtio.c:802 fv_queue_set_started: Assertion 'vud->qi[qidx]->kick_fd == -1' failed
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"one","first_invalid":"SET_VRING_KICK[fds=extra]","log_tail":"    #9 0x562f43806be1  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x252be1) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #10 0x7f5382577249  (/lib/x86_64-linux-gnu/libc.so.6+0x27249) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #11 0x7f5382577304  (/lib/x86_64-linux-gnu/libc.so.6+0x27304) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #12 0x562f436ff2a0  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x14b2a0) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n\\nAddressSanitizer can not provide additional info.\\nSUMMARY: AddressSanitizer: ABRT (/lib/x86_64-linux-gnu/libc.so.6+0x8aeec) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40) \\nfv_queue_thread: Start for queue 1 kick_fd 8\\nfv_queue_thread: Unexpected poll revents 20 Queue 1\\n==4135==ABORTING","key":["crash","fuse_virtio.c:802 fv_queue_set_started: Assertion \'vud->qi[qidx]->kick_fd == -1\' failed"],"finding":{"kind":"crash","signature":"crash:control:c-dax-asan-cov:SIGABRT:fuse_virtio.c:802 fv_queue_set_started: Assertion \'vud->qi[qidx]->kick_fd == -1\' failed","detail":"c virtiofsd killed by SIGABRT after probe GET_FEATURES: fuse_virtio.c:802 fv_queue_set_started: Assertion \'vud->qi[qidx]->kick_fd == -1\' failed"},"program":[{"request":12,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_KICK"},{"request":12,"index":1,"value":512,"mode":"std","fds":"extra","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_KICK"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
