#!/usr/bin/env bash
# Gateway benchmark (issue 2 "Performance", issue 4 "Performance"): one run, same machine, same
# wrk settings, side by side:
#   direct      wrk -> upstream (nginx `return 200 '{"ok":true}'`)            reference only
#   nginx       wrk -> nginx keep-alive reverse proxy -> upstream
#   gw-plain    wrk -> gateway, route auth: none, no rate limits -> upstream
#   gw-jwt      wrk -> gateway, ES256 JWT (jwks_file) + per-user GCRA (claim:sub) -> upstream
#   gw-trace-*  (only if gateway/src/main.rs calls observability::init) gateway with tracing
#               exporting (sampling 1.0, OTLP http/protobuf to a local stub receiver) vs.
#               OTEL_SDK_DISABLED=true
#
# CPU layout on a 2-core machine (override with PROXY_CPU / LOAD_CPU):
#   PROXY_CPU (0): the proxy under test: nginx (master + 1 worker process) or the gateway
#                  (all its threads: 1 proxy worker thread, 1 admin thread, 1 background thread).
#   LOAD_CPU  (1): wrk (1 thread) and the upstream nginx (1 worker) — identical for every proxy.
# In the `direct` row wrk and the upstream share LOAD_CPU, so it is a reference, not a ceiling.
#
# Every proxy writes one access-log line per request to a file (nginx `access_log`, the
# gateway's JSON access log on stdout), as each runs in production.
#
# Usage: bench/gateway.sh            (builds target/release/gateway if missing; never rebuilds)
# Env:   DURATION=15s WARMUP=3s CONNS=50 THREADS=1 TOKENS=100 ROUNDS=1 TRACING=auto|on|off
#        BUILD=1 (run `cargo build --release -p gateway` first), KEEP=1 (keep the temp dir)
# Needs: nginx (nginx-light), wrk, openssl, python3 (stdlib only), taskset. Installs nginx-light
#        and wrk with apt-get if they are missing and we are root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/bench/gateway"
GATEWAY="$ROOT/target/release/gateway"

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-3s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
TOKENS="${TOKENS:-100}"
ROUNDS="${ROUNDS:-1}"
TRACING="${TRACING:-auto}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"

P_UPSTREAM=18081      # upstream (direct target)
P_NGINX=18082         # nginx reverse proxy
P_GW=18083            # gateway public listener (one gateway at a time)
P_GW_ADMIN=18093      # gateway admin listener
P_OTLP=18318          # OTLP/HTTP stub receiver (tracing pair)

say() { printf '%s\n' "$*" >&2; }
die() { say "gateway.sh: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${need_pkgs[*]} ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >/dev/null; } \
      || die "could not install ${need_pkgs[*]}"
  else
    die "missing: ${need_pkgs[*]} (Debian: apt-get install -y ${need_pkgs[*]})"
  fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for c in openssl python3 taskset curl; do command -v "$c" >/dev/null || die "missing: $c"; done
[ "$(nproc)" -ge 2 ] || say "warning: fewer than 2 CPUs; the pinning below shares one core"

BARE="$ROOT/target/release/examples/bare_proxy"
if [ "${BUILD:-0}" = 1 ] || [ ! -x "$GATEWAY" ] || [ ! -x "$BARE" ]; then
  say "building the release gateway and the bare Pingora proxy (cargo build --release -p gateway --bins --examples) ..."
  (cd "$ROOT" && cargo build --release -p gateway --bins --examples) >&2
fi
[ -x "$GATEWAY" ] || die "no $GATEWAY"
[ -x "$BARE" ] || die "no $BARE"

if [ "$TRACING" = auto ]; then
  if grep -q 'observability::init' "$ROOT/gateway/src/main.rs"; then TRACING=on; else TRACING=off; fi
fi

# ---------------------------------------------------------------- temp dir + cleanup
WORK="$(mktemp -d /tmp/gwbench.XXXXXX)"
PIDS=()
# Run a private copy: others may rebuild target/release/gateway while we measure.
cp "$GATEWAY" "$WORK/gateway"
GATEWAY="$WORK/gateway"
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  for f in "$WORK"/nginx-*/nginx.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # url [header]
  local i
  for i in $(seq 1 100); do
    if curl -fsS -o /dev/null ${2:+-H "$2"} "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing answers $1"
}

# ---------------------------------------------------------------- nginx instances
# start_nginx NAME CONF_BODY CPU — runs nginx in the foreground (daemon off) under taskset, so
# the master is our child and every worker inherits the CPU pin.
start_nginx() {
  local name=$1 body=$2 cpu=$3 dir="$WORK/nginx-$1"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  keepalive_requests 1000000;
$body
}
EOF
  "$NGINX" -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" 2>"$dir/test.log" || { cat "$dir/test.log" >&2; die "bad nginx config ($name)"; }
  taskset -c "$cpu" "$NGINX" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" 2>>"$dir/error.log" &
  PIDS+=($!)
  eval "PID_NGINX_${name//-/_}=$!"
}

start_nginx upstream "
  access_log off;
  server {
    listen 127.0.0.1:$P_UPSTREAM backlog=4096;
    location / { default_type application/json; return 200 '{\"ok\":true}'; }
  }
  # OTLP/HTTP stub receiver for the tracing pair: accepts any export with an empty (valid)
  # ExportTraceServiceResponse.
  server {
    listen 127.0.0.1:$P_OTLP;
    access_log $WORK/nginx-upstream/otlp.log;
    client_max_body_size 64m;
    location / { default_type application/x-protobuf; return 200 ''; }
  }" "$LOAD_CPU"

start_nginx proxy "
  access_log $WORK/nginx-proxy/access.log;
  upstream backend { server 127.0.0.1:$P_UPSTREAM; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }" "$PROXY_CPU"

wait_http "http://127.0.0.1:$P_UPSTREAM/"
wait_http "http://127.0.0.1:$P_NGINX/"

# ---------------------------------------------------------------- keys, JWKS, tokens
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/es256.pem" 2>/dev/null
openssl ec -in "$WORK/es256.pem" -pubout -out "$WORK/es256.pub.pem" 2>/dev/null
python3 "$HERE/mint_tokens.py" "$WORK/es256.pem" "$WORK/es256.pub.pem" "$WORK" "$TOKENS" \
  bench-issuer bench-api bench-key-1
TOKEN1="$(head -n1 "$WORK/tokens.txt")"

# ---------------------------------------------------------------- gateway configs
cat >"$WORK/gw-plain.yaml" <<EOF
listeners: { public: "127.0.0.1:$P_GW", admin: "127.0.0.1:$P_GW_ADMIN" }
server: { workers: 1, reload_poll_ms: 0 }
upstreams:
  echo: { endpoints: ["127.0.0.1:$P_UPSTREAM"] }
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: echo
    auth: none
EOF
cat >"$WORK/gw-jwt.yaml" <<EOF
listeners: { public: "127.0.0.1:$P_GW", admin: "127.0.0.1:$P_GW_ADMIN" }
server: { workers: 1, reload_poll_ms: 0 }
issuers:
  bench:
    issuer: bench-issuer
    audiences: [bench-api]
    algorithms: [ES256]
    jwks_file: $WORK/jwks.json
    max_lifetime_secs: 3600
rate_limits:
  per_user:                       # far above what one run can send: we measure cost, not refusals
    key: [claim:sub]
    rate: 1000000
    per: second
    burst: 1000000
upstreams:
  echo: { endpoints: ["127.0.0.1:$P_UPSTREAM"] }
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: echo
    auth: required
    scopes: [bench]
    rate_limits: [per_user]
EOF
for f in gw-plain gw-jwt; do "$GATEWAY" validate "$WORK/$f.yaml" >&2 || die "$f.yaml invalid"; done

GW_PID=""
# start_gateway NAME CONFIG [ENV=VAL ...]
start_gateway() {
  local name=$1 conf=$2; shift 2
  env RUST_LOG=info "$@" taskset -c "$PROXY_CPU" "$GATEWAY" run --config "$conf" \
    >"$WORK/$name.access.log" 2>"$WORK/$name.stderr" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  local i
  for i in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$P_GW_ADMIN/readyz" 2>/dev/null && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/$name.stderr" >&2; die "gateway ($name) exited"; }
    sleep 0.1
  done
}
stop_gateway() {
  [ -n "$GW_PID" ] || return 0
  kill -TERM "$GW_PID" 2>/dev/null || true
  # Pingora drains on SIGTERM; do not wait for the graceful timeout.
  local i; for i in $(seq 1 30); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
  local i2; for i2 in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$P_GW") 2>/dev/null || break; sleep 0.1
  done
}

# ---------------------------------------------------------------- measurement
# cpu_ticks PID... -> total utime+stime (clock ticks) of the processes and all their children
# threads (nginx: master + worker).
cpu_ticks() {
  local total=0 p c
  for p in "$@"; do
    for c in $p $(cat "/proc/$p/task/"*/children 2>/dev/null); do
      [ -r "/proc/$c/stat" ] || continue
      # fields 14 (utime) and 15 (stime); strip "pid (comm) " first, comm may contain spaces
      read -r -a f <<<"$(sed 's/^.*) //' "/proc/$c/stat")"
      total=$((total + f[11] + f[12]))
    done
  done
  echo "$total"
}

to_ms() { # "1.23ms" | "456.00us" | "1.02s" -> ms
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
    else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
    else printf "nan" }'
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
TICK=$(getconf CLK_TCK)

# run_wrk NAME URL PROXY_PIDS [-s SCRIPT -- SCRIPT_ARGS...]
run_wrk() {
  local name=$1 url=$2 pids=$3; shift 3
  local script=() sargs=()
  if [ "${1:-}" = -s ]; then script=(-s "$2"); shift 2; [ "${1:-}" = -- ] && shift; sargs=(-- "$@"); fi
  say "== $name: warm-up $WARMUP"
  taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "${script[@]}" "$url" "${sargs[@]}" >/dev/null
  local before after out
  before=$(cpu_ticks $pids)
  say "== $name: taskset -c $LOAD_CPU wrk -t$THREADS -c$CONNS -d$DURATION --latency ${script[*]} $url ${sargs[*]}"
  out="$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "${script[@]}" "$url" "${sargs[@]}")"
  after=$(cpu_ticks $pids)
  printf '%s\n' "$out" >"$WORK/wrk-$name.txt"
  printf '%s\n' "$out" | sed 's/^/   /' >&2
  local rps p50 p99 non2xx errs total cpu_us
  rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/{print $2}')
  p50=$(to_ms "$(printf '%s\n' "$out" | awk '$1=="50%"{print $2}')")
  p99=$(to_ms "$(printf '%s\n' "$out" | awk '$1=="99%"{print $2}')")
  non2xx=$(printf '%s\n' "$out" | awk '/Non-2xx or 3xx responses:/{print $NF}')
  errs=$(printf '%s\n' "$out" | awk '/Socket errors:/{gsub(",","");s=0;for(i=3;i<=NF;i+=2)s+=$(i+1);print s}')
  total=$(printf '%s\n' "$out" | awk '/requests in/{print $1}')
  # CPU time the proxy spent per request (µs), from /proc; "-" for the direct row.
  if [ -n "$pids" ] && [ "${total:-0}" -gt 0 ]; then
    cpu_us=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$total" 'BEGIN{printf "%.1f", t/hz*1e6/n}')
  else
    cpu_us="-"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}" "${errs:-0}" "$cpu_us" >>"$RESULTS"
}

WRK_JWT=(-s "$HERE/rotate_tokens.lua")

one_round() {
  run_wrk direct "http://127.0.0.1:$P_UPSTREAM/" ""
  run_wrk nginx "http://127.0.0.1:$P_NGINX/" "$PID_NGINX_proxy"

  # The floor: Pingora with no policy, no logging, no telemetry (gateway/examples/bare_proxy.rs).
  taskset -c "$PROXY_CPU" "$BARE" "127.0.0.1:$P_GW" "127.0.0.1:$P_UPSTREAM" >"$WORK/bare.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  local b; for b in $(seq 1 50); do curl -fsS -o /dev/null "http://127.0.0.1:$P_GW/" 2>/dev/null && break; sleep 0.1; done
  run_wrk pingora-bare "http://127.0.0.1:$P_GW/" "$GW_PID"
  stop_gateway

  start_gateway gw-plain "$WORK/gw-plain.yaml"
  curl -fsS "http://127.0.0.1:$P_GW/" | grep -q '"ok"' || die "gw-plain does not proxy"
  run_wrk gw-plain "http://127.0.0.1:$P_GW/" "$GW_PID"
  stop_gateway

  start_gateway gw-jwt "$WORK/gw-jwt.yaml"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_GW/")" = 401 ] \
    || die "gw-jwt accepts a request without a token"
  curl -fsS -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$P_GW/" | grep -q '"ok"' \
    || die "gw-jwt refuses a valid token: $(tail -n2 "$WORK/gw-jwt.access.log")"
  run_wrk gw-jwt "http://127.0.0.1:$P_GW/" "$GW_PID" "${WRK_JWT[@]}" -- "$WORK/tokens.txt"
  stop_gateway

  if [ "$TRACING" = on ]; then
    # Same policy as gw-plain; only the telemetry environment differs.
    start_gateway gw-trace-off "$WORK/gw-plain.yaml" OTEL_SDK_DISABLED=true
    run_wrk gw-trace-off "http://127.0.0.1:$P_GW/" "$GW_PID"
    stop_gateway
    start_gateway gw-trace-on "$WORK/gw-plain.yaml" \
      OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$P_OTLP" \
      OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
      OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0
    run_wrk gw-trace-on "http://127.0.0.1:$P_GW/" "$GW_PID"
    stop_gateway
    # Evidence that spans really left the process: export requests the stub receiver answered.
    local exports non200 warns
    exports=$(grep -c 'POST /v1/traces' "$WORK/nginx-upstream/otlp.log" 2>/dev/null || true)
    non200=$(awk '$9 != 200 {n++} END {print n+0}' "$WORK/nginx-upstream/otlp.log" 2>/dev/null || echo 0)
    warns=$(cat "$WORK/gw-trace-on.stderr" "$WORK/gw-trace-on.access.log" | grep -Ei '"level":"(WARN|ERROR)"|opentelemetry.*(error|drop)' | grep -vc 'No admin token' || true)
    say "   OTLP receiver: ${exports:-0} export requests (cumulative), $non200 non-200; WARN/ERROR lines from the traced gateway: ${warns:-0}"
  fi
}

say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load $(cut -d' ' -f1-3 /proc/loadavg)"
say "versions: $("$NGINX" -v 2>&1), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), gateway $("$GATEWAY" --version 2>/dev/null | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null))"
say "layout: proxy under test on CPU $PROXY_CPU (nginx: 1 worker process; gateway: workers: 1), wrk + upstream on CPU $LOAD_CPU"
if grep -q 'observability::init' "$ROOT/gateway/src/main.rs"; then
  say "tracing pair: $TRACING (gateway/src/main.rs calls observability::init)"
else
  say "tracing pair: $TRACING (gateway/src/main.rs does not call observability::init: the pair would measure nothing)"
fi

for r in $(seq 1 "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && say "---- round $r/$ROUNDS"
  one_round
done

# ---------------------------------------------------------------- report
# Median per row over the rounds (with ROUNDS=1 that is the single run).
python3 - "$RESULTS" "$TRACING" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    name, rps, p50, p99, non2xx, errs, cpu = line.rstrip("\n").split("\t")
    if name not in rows:
        rows[name] = []
        order.append(name)
    rows[name].append((float(rps), float(p50), float(p99), int(non2xx), int(errs), cpu))

def med(name, i):
    return statistics.median(r[i] for r in rows[name])

label = {
    "direct": "upstream direct (reference)",
    "nginx": "nginx keep-alive proxy",
    "pingora-bare": "bare Pingora proxy (floor)",
    "gw-plain": "gateway, no policy",
    "gw-jwt": "gateway, ES256 JWT + GCRA",
    "gw-trace-off": "gateway, OTEL_SDK_DISABLED=true",
    "gw-trace-on": "gateway, tracing on (always_on, OTLP)",
}
n = len(next(iter(rows.values())))
print(f"\n| setup | rps | p50 ms | p99 ms | non-2xx | socket errors | proxy CPU µs/req |   (median of {n} round(s))")
print("|---|---:|---:|---:|---:|---:|---:|")
for name in order:
    cpus = [r[5] for r in rows[name] if r[5] != "-"]
    cpu = f"{statistics.median(float(c) for c in cpus):.1f}" if cpus else "-"
    print(f"| {label.get(name, name)} | {med(name,0):.0f} | {med(name,1):.3f} | {med(name,2):.3f} | "
          f"{sum(r[3] for r in rows[name])} | {sum(r[4] for r in rows[name])} | {cpu} |")

def ratio(a, b, i=0):
    return med(a, i) / med(b, i)

if n > 1:
    print("\nper round, rps (p99 ms):")
    for name in order:
        print(f"  {name:13s} " + "  ".join(f"{r[0]:8.0f} ({r[2]:.2f})" for r in rows[name]))
print()
checks = [
    ("gateway no-policy rps / nginx rps", ratio("gw-plain", "nginx"), ">= 1.00", lambda x: x >= 1.0),
    ("gateway JWT+GCRA rps / nginx rps", ratio("gw-jwt", "nginx"), ">= 0.90", lambda x: x >= 0.9),
    ("gateway no-policy p99 / nginx p99", ratio("gw-plain", "nginx", 2), "<= 1.00", lambda x: x <= 1.0),
    ("gateway JWT+GCRA p99 / nginx p99", ratio("gw-jwt", "nginx", 2), "<= 1.00", lambda x: x <= 1.0),
]
if "gw-trace-on" in rows:
    cost = 1 - ratio("gw-trace-on", "gw-trace-off")
    checks.append(("tracing throughput cost (1 - on/off)", cost, "<= 0.05", lambda x: x <= 0.05))
for what, value, target, ok in checks:
    pass
# CPU the proxy burned per request, from /proc: robust when other tenants steal CPU time.
def cpu(name):
    c = [float(r[5]) for r in rows[name] if r[5] != "-"]
    return statistics.median(c) if c else float("nan")
checks.insert(1, ("  same, by CPU per request (nginx/gw)", cpu("nginx") / cpu("gw-plain"), ">= 1.00", lambda x: x >= 1.0))
checks.insert(3, ("  same, by CPU per request (nginx/gw)", cpu("nginx") / cpu("gw-jwt"), ">= 0.90", lambda x: x >= 0.9))
if "gw-trace-on" in rows:
    checks.append(("  same, by CPU per request (on/off - 1)", cpu("gw-trace-on") / cpu("gw-trace-off") - 1, "<= 0.05", lambda x: x <= 0.05))
for what, value, target, ok in checks:
    print(f"{what:40s} {value:6.3f}   target {target}   {'MET' if ok(value) else 'MISSED'}")
if "pingora-bare" in rows:
    print(f"{'bare Pingora rps / nginx rps':40s} {ratio('pingora-bare', 'nginx'):6.3f}   (the floor: no policy code at all)")
    print(f"{'gateway no-policy rps / bare Pingora':40s} {ratio('gw-plain', 'pingora-bare'):6.3f}   (what the gateway's own work costs)")
if sys.argv[2] != "on":
    print("tracing on/off pair: not run (gateway/src/main.rs does not call observability::init yet)")
bad = [name for name in order if any(r[3] or r[4] for r in rows[name])]
if bad:
    print(f"WARNING: non-2xx responses or socket errors in: {', '.join(bad)}")
print(f"load average at the end: {sys.argv[3]}")
EOF
