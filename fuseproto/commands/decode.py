"""``fuseproto decode FILE | --hex HEX``: show the FUSE messages of a capture, one per line."""

from __future__ import annotations

import argparse
import errno as _errno
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

_EPILOG = """\
file format:
  A classic pcap (either byte order, micro- or nanosecond timestamps) or pcapng file
  whose packets have link type LINKTYPE_USER0 (147; change with --linktype). Each
  packet is a 16-byte little-endian pseudo-header, then one FUSE message exactly as on
  the wire:
    u8 version (1)  u8 direction (0 request to the daemon, 1 reply, 2 notification)
    u16 queue (virtqueue index)  u8 flags (1 opcode hint valid, 2 minor hint valid,
    4 injected by a fuzzer)  u8 minor  u16 reserved  u32 opcode (for a reply: its
    request's)  u32 reserved
  Records of other link types are listed as skipped. See docs/capture.md.

decoding:
  Requests and replies go through a sans-IO Session: replies are paired with their
  request by unique and decoded by its opcode, at the protocol minor INIT negotiated
  (before INIT: --minor). A message that does not decode is printed with the error's
  offset, field and reason, and decoding goes on.

output:
  TIME (seconds since the first record)  DIR (-> request, <- reply, <= notification)
  qQUEUE  unique  OPCODE  key fields [error]. A summary follows: counts per opcode,
  decode errors, protocol errors, requests left unanswered. -V adds every field of every
  message as a tree (header and body, nested structs and lists); --stats adds, per
  opcode, the requests, the replies by errno and the latency from request to reply
  (p50/p90/p99/max). A record the capture's snaplen cut is decoded as far as it was
  captured and marked [captured N of M bytes: snaplen]; it is not an error.

filters (all given must hold; decode errors are always shown):
  --filter OPCODE...  requests, replies and notifications of these opcodes / codes
  --nodeid N          requests to node N and the replies to them
  --unique N          the request and reply with this unique
  --errno E           replies with this error (ENOENT, 2, or 0 for success)

exit status:
  0 all decoded; 1 a message failed to decode or the file is corrupt (0 with
  --no-fail); 2 the file cannot be read or bad usage.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "decode",
        help="decode a FUSE capture (pcap/pcapng) or one message given in hex",
        description="Decode the FUSE messages of a capture file, or one message (--hex).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", metavar="FILE", help="pcap or pcapng capture")
    p.add_argument("--hex", metavar="HEX", help="decode one FUSE message given as hex instead")
    p.add_argument(
        "--as",
        dest="kind",
        choices=("auto", "request", "reply", "notification"),
        default="auto",
        help="with --hex: what the message is (auto: a reply if --opcode is given, else a "
        "request with a known opcode, else a notification or a reply header)",
    )
    p.add_argument(
        "--opcode",
        metavar="OP",
        help="with --hex: the request opcode a reply answers (name or number)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--minor",
        type=int,
        metavar="N",
        help="protocol minor before INIT (and its cap; default 46)",
    )
    p.add_argument(
        "--filter",
        nargs="+",
        metavar="OPCODE",
        help="show only these opcodes / notify codes (LOOKUP, FUSE_LOOKUP, 1, INVAL_ENTRY ...); "
        "replies match by their request's opcode; errors are always shown",
    )
    p.add_argument("--nodeid", type=int, metavar="N",
                   help="show only requests to node id N and their replies")
    p.add_argument("--unique", type=_int_any, metavar="N",
                   help="show only the request and reply with this unique (0x.. accepted)")
    p.add_argument("--errno", metavar="E", type=_parse_errno,
                   help="show only replies with this error: a name (ENOENT) or number; "
                   "0 for successful replies")
    p.add_argument("-V", "--verbose", action="store_true",
                   help="every field of every message, as a tree (like tshark -V)")
    p.add_argument("--stats", action="store_true",
                   help="per opcode: requests, replies by errno, latency p50/p90/p99/max")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no per-message lines (the summary and --stats only)")
    p.add_argument(
        "--no-pair",
        action="store_true",
        help="decode each message alone (replies by the capture's opcode hint, if any)",
    )
    p.add_argument(
        "--no-fail", action="store_true", help="exit 0 even if messages failed to decode"
    )
    p.add_argument(
        "--linktype", type=int, default=None, metavar="N", help="our link type (default 147)"
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=64,
        metavar="N",
        help="bytes of data fields shown in hex with --json (0: all; default 64)",
    )
    p.add_argument("--no-summary", action="store_true", help="omit the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if (args.file is None) == (args.hex is None):
        print("fuseproto decode: give a FILE or --hex HEX (one of them)", file=sys.stderr)
        return 2
    try:
        if args.hex is not None:
            return _run_hex(args, out)
        return _run_file(args, out)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, like other line tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _run_hex(args: argparse.Namespace, out: TextIO) -> int:
    from ..capture.dissect import decode_message

    try:
        data = bytes.fromhex("".join(args.hex.split()))
    except ValueError as e:
        print(f"fuseproto decode: --hex: {e}", file=sys.stderr)
        return 2
    opcode = None
    if args.opcode is not None:
        opcode = _parse_opcode(args.opcode)
        if opcode is None:
            print(f"fuseproto decode: unknown opcode {args.opcode!r}", file=sys.stderr)
            return 2
    minor = 46 if args.minor is None else args.minor
    m = decode_message(data, kind=args.kind, opcode=opcode, minor=minor)
    if args.json:
        print(json.dumps(_json_line(m, 0, args.max_bytes)), file=out)
    else:
        print(_text_line(m, None), file=out)
    return 1 if m.error is not None and not args.no_fail else 0


def _run_file(args: argparse.Namespace, out: TextIO) -> int:
    from ..capture.dissect import CaptureSummary, decode_capture
    from ..capture.frames import LINKTYPE_FUSE

    wanted = None
    if args.filter:
        wanted = _filter_set(args.filter)
        if wanted is None:
            return 2
    picked = _Picker(wanted, args.nodeid, args.unique, args.errno)
    stats = _Stats() if args.stats else None
    summary = CaptureSummary()
    t0: int | None = None
    shown = 0
    try:
        it = decode_capture(
            args.file,
            pair=not args.no_pair,
            minor=args.minor,
            linktype=LINKTYPE_FUSE if args.linktype is None else args.linktype,
            summary=summary,
        )
        for m in it:
            if t0 is None and m.ts_ns:
                t0 = m.ts_ns
            if stats is not None:
                stats.add(m)
            if m.error is None and not picked(m):
                continue
            shown += 1
            if args.quiet:
                continue
            if args.json:
                print(json.dumps(_json_line(m, t0, args.max_bytes)), file=out)
            else:
                print(_text_line(m, t0), file=out)
                if args.verbose:
                    print(_tree(m), file=out)
    except BrokenPipeError:
        raise
    except OSError as e:
        print(f"fuseproto decode: {e}", file=sys.stderr)
        return 2
    if not args.no_summary:
        if args.json:
            d = summary.as_dict()
            d["shown"] = shown
            if stats is not None:
                d["stats"] = stats.as_dict()
            print(json.dumps({"summary": d}), file=out)
        else:
            print(_text_summary(summary, shown), file=out)
            if stats is not None:
                print(stats.text(), file=out)
    elif stats is not None:
        print(json.dumps({"stats": stats.as_dict()}) if args.json else stats.text(), file=out)
    return 1 if summary.failed and not args.no_fail else 0


# --- opcodes -------------------------------------------------------------------------------


def _parse_opcode(text: str) -> int | None:
    from ..wire.constants import fuse_opcode

    t = text.strip().upper()
    if t.isdigit():
        return int(t)
    for cand in (t, "FUSE_" + t, "CUSE_" + t.removeprefix("CUSE_")):
        if cand in fuse_opcode.__members__:
            return int(fuse_opcode[cand])
    return None


def _filter_set(names: list[str]) -> set[tuple[str, int]] | None:
    """{("op", n) | ("notify", n)} from the --filter words; None (after a message) if bad."""
    from ..wire.constants import fuse_notify_code

    out: set[tuple[str, int]] = set()
    for word in names:
        for w in word.split(","):
            if not w:
                continue
            t = w.strip().upper()
            if t.isdigit():
                out.add(("op", int(t)))
                out.add(("notify", int(t)))
                continue
            hit = False
            op = _parse_opcode(t)
            if op is not None:
                out.add(("op", op))
                hit = True
            for cand in (t, "FUSE_" + t, "FUSE_NOTIFY_" + t.removeprefix("NOTIFY_")):
                if cand in fuse_notify_code.__members__:
                    out.add(("notify", int(fuse_notify_code[cand])))
                    hit = True
            if not hit:
                print(f"fuseproto decode: --filter: unknown opcode {w!r}", file=sys.stderr)
                return None
    return out


def _matches(m: Any, wanted: set[tuple[str, int]]) -> bool:
    if m.opcode is None:
        return False
    space = "notify" if m.kind == "notification" else "op"
    return (space, int(m.opcode)) in wanted


def _int_any(text: str) -> int:
    return int(text, 0)


def _parse_errno(text: str) -> int:
    t = text.strip().upper().lstrip("-")
    if t.isdigit():
        return int(t)
    code = getattr(_errno, t, None)
    if not isinstance(code, int):
        raise argparse.ArgumentTypeError(f"unknown errno {text!r}")
    return code


class _Picker:
    """The display filters: opcode set, node id, unique, errno (all that are given)."""

    def __init__(self, wanted: set[tuple[str, int]] | None, nodeid: int | None,
                 unique: int | None, err: int | None) -> None:
        self.wanted, self.nodeid, self.unique, self.err = wanted, nodeid, unique, err
        # Uniques of requests to ``nodeid`` still waiting for their reply (bounded by the
        # capture's requests in flight; a reply pops its unique).
        self._to_node: set[int] = set()

    def __call__(self, m: Any) -> bool:
        if self.wanted is not None and not _matches(m, self.wanted):
            return False
        if self.unique is not None and m.unique != self.unique:
            return False
        if self.err is not None and (m.kind != "reply" or m.header is None
                                     or -int(m.header["error"]) != self.err):
            return False
        if self.nodeid is not None:
            if m.kind == "request":
                if m.header is None or m.header["nodeid"] != self.nodeid:
                    return False
                self._to_node.add(m.unique)
            elif m.kind == "reply":
                if m.unique not in self._to_node:
                    return False
                self._to_node.discard(m.unique)
            else:
                return False
        return True


class _Stats:
    """Per opcode: requests, replies by errno, request-to-reply latency."""

    # Requests waiting for their reply, by unique, at most this many (a capture of a
    # daemon that never answers must not grow memory without bound).
    MAX_WAITING = 1 << 16

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.replies: dict[str, dict[str, int]] = {}
        self.latency: dict[str, list[int]] = {}
        self._waiting: dict[int, int] = {}  # unique -> request ts_ns

    def add(self, m: Any) -> None:
        name = m.opcode_name or "?"
        if m.kind == "request":
            self.requests[name] = self.requests.get(name, 0) + 1
            if m.unique is not None and len(self._waiting) < self.MAX_WAITING:
                self._waiting[m.unique] = m.ts_ns
        elif m.kind == "reply" and m.header is not None:
            err = -int(m.header["error"])
            key = "ok" if err == 0 else _errno.errorcode.get(err, str(err))
            by = self.replies.setdefault(name, {})
            by[key] = by.get(key, 0) + 1
            sent = self._waiting.pop(m.unique, None)
            if sent is not None and m.ts_ns >= sent:
                self.latency.setdefault(name, []).append(m.ts_ns - sent)

    @staticmethod
    def _pct(sorted_ns: list[int], q: float) -> float:
        i = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
        return sorted_ns[i] / 1000.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(set(self.requests) | set(self.replies)):
            lat = sorted(self.latency.get(name, []))
            d: dict[str, Any] = {"requests": self.requests.get(name, 0),
                                 "replies": dict(sorted(self.replies.get(name, {}).items()))}
            if lat:
                d["latency_us"] = {"p50": self._pct(lat, 0.5), "p90": self._pct(lat, 0.9),
                                   "p99": self._pct(lat, 0.99), "max": lat[-1] / 1000.0}
            out[name] = d
        return out

    def text(self) -> str:
        lines = ["--- per opcode: requests, replies by errno, latency (us) p50/p90/p99/max"]
        for name, d in self.as_dict().items():
            reps = " ".join(f"{k}={n}" for k, n in d["replies"].items()) or "-"
            lat = d.get("latency_us")
            lt = ("-" if lat is None else
                  f"{lat['p50']:.1f}/{lat['p90']:.1f}/{lat['p99']:.1f}/{lat['max']:.1f}")
            lines.append(f"    {name:<24} {d['requests']:>7}  {reps:<28} {lt}")
        return "\n".join(lines)


# --- text output ---------------------------------------------------------------------------

_ARROW = {"request": "->", "reply": "<-", "notification": "<="}
_HIDDEN = ("padding", "dummy", "unused", "spare", "reserved", "pad", "_")
_NAMES = ("name", "newname", "link")
_SHORT_STRUCT = {"attr": ("ino", "mode", "size"), "stat": ("ino", "mode", "size")}


def _errname(err: int) -> str:
    name = _errno.errorcode.get(-err)
    return f"{err} ({name})" if name else str(err)


def _fmt_value(key: str, v: Any) -> str | None:
    if isinstance(v, bytes | bytearray):
        if key in _NAMES or key == "value" and len(v) <= 64:
            return repr(bytes(v))[1:]
        return f"<{len(v)} bytes>"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        v = int(v)
        if key == "mode":
            return oct(v)
        if "flags" in key and v:
            return hex(v)
        return str(v)
    if isinstance(v, Mapping):
        keys = _SHORT_STRUCT.get(key)
        if keys is None:
            inner = _fmt_fields(v, limit=3)
        else:
            inner = " ".join(f"{k}={_fmt_value(k, v[k])}" for k in keys if k in v)
        return f"{{{inner}}}"
    if isinstance(v, list | tuple):
        return _fmt_list(key, v)
    return repr(v)


def _fmt_list(key: str, items: list[Any] | tuple[Any, ...]) -> str:
    if not items:
        return "[]"
    first = items[0]
    if isinstance(first, Mapping):
        d = first.get("dirent", first)
        if isinstance(d, Mapping) and "name" in d:
            names = [repr(bytes(i.get("dirent", i)["name"]))[1:] for i in items[:6]]
            more = ", ..." if len(items) > 6 else ""
            return f"[{len(items)}: {', '.join(names)}{more}]"
        shown = ", ".join(f"{{{_fmt_fields(i, limit=3)}}}" for i in items[:3])
        more = ", ..." if len(items) > 3 else ""
        return f"[{len(items)}: {shown}{more}]"
    shown = ", ".join(str(int(i)) if isinstance(i, int) else repr(i) for i in items[:6])
    return f"[{shown}{', ...' if len(items) > 6 else ''}]"


def _fmt_fields(body: Any, limit: int = 10) -> str:
    if isinstance(body, bytes | bytearray):
        return f"<{len(body)} raw bytes>" if body else ""
    if not isinstance(body, Mapping):
        return ""
    parts = []
    for k, v in body.items():
        if k.startswith(_HIDDEN):
            continue
        s = _fmt_value(k, v)
        if s is not None:
            parts.append(f"{k}={s}")
        if len(parts) >= limit:
            break
    return " ".join(parts)


def _text_line(m: Any, t0: int | None) -> str:
    t = (m.ts_ns - t0) / 1e9 if t0 is not None and m.ts_ns else 0.0
    head = f"{t:12.6f} #{m.index:<5}"
    if m.kind == "capture-error":
        return f"{head} !! capture error: {_err(m.error)}"
    if m.kind == "skipped":
        return f"{head} .. skipped: record of another link type ({len(m.raw)} bytes)"
    if m.kind == "bad-frame":
        return f"{head} !! bad capture record: {_err(m.error)}"
    if m.kind == "annotation":
        q = "-" if m.queue is None else m.queue
        return f"{head} ## q{q} {m.raw.decode('utf-8', 'replace')}"
    arrow = _ARROW.get(m.kind, "??")
    q = "-" if m.queue is None else m.queue
    unique = "?" if m.header is None else m.header["unique"]
    line = f"{head} {arrow} q{q} unique={unique:<6} {m.opcode_name or '?':<22}"
    msg = m.message
    extra = []
    if m.kind == "request" and m.header is not None:
        extra.append(f"nodeid={m.header['nodeid']}")
    if m.kind == "reply" and m.header is not None and m.header["error"]:
        extra.append(f"error={_errname(m.header['error'])}")
    if msg is not None:
        fields = _fmt_fields(msg.body)
        if fields:
            extra.append(fields)
        ext = getattr(msg, "ext", None)
        if ext:
            extra.append(f"ext=[{len(ext)} record(s)]")
    elif m.kind == "reply" and m.error is None and m.header is not None:
        extra.append(f"<{len(m.raw) - 16} body bytes, no request to decode by>")
    if m.kind == "reply" and not m.paired and m.error is None and msg is not None:
        extra.append("(unpaired)")
    if m.truncated:
        extra.append(f"[captured {m.captured_len} of {m.orig_len} bytes: snaplen]")
    if m.error is not None:
        extra.append(f"!! {_err(m.error)}")
    return (line + " " + " ".join(extra)).rstrip()


def _tree(m: Any) -> str:
    """Every field of ``m`` as an indented tree (header, then body), like tshark -V."""
    lines: list[str] = []

    def walk(label: str, v: Any, depth: int) -> None:
        pad = "    " * depth
        if isinstance(v, Mapping):
            lines.append(f"{pad}{label}")
            for k, x in v.items():
                if not str(k).startswith("_"):
                    walk(str(k), x, depth + 1)
        elif isinstance(v, list | tuple):
            lines.append(f"{pad}{label}: {len(v)} item(s)")
            for i, x in enumerate(v):
                walk(f"[{i}]", x, depth + 1)
        elif isinstance(v, bytes | bytearray):
            b = bytes(v)
            shown = b[:32].hex(" ") + (" ..." if len(b) > 32 else "")
            lines.append(f"{pad}{label}: <{len(b)} bytes> {shown}".rstrip())
        else:
            lines.append(f"{pad}{label}: {_fmt_value(label, v)}")

    hdr_name = "fuse_in_header" if m.kind == "request" else "fuse_out_header"
    if m.header is not None:
        walk(hdr_name, m.header, 1)
    msg = m.message
    if msg is not None and msg.body is not None:
        if isinstance(msg.body, Mapping | bytes | bytearray):
            walk("body", msg.body, 1)
        else:  # a body nothing of which was captured ([truncated])
            lines.append(f"    body: {msg.body!r}")
        if getattr(msg, "ext", None):
            walk("extensions", list(msg.ext), 1)
    if m.truncated:
        lines.append(f"    [Packet size limited during capture: {m.captured_len} of "
                     f"{m.orig_len} bytes]")
    return "\n".join(lines)


def _err(e: Any) -> str:
    kind = type(e).__name__
    where = []
    if getattr(e, "path", None):
        where.append(f"field {e.path}")
    if getattr(e, "offset", None) is not None:
        where.append(f"offset {e.offset}")
    reason = getattr(e, "reason", None) or str(e)
    return f"{kind}{' at ' + ', '.join(where) if where else ''}: {reason}"


def _text_summary(s: Any, shown: int) -> str:
    kinds = s.by_kind
    notes = f"{kinds['annotation']} annotations, " if kinds.get("annotation") else ""
    lines = [
        f"--- {s.records} records: {kinds.get('request', 0)} requests, "
        f"{kinds.get('reply', 0)} replies, {kinds.get('notification', 0)} notifications, "
        f"{notes}{kinds.get('skipped', 0)} skipped, {kinds.get('bad-frame', 0)} bad; "
        f"{shown} shown; minor {s.minor}",
        f"    decode errors: {s.decode_errors}, protocol errors: {s.protocol_errors}, "
        f"unanswered requests: {len(s.unpaired_requests)}, cut by snaplen: {s.truncated}",
    ]
    if s.by_opcode:
        lines.append("    per opcode:")
        for k, n in sorted(s.by_opcode.items()):
            lines.append(f"      {k:<44} {n}")
    if s.unpaired_requests:
        shown_u = ", ".join(f"{op} #{u}" for u, op in s.unpaired_requests[:10])
        more = ", ..." if len(s.unpaired_requests) > 10 else ""
        lines.append(f"    unanswered: {shown_u}{more}")
    if s.capture_error:
        lines.append(f"    capture error (decoding stopped): {s.capture_error}")
    return "\n".join(lines)


# --- JSON output ---------------------------------------------------------------------------


def _jsonable(v: Any, max_bytes: int) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        d: dict[str, Any] = {"len": len(b), "hex": (b if max_bytes <= 0 else b[:max_bytes]).hex()}
        if len(b) <= 256:
            try:
                text = b.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None and text.isprintable():
                d["text"] = text
        return d
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x, max_bytes) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, list | tuple):
        return [_jsonable(x, max_bytes) for x in v]
    return str(v)


def _json_line(m: Any, t0: int | None, max_bytes: int) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": m.index,
        "file_offset": m.file_offset,
        "ts_ns": m.ts_ns,
        "time": (m.ts_ns - t0) / 1e9 if t0 is not None and m.ts_ns else 0.0,
        "kind": m.kind,
        "direction": None if m.direction is None else int(m.direction),
        "queue": m.queue,
        "unique": m.unique,
        "opcode": m.opcode_name,
        "opcode_num": None if m.opcode is None else int(m.opcode),
        "paired": m.paired,
        "orig_len": m.orig_len,
        "captured_len": m.captured_len,
        "header": None if m.header is None else _jsonable(m.header, max_bytes),
        "body": None,
        "error": None,
    }
    if m.kind == "reply" and m.header is not None:
        d["errno"] = -int(m.header["error"])
    msg = m.message
    if msg is not None:
        d["body"] = _jsonable(msg.body, max_bytes)
        if getattr(msg, "ext", None):
            d["ext"] = _jsonable(msg.ext, max_bytes)
    if m.error is not None:
        e = m.error
        d["error"] = {
            "type": type(e).__name__,
            "offset": getattr(e, "offset", None),
            "field": getattr(e, "path", None),
            "reason": getattr(e, "reason", None) or str(e),
        }
    return d
