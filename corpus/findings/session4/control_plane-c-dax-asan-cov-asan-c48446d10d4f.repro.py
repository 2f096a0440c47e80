#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: asan
# signature: asan:control:c-dax-asan-cov:SEGV:vu_get_vring_base_exec@libvhost-user.c:1168|vu_process_message@libvhost-user.c:2001|virtio_loop@fuse_virtio.c:880
# c virtiofsd: AddressSanitizer SEGV after GET_VRING_BASE in vu_get_vring_base_exec < vu_process_message < virtio_loop
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"two","first_invalid":"GET_VRING_BASE[index>=2]","log_tail":"    #1 0x556798f8bc08  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3cfc08) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #2 0x556798e02798  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x246798) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #3 0x556798e0ebe1  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x252be1) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #4 0x7ff933bec249  (/lib/x86_64-linux-gnu/libc.so.6+0x27249) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #5 0x7ff933bec304  (/lib/x86_64-linux-gnu/libc.so.6+0x27304) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #6 0x556798d072a0  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x14b2a0) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n\\nAddressSanitizer can not provide additional info.\\nSUMMARY: AddressSanitizer: SEGV (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3e4514) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4) \\n==4522==ABORTING","key":["asan","SEGV"],"finding":{"kind":"asan","signature":"asan:control:c-dax-asan-cov:SEGV:vu_get_vring_base_exec@libvhost-user.c:1168|vu_process_message@libvhost-user.c:2001|virtio_loop@fuse_virtio.c:880","detail":"c virtiofsd: AddressSanitizer SEGV after GET_VRING_BASE in vu_get_vring_base_exec < vu_process_message < virtio_loop"},"program":[{"request":11,"index":65535,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_VRING_BASE"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
