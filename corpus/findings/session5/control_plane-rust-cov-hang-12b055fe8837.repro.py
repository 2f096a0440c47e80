#!/usr/bin/env python3
# Reproducer of a fuseproto fuzz finding, written by fuseproto.fuzz.reproducer.
#
# control_plane on rust-cov: hang
# signature: hang:control:rust-cov:probe FUSE_INIT
# no reply to a FUSE INIT on a ring set up for it within 0.5 s, daemon alive
#
# Needs only the fuseproto package: starts the daemon the finding was seen on (or
# --daemon c|rust|VARIANT|PATH, with --virtiofsd-kind c|rust for a path), replays the
# exchange, prints "reproduced" or "not reproduced". Exit status 1: reproduced, 0: not
# reproduced, 2: could not run. --json prints the verdict as JSON; --pcap FILE writes the
# replay's exchange.
import json
import sys

from fuseproto.fuzz.verdict import reproducer_main

REPRODUCER = json.loads('{"target":"control_plane","daemon":"rust-cov","daemon_binary":"/root/.cache/fuseproto/daemons/builds/rust-cov-1.13.2-1+deb13u1/virtiofsd","daemon_variant":"rust-cov","layout":"two","first_invalid":null,"log_tail":"[2026-11-30T11:27:54Z WARN  virtiofsd::limits] Failure when trying to set the limit to 1000000, the hard limit (20000) of open file descriptors is used instead.\\n[2026-11-30T11:27:54Z INFO  virtiofsd] Waiting for vhost-user socket connection...\\n[2026-11-30T11:27:54Z INFO  virtiofsd] Client connected, servicing requests\\n[2026-11-30T11:27:55Z INFO  virtiofsd] Client disconnected, shutting down","key":["hang","hang"],"finding":{"kind":"hang","signature":"hang:control:rust-cov:probe FUSE_INIT","detail":"no reply to a FUSE INIT on a ring set up for it within 0.5 s, daemon alive"},"program":[{"request":1,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_FEATURES"},{"request":15,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_PROTOCOL_FEATURES"},{"request":16,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_PROTOCOL_FEATURES"},{"request":17,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_QUEUE_NUM"},{"request":36,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"GET_MAX_MEM_SLOTS"},{"request":3,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_OWNER"},{"request":2,"index":null,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_FEATURES"},{"request":5,"index":null,"value":null,"mode":"std","fds":"std","need_reply":true,"size_delta":0,"flags":null,"name":"SET_MEM_TABLE"},{"request":8,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_NUM"},{"request":10,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_BASE"},{"request":9,"index":0,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_ADDR"},{"request":8,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_NUM"},{"request":9,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_ADDR"},{"request":12,"index":1,"value":null,"mode":"std","fds":"std","need_reply":false,"size_delta":0,"flags":null,"name":"SET_VRING_KICK"},{"request":12,"index":1,"value":null,"mode":"std","fds":"std","need_reply":true,"size_delta":0,"flags":null,"name":"SET_VRING_KICK"},{"request":18,"index":1,"value":null,"mode":"std","fds":"std","need_reply":true,"size_delta":0,"flags":null,"name":"SET_VRING_ENABLE"}]}')

if __name__ == "__main__":
    sys.exit(reproducer_main(REPRODUCER, sys.argv[1:]))
