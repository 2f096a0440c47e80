#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on c-dax-asan-cov: asan
# signature: asan:control:c-dax-asan-cov:heap-use-after-free:vu_set_vring_addr_exec@libvhost-user.c:1121|vu_process_message@libvhost-user.c:1997|virtio_loop@fuse_virtio.c:880
# c virtiofsd: AddressSanitizer heap-use-after-free after probe GET_FEATURES in vu_set_vring_addr_exec < vu_process_message < virtio_loop
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"one","first_invalid":"SET_VRING_ADDR[index>=2]","log_tail":"  Global redzone:          f9\\n  Global init order:       f6\\n  Poisoned by user:        f7\\n  Container overflow:      fc\\n  Array cookie:            ac\\n  Intra object redzone:    bb\\n  ASan internal:           fe\\n  Left alloca redzone:     ca\\n  Right alloca redzone:    cb\\n==4687==ABORTING","key":["asan","heap-use-after-free"],"finding":{"kind":"asan","signature":"asan:control:c-dax-asan-cov:heap-use-after-free:vu_set_vring_addr_exec@libvhost-user.c:1121|vu_process_message@libvhost-user.c:1997|virtio_loop@fuse_virtio.c:880","detail":"c virtiofsd: AddressSanitizer heap-use-after-free after probe GET_FEATURES in vu_set_vring_addr_exec < vu_process_message < virtio_loop"},"program":[{"request":9,"index":2,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_ADDR"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
