#!/usr/bin/env bash
# Memory of idle keep-alive connections (issue 14): the gateway's RSS with N client connections
# open, each after one request, against its RSS before they were opened.
#
#   bench/idle-connections.sh                 # N=10000, the release gateway
#   N=2000 bench/idle-connections.sh
#
# Starts an nginx upstream, the release gateway (no policy, `max_connections` above N,
# `keepalive_timeout_secs: 600` so nothing closes during the measurement) and
# bench/gateway/idle_clients.py (python3 asyncio, stdlib only), which opens N connections, sends
# `GET /idle` on each, reads the 200 and keeps them open. Then it reads VmRSS from
# /proc/PID/status, closes the clients and prints KiB per connection. Needs nginx, python3, curl
# and `ulimit -n` above N + 100 (raised here as far as the hard limit allows). Builds the
# release gateway when missing (`cargo build --release -p gateway --bin gateway`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${N:-10000}"
P_UPSTREAM="${P_UPSTREAM:-18181}"
P_PROXY="${P_PROXY:-18183}"
P_ADMIN="${P_ADMIN:-18193}"
SETTLE="${SETTLE:-3}"

say() { printf '%s\n' "$*" >&2; }
die() { say "idle-connections.sh: $*"; exit 1; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((N + 100)) ] || die "ulimit -n is $(ulimit -n); need more than $((N + 100)) (raise the hard limit)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || die "missing nginx (apt-get install -y nginx-light)"
for c in python3 curl; do command -v "$c" >/dev/null || die "missing: $c"; done
GATEWAY="${GATEWAY_BIN:-$ROOT/target/release/gateway}"   # GATEWAY_BIN: measure another build
if [ ! -x "$GATEWAY" ]; then
  (cd "$ROOT" && cargo build --release -p gateway --bin gateway) >&2
fi

WORK="$(mktemp -d /tmp/gwidle.XXXXXX)"
PIDS=()
cleanup() {
  set +e
  rm -f "$WORK/hold"
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cp "$GATEWAY" "$WORK/gateway"

mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp; fastcgi_temp_path $WORK/nginx/tmp;
  uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UPSTREAM; location / { return 200 '{"ok":true}'; } }
}
EOF
"$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)

cat >"$WORK/gw.yaml" <<EOF
listeners: { public: "127.0.0.1:$P_PROXY", admin: "127.0.0.1:$P_ADMIN" }
server: { workers: 1, reload_poll_ms: 0, max_connections: $((N + 1000)), keepalive_timeout_secs: 600 }
upstreams:
  echo: { endpoints: ["127.0.0.1:$P_UPSTREAM"] }
routes:
  - { name: idle, match: { path_prefix: / }, upstream: echo, auth: none }
EOF
"$WORK/gateway" validate "$WORK/gw.yaml" >/dev/null || die "gw.yaml invalid"
RUST_LOG=info "$WORK/gateway" run --config "$WORK/gw.yaml" >"$WORK/gw.out" 2>"$WORK/gw.err" &
GW=$!
PIDS+=("$GW")
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$P_ADMIN/readyz" 2>/dev/null && break
  kill -0 "$GW" 2>/dev/null || { cat "$WORK/gw.err" >&2; die "gateway exited"; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$P_PROXY/" | grep -q ok || die "gateway does not proxy"

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
# A few requests first, so one-time allocations (pools, the first connection) are in the baseline.
for _ in 1 2 3 4 5; do curl -fsS -o /dev/null "http://127.0.0.1:$P_PROXY/"; done
sleep "$SETTLE"
BEFORE=$(rss_kib "$GW")

touch "$WORK/hold"
python3 "$ROOT/bench/gateway/idle_clients.py" 127.0.0.1 "$P_PROXY" "$N" "$WORK/ready" "$WORK/hold" &
CLIENTS=$!
PIDS+=("$CLIENTS")
for _ in $(seq 1 1200); do
  [ -s "$WORK/ready" ] && break
  kill -0 "$CLIENTS" 2>/dev/null || die "idle_clients.py failed"
  sleep 0.1
done
[ -s "$WORK/ready" ] || die "the clients never got ready"
sleep "$SETTLE"
AFTER=$(rss_kib "$GW")
rm -f "$WORK/hold"
wait "$CLIENTS" || die "some connections were closed while idle"

awk -v b="$BEFORE" -v a="$AFTER" -v n="$N" 'BEGIN{
  printf "gateway RSS: %.1f MiB before, %.1f MiB with %d idle keep-alive connections: %.2f KiB per connection\n",
    b/1024, a/1024, n, (a-b)/n }'
true
