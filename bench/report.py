#!/usr/bin/env python3
"""Turn the raw wrk/oha outputs recorded by bench/run.sh into a markdown table.

Input: a TSV index (one line per measured run) written by bench/lib.sh:
    id scenario tool target conns depth raw_file cpu_ticks clk_tck server_ok ref
    client_cpu_ms machine_busy_ticks wall_ms server_rss_kib
`ref` is the id of the nginx row the run is compared with ("-" for none);
cpu_ticks is the server's utime+stime over the run, client_cpu_ms the load
generator's, machine_busy_ticks all CPUs' busy time (/proc/stat).

Usage:
    report.py table INDEX.tsv [--header FILE]   # markdown on stdout
    report.py scaling CASES.tsv INDEX.tsv [--header FILE]
    report.py parse wrk|oha FILE                # one parsed run, as key=value
"""
import json
import re
import sys


def parse_wrk(path):
    with open(path, errors="replace") as f:
        text = f.read()
    m = re.search(r"^WRK_RESULT (.*)$", text, re.M)
    if not m:
        raise ValueError("no WRK_RESULT line in %s (did wrk fail?)" % path)
    kv = dict(p.split("=", 1) for p in m.group(1).split())
    r = {
        "requests": int(kv["requests"]),
        "rps": float(kv["rps"]),
        "p50_us": float(kv["p50_us"]),
        "p99_us": float(kv["p99_us"]),
        "non2xx": int(kv["non2xx"]),
        "errors": int(kv["connect_err"]) + int(kv["read_err"]) + int(kv["write_err"]) + int(kv["timeout_err"]),
        "error_detail": "connect %s, read %s, write %s, timeout %s" % (
            kv["connect_err"], kv["read_err"], kv["write_err"], kv["timeout_err"]),
    }
    return r


def parse_oha(path):
    with open(path, errors="replace") as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in %s (did oha fail?)" % path)
    d = json.loads(text[start:])
    codes = {str(k): int(v) for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errs = {k: int(v) for k, v in (d.get("errorDistribution") or {}).items()}
    requests = sum(codes.values())
    non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
    # Requests cut off by the -z deadline are not failures.
    real_errs = {k: v for k, v in errs.items() if "aborted due to deadline" not in k}
    pct = d.get("latencyPercentiles") or {}
    summary = d.get("summary") or {}
    total = float(summary.get("total") or 0)
    return {
        "requests": requests,
        # oha's requestsPerSec counts errors too; use completed responses.
        "rps": requests / total if total else float(summary.get("requestsPerSec") or 0),
        "p50_us": float(pct.get("p50") or 0) * 1e6,
        "p99_us": float(pct.get("p99") or 0) * 1e6,
        "non2xx": non2xx,
        "errors": sum(real_errs.values()),
        "error_detail": "; ".join("%s: %d" % kv for kv in real_errs.items()),
        "codes": codes,
    }


def parse(tool, path):
    return parse_wrk(path) if tool == "wrk" else parse_oha(path)


# "other CPU" above this (% of one core) marks a run as disturbed.
NOISY_PCT = 25.0


def fmt_lat(us):
    if us >= 1000:
        return "%.2f ms" % (us / 1000)
    return "%.0f µs" % us


def fmt_rps(x):
    return "{:,.0f}".format(x)


def table(index_path, header_path=None):
    rows = []
    with open(index_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            f = line.split("\t")
            (rid, scen, tool, target, conns, depth, raw, ticks, clk, ok, ref) = f[:11]
            client_ms, busy, wall_ms, rss = (f[11:15] + ["0", "0", "0", "0"])[:4]
            row = dict(id=rid, scenario=scen, tool=tool, target=target, conns=int(conns),
                       depth=int(depth), raw=raw, ticks=int(ticks), clk=int(clk),
                       server_ok=(ok == "1"), ref=ref, client_ms=int(client_ms),
                       busy=int(busy), wall_ms=int(wall_ms), rss=int(rss or 0))
            try:
                row.update(parse(tool, raw))
                row["parse_error"] = None
            except Exception as e:  # keep going: report the broken row
                row["parse_error"] = str(e)
            rows.append(row)
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        if r["parse_error"]:
            continue
        r["cpu_us"] = (r["ticks"] / r["clk"]) / r["requests"] * 1e6 if r["requests"] else float("nan")
        r["client_us"] = r["client_ms"] * 1e3 / r["requests"] if r["requests"] else float("nan")
        # CPU used by everything except the server and the load generator
        # (other processes, plus kernel time not charged to either), in % of
        # one core over the run's wall time.
        if r["wall_ms"]:
            other_s = r["busy"] / r["clk"] - r["ticks"] / r["clk"] - r["client_ms"] / 1e3
            r["other_pct"] = max(0.0, other_s) / (r["wall_ms"] / 1e3) * 100
        else:
            r["other_pct"] = float("nan")

    out = []
    if header_path:
        with open(header_path) as f:
            out.append(f.read().rstrip("\n"))
        out.append("")
    out.append("| scenario | tool | target | conns × depth | req/s | p50 | p99 | non-2xx | socket errors "
               "| server CPU µs/req | req/s vs nginx | CPU/req vs nginx | client CPU µs/req | other CPU | server RSS after |")
    out.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for r in rows:
        if r["parse_error"]:
            out.append("| %s | %s | %s | %d × %d | FAILED | | | | | | | | | | |" % (
                r["scenario"], r["tool"], r["target"], r["conns"], r["depth"]))
            notes.append("- %s / %s: %s" % (r["scenario"], r["tool"], r["parse_error"]))
            continue
        ref = by_id.get(r["ref"])
        if ref is not None and not ref.get("parse_error") and ref is not r:
            rps_ratio = "%.2f×" % (r["rps"] / ref["rps"]) if ref["rps"] else "-"
            cpu_ratio = "%.2f×" % (r["cpu_us"] / ref["cpu_us"]) if ref.get("cpu_us") else "-"
        elif ref is r:
            rps_ratio, cpu_ratio = "1.00× (ref)", "1.00× (ref)"
        else:
            rps_ratio, cpu_ratio = "-", "-"
        flag = "" if r["server_ok"] else " ⚠ server died"
        out.append("| %s%s | %s | %s | %d × %d | %s | %s | %s | %d | %d | %.2f | %s | %s | %.2f | %.0f%% | %s |" % (
            r["scenario"], flag, r["tool"], r["target"], r["conns"], r["depth"], fmt_rps(r["rps"]),
            fmt_lat(r["p50_us"]), fmt_lat(r["p99_us"]), r["non2xx"], r["errors"], r["cpu_us"],
            rps_ratio, cpu_ratio, r["client_us"], r["other_pct"], fmt_bytes(r["rss"] * 1024)))
        if r["other_pct"] > NOISY_PCT:
            notes.append("- %s / %s: %.0f%% of a core went to other processes or unattributed kernel work "
                         "during the run; the machine was not quiet, treat this row with care" % (
                             r["scenario"], r["tool"], r["other_pct"]))
        if r["non2xx"]:
            codes = r.get("codes")
            notes.append("- %s / %s: %d non-2xx responses%s" % (
                r["scenario"], r["tool"], r["non2xx"], (" (status codes %s)" % codes) if codes else ""))
        if r["errors"]:
            notes.append("- %s / %s: socket errors: %s" % (r["scenario"], r["tool"], r["error_detail"]))
        if not r["server_ok"]:
            notes.append("- %s / %s: the server process was gone or unhealthy after this run" % (
                r["scenario"], r["tool"]))
    if notes:
        out.append("")
        out.append("Problems seen during this run:")
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def read_index(index_path):
    rows = {}
    with open(index_path) as f:
        for line in f:
            f_ = line.rstrip("\n").split("\t")
            if len(f_) < 11:
                continue
            rid, tool, raw, ticks, clk = f_[0], f_[2], f_[6], int(f_[7]), int(f_[8])
            try:
                r = parse(tool, raw)
                r["cpu_us"] = ticks / clk / r["requests"] * 1e6 if r["requests"] else float("nan")
            except Exception as e:
                r = {"parse_error": str(e)}
            r["server_ok"] = f_[9] == "1"
            if len(f_) >= 14 and int(f_[13] or 0) and "parse_error" not in r:
                other_s = int(f_[12]) / clk - ticks / clk - int(f_[11]) / 1e3
                r["other_pct"] = max(0.0, other_s) / (int(f_[13]) / 1e3) * 100
            rows[rid] = r
    return rows


def fmt_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%.0f %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024


def scaling(cases_path, index_path, header_path=None):
    runs = read_index(index_path)
    out = []
    if header_path:
        with open(header_path) as f:
            out.append(f.read().rstrip("\n"))
        out.append("")
    out.append("| keys | value | preload | RSS empty → loaded → end | RSS per 1M keys (per key) | on disk | GET req/s | GET p50 / p99 "
               "| CPU µs/GET | SET req/s | SET p50 / p99 | CPU µs/SET | non-2xx / errors |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    with open(cases_path) as f:
        for line in f:
            cid, nkeys, vsize, load_s, load_ok, rss0, rss1, rss2, disk, repl_ok = line.rstrip("\n").split("\t")
            nkeys, vsize, load_s = int(nkeys), int(vsize), int(load_s)
            rss0, rss1, rss2 = int(rss0 or 0), int(rss1 or 0), int(rss2 or 0)
            per_m = (rss1 - rss0) * 1024 / nkeys * 1e6 if nkeys else 0
            g, st = runs.get(cid + "-get", {}), runs.get(cid + "-set", {})

            def cell(r, key, fmt):
                if not r or r.get("parse_error"):
                    return "FAILED"
                return fmt(r[key])
            bad = "%d / %d" % (sum(r.get("non2xx", 0) for r in (g, st)), sum(r.get("errors", 0) for r in (g, st)))
            out.append("| {:,} | {} | {} s{} | {} → {} → {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                nkeys, fmt_bytes(vsize), load_s, "" if load_ok == "1" else " (FAILED)",
                fmt_bytes(rss0 * 1024), fmt_bytes(rss1 * 1024), fmt_bytes(rss2 * 1024),
                "%s (%s)" % (fmt_bytes(per_m), fmt_bytes(per_m / 1e6)), fmt_bytes(int(disk)),
                cell(g, "rps", fmt_rps), "%s / %s" % (cell(g, "p50_us", fmt_lat), cell(g, "p99_us", fmt_lat)),
                cell(g, "cpu_us", lambda x: "%.2f" % x),
                cell(st, "rps", fmt_rps), "%s / %s" % (cell(st, "p50_us", fmt_lat), cell(st, "p99_us", fmt_lat)),
                cell(st, "cpu_us", lambda x: "%.2f" % x), bad))
            if load_ok != "1":
                notes.append("- %d keys x %d B: the preload did not get 200 for every SET" % (nkeys, vsize))
            if repl_ok != "1":
                notes.append("- %d keys x %d B: the shard-0 replica had not caught up 120 s after the preload" % (nkeys, vsize))
            for name, r in (("GET", g), ("SET", st)):
                if r.get("parse_error"):
                    notes.append("- %d keys x %d B %s: %s" % (nkeys, vsize, name, r["parse_error"]))
                elif r:
                    if r.get("non2xx"):
                        notes.append("- %d keys x %d B %s: %d non-2xx responses" % (nkeys, vsize, name, r["non2xx"]))
                    if r.get("errors"):
                        notes.append("- %d keys x %d B %s: socket errors: %s" % (nkeys, vsize, name, r["error_detail"]))
                    if not r.get("server_ok"):
                        notes.append("- %d keys x %d B %s: server gone or unhealthy after the run" % (nkeys, vsize, name))
                    if r.get("other_pct", 0) > NOISY_PCT:
                        notes.append("- %d keys x %d B %s: %.0f%% of a core went to other processes or unattributed "
                                     "kernel work during the run (machine not quiet)" % (nkeys, vsize, name, r["other_pct"]))
    out.append("")
    out.append("RSS per 1M keys = (RSS after preload − RSS of the empty server) ÷ keys × 10⁶; "
               "it includes the replicas' copies (one process holds all 3 primaries and 3 replicas). "
               "\"end\" is after the GET and SET runs. GET/SET: wrk, keys of shard 0 on its primary; "
               "SETs overwrite existing keys (values > 1 KiB are POSTed as a form body).")
    if notes:
        out.append("")
        out.append("Problems seen during this run:")
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "scaling":
        header = None
        if "--header" in sys.argv:
            header = sys.argv[sys.argv.index("--header") + 1]
        sys.stdout.write(scaling(sys.argv[2], sys.argv[3], header))
        return 0
    if len(sys.argv) >= 3 and sys.argv[1] == "table":
        header = None
        if "--header" in sys.argv:
            header = sys.argv[sys.argv.index("--header") + 1]
        sys.stdout.write(table(sys.argv[2], header))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "parse":
        r = parse(sys.argv[2], sys.argv[3])
        print(" ".join("%s=%s" % (k, str(v).replace(" ", "_")) for k, v in r.items()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
