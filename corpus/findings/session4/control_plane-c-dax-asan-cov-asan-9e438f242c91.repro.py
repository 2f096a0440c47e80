#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: asan
# signature: asan:control:c-dax-asan-cov:BUS:vu_set_vring_addr_exec@libvhost-user.c:1131|vu_process_message@libvhost-user.c:1997|virtio_loop@fuse_virtio.c:880
# c virtiofsd: AddressSanitizer BUS after probe GET_FEATURES in vu_set_vring_addr_exec < vu_process_message < virtio_loop
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"one","first_invalid":"SET_MEM_TABLE[mode=beyond-file,need-reply]+SET_VRING_ADDR","log_tail":"    #1 0x55be2c487b2a  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3cfb2a) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #2 0x55be2c2fe798  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x246798) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #3 0x55be2c30abe1  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x252be1) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #4 0x7f8ea1361249  (/lib/x86_64-linux-gnu/libc.so.6+0x27249) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #5 0x7f8ea1361304  (/lib/x86_64-linux-gnu/libc.so.6+0x27304) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n    #6 0x55be2c2032a0  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x14b2a0) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n\\nAddressSanitizer can not provide additional info.\\nSUMMARY: AddressSanitizer: BUS (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3e34ea) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4) \\n==5695==ABORTING","key":["asan","BUS"],"finding":{"kind":"asan","signature":"asan:control:c-dax-asan-cov:BUS:vu_set_vring_addr_exec@libvhost-user.c:1131|vu_process_message@libvhost-user.c:1997|virtio_loop@fuse_virtio.c:880","detail":"c virtiofsd: AddressSanitizer BUS after probe GET_FEATURES in vu_set_vring_addr_exec < vu_process_message < virtio_loop"},"program":[{"request":5,"index":null,"value":null,"mode":"beyond-file","fds":"std","need_reply":true,"size_delta":0,"flags":null,"name":"SET_MEM_TABLE"},{"request":9,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_ADDR"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
