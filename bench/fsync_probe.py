#!/usr/bin/env python3
"""Bare fsync probe: what one durable write costs on this file system with
no database around it (the floor for corekv's durable SET latency).

    fsync_probe.py DIR [--count 2000] [--max-seconds 10] [--block 4096]
                       [--sync fdatasync|fsync] [--slots 256]

Creates a private file in DIR (use a directory on the same file system as
the server's data dir), preallocates --slots blocks of --block bytes and
syncs it once, then --count times: pwrite() one block (rotating over the
preallocated slots, so the file never grows, as redb overwrites pages of a
preallocated file) and fdatasync() it (redb's commit uses sync_data, i.e.
fdatasync). Each iteration (write + sync) is timed. Stops after
--max-seconds even if fewer iterations ran. Removes its file.

Prints one machine-readable line (bench/report.py parses it):
    FSYNC_RESULT n=.. seconds=.. rate=.. p50_us=.. p99_us=.. p999_us=.. max_us=.. mean_us=.. sync=.. block=..
"""
import argparse
import math
import os
import sys
import tempfile
import time


def pct(sorted_us, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_us:
        return 0.0
    k = max(0, min(len(sorted_us) - 1, int(math.ceil(p / 100.0 * len(sorted_us))) - 1))
    return sorted_us[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--sync", choices=["fdatasync", "fsync"], default="fdatasync")
    a = ap.parse_args()

    sync = os.fdatasync if a.sync == "fdatasync" else os.fsync
    fd, path = tempfile.mkstemp(prefix=".corekv-fsync-probe.", dir=a.dir)
    lat = []
    try:
        os.write(fd, b"\0" * (a.block * a.slots))
        os.fsync(fd)
        block = b"f" * a.block
        deadline = time.monotonic() + a.max_seconds
        t_start = time.monotonic()
        for i in range(a.count):
            off = (i % a.slots) * a.block
            t0 = time.perf_counter_ns()
            os.pwrite(fd, block, off)
            sync(fd)
            lat.append((time.perf_counter_ns() - t0) / 1000.0)
            if time.monotonic() > deadline:
                break
        secs = time.monotonic() - t_start
    finally:
        os.close(fd)
        os.unlink(path)
    s = sorted(lat)
    n = len(s)
    print("FSYNC_RESULT n=%d seconds=%.3f rate=%.1f p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
          "mean_us=%.1f sync=%s block=%d" % (
              n, secs, n / secs if secs else 0, pct(s, 50), pct(s, 99), pct(s, 99.9), s[-1] if s else 0,
              sum(s) / n if n else 0, a.sync, a.block))
    if n < a.count:
        print("fsync_probe: stopped after %d of %d iterations (--max-seconds %g)" % (n, a.count, a.max_seconds),
              file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
