#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# virtiofsd on c-asan-cov: ubsan
# signature: ubsan:c-asan-cov:member access within misaligned address N for type 'struct fuse_secctx_header', which requires N byt:fuse_lowlevel.c:905:?
# c virtiofsd: UndefinedBehaviorSanitizer member access within misaligned address N for type 'struct fuse_secctx_header', which requires N byt after FUSE_MKNOD
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"virtiofsd","daemon":"c-asan-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/c-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd","daemon_version":"virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18, fuseproto c-asan-cov)","daemon_variant":"c-asan-cov","daemon_instrumentation":"asan+ubsan+sancov","finding":{"kind":"ubsan","signature":"ubsan:c-asan-cov:member access within misaligned address N for type \'struct fuse_secctx_header\', which requires N byt:fuse_lowlevel.c:905:?","detail":"c virtiofsd: UndefinedBehaviorSanitizer member access within misaligned address N for type \'struct fuse_secctx_header\', which requires N byt after FUSE_MKNOD"},"setup":"fuseproto.fuzz.harness.DaemonHarness (INIT, LOOKUP file/small/dir/link/empty, OPEN file O_RDWR, OPENDIR dir)","requests":[{"hex":"7d000000080000001200000000010000010000000000000000000000000000000100000008000000a48100000000000012000000000000006669666f0040000000010000001f0000000000000073656375726974792e73656c696e757800353552cf0c363afd1fe7fe1001d6e7445f54db5230dc790b0653d79a33fd2c","variant":0,"area":144}],"daemon_config":{"kind":"c","label":"cache=always,locks=posix_lock,readdirplus=off,killpriv_v2=off,security_label=on,debug=on,caps=drop","args":["-o","cache=always","-o","posix_lock","-o","no_readdirplus","-o","no_killpriv_v2","-o","security_label","-o","debug","-o","modcaps=-dac_override:-fowner:-chown:-fsetid"],"xattr":true,"choice":[2,0,2,1,0,1,0,1,0,0,1,1,0,0]}}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
