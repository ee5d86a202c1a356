#!/usr/bin/env python3
"""Key-placement and data-loading helper for the corekv benchmarks.

Placement is the one the README describes (Architecture, Placement):
    shard = fnv1_64(key bytes) % number_of_shards
with 64-bit FNV-1 (multiply, then xor; NOT FNV-1a). It is not computed
here: `soakclient place` (a Cargo example of corekv, bench/soak/soakclient.rs,
built by the bench scripts; COREKV_PLACE names the binary) answers with
corekv's own `topology::shard_for`, and `selftest` checks its answers
against the golden vectors.

Sub-commands (all bounded, all talk only to the addresses they are given):
  selftest                       check the golden vectors, exit 1 on mismatch
  shard KEY... [--shards N]      print the shard of each key
  keys --shards N --idx I --count C [--prefix key-] [--universe U]
                                 print keys prefix0..prefix(U-1) that land on
                                 shard I (at most C of them)
  urls --base URL --keyfile F [--op get|set] [--value V] [--limit N]
                                 print one URL per key (input for oha)
  load --shards N --addr IDX=HOST:PORT ... --prefix key- --count C --value-size S
                                 pipelined loader: SET key-0..key-(C-1) to the
                                 owner primary of each key, check every status
                                 (--keyfile F: SET the keys listed in F instead;
                                 --addr is then needed only for their shards)
  check --addr HOST:PORT --keys K... [--expect-size S]
                                 GET keys, exit non-zero unless all are 200
"""
import argparse
import asyncio
import sys
import time
import urllib.parse

def placer() -> str:
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("COREKV_PLACE") or os.path.join(
        here, "..", "target", "release", "examples", "soakclient")


def placements(keys, n: int):
    """(shard, fnv1_64) of every key, from corekv's own placement code."""
    import subprocess
    data = b"".join((k.encode() if isinstance(k, str) else k) + b"\n" for k in keys)
    try:
        out = subprocess.run([placer(), "place", "--shards", str(n)], input=data,
                             capture_output=True, check=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit("keys.py: cannot run %s place (cargo build --release --example "
                         "soakclient): %s" % (placer(), e))
    rows = [line.split("\t") for line in out.decode().splitlines()]
    if len(rows) != len(keys):
        raise SystemExit("keys.py: %s place answered %d lines for %d keys"
                         % (placer(), len(rows), len(keys)))
    return [(int(shard), int(h, 16)) for shard, h in rows]


GOLDEN_3 = {"a": 0, "b": 2, "c": 1, "k": 2, "foo": 0, "exampleKey": 1,
            "hello": 2, "key-1": 0, "": 2}
GOLDEN_4 = {"k": 0, "a": 2, "missing": 3}


def selftest() -> int:
    bad = []
    (_, h), = placements(["k"], 3)
    if h != 0xAF63BD4C8601B7B4:
        bad.append("fnv1_64('k') = %#x" % h)
    for golden, n in ((GOLDEN_3, 3), (GOLDEN_4, 4)):
        keys = list(golden)
        for k, (got, _) in zip(keys, placements(keys, n)):
            if got != golden[k]:
                bad.append("%d shards: %r -> %d, want %d" % (n, k, got, golden[k]))
    for b in bad:
        print("FAIL", b, file=sys.stderr)
    if not bad:
        print("fnv1_64 golden vectors: ok (%s place)" % placer(), file=sys.stderr)
    return 1 if bad else 0


def owned_keys(prefix: str, universe: int, shards: int, idx: int, count: int):
    keys = ["%s%d" % (prefix, i) for i in range(universe)]
    owned = [k for k, (s, _) in zip(keys, placements(keys, shards)) if s == idx]
    return owned[:count]


# --------------------------------------------------------------------------
# A minimal pipelined HTTP/1.1 client (stdlib only): enough for the loader.

class HttpError(Exception):
    pass


async def read_response(reader):
    """Read one response; return (status, body). Needs Content-Length or
    chunked encoding (a keep-alive server must send one of them)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HttpError("bad status line %r" % lines[0])
    status = int(parts[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.lower() == "close":
            close = True
    if chunked:
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size + 2)
            body = body[:-2]
    elif length is not None:
        body = await reader.readexactly(length) if length else b""
    else:
        raise HttpError("response without Content-Length on keep-alive (status %d)" % status)
    return status, body, close


def set_request(host: str, key: str, value: str, use_post: bool) -> bytes:
    q = "key=%s&value=%s" % (urllib.parse.quote(key, safe=""),
                             urllib.parse.quote(value, safe=""))
    if use_post:
        body = q.encode()
        return (("POST /set HTTP/1.1\r\nHost: %s\r\n"
                 "Content-Type: application/x-www-form-urlencoded\r\n"
                 "Content-Length: %d\r\n\r\n") % (host, len(body))).encode() + body
    return ("GET /set?%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (q, host)).encode()


async def pipeline_worker(host, port, keys, make_request, depth, stats, deadline):
    """SET `keys` on one connection, `depth` requests in flight at a time
    (requests are built lazily by make_request(key)). Records statuses."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=1 << 22), timeout=5)
    try:
        i = 0
        n = len(keys)
        while i < n:
            if time.monotonic() > deadline:
                raise HttpError("loader deadline exceeded")
            batch = keys[i:i + depth]
            writer.write(b"".join(make_request(k) for k in batch))
            await writer.drain()
            for key in batch:
                remaining = max(0.1, deadline - time.monotonic())
                status, body, close = await asyncio.wait_for(read_response(reader), remaining)
                stats[status] = stats.get(status, 0) + 1
                if status != 200 and len(stats.setdefault("examples", [])) < 5:
                    stats["examples"].append((key, status, body[:200]))
                if close:
                    raise HttpError("server closed a keep-alive connection (after key %r, status %d)"
                                    % (key, status))
            i += depth
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except Exception:
            pass


async def load(args):
    addrs = {}
    for a in args.addr:
        idx, _, hp = a.partition("=")
        host, _, port = hp.rpartition(":")
        addrs[int(idx)] = (host, int(port))
    # The benchmark only checks status and length, so every value is the
    # same printable string of exactly value_size bytes.
    value = "v" * args.value_size
    use_post = args.value_size > 1024 or args.post
    if args.keyfile:
        with open(args.keyfile) as f:
            all_keys = [l.strip() for l in f if l.strip()]
        args.count = len(all_keys)
        what = "keys of %s" % args.keyfile
    else:
        all_keys = ["%s%d" % (args.prefix, n) for n in range(args.start, args.start + args.count)]
        what = "%s%d..%s%d" % (args.prefix, args.start, args.prefix, args.start + args.count - 1)
    per_shard = {}
    for k, (shard, _) in zip(all_keys, placements(all_keys, args.shards)):
        per_shard.setdefault(shard, []).append(k)
    missing = sorted(s for s in per_shard if s not in addrs)
    if missing:
        raise SystemExit("--addr must give IDX=HOST:PORT for shard(s) %s" % missing)
    stats = {}
    deadline = time.monotonic() + args.timeout
    tasks = []
    for s, ks in per_shard.items():
        host, port = addrs[s]
        hostport = "%s:%d" % (host, port)
        make = (lambda hp: lambda k: set_request(hp, k, value, use_post))(hostport)
        conns = max(1, args.connections // args.shards)
        for c in range(conns):
            part = ks[c::conns]
            if part:
                tasks.append(pipeline_worker(host, port, part, make, args.depth, stats, deadline))
    t0 = time.monotonic()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    dt = time.monotonic() - t0
    errs = [r for r in results if isinstance(r, BaseException)]
    ok = stats.get(200, 0)
    summary = {k: v for k, v in stats.items() if k != "examples"}
    print("loaded %d/%d keys (%s, %d B values, %s) in %.1fs = %.0f sets/s; statuses %s"
          % (ok, args.count, what, args.value_size, "POST" if use_post else "GET", dt, ok / dt if dt else 0, summary),
          file=sys.stderr)
    for ex in stats.get("examples", []):
        print("  non-200 example: key=%r status=%d body=%r" % ex, file=sys.stderr)
    for e in errs[:5]:
        print("  connection error: %r" % (e,), file=sys.stderr)
    if errs or ok != args.count:
        return 1
    return 0


async def check(args):
    host, _, port = args.addr.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    bad = 0
    try:
        for k in args.keys:
            writer.write(("GET /get?key=%s HTTP/1.1\r\nHost: %s\r\n\r\n"
                          % (urllib.parse.quote(k, safe=""), args.addr)).encode())
            await writer.drain()
            status, body, _ = await asyncio.wait_for(read_response(reader), 5)
            if status != 200 or (args.expect_size is not None and len(body) != args.expect_size):
                bad += 1
                if not args.quiet:
                    print("check %s key=%s: status %d, %d-byte body %r"
                          % (args.addr, k, status, len(body), body[:80]), file=sys.stderr)
    finally:
        writer.close()
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest")
    sp = sub.add_parser("shard")
    sp.add_argument("key", nargs="+")
    sp.add_argument("--shards", type=int, default=3)
    kp = sub.add_parser("keys")
    kp.add_argument("--shards", type=int, default=3)
    kp.add_argument("--idx", type=int, default=0)
    kp.add_argument("--count", type=int, default=1000)
    kp.add_argument("--prefix", default="key-")
    kp.add_argument("--universe", type=int, default=10000)
    up = sub.add_parser("urls")
    up.add_argument("--base", required=True)
    up.add_argument("--keyfile", required=True)
    up.add_argument("--op", choices=["get", "set"], default="get")
    up.add_argument("--value", default="v" * 16)
    up.add_argument("--limit", type=int, default=0)
    lp = sub.add_parser("load")
    lp.add_argument("--shards", type=int, default=3)
    lp.add_argument("--addr", action="append", required=True)
    lp.add_argument("--prefix", default="key-")
    lp.add_argument("--start", type=int, default=0)
    lp.add_argument("--count", type=int, default=10000)
    lp.add_argument("--value-size", type=int, default=16)
    lp.add_argument("--connections", type=int, default=48)
    lp.add_argument("--depth", type=int, default=32)
    lp.add_argument("--timeout", type=float, default=120)
    lp.add_argument("--post", action="store_true", help="always POST a form body")
    lp.add_argument("--keyfile", help="SET the keys listed in this file (one a line)")
    cp = sub.add_parser("check")
    cp.add_argument("--addr", required=True)
    cp.add_argument("--keys", nargs="+", required=True)
    cp.add_argument("--expect-size", type=int)
    cp.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    if args.cmd == "selftest":
        return selftest()
    if args.cmd == "shard":
        for k, (shard, h) in zip(args.key, placements(args.key, args.shards)):
            print("%s\t%d\t%#018x" % (k, shard, h))
        return 0
    if args.cmd == "keys":
        ks = owned_keys(args.prefix, args.universe, args.shards, args.idx, args.count)
        sys.stdout.write("".join(k + "\n" for k in ks))
        return 0
    if args.cmd == "urls":
        with open(args.keyfile) as f:
            ks = [l.strip() for l in f if l.strip()]
        if args.limit:
            ks = ks[:args.limit]
        out = []
        for k in ks:
            qk = urllib.parse.quote(k, safe="")
            if args.op == "get":
                out.append("%s/get?key=%s\n" % (args.base, qk))
            else:
                out.append("%s/set?key=%s&value=%s\n" % (args.base, qk, urllib.parse.quote(args.value, safe="")))
        sys.stdout.write("".join(out))
        return 0
    if args.cmd == "load":
        return asyncio.run(load(args))
    if args.cmd == "check":
        return asyncio.run(check(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
