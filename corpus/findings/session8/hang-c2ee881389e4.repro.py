#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on c-dax-asan-cov: hang
# signature: hang:c-dax-asan-cov:FUSE_READDIR
# no reply to FUSE_READDIR within 0.5 s, daemon alive (state S)
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"c-dax-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-dax-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_version":"virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18, fuseproto c-dax-asan-cov)","daemon_variant":"c-dax-asan-cov","daemon_instrumentation":"asan+ubsan+sancov","finding":{"kind":"hang","signature":"hang:c-dax-asan-cov:FUSE_READDIR","detail":"no reply to FUSE_READDIR within 0.5 s, daemon alive (state S)"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"3c000000d794298818000000000100000100000000002e00000000000000000001000000000000007375620010000000200000000000000000000000","variant":0,"area":4112},{"hex":"5c000000030000004400000000010000040000000000000000000000000000000100000000000000000000000000000001000000000000000000000000000000ff0f0000000000000100000001000000000000000000000008874f08","variant":0,"area":120},{"hex":"2e00000002000000020000000001000001000000000000000000000000000000010000000000000066696c6500","variant":0,"area":0},{"hex":"98000000150000002c0000000001000002000000000000000000000000000000010000000b0000000800000000000000757365722e667a0076767676767676765800000001000000400000000000000000c3d7469682419600827efe05f1f1130a73b3390ab77b8920e8e474764ffa7e65c8bf6d58bcf46483d8d2b3daf76a19d428d173bfc9540f93687550364dfffa8500000000000000","variant":0,"area":4112},{"hex":"500000001c0000003e0000000001000004000000000000000000000000000000010000000000000000000000000000000000000000000000ffffffff0000000000000000000000000000000000000000","variant":0,"area":1048592}],"daemon_config":{"kind":"c","label":"cache=none,xattr=off,readdirplus=off,writeback=on,submounts=announce,caps=drop","args":["-o","cache=none","-o","no_xattr","-o","no_readdirplus","-o","writeback","-o","announce_submounts","-o","modcaps=-dac_override:-fowner:-chown:-fsetid"],"xattr":false,"choice":[1,1,0,1,1,0,0,0,1,0,0,1,0,0]}}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
