#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# chains on c-dax-asan-cov: crash
# signature: crash:chain:c-dax-asan-cov:SIGABRT:passthrough_ll.c:1734 unref_inode: Assertion 'inode->nlookup >= n' failed
# c virtiofsd killed by SIGABRT after FUSE_FORGET: passthrough_ll.c:1734 unref_inode: Assertion 'inode->nlookup >= n' failed
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"chains","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_variant":"c-dax-asan-cov","layout":"two","indirect":true,"finding":{"kind":"crash","signature":"crash:chain:c-dax-asan-cov:SIGABRT:passthrough_ll.c:1734 unref_inode: Assertion \'inode->nlookup >= n\' failed","detail":"c virtiofsd killed by SIGABRT after FUSE_FORGET: passthrough_ll.c:1734 unref_inode: Assertion \'inode->nlookup >= n\' failed"},"log_tail":"Thread T3 created by T0 here:\\n    #0 0x55af9aa1f56c  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x1b756c) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #1 0x55af9aab1fae  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x249fae) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #2 0x55af9ac4dbca  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3e5bca) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #3 0x55af9ac37b0a  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x3cfb0a) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #4 0x55af9aaae798  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x246798) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #5 0x55af9aababe1  (/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd+0x252be1) (BuildId: 2ba85d92e89d8d3ec661ae24a5f3eff4ce957ff4)\\n    #6 0x7fb199fe2249  (/lib/x86_64-linux-gnu/libc.so.6+0x27249) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)\\n\\n==23336==ABORTING","inputs":[{"request":"50000000020000007000000000000000020000000000000000000000000000000000000000000000feffffff000000000000000000000000000000000000000000000000000000000000000000000000","area":65552,"cuts":[62],"splits":[2987],"order":"normal","indirect":true,"ops":[]}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
