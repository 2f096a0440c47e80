#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on c-dax-asan-cov: crash
# signature: crash:c-dax-asan-cov:SIGABRT:fuse_virtio.c:359 virtio_send_data_iov: Assertion 'out->unique' failed
# c virtiofsd killed by SIGABRT after FUSE_READ: fuse_virtio.c:359 virtio_send_data_iov: Assertion 'out->unique' failed
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_version":"virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18, fuseproto c-dax-asan-cov)","daemon_variant":"c-dax-asan-cov","daemon_instrumentation":"asan+ubsan+sancov","finding":{"kind":"crash","signature":"crash:c-dax-asan-cov:SIGABRT:fuse_virtio.c:359 virtio_send_data_iov: Assertion \'out->unique\' failed","detail":"c virtiofsd killed by SIGABRT after FUSE_READ: fuse_virtio.c:359 virtio_send_data_iov: Assertion \'out->unique\' failed"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"2d0000000a0000001600000000010000010000000000000000000000000000000100000000000000676f6e6500","variant":0,"area":4112},{"hex":"40000000230000004a00000000010000010000000000000000000000000000000100000000000000460000000000000012000000000000006372656174656400","variant":2,"area":16},{"hex":"2e00000097e3fdd73600000000010000020000000000000000000000000000000100000000000000757365722e66","variant":0,"area":4112},{"hex":"50000000baf1c098380000000001000002000000000000000000000000000000010000000200000000000000000000000000000000000000000000000000000010000000200000000000000000000000","variant":1,"area":8208},{"hex":"2b100000011000104200000000010200010000000000000000000000400000000140000000800000fffe00","variant":0,"area":4112},{"hex":"580000001f0000004400000000010000020000000000000000000000000000000100000000000000000000000000000001000000000000000000000000000000ff0f00000000000001000000010000000000000025dd0000","variant":0,"area":40},{"hex":"340000005b17eaf04e000000000100000000000000000000000000000000000001000000000000000200ff0000000000972c300c","variant":0,"area":4112},{"hex":"500000000f000000000000000000000002000000000000000000000000000000010000000000000000000000000000000000000000000000001000000000000000000000000000000000000000000000","variant":0,"area":4112}],"daemon_config":{"kind":"c","label":"xattr=map-prefix,readdirplus=off,writeback=on,submounts=announce,caps=drop","args":["-o","xattrmap=:map::user.virtiofs.:","-o","no_readdirplus","-o","writeback","-o","announce_submounts","-o","modcaps=-dac_override:-fowner:-chown:-fsetid"],"xattr":true,"choice":[0,3,0,1,1,0,0,0,1,0,0,1,0,0]}}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
