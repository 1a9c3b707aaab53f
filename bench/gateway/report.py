#!/usr/bin/env python3
"""The report of bench/gateway.sh: one table with both measures, then the ratios the targets use.

usage: report.py --wrk WRK.tsv --callgrind CG.tsv --spans SPANS.tsv --rows "a b ..."
                 --labels "a=label\\n..." --meta TEXT --wrk-cmd TEXT --cg-cmd TEXT

WRK.tsv:  name rps p50_ms p99_ms non2xx socket_errors cpu_us_per_req requests sys_us_per_req
          context_switches_per_req syscalls_per_req   (one line per round)
CG.tsv:   name rep requests Ir seconds dump_file     (rep "idle": an idle window, requests 0;
          rep "settle": the pause before it, not used)
SPANS.tsv: measure name spans_received requests_sent

Instructions per request, per repeat: (Ir(N2) - Ir(N1) - idle_rate * (t(N2) - t(N1))) /
(N2 - N1), where Ir(N) is what callgrind counted between two dumps around a batch of N requests
and idle_rate is Ir/s in the idle window (time-proportional background work).
Prints Markdown on stdout.
"""
import argparse
import math
import statistics

NAN = float("nan")


def read_tsv(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def wrk_rows(path):
    rows = {}
    def num(v):
        return float(v) if v != "-" else NAN
    for name, rps, p50, p99, non2xx, errs, cpu, total, sys_us, switches, syscalls in read_tsv(path):
        rows.setdefault(name, []).append({
            "rps": float(rps), "p50": float(p50), "p99": float(p99), "non2xx": int(non2xx),
            "errs": int(errs), "cpu": num(cpu), "requests": int(total), "sys": num(sys_us),
            "cs": num(switches), "sc": num(syscalls),
        })
    return rows


def cg_rows(path):
    raw = {}
    for name, rep, requests, ir, secs, _dump in read_tsv(path):
        raw.setdefault(name, []).append((rep, int(requests), int(ir), float(secs)))
    out = {}
    for name, entries in raw.items():
        idle = [e for e in entries if e[0] == "idle"]
        idle_rate = idle[0][2] / idle[0][3] if idle and idle[0][3] > 0 else 0.0
        reps = {}
        for rep, requests, ir, secs in entries:
            if rep not in ("idle", "settle"):
                reps.setdefault(rep, []).append((requests, ir, secs))
        per_req, background = [], []
        for rep in sorted(reps, key=int):
            pair = reps[rep]
            if len(pair) != 2:
                continue
            (n1, ir1, t1), (n2, ir2, t2) = pair
            bg = idle_rate * (t2 - t1)
            per_req.append((ir2 - ir1 - bg) / (n2 - n1))
            background.append(bg / (ir2 - ir1) if ir2 != ir1 else 0.0)
        if not per_req:
            continue
        mean = statistics.fmean(per_req)
        out[name] = {
            "ir": mean,
            "reps": per_req,
            "spread": (max(per_req) - min(per_req)) / mean if mean else NAN,
            "idle_rate": idle_rate,
            "background": statistics.fmean(background),
            "requests": sum(n for pair in reps.values() for n, _, _ in pair),
        }
    return out


def med(values):
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else NAN


def fmt(x, spec):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    for a in ("--wrk", "--callgrind", "--spans", "--rows", "--labels", "--meta", "--wrk-cmd", "--cg-cmd"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    order = args.rows.split()
    labels = dict(line.split("=", 1) for line in args.labels.splitlines() if "=" in line)
    wrk = wrk_rows(args.wrk)
    cg = cg_rows(args.callgrind)
    spans = read_tsv(args.spans)

    def w(name, key):
        return med([r[key] for r in wrk.get(name, [])]) if name in wrk else NAN

    def c(name):
        return cg[name]["ir"] if name in cg else NAN

    def cpu_cell(name):
        if math.isnan(w(name, "cpu")):
            return "–"
        return f"{w(name, 'cpu'):.1f} ({w(name, 'sys'):.1f})"

    print("| row | user-space instructions/req (callgrind) | repeats | rps | p50 ms | p99 ms | proxy CPU µs/req (of it kernel) | syscalls/req | context switches/req | non-2xx | socket errors |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in order:
        if name not in wrk and name not in cg:
            continue
        reps = " / ".join(f"{x:,.0f}" for x in cg[name]["reps"]) if name in cg else "–"
        if name in cg:
            reps += f" (±{cg[name]['spread'] * 50:.2f} %)"
        non2xx = sum(r["non2xx"] for r in wrk.get(name, []))
        errs = sum(r["errs"] for r in wrk.get(name, []))
        print(f"| {labels.get(name, name)} | {fmt(c(name), ',.0f')} | {reps} | {fmt(w(name, 'rps'), '.0f')} | "
              f"{fmt(w(name, 'p50'), '.3f')} | {fmt(w(name, 'p99'), '.3f')} | {cpu_cell(name)} | "
              f"{fmt(w(name, 'sc'), '.2f')} | {fmt(w(name, 'cs'), '.3f')} | {non2xx if name in wrk else '–'} | {errs if name in wrk else '–'} |")
    print()
    print(f"- wrk: {args.wrk_cmd}; median over rounds. callgrind: {args.cg_cmd}.")
    print(f"- {args.meta}")
    if cg:
        bg = max(v["background"] for v in cg.values())
        print(f"- callgrind background (idle-window Ir/s × batch time) subtracted: at most {bg * 100:.2f} % of a batch's count.")
    for measure, name, n, sent in spans:
        what = "wrk warm-up + run, one round" if measure == "wrk" else "callgrind warm-up + batches"
        per = int(n) / int(sent) if int(sent) else NAN
        print(f"- OTLP sink, {labels.get(name, name)} ({what}): {int(n):,} spans received and decoded "
              f"(OTLP/gRPC) for {int(sent):,} requests = {fmt(per, '.3f')} per request "
              "(each proxied request makes 2: SERVER + CLIENT; fewer means the export queue dropped spans).")
    print()

    def ratio(a, b):
        return a / b if b and not math.isnan(a) and not math.isnan(b) else NAN

    targets = [
        ("no policy / bare Pingora, instructions/req", ratio(c("gw-plain"), c("pingora-bare")), "<=", 1.25),
        ("full policy / bare Pingora, instructions/req", ratio(c("gw-full"), c("pingora-bare")), "<=", 1.6),
        ("full policy / HAProxy-JWT, CPU µs/req (wrk)", ratio(w("gw-full", "cpu"), w("haproxy-jwt", "cpu")), "<=", 0.4),
        ("full policy / HAProxy-JWT, instructions/req", ratio(c("gw-full"), c("haproxy-jwt")), "<=", 0.4),
        ("no policy rps / bare Pingora rps", ratio(w("gw-plain", "rps"), w("pingora-bare", "rps")), ">=", 0.9),
        ("  same, by CPU µs/req (bare / no policy)", ratio(w("pingora-bare", "cpu"), w("gw-plain", "cpu")), ">=", 0.9),
        ("no policy p99 / nginx p99 (wrk -c50)", ratio(w("gw-plain", "p99"), w("nginx", "p99")), "<=", 1.5),
        ("full policy p99 / nginx p99 (wrk -c50)", ratio(w("gw-full", "p99"), w("nginx", "p99")), "<=", 1.5),
        ("workers: 2 rps / workers: 1 rps (full policy)", ratio(w("gw-full-w2", "rps"), w("gw-full", "rps")), ">=", 1.7),
        ("  same, CPU µs/req workers: 1 / workers: 2", ratio(w("gw-full", "cpu"), w("gw-full-w2", "cpu")), "", None),
        ("upstream mTLS / plain, CPU µs/req (connections reused)", ratio(w("gw-mtls", "cpu"), w("gw-plain", "cpu")), "<=", 1.1),
        ("upstream mTLS / plain, instructions/req", ratio(c("gw-mtls"), c("gw-plain")), "<=", 1.1),
        ("shared (Redis) / local GCRA, CPU µs/req", ratio(w("gw-jwt-redis", "cpu"), w("gw-jwt", "cpu")), "<=", 1.15),
        ("shared (Redis) / local GCRA, instructions/req", ratio(c("gw-jwt-redis"), c("gw-jwt")), "<=", 1.15),
    ]
    print("| ratio (same run) | value | target | verdict |")
    print("|---|---:|---|---|")
    for what, value, op, goal in targets:
        if goal is None:
            verdict, target = "(efficiency)", "–"
        elif math.isnan(value):
            verdict, target = "not measured", f"{op} {goal}"
        else:
            ok = value <= goal if op == "<=" else value >= goal
            verdict, target = ("met" if ok else "**missed**"), f"{op} {goal}"
        print(f"| {what} | {fmt(value, '.3f')} | {target} | {verdict} |")
    print()
    context = [
        ("bare Pingora / nginx", "pingora-bare", "nginx"),
        ("HAProxy plain / nginx", "haproxy", "nginx"),
        ("HAProxy JWT / HAProxy plain", "haproxy-jwt", "haproxy"),
        ("gateway JWT+GCRA / no policy", "gw-jwt", "gw-plain"),
        ("gateway full / JWT+GCRA (span export)", "gw-full", "gw-jwt"),
        ("gateway no policy / SDK disabled", "gw-plain", "gw-trace-off"),
        ("gateway export on / no policy", "gw-trace-on", "gw-plain"),
    ]
    lines = [(what, ratio(c(a), c(b)), ratio(w(a, "cpu"), w(b, "cpu")), ratio(w(a, "rps"), w(b, "rps")))
             for what, a, b in context if (a in cg or a in wrk) and (b in cg or b in wrk)]
    if lines:
        print("| context (same run) | instructions/req | CPU µs/req | rps |")
        print("|---|---:|---:|---:|")
        for what, i, cpu, rps in lines:
            print(f"| {what} | {fmt(i, '.3f')} | {fmt(cpu, '.3f')} | {fmt(rps, '.3f')} |")
        print()
    # One upstream TLS handshake (plus its TCP connect): a new connection per request minus reuse.
    hs_i = c("gw-mtls-nokeep") - c("gw-mtls")
    hs_cpu = w("gw-mtls-nokeep", "cpu") - w("gw-mtls", "cpu")
    if not (math.isnan(hs_i) and math.isnan(hs_cpu)):
        print(f"- One upstream mTLS handshake (TCP connect + full TLS 1.3 handshake, ECDSA P-256, client "
              f"certificate, SPIFFE ID check), gw-mtls-nokeep − gw-mtls: {fmt(hs_i, ',.0f')} instructions, "
              f"{fmt(hs_cpu, '.1f')} µs of proxy CPU.")
        print()
    knobs = [n for n in order if (n.startswith("bare-") or "-w2" in n) and n != "gw-full-w2"]
    if knobs:
        print("| knob (vs its default row) | instructions/req | Δ | rps | Δ | CPU µs/req | Δ | syscalls/req | Δ |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in knobs:
            base = "pingora-bare" if name.startswith("bare-") else "gw-plain"

            def delta(a, b):
                r = ratio(a, b)
                return "–" if math.isnan(r) else f"{(r - 1) * 100:+.1f} %"
            print(f"| {labels.get(name, name)} | {fmt(c(name), ',.0f')} | {delta(c(name), c(base))} | "
                  f"{fmt(w(name, 'rps'), '.0f')} | {delta(w(name, 'rps'), w(base, 'rps'))} | "
                  f"{fmt(w(name, 'cpu'), '.1f')} | {delta(w(name, 'cpu'), w(base, 'cpu'))} | "
                  f"{fmt(w(name, 'sc'), '.2f')} | {delta(w(name, 'sc'), w(base, 'sc'))} |")
        print()
    bad = [n for n in order if any(r["non2xx"] or r["errs"] for r in wrk.get(n, []))]
    if bad:
        print(f"WARNING: non-2xx responses or socket errors in: {', '.join(bad)}")


if __name__ == "__main__":
    main()
