#!/usr/bin/env python3
"""Turn the raw wrk/oha outputs recorded by bench/run.sh into a markdown table.

Input: a TSV index (one line per measured run) written by bench/lib.sh:
    id  scenario  tool  target  conns  depth  raw_file  cpu_ticks  clk_tck  server_ok  ref
`ref` is the id of the nginx row the run is compared with ("-" for none).

Usage:
    report.py table INDEX.tsv [--header FILE]   # markdown on stdout
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
            (rid, scen, tool, target, conns, depth, raw, ticks, clk, ok, ref) = line.split("\t")
            row = dict(id=rid, scenario=scen, tool=tool, target=target, conns=int(conns),
                       depth=int(depth), raw=raw, ticks=int(ticks), clk=int(clk),
                       server_ok=(ok == "1"), ref=ref)
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

    out = []
    if header_path:
        with open(header_path) as f:
            out.append(f.read().rstrip("\n"))
        out.append("")
    out.append("| scenario | tool | target | conns × depth | req/s | p50 | p99 | non-2xx | socket errors "
               "| server CPU µs/req | req/s vs nginx | CPU/req vs nginx |")
    out.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for r in rows:
        if r["parse_error"]:
            out.append("| %s | %s | %s | %d × %d | FAILED | | | | | | | |" % (
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
        out.append("| %s%s | %s | %s | %d × %d | %s | %s | %s | %d | %d | %.2f | %s | %s |" % (
            r["scenario"], flag, r["tool"], r["target"], r["conns"], r["depth"], fmt_rps(r["rps"]),
            fmt_lat(r["p50_us"]), fmt_lat(r["p99_us"]), r["non2xx"], r["errors"], r["cpu_us"],
            rps_ratio, cpu_ratio))
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


def main():
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
