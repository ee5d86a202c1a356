#!/usr/bin/env python3
"""Turn the raw wrk/oha outputs recorded by bench/run.sh into markdown tables.

Input: a TSV index (one line per measured run) written by bench/lib.sh:
    id scenario tool target conns depth raw_file cpu_ticks clk_tck server_ok ref
    client_cpu_ms machine_busy_ticks wall_ms server_rss_kib [base] [extra]
`tool` is "wrk" (one constant request, no Lua per request), "wrk+lua"
(requests built by bench/lua/corekv.lua), "oha" or "fsync" (bench/fsync_probe.py);
`ref` is the id of the nginx row the run is compared with ("-" for none);
`base` (optional) the id of the one-fsync-per-write baseline row a durable
SET row is compared with ("-" for none); `extra` (optional) is
`key=value;...`: g= scenario group (nginx, get-owner, get-fwd, get-replica,
set, ...), sec= table section (main; rate: fixed-rate rows; wset: GETs
measured while a second client sends SETs), rate= the asked rate of a
fixed-rate client, role= get/set, pair= / alone= (wset rows: the other
client's row; the same GETs measured without writes).
cpu_ticks is the server's utime+stime over the run (-1: not attributable),
client_cpu_ms the load generator's, machine_busy_ticks all CPUs' busy time
(/proc/stat).

Usage:
    report.py table INDEX.tsv [--header FILE] [--conns N]
                                                # markdown on stdout; N: the connection
                                                # count of the throughput targets (64)
    report.py scaling CASES.tsv INDEX.tsv [--header FILE]
    report.py parse wrk|wrk+lua|oha|fsync FILE  # one parsed run, as key=value
    report.py get TOOL FILE KEY                 # one value of one parsed run (e.g. rps)
    report.py soak CLIENT_OUT [--header FILE] [--client-rc N] [--server-alive 0|1]
              [--rss-max-pct P] [--rss-min-mib M]
                                                # bench/soak.sh summary; exit 1 on failure
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
        # Outputs of the Lua script before p99.9 was added have none.
        "p999_us": float(kv.get("p999_us", "nan")),
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

    def p(name):
        v = pct.get(name)
        return float(v) * 1e6 if v is not None else float("nan")
    return {
        "requests": requests,
        # oha's requestsPerSec counts errors too; use completed responses.
        "rps": requests / total if total else float(summary.get("requestsPerSec") or 0),
        "p50_us": p("p50"),
        "p99_us": p("p99"),
        "p999_us": p("p99.9"),
        "non2xx": non2xx,
        "errors": sum(real_errs.values()),
        "error_detail": "; ".join("%s: %d" % kv for kv in real_errs.items()),
        "codes": codes,
    }


def parse_fsync(path):
    """bench/fsync_probe.py's FSYNC_RESULT line."""
    with open(path, errors="replace") as f:
        text = f.read()
    m = re.search(r"^FSYNC_RESULT (.*)$", text, re.M)
    if not m:
        raise ValueError("no FSYNC_RESULT line in %s (did the probe fail?)" % path)
    kv = dict(p.split("=", 1) for p in m.group(1).split())
    return {
        "requests": int(kv["n"]),
        "rps": float(kv["rate"]),
        "p50_us": float(kv["p50_us"]),
        "p99_us": float(kv["p99_us"]),
        "p999_us": float(kv["p999_us"]),
        "max_us": float(kv["max_us"]),
        "sync": kv.get("sync", "?"),
        "block": int(kv.get("block", 0)),
        "non2xx": 0,
        "errors": 0,
        "error_detail": "",
    }


def parse(tool, path):
    """tool: "wrk" (fixed request), "wrk+lua" (Lua-built requests), "oha", "fsync"."""
    if tool.startswith("wrk"):
        return parse_wrk(path)
    if tool == "fsync":
        return parse_fsync(path)
    return parse_oha(path)


# "other CPU" above this (% of one core) marks a run as disturbed.
NOISY_PCT = 25.0
# A fixed-rate row whose achieved rate is this much below the asked one is flagged.
RATE_SHORT = 0.05
# Targets of the tail-latency issue (see bench/README.md, "Targets").
P99_FACTOR, P99_FLOOR_US = 1.5, 2000.0
OWNER_RPS_MIN, OWNER_CPU_MAX = 0.95, 1.10
FWD_RPS_MIN = 0.90
SET_FSYNC_P99_MAX = 3.0
GET_GROUPS = ("get-owner", "get-replica", "get-fwd")


def fmt_lat(us):
    if us != us:  # NaN: not measured
        return "-"
    if us >= 1e6:
        return "%.2f s" % (us / 1e6)
    if us >= 1000:
        return "%.2f ms" % (us / 1000)
    return "%.0f µs" % us


def fmt_rps(x):
    return "{:,.0f}".format(x)


def fmt_ratio(x):
    if x != x:
        return "-"
    return "%.2f×" % x


def ok_row(r):
    return r is not None and not r.get("parse_error")


def load_rows(index_path):
    """The TSV index written by bench/lib.sh's measure (see the module doc)."""
    rows = []
    with open(index_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            f = line.split("\t")
            (rid, scen, tool, target, conns, depth, raw, ticks, clk, ok, ref) = f[:11]
            client_ms, busy, wall_ms, rss, base, extra = (f[11:17] + ["0", "0", "0", "0", "-", "-"][len(f[11:17]):])[:6]
            ex = {}
            if extra not in ("", "-"):
                for part in extra.split(";"):
                    k, _, v = part.partition("=")
                    if k:
                        ex[k] = v
            row = dict(id=rid, scenario=scen, tool=tool, target=target, conns=int(conns),
                       depth=int(depth), raw=raw, ticks=int(ticks), clk=int(clk),
                       server_ok=(ok == "1"), ref=ref, client_ms=int(client_ms),
                       busy=int(busy), wall_ms=int(wall_ms), rss=int(rss or 0), base=base, ex=ex,
                       sec=ex.get("sec", "main"), group=ex.get("g", ""))
            try:
                row.update(parse(tool, raw))
                row["parse_error"] = None
            except Exception as e:  # keep going: report the broken row
                row["parse_error"] = str(e)
            rows.append(row)
    for r in rows:
        if r["parse_error"]:
            continue
        # ticks < 0: the server's CPU cannot be attributed to this row alone.
        if r["ticks"] >= 0 and r["requests"]:
            r["cpu_us"] = (r["ticks"] / r["clk"]) / r["requests"] * 1e6
        else:
            r["cpu_us"] = float("nan")
        r["client_us"] = r["client_ms"] * 1e3 / r["requests"] if r["requests"] and r["wall_ms"] else float("nan")
        # CPU used by everything except the server and the load generator
        # (other processes, plus kernel time not charged to either), in % of
        # one core over the run's wall time.
        if r["wall_ms"]:
            other_s = r["busy"] / r["clk"] - max(0, r["ticks"]) / r["clk"] - r["client_ms"] / 1e3
            r["other_pct"] = max(0.0, other_s) / (r["wall_ms"] / 1e3) * 100
        else:
            r["other_pct"] = float("nan")
        if "rate" in r["ex"]:
            r["asked"] = float(r["ex"]["rate"])
            r["short"] = r["asked"] > 0 and r["rps"] < (1 - RATE_SHORT) * r["asked"]
    return with_medians(rows)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


# Fields of a row that are a median over its rounds.
MEDIAN_KEYS = ("rps", "p50_us", "p99_us", "p999_us", "cpu_us", "other_pct", "client_us")


def with_medians(rows):
    """Rows measured in rounds (extra `round=`, `agg=ID`, `aggref=REF`) are
    replaced, where their first round stood, by one row ID holding the
    median of each figure over the rounds that parsed (compared with REF,
    nginx's median row); the rounds themselves stay in its `rounds`."""
    out, aggs = [], {}
    for r in rows:
        agg_id = r["ex"].get("agg")
        if not agg_id or "round" not in r["ex"]:
            out.append(r)
            continue
        if agg_id not in aggs:
            ex = {k: v for k, v in r["ex"].items() if k not in ("round", "agg", "aggref")}
            a = dict(r, id=agg_id, ref=r["ex"].get("aggref", "-"), ex=ex, rounds=[])
            aggs[agg_id] = a
            out.append(a)
        aggs[agg_id]["rounds"].append(r)
    for a in aggs.values():
        good = [r for r in a["rounds"] if ok_row(r)]
        a["server_ok"] = all(r["server_ok"] for r in a["rounds"])
        if not good:
            a["parse_error"] = "; ".join(r["parse_error"] for r in a["rounds"])
            continue
        a["parse_error"] = None
        for k in MEDIAN_KEYS:
            a[k] = median([r[k] for r in good if r.get(k) == r.get(k)])
        for k in ("requests", "non2xx", "errors"):
            a[k] = sum(r[k] for r in good)
        a["rss"] = a["rounds"][-1]["rss"]  # the server's RSS after the last round
        a["error_detail"] = "; ".join(r["error_detail"] for r in good if r["errors"])
        a["codes"] = "; ".join(str(r["codes"]) for r in good if r.get("codes"))
        if "rate" in a["ex"]:
            a["asked"] = float(a["ex"]["rate"])
            a["short"] = a["asked"] > 0 and a["rps"] < (1 - RATE_SHORT) * a["asked"]
    return out


def ref_of(r, by_id):
    """(reference row, is_the_reference_itself) for a row."""
    ref = by_id.get(r["ref"])
    if ref is r:
        return ref, True
    if ok_row(ref):
        return ref, False
    return None, False


def with_ratio(r, ref, is_ref, key, fmt):
    """value (ratio to the reference row's value)."""
    v = r.get(key, float("nan"))
    s = fmt(v)
    if is_ref:
        return s + " (ref)"
    if ref is not None and ref.get(key) and ref[key] == ref[key] and v == v:
        return "%s (%s)" % (s, fmt_ratio(v / ref[key]))
    return s


def p99_bound(ref):
    return max(P99_FACTOR * ref["p99_us"], P99_FLOOR_US)


def table(index_path, header_path=None, conns=64):
    rows = load_rows(index_path)
    by_id = {x["id"]: x for r in rows for x in [r] + r.get("rounds", [])}
    main = [r for r in rows if r["sec"] == "main"]
    # nginx's rows first, then each scenario's rows together (rows measured
    # in interleaved rounds are recorded after the others of their group).
    rank = {"nginx": -1}
    for r in main:
        rank.setdefault(r["group"], len(rank))
    tools = {"wrk": 0, "wrk+lua": 1, "oha": 2}
    main.sort(key=lambda r: (rank[r["group"]], r["depth"], r["conns"], tools.get(r["tool"], 3)))
    # Baseline rows (named by other rows' `base`) are shown together, right
    # after the last row compared with one of them.
    base_ids = {r["base"] for r in main if r["base"] not in ("-", "", r["id"]) and r["base"] in by_id}
    if base_ids:
        ordered = [r for r in main if r["id"] not in base_ids]
        last = max(i for i, r in enumerate(ordered) if r["base"] in base_ids)
        ordered[last + 1:last + 1] = [r for r in main if r["id"] in base_ids]
        main = ordered

    out = []
    if header_path:
        with open(header_path) as f:
            out.append(f.read().rstrip("\n"))
        out.append("")
    notes = []
    noisy = []

    def per_round(r, show):
        """Each round of `r`, as `show(fig)` puts it; `fig(key, fmt)` is that
        round's figure with its ratio to nginx's in the same round."""
        each = []
        for x in r.get("rounds", []):
            if not ok_row(x):
                each.append("failed")
                continue
            xref, xis_ref = ref_of(x, by_id)
            each.append(show(lambda key, fmt: with_ratio(x, xref, xis_ref, key, fmt).replace(" (ref)", "")))
        return each

    def row_notes(r):
        if r["parse_error"]:
            notes.append("- %s / %s / %d conns: %s" % (r["scenario"], r["tool"], r["conns"], r["parse_error"]))
            return
        what = "%s / %s / %d conns" % (r["scenario"], r["tool"], r["conns"])
        if r["tool"] != "fsync" and r["other_pct"] == r["other_pct"] and r["other_pct"] > NOISY_PCT:
            noisy.append((what, r["other_pct"]))
        if r["non2xx"]:
            codes = r.get("codes")
            notes.append("- %s: %d non-2xx responses%s" % (
                what, r["non2xx"], (" (status codes %s)" % codes) if codes else ""))
        if r["errors"]:
            notes.append("- %s: socket errors: %s" % (what, r["error_detail"]))
        if not r["server_ok"]:
            notes.append("- %s: the server process was gone or unhealthy after this run" % what)
        if r.get("short"):
            notes.append("- %s: asked for %s req/s, achieved %s (%.0f%% short)" % (
                what, fmt_rps(r["asked"]), fmt_rps(r["rps"]), (1 - r["rps"] / r["asked"]) * 100))

    # ------------------------------------------------------------ main table
    out.append("### Closed loop: as fast as the client can go")
    out.append("")
    out.append("| scenario | tool | target | conns × depth | req/s (vs nginx) | p50 (vs nginx) | p99 (vs nginx) "
               "| p99.9 (vs nginx) | server CPU µs/req (vs nginx) | non-2xx | socket errors "
               "| req/s vs 1 fsync/write | client CPU µs/req | other CPU | server RSS after |")
    out.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    durable = []
    for r in main:
        for x in r.get("rounds", [r]):
            row_notes(x)
        if r["parse_error"]:
            out.append("| %s | %s | %s | %d × %d | FAILED | | | | | | | | | | |" % (
                r["scenario"], r["tool"], r["target"], r["conns"], r["depth"]))
            continue
        if r["tool"] == "fsync":
            out.append("| %s | %s | %s | 1 × 1 | %s fsyncs/s | %s | %s | %s | | | | | | | |" % (
                r["scenario"], "fsync probe (%s, %d B)" % (r["sync"], r["block"]), r["target"], fmt_rps(r["rps"]),
                fmt_lat(r["p50_us"]), fmt_lat(r["p99_us"]), fmt_lat(r["p999_us"])))
            continue
        ref, is_ref = ref_of(r, by_id)
        base = by_id.get(r["base"])
        if r["id"] in base_ids:
            base_ratio = "1.00× (ref)"
        elif ok_row(base) and base["rps"]:
            base_ratio = "**%.1f×**" % (r["rps"] / base["rps"])
            durable.append((r, base))
        else:
            base_ratio = ""
        flag = "" if r["server_ok"] else " ⚠ server died"
        out.append("| %s%s | %s | %s | %d × %d | %s | %s | %s | %s | %s | %d | %d | %s | %.2f | %.0f%% | %s |" % (
            r["scenario"], flag, r["tool"], r["target"], r["conns"], r["depth"],
            with_ratio(r, ref, is_ref, "rps", fmt_rps),
            with_ratio(r, ref, is_ref, "p50_us", fmt_lat), with_ratio(r, ref, is_ref, "p99_us", fmt_lat),
            with_ratio(r, ref, is_ref, "p999_us", fmt_lat),
            with_ratio(r, ref, is_ref, "cpu_us", lambda x: "%.2f" % x),
            r["non2xx"], r["errors"], base_ratio, r["client_us"], r["other_pct"], fmt_bytes(r["rss"] * 1024)))

    medians = [r for r in main if len(r.get("rounds", [])) > 1 and not r["parse_error"]]
    if medians:
        out.append("")
        out.append("Rows measured in interleaved rounds (nginx, the owner, the replica, the forwarded GET, round after "
                   "round) show the median of each figure over the rounds, compared with nginx's medians:")
        out.append("")
        for r in medians:
            each = per_round(r, lambda fig: "%s req/s p99 %s" % (fig("rps", fmt_rps), fig("p99_us", fmt_lat)))
            out.append("- %s, %s, %d conns: %d rounds: %s" % (r["scenario"], r["tool"], r["conns"], len(r["rounds"]),
                                                           "; ".join(each)))

    # ------------------------------------------------------ fixed-rate table
    rate_rows = [r for r in rows if r["sec"] == "rate"]
    if rate_rows:
        out.append("")
        out.append("### Fixed rate (oha `-q`, `--latency-correction`: no coordinated omission)")
        out.append("")
        nround = max((len(r.get("rounds", [])) for r in rate_rows), default=0)
        if nround > 1:
            out.append("Each row ran in %d interleaved rounds (nginx, then the owner, the replica and the forwarded "
                       "GET, at each rate, round after round); its figures are the medians over the rounds, compared "
                       "with nginx's medians. The last column lists every round's p99 with its ratio to nginx's "
                       "p99 in the same round." % nround)
            out.append("")
        out.append("| scenario | target | conns | asked req/s | achieved req/s | p50 (vs nginx) | p99 (vs nginx) "
                   "| p99.9 (vs nginx) | server CPU µs/req (vs nginx) | non-2xx | socket errors | other CPU "
                   "| p99 of each round (vs nginx) |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rate_rows:
            for x in r.get("rounds", [r]):
                row_notes(x)
            if r["parse_error"]:
                out.append("| %s | %s | %d | %s | FAILED | | | | | | | | |" % (
                    r["scenario"], r["target"], r["conns"], r["ex"].get("rate", "?")))
                continue
            ref, is_ref = ref_of(r, by_id)
            achieved = fmt_rps(r["rps"])
            if r.get("short"):
                achieved = "**%s ⚠ %.0f%% short**" % (achieved, (1 - r["rps"] / r["asked"]) * 100)
            flag = "" if r["server_ok"] else " ⚠ server died"
            each = per_round(r, lambda fig: fig("p99_us", fmt_lat))
            out.append("| %s%s | %s | %d | %s | %s | %s | %s | %s | %s | %d | %d | %.0f%% | %s |" % (
                r["scenario"], flag, r["target"], r["conns"], fmt_rps(r["asked"]), achieved,
                with_ratio(r, ref, is_ref, "p50_us", fmt_lat), with_ratio(r, ref, is_ref, "p99_us", fmt_lat),
                with_ratio(r, ref, is_ref, "p999_us", fmt_lat),
                with_ratio(r, ref, is_ref, "cpu_us", lambda x: "%.2f" % x),
                r["non2xx"], r["errors"], r["other_pct"], "; ".join(each)))

    # ------------------------------------------------ GETs while SETs run
    wset = [r for r in rows if r["sec"] == "wset"]
    if wset:
        out.append("")
        out.append("### Reads while durable writes run (two clients at once: GETs measured apart from the SETs)")
        out.append("")
        out.append("| client | tool | target | conns | asked req/s | req/s | p50 (vs nginx) | p99 (vs nginx) "
                   "| p99.9 (vs nginx) | p99 vs the same GETs without writes | non-2xx | socket errors |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in wset:
            row_notes(r)
            if r["parse_error"]:
                out.append("| %s | %s | %s | %d | | FAILED | | | | | | |" % (r["scenario"], r["tool"], r["target"], r["conns"]))
                continue
            ref, is_ref = ref_of(r, by_id)
            alone = by_id.get(r["ex"].get("alone", ""))
            vs_alone = ""
            if ok_row(alone) and alone["p99_us"]:
                vs_alone = "%s (%s without writes)" % (fmt_ratio(r["p99_us"] / alone["p99_us"]), fmt_lat(alone["p99_us"]))
            achieved = fmt_rps(r["rps"])
            if r.get("short"):
                achieved = "**%s ⚠ %.0f%% short**" % (achieved, (1 - r["rps"] / r["asked"]) * 100)
            out.append("| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %d | %d |" % (
                r["scenario"], r["tool"], r["target"], r["conns"],
                fmt_rps(r["asked"]) if "asked" in r else "as fast as it can", achieved,
                with_ratio(r, ref, is_ref, "p50_us", fmt_lat), with_ratio(r, ref, is_ref, "p99_us", fmt_lat),
                with_ratio(r, ref, is_ref, "p999_us", fmt_lat), vs_alone, r["non2xx"], r["errors"]))
        shares = []
        for r in wset:
            s = by_id.get(r["ex"].get("pair", ""))
            if r["ex"].get("role") == "get" and ok_row(r) and ok_row(s) and (r["rps"] + s["rps"]):
                cpu = ""
                if r["ticks"] >= 0 and r["requests"] + s["requests"]:
                    cpu = ", server CPU %.2f µs per request (GETs and SETs)" % (
                        r["ticks"] / r["clk"] / (r["requests"] + s["requests"]) * 1e6)
                shares.append("- %s: SETs were %.1f%% of the requests (%s SET/s next to %s GET/s)%s" % (
                    r["scenario"], s["rps"] * 100 / (r["rps"] + s["rps"]), fmt_rps(s["rps"]), fmt_rps(r["rps"]), cpu))
        if shares:
            out.append("")
            out.extend(shares)

    # ----------------------------------------------------- durable writes
    fs_rows = [r for r in rows if r["tool"] == "fsync" and ok_row(r)]
    if durable or fs_rows:
        out.append("")
        out.append("### Durable writes")
        out.append("")
    for f in fs_rows:
        out.append("- bare fsync probe (%s of a %d B block, %s iterations, %s, no server involved): p50 %s, p99 %s, "
                   "p99.9 %s, max %s (%s fsyncs/s)" % (
                       f["sync"], f["block"], fmt_rps(f["requests"]), f["target"], fmt_lat(f["p50_us"]),
                       fmt_lat(f["p99_us"]), fmt_lat(f["p999_us"]), fmt_lat(f["max_us"]), fmt_rps(f["rps"])))
    for r, b in durable:
        ratio = r["rps"] / b["rps"]
        out.append("- %s: %s req/s (p50 %s, p99 %s, p99.9 %s) vs %s req/s with 1 fsync/write (p50 %s, p99 %s, "
                   "p99.9 %s): **%.1f×** (target ≥ 10×: %s)" % (
                       r["tool"], fmt_rps(r["rps"]), fmt_lat(r["p50_us"]), fmt_lat(r["p99_us"]), fmt_lat(r["p999_us"]),
                       fmt_rps(b["rps"]), fmt_lat(b["p50_us"]), fmt_lat(b["p99_us"]), fmt_lat(b["p999_us"]), ratio,
                       "met" if ratio >= 10 else "NOT met"))

    # ------------------------------------------------------------- targets
    out.extend(targets(rows, by_id, conns))

    if noisy:
        noisy.sort(key=lambda x: -x[1])
        shown = "; ".join("%s (%.0f%%)" % x for x in noisy[:6])
        if len(noisy) > 6:
            shown += "; and %d more" % (len(noisy) - 6)
        notes.insert(0, "- the machine was not quiet during %d of %d runs: other processes or kernel work charged to "
                        "neither the server nor the client used more than %.0f%% of a core (column \"other CPU\"); "
                        "treat these rows with care. Worst: %s" % (
                            len(noisy), sum(len(r.get("rounds", [r])) for r in rows), NOISY_PCT, shown))
    if notes:
        out.append("")
        out.append("Problems seen during this run:")
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def targets(rows, by_id, conns):
    """The tail-latency issue's targets, each MET / NOT MET from this run's numbers."""
    res = []  # (target, row, measured, limit, met)

    def label(r):
        return "%s, %s, %d conns" % (r["scenario"], r["tool"], r["conns"])

    def p99_check(tname, r, extra_fail=None):
        if not ok_row(r):
            res.append((tname, label(r), "not measured (%s)" % r.get("parse_error"), "", None))
            return
        ref, _ = ref_of(r, by_id)
        if ref is None:
            res.append((tname, label(r), "p99 %s" % fmt_lat(r["p99_us"]), "no nginx row to compare with", None))
            return
        bound = p99_bound(ref)
        met = r["p99_us"] <= bound
        limit = "max(%.1f × nginx %s, %s) = %s" % (P99_FACTOR, fmt_lat(ref["p99_us"]), fmt_lat(P99_FLOOR_US), fmt_lat(bound))
        measured = "p99 %s (%s nginx's)" % (fmt_lat(r["p99_us"]), fmt_ratio(r["p99_us"] / ref["p99_us"]) if ref["p99_us"] else "-")
        rounds = [x for x in r.get("rounds", []) if ok_row(x)]
        if len(rounds) > 1:
            measured += ", the median of %d rounds (each: %s)" % (len(rounds), ", ".join(
                fmt_lat(x["p99_us"]) for x in rounds))
        if extra_fail:
            measured += "; " + extra_fail
            met = False
        res.append((tname, label(r), measured, limit, met))

    # (a) closed-loop GET p99 vs nginx, every tool and connection count.
    for r in rows:
        if r["sec"] == "main" and r["group"] in GET_GROUPS and r["depth"] == 1:
            p99_check("(a) GET p99 ≤ max(1.5 × nginx p99, 2 ms)", r)
    # (b) fixed-rate GET p99 vs nginx at the same rate.
    for r in rows:
        if r["sec"] == "rate" and r["group"] in GET_GROUPS:
            short = None
            if ok_row(r) and r.get("short"):
                short = "achieved %s of %s req/s asked (%.0f%% short)" % (
                    fmt_rps(r["rps"]), fmt_rps(r["asked"]), (1 - r["rps"] / r["asked"]) * 100)
            p99_check("(b) fixed-rate GET p99 ≤ max(1.5 × nginx p99 at that rate, 2 ms)", r, short)
            ref, _ = ref_of(r, by_id)
            if ref is not None and ref.get("short") and r is not None:
                res[-1] = res[-1][:2] + (res[-1][2] + "; nginx itself fell %.0f%% short of that rate" % (
                    (1 - ref["rps"] / ref["asked"]) * 100),) + res[-1][3:]

    def find(group, tool, c, sec="main"):
        for r in rows:
            if r["group"] == group and r["tool"] == tool and r["conns"] == c and r["sec"] == sec and r["depth"] == 1:
                return r
        return None

    # (c) owner GET throughput and CPU per request vs nginx, wrk fixed key.
    o = find("get-owner", "wrk", conns)
    if o is not None:
        ref, _ = ref_of(o, by_id)
        if ok_row(o) and ref is not None:
            x = o["rps"] / ref["rps"] if ref["rps"] else float("nan")
            res.append(("(c) owner GET req/s ≥ %.2f × nginx (wrk, fixed key)" % OWNER_RPS_MIN, label(o),
                        "%s vs nginx %s req/s = %s" % (fmt_rps(o["rps"]), fmt_rps(ref["rps"]), fmt_ratio(x)),
                        "≥ %.2f×" % OWNER_RPS_MIN, x >= OWNER_RPS_MIN))
            y = o["cpu_us"] / ref["cpu_us"] if ref["cpu_us"] else float("nan")
            res.append(("(c) owner GET server CPU/req ≤ %.1f × nginx (wrk, fixed key)" % OWNER_CPU_MAX, label(o),
                        "%.2f vs nginx %.2f µs/req = %s" % (o["cpu_us"], ref["cpu_us"], fmt_ratio(y)),
                        "≤ %.2f×" % OWNER_CPU_MAX, y <= OWNER_CPU_MAX))
        else:
            res.append(("(c) owner GET vs nginx (wrk, fixed key)", label(o), "not measured", "", None))
    # (d) forwarded GET throughput vs owner GET, same tool.
    for tool in ("wrk", "wrk+lua", "oha"):
        fw, ow = find("get-fwd", tool, conns), find("get-owner", tool, conns)
        if fw is None or ow is None:
            continue
        if ok_row(fw) and ok_row(ow) and ow["rps"]:
            x = fw["rps"] / ow["rps"]
            res.append(("(d) forwarded GET req/s ≥ %.1f × owner GET" % FWD_RPS_MIN, label(fw),
                        "%s vs owner %s req/s = %s" % (fmt_rps(fw["rps"]), fmt_rps(ow["rps"]), fmt_ratio(x)),
                        "≥ %.2f×" % FWD_RPS_MIN, x >= FWD_RPS_MIN))
        else:
            res.append(("(d) forwarded GET req/s ≥ %.1f × owner GET" % FWD_RPS_MIN, label(fw), "not measured", "", None))
    # (e) GETs while SETs run: the bound of (a) / (b).
    for r in rows:
        if r["sec"] == "wset" and r["ex"].get("role") == "get":
            short = None
            if ok_row(r) and r.get("short"):
                short = "achieved %s of %s req/s asked" % (fmt_rps(r["rps"]), fmt_rps(r["asked"]))
            p99_check("(e) GET p99 while SETs run ≤ max(1.5 × nginx p99, 2 ms)", r, short)
    # (f) durable SET p99 vs the bare fsync probe.
    fs = next((r for r in rows if r["tool"] == "fsync"), None)
    for r in rows:
        if r["sec"] == "main" and r["group"] == "set":
            if not ok_row(r) or not ok_row(fs):
                res.append(("(f) durable SET p99 ≤ 3 × bare fsync p99", label(r), "not measured", "", None))
                continue
            bound = SET_FSYNC_P99_MAX * fs["p99_us"]
            res.append(("(f) durable SET p99 ≤ %.0f × bare fsync p99" % SET_FSYNC_P99_MAX, label(r),
                        "p99 %s = %s the fsync p99 of %s (SET p50 %s, p99.9 %s)" % (
                            fmt_lat(r["p99_us"]), fmt_ratio(r["p99_us"] / fs["p99_us"]) if fs["p99_us"] else "-",
                            fmt_lat(fs["p99_us"]), fmt_lat(r["p50_us"]), fmt_lat(r["p999_us"])),
                        "≤ %s" % fmt_lat(bound), r["p99_us"] <= bound))

    out = ["", "### Targets (computed from the numbers above)", ""]
    if not res:
        out.append("No target could be evaluated: none of the rows they need were measured.")
        return out
    met = sum(1 for t in res if t[4] is True)
    not_met = [t for t in res if t[4] is False]
    unknown = [t for t in res if t[4] is None]
    out.append("| target | row | measured | limit | result |")
    out.append("|---|---|---|---|---|")
    for t in res:
        verdict = {True: "MET", False: "**NOT MET**", None: "NOT MEASURED"}[t[4]]
        out.append("| %s | %s | %s | %s | %s |" % (t[0], t[1], t[2], t[3], verdict))
    out.append("")
    out.append("%d of %d targets met; %d NOT MET%s." % (
        met, len(res), len(not_met), (", %d not measured" % len(unknown)) if unknown else ""))
    if not_met:
        out.append("")
        out.append("NOT MET:")
        out.append("")
        for t in not_met:
            out.append("- %s: %s: %s (limit %s)" % (t[0], t[1], t[2], t[3]))
    return out


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


def parse_soak(path):
    """The soakclient's output: BOOT/START/INTERVAL/CLASS/KIND/EXAMPLE/SUMMARY lines."""
    import shlex
    out = {"intervals": [], "classes": [], "kinds": [], "examples": [], "summary": None,
           "start": None, "boot": None, "stalls": []}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            tag, _, rest = line.partition(" ")
            if tag == "EXAMPLE":
                out["examples"].append(rest)
                continue
            if tag not in ("BOOT", "START", "INTERVAL", "CLASS", "KIND", "SUMMARY", "STALL"):
                continue
            try:
                kv = dict(p.split("=", 1) for p in shlex.split(rest))
            except ValueError:
                continue
            if tag == "INTERVAL":
                out["intervals"].append(kv)
            elif tag == "CLASS":
                out["classes"].append(kv)
            elif tag == "KIND":
                out["kinds"].append(kv)
            elif tag == "STALL":
                out["stalls"].append(kv)
            else:
                out[tag.lower()] = kv
    return out


def soak(path, header=None, client_rc=0, server_alive=True, rss_max_pct=10.0, rss_min_mib=16.0):
    d = parse_soak(path)
    out = []
    if header:
        with open(header) as f:
            out.append(f.read().rstrip("\n"))
        out.append("")
    sm = d["summary"]
    if sm is None:
        out.append("**The soak client did not finish (no SUMMARY line; exit status %d).** "
                   "Last lines of its output are in soak.log." % client_rc)
        if d["intervals"]:
            iv = d["intervals"][-1]
            out.append("")
            out.append("Last progress line: t=%s s, %s req/s, errors %s, mismatches %s, RSS %s" % (
                iv.get("t"), iv.get("rps"), iv.get("errors"), iv.get("mismatches"),
                fmt_bytes(int(iv.get("rss_kib", 0)) * 1024)))
        return "\n".join(out) + "\n", 1
    g = lambda k: int(float(sm.get(k, 0)))
    errors, mismatches = g("errors"), g("mismatches")
    rss_warm, rss_end = g("rss_warm_kib"), g("rss_end_kib")
    growth_kib = rss_end - rss_warm
    limit_kib = max(rss_warm * rss_max_pct / 100.0, rss_min_mib * 1024)
    flat = growth_kib <= limit_kib
    # Trend of RSS after warm-up (least squares over the progress samples).
    pts = [(float(iv["t"]), int(iv["rss_kib"])) for iv in d["intervals"]
           if float(iv["t"]) + 0.5 >= float(sm.get("warm_t", 0)) and int(iv.get("rss_kib", 0)) > 0]
    slope = None
    if len(pts) >= 3:
        mt = sum(t for t, _ in pts) / len(pts)
        mr = sum(r for _, r in pts) / len(pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        if den:
            slope = sum((t - mt) * (r - mr) for t, r in pts) / den * 60 / 1024  # MiB per minute
    ok = errors == 0 and mismatches == 0 and flat and client_rc == 0 and server_alive

    def mark(good):
        return "ok" if good else "**FAIL**"

    out.append("## Verdict: %s" % ("PASS" if ok else "FAIL"))
    out.append("")
    out.append("| check | result | |")
    out.append("|---|---:|---|")
    out.append("| requests checked (load) | %s | every response of every connection |" % "{:,}".format(g("requests")))
    out.append("| errors: failed connections, timeouts, statuses other than the expected 200 / 404 | %d | %s |" % (errors, mark(errors == 0)))
    out.append("| mismatches: wrong value, version, status, X-Seq / X-Version / X-Shard / X-Served-By | %d | %s |" % (mismatches, mark(mismatches == 0)))
    out.append("| final check: every key on its primary and its replica = last acknowledged value; never-written keys 404 | %s reads | %s |" % (
        "{:,}".format(g("final_checked")), mark(not any("final" in k.get("what", "") for k in d["kinds"]))))
    out.append("| server RSS growth after warm-up (t=%ss → end) | %+.1f MiB (%+.1f%%)%s | %s (limit %.0f MiB) |" % (
        sm.get("warm_t"), growth_kib / 1024, (growth_kib * 100.0 / rss_warm) if rss_warm else 0,
        ("; trend %+.2f MiB/min" % slope) if slope is not None else "", "flat" if flat else "**GROWING**", limit_kib / 1024))
    out.append("| server healthy at the end | %s | %s |" % ("yes" if server_alive else "no", mark(server_alive)))
    out.append("")
    secs = float(sm.get("seconds", 0)) or 1
    nreq = g("requests")
    out.append("## Load")
    out.append("")
    out.append("- %s requests in %.0f s = **%s req/s** (%s GET, %s SET = %.1f%% SET); %s connections, %s of them writers on the primaries" % (
        "{:,}".format(nreq), secs, "{:,}".format(int(float(sm.get("rps", 0)))), "{:,}".format(g("gets")),
        "{:,}".format(g("sets")), g("sets") * 100.0 / nreq if nreq else 0, sm.get("conns"), sm.get("writers")))
    out.append("- latency (client-side, every request): p50 %s, **p99 %s**, p99.9 %s, max %s; GET p99 %s, SET p99 %s" % (
        fmt_lat(float(sm["p50_us"])), fmt_lat(float(sm["p99_us"])), fmt_lat(float(sm["p999_us"])),
        fmt_lat(float(sm["max_us"])), fmt_lat(float(sm["get_p99_us"])), fmt_lat(float(sm["set_p99_us"]))))
    out.append("- preload: %s keys written once (v1) in %s s before the load; %s never-written keys" % (
        "{:,}".format(g("keys")), sm.get("preload_s"), "{:,}".format(g("never"))))
    out.append("- replica reads without min_seq that returned an older version than the one acknowledged when the read "
               "was sent (allowed: replication is asynchronous): %s, at most %s versions behind" % (
                   "{:,}".format(g("stale_replica_reads")), sm.get("max_staleness_versions")))
    out.append("")
    out.append("## Memory and disk")
    out.append("")
    out.append("| | empty server | after preload (start) | after warm-up (t=%ss) | end of load | max during load | after final check |" % sm.get("warm_t"))
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    out.append("| server RSS | %s | %s | %s | %s | %s | %s |" % tuple(
        fmt_bytes(g(k) * 1024) for k in ("rss_boot_kib", "rss_start_kib", "rss_warm_kib", "rss_end_kib", "rss_max_kib", "rss_after_check_kib")))
    out.append("| data dir (allocated) | %s | %s | %s | %s | | |" % tuple(
        fmt_bytes(g(k)) for k in ("disk_boot_bytes", "disk_start_bytes", "disk_warm_bytes", "disk_end_bytes")))
    out.append("")
    out.append("## Requests by kind")
    out.append("")
    out.append("| kind | requests | p50 | p99 | p99.9 | max |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for c in d["classes"]:
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            c["name"], "{:,}".format(int(c["requests"])), fmt_lat(float(c["p50_us"])), fmt_lat(float(c["p99_us"])),
            fmt_lat(float(c["p999_us"])), fmt_lat(float(c["max_us"]))))
    out.append("")
    out.append("## Over time")
    out.append("")
    out.append("| t (s) | req/s | SET | p50 | p99 | max | slowest SET by shard | errors | mismatches | server RSS | data dir "
               "| server CPU | disk busy, flushes/s | replica lag | open conns |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    p99s = sorted(float(iv["p99_us"]) for iv in d["intervals"])
    med_p99 = p99s[len(p99s) // 2] if p99s else 0
    spikes = []
    for iv in d["intervals"]:
        req = int(iv["requests"])
        setp = int(iv["sets"]) * 100.0 / req if req else 0
        set_max = " / ".join(fmt_lat(float(x)) for x in iv.get("set_max_us", "").split(",") if x)
        out.append("| %s | %s | %.1f%% | %s | %s | %s | %s | %s | %s | %s | %s | %s%% | %s%%, %s | %s | %s |" % (
            iv["t"], "{:,}".format(int(float(iv["rps"]))), setp, fmt_lat(float(iv["p50_us"])), fmt_lat(float(iv["p99_us"])),
            fmt_lat(float(iv["max_us"])), set_max, iv["errors"], iv["mismatches"], fmt_bytes(int(iv["rss_kib"]) * 1024),
            fmt_bytes(int(iv["disk_bytes"])), iv["server_cpu_pct"], iv.get("disk_busy_pct", "?"), iv.get("flushes_per_s", "?"),
            iv["max_lag"], iv["open_conns"]))
        if float(iv["max_us"]) > 1e6 or (med_p99 and float(iv["p99_us"]) > 5 * med_p99):
            spikes.append("t=%ss (p99 %s, max %s)" % (iv["t"], fmt_lat(float(iv["p99_us"])), fmt_lat(float(iv["max_us"]))))
    out.append("")
    out.append("Each row covers the %s s before t. Latency is measured by the client (it shares the CPUs with the "
               "server); slowest SET by shard: the slowest SET answered in the interval, by the key's shard; server CPU is %% of one core; "
               "disk busy: I/O time of the data dir's block device (whole machine), flushes/s: its completed flush (fsync) requests; replica lag is the largest `lag` in `/status` (entries); "
               "open conns is the sum of `open_connections` over the 6 nodes (the client's 256 plus the /status probe)." % (
                   d["intervals"][0]["t"] if d["intervals"] else "?"))
    if spikes:
        out.append("")
        out.append("Latency spikes (an interval with a request over 1 s, or p99 above 5× the median interval p99 of %s): %s" % (
            fmt_lat(med_p99), "; ".join(spikes)))
    if d["stalls"]:
        st = d["stalls"]
        out.append("")
        out.append("## Stalls")
        out.append("")
        out.append("The client checks every second for requests in flight for over 2 s. %d such reports between "
                   "t=%s s and t=%s s; the first and the last few (`kind:key shard@port=requests/oldest age`, "
                   "then each node's `name:commits:seq` from `/status`):" % (len(st), st[0]["t"], st[-1]["t"]))
        out.append("")
        for x in (st[:6] + (st[-3:] if len(st) > 9 else st[6:])):
            out.append("    t=%s: %s in flight > 2 s: %s; nodes %s" % (x["t"], x["inflight_over_2s"], x["by"], x["nodes"]))
    if d["kinds"]:
        out.append("")
        out.append("## Problems")
        out.append("")
        for k in d["kinds"]:
            out.append("- %s × %s" % (k["count"], k["what"]))
        if d["examples"]:
            out.append("")
            out.append("First examples:")
            out.append("")
            for e in d["examples"]:
                out.append("    " + e)
    return "\n".join(out) + "\n", 0 if ok else 1


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "soak":
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("client_out")
        ap.add_argument("--header")
        ap.add_argument("--client-rc", type=int, default=0)
        ap.add_argument("--server-alive", type=int, default=1)
        ap.add_argument("--rss-max-pct", type=float, default=10.0)
        ap.add_argument("--rss-min-mib", type=float, default=16.0)
        a = ap.parse_args()
        text, rc = soak(a.client_out, a.header, a.client_rc, a.server_alive == 1, a.rss_max_pct, a.rss_min_mib)
        sys.stdout.write(text)
        return rc
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
        conns = 64
        if "--conns" in sys.argv:
            conns = int(sys.argv[sys.argv.index("--conns") + 1])
        sys.stdout.write(table(sys.argv[2], header, conns))
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "get":
        # One number of one parsed run (empty output if it cannot be parsed).
        try:
            v = parse(sys.argv[2], sys.argv[3]).get(sys.argv[4])
        except Exception:
            v = None
        if v is not None:
            print(v)
        return 0 if v is not None else 1
    if len(sys.argv) == 4 and sys.argv[1] == "parse":
        r = parse(sys.argv[2], sys.argv[3])
        print(" ".join("%s=%s" % (k, str(v).replace(" ", "_")) for k, v in r.items()))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
