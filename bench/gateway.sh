#!/usr/bin/env bash
# Gateway benchmark (issues 2, 4 and 12 "Performance"): every row in one run, same machine, same
# upstream, two measures side by side:
#
#   callgrind  user-space instructions per request of the proxy process only, under
#              `valgrind --tool=callgrind` (deterministic: the same on a busy machine). The proxy
#              runs under callgrind, h2load sends fixed request counts (`h2load --h1 -n N1`, then
#              `-n N2`), callgrind_control dumps the counters after each batch, and
#              (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one keep-alive request: start-up,
#              warm-up and per-connection costs cancel. Repeated CG_REPEATS times to show it is
#              stable; the time-proportional background (timers, idle threads), measured in an
#              idle window, is subtracted.
#   wrk        rps, p50, p99 with wrk, and the proxy's CPU µs per request from /proc, with the
#              proxy pinned to one core (taskset). Noisy on a shared VM: read ratios of rows of
#              the same run.
#
# Rows (ROWS, default all but the knob rows):
#   direct         wrk -> upstream (nginx `return 200 '{"ok":true}'`)               reference only
#   nginx          nginx keep-alive reverse proxy, access log to a file             the physical limit
#   haproxy        HAProxy (Debian's haproxy), plain keep-alive proxy, access log
#   haproxy-jwt    HAProxy doing the gateway's job: jwt_verify (ES256) + iss/aud/exp/nbf/scope
#                  checks, per-`sub` stick-table rate limit, identity headers, request id
#   pingora-bare   Pingora with no policy (gateway/examples/bare_proxy.rs)          the floor
#   gw-plain       gateway, route auth: none, no rate limits, no exporter
#   gw-jwt         gateway, ES256 JWT (jwks_file, cached) + per-user GCRA (claim:sub)
#   gw-jwt-redis   gw-jwt with the GCRA policy shared through Redis (`store:`, the Redis at
#                  REDIS_URL, default redis://127.0.0.1:6379/0): one EVALSHA per request
#   gw-full        gw-jwt + spans exported over OTLP/gRPC at ratio 1.0 to bench/otlp-sink
#   gw-full-w2     gw-full with `workers: 2`, the proxy on both cores
#   gw-mtls        gw-plain with the upstream over mutual TLS (issue 10): the gateway presents an
#                  SVID (spiffe://vantage.local/gateway) and checks the upstream's
#                  (spiffe://vantage.local/echo); nginx requires the client certificate; pooled
#                  connections are reused as over plain HTTP
#   gw-mtls-nokeep gw-mtls against an upstream that closes after every response
#                  (`keepalive_timeout 0`, no session resumption): a TCP connect and a full TLS 1.3
#                  handshake per request; minus gw-mtls it is the cost of one handshake
# Optional rows: gw-trace-off (gw-plain with OTEL_SDK_DISABLED=true), gw-trace-on (gw-plain with
# export), and with KNOBS=1 Pingora's documented knobs on the bare proxy and the gateway:
#   bare-ws-off (work_stealing: false), bare-lt2 (listener_tasks_per_fd: 2),
#   bare-pool8 / bare-pool1024 (upstream_keepalive_pool_size), bare-t2 / bare-t2-ws-off
#   (threads: 2 on one core), bare-t2-2cpu (threads: 2 on both cores), gw-plain-w2-1cpu
#   (workers: 2 on one core), gw-plain-w2 (workers: 2 on both cores).
#
# CPU layout on a 2-core machine (override with PROXY_CPU / LOAD_CPU):
#   PROXY_CPU (0): the proxy under test (all its threads / processes); *-2cpu and *-w2 rows: both.
#   LOAD_CPU  (1): wrk or h2load (1 thread), the upstream nginx (1 worker), the OTLP sink.
#
# Every proxy writes one access-log line per request to a file (nginx `access_log`, HAProxy
# `log stdout` + `option httplog`, the gateway's JSON access log on stdout), as each runs in
# production; the bare Pingora proxy logs nothing (it is the floor).
#
# Usage: bench/gateway.sh                       (builds the release binaries if missing)
#        ROWS="pingora-bare gw-plain" MEASURE=callgrind bench/gateway.sh
#        KNOBS=1 bench/gateway.sh
# Env:   MEASURE=both|wrk|callgrind  ROWS="..."  KNOBS=0|1  REDIS_URL=redis://127.0.0.1:6379/0 (gw-jwt-redis)
#        wrk:       DURATION=15s WARMUP=3s CONNS=50 THREADS=1 TOKENS=100 ROUNDS=1
#        callgrind: CG_N1=1000 CG_N2=3000 CG_REPEATS=2 CG_WARMUP=500 CG_CONNS=$CONNS
#                   CG_TOKENS=10 (tokens per batch for JWT rows) CG_IDLE=3 (seconds), CG_SETTLE=1 (export rows:
#                   poll the sink this often until its span count stops moving before a dump),
#                   CG_REP_STRINGS=0 (1: let glibc use rep movsb/stosb, counted per byte)
#        PROFILES=DIR (write callgrind_annotate top entries, inclusive and self, for
#        PROFILE_ROWS="pingora-bare gw-plain gw-full" into DIR), REPORT=FILE (copy the report)
#        GW_SERVER="k: v, ..." (extra `server:` settings for every gateway row), GATEWAY_BIN /
#        BARE_BIN / SINK_BIN (measure other builds),
#        SYSCALLS=auto|0|1 (syscalls/request of the proxy in the wrk rows, with `perf stat -e
#        raw_syscalls:sys_enter`), BUILD=1 (rebuild the release binaries first), KEEP=1 (keep the
#        temp dir), BENCH_LOCK=/tmp/vantage-bench.lock (one run at a time: later runs wait)
# Needs: nginx (nginx-light), wrk, haproxy, h2load (nghttp2-client), valgrind, openssl, python3
#        (stdlib only), taskset, curl. Installs the Debian packages with apt-get when missing and
#        we are root; otherwise says what to install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/bench/gateway"

# One run at a time on this machine: the rows listen on fixed ports, so a second run started
# alongside would fail or, worse, measure the first run's processes. Later runs wait their turn
# (BENCH_LOCK, default /tmp/vantage-bench.lock; do not wrap the script in a `flock` of that file
# too: the two locks would wait for each other).
BENCH_LOCK="${BENCH_LOCK:-/tmp/vantage-bench.lock}"
if [ -z "${VANTAGE_BENCH_LOCKED:-}" ] && command -v flock >/dev/null; then
  exec 9>>"$BENCH_LOCK"
  if ! flock -n 9; then
    echo "bench/gateway.sh: another run holds $BENCH_LOCK; waiting for it" >&2
    flock 9
  fi
  export VANTAGE_BENCH_LOCKED=1
fi

MEASURE="${MEASURE:-both}"
DEFAULT_ROWS="direct nginx haproxy haproxy-jwt pingora-bare gw-plain gw-mtls gw-mtls-nokeep gw-jwt gw-jwt-redis gw-full gw-full-w2"
KNOB_ROWS="bare-ws-off bare-lt2 bare-pool8 bare-pool1024 bare-t2 bare-t2-ws-off bare-t2-2cpu gw-plain-w2-1cpu gw-plain-w2"
ROWS="${ROWS:-$DEFAULT_ROWS}"
[ "${KNOBS:-0}" = 1 ] && ROWS="$ROWS $KNOB_ROWS"
DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-3s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
TOKENS="${TOKENS:-100}"
ROUNDS="${ROUNDS:-1}"
CG_N1="${CG_N1:-1000}"
CG_N2="${CG_N2:-3000}"
CG_REPEATS="${CG_REPEATS:-2}"
CG_WARMUP="${CG_WARMUP:-500}"
CG_CONNS="${CG_CONNS:-$CONNS}"
CG_TOKENS="${CG_TOKENS:-10}"
CG_IDLE="${CG_IDLE:-3}"
CG_SETTLE="${CG_SETTLE:-1}"
CG_REP_STRINGS="${CG_REP_STRINGS:-0}"
GW_SERVER="${GW_SERVER:+, $GW_SERVER}"   # extra gateway `server:` settings, e.g. GW_SERVER="connection_buffer_bytes: 16384"
SYSCALLS="${SYSCALLS:-auto}"
PROFILE_ROWS="${PROFILE_ROWS:-pingora-bare gw-plain gw-full}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"

P_UPSTREAM=18081      # upstream (direct target)
P_UPSTREAM_TLS=18082  # the same upstream over mutual TLS, keep-alive (gw-mtls)
P_UPSTREAM_TLS1=18084 # ... closing after every response (gw-mtls-nokeep)
P_PROXY=18083         # the proxy under test (one at a time)
P_GW_ADMIN=18093      # gateway admin listener
P_SINK_GRPC=18317     # bench/otlp-sink, OTLP/gRPC
P_SINK_HTTP=18318     # bench/otlp-sink, OTLP/HTTP and GET /stats

say() { printf '%s\n' "$*" >&2; }
die() { say "gateway.sh: $*"; exit 1; }

case "$MEASURE" in wrk|callgrind|both) ;; *) die "MEASURE must be wrk, callgrind or both (got $MEASURE)";; esac
want_wrk() { [ "$MEASURE" != callgrind ]; }
want_cg() { [ "$MEASURE" != wrk ]; }
has_row() { case " $ROWS " in *" $1 "*) return 0;; esac; return 1; }
for r in $ROWS; do
  case " $DEFAULT_ROWS $KNOB_ROWS gw-trace-off gw-trace-on " in *" $r "*) ;; *) die "unknown row: $r";; esac
done
[ "$CG_N2" -gt "$CG_N1" ] || die "CG_N2 ($CG_N2) must be larger than CG_N1 ($CG_N1)"

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
want_wrk && { command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk); }
if has_row haproxy || has_row haproxy-jwt; then
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
fi
if want_cg; then
  command -v h2load >/dev/null 2>&1 || need_pkgs+=(nghttp2-client)
  command -v callgrind_control >/dev/null 2>&1 || need_pkgs+=(valgrind)
fi
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
if [ "$SYSCALLS" = auto ]; then   # syscalls/request in the wrk rows, when perf can count them
  SYSCALLS=0
  if want_wrk && command -v perf >/dev/null 2>&1 \
    && perf stat -x, -e raw_syscalls:sys_enter true >/dev/null 2>&1; then SYSCALLS=1; fi
  [ "$SYSCALLS" = 1 ] || { want_wrk && say "note: no syscall counts (perf with tracepoints: apt-get install -y linux-perf, run as root)"; } || true
fi
if has_row gw-jwt-redis; then   # the shared-limit row needs a running Redis (never started here)
  command -v redis-cli >/dev/null 2>&1 || die "gw-jwt-redis needs redis-cli (Debian: apt-get install -y redis-tools)"
  redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 \
    || die "gw-jwt-redis: no Redis answers at $REDIS_URL (start one: redis-server --daemonize yes)"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
for c in openssl python3 taskset curl; do command -v "$c" >/dev/null || die "missing: $c"; done
[ "$(nproc)" -ge 2 ] || say "warning: fewer than 2 CPUs; the pinning below shares one core"

# GATEWAY_BIN / BARE_BIN / SINK_BIN measure other builds (e.g. an older commit's) with this script.
GATEWAY="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
BARE="${BARE_BIN:-$ROOT/target/release/examples/bare_proxy}"
SINK="${SINK_BIN:-$ROOT/target/release/otlp-sink}"
# Only what the chosen rows run is needed (the gateway binary also validates its policies).
need_bins=()
case " $ROWS " in *" gw-"*) need_bins+=("$GATEWAY" "$SINK");; esac
case " $ROWS " in *" pingora-bare "*|*" bare-"*) need_bins+=("$BARE");; esac
missing=0
for b in "${need_bins[@]:-}"; do [ -z "$b" ] || [ -x "$b" ] || missing=1; done
if [ "${BUILD:-0}" = 1 ] || [ "$missing" = 1 ]; then
  say "building (cargo build --release -p gateway --bin gateway --example bare_proxy; cargo build --release -p otlp-sink) ..."
  (cd "$ROOT" && cargo build --release -p gateway --bin gateway --example bare_proxy && cargo build --release -p otlp-sink) >&2
fi
for b in "${need_bins[@]:-}"; do [ -z "$b" ] || [ -x "$b" ] || die "no $b"; done

# A leftover from another run on one of our ports would silently answer in place of ours.
for port in "$P_UPSTREAM" "$P_UPSTREAM_TLS" "$P_UPSTREAM_TLS1" "$P_PROXY" "$P_GW_ADMIN" "$P_SINK_GRPC" "$P_SINK_HTTP"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is already in use ($(ss -ltnpH "sport = :$port" 2>/dev/null | sed 's/.*users://' | head -n1)); stop that process first"
  fi
done

# ---------------------------------------------------------------- temp dir + cleanup
WORK="$(mktemp -d /tmp/gwbench.XXXXXX)"
CG="$WORK/callgrind"
mkdir -p "$CG"
PIDS=()
# Run private copies: others may rebuild target/release while we measure.
for b in "${need_bins[@]:-}"; do [ -z "$b" ] || cp "$b" "$WORK/"; done
GATEWAY="$WORK/gateway"; BARE="$WORK/bare_proxy"; SINK="$WORK/otlp-sink"
cleanup() {
  # Never stop half-way: a process that already exited must not abort the rest (set -e).
  set +e
  # Our children and theirs (nginx workers), collected before any of them goes away.
  local p all=()
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && all+=("$p" $(cat "/proc/$p/task/"*/children 2>/dev/null))
  done
  for p in "${all[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${all[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

wait_http() { # url [header]
  local i
  for i in $(seq 1 100); do
    if curl -fsS -o /dev/null ${2:+-H "$2"} "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing answers $1"
}

port_free() { # port: wait until nothing listens on it
  local i; for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0; sleep 0.1
  done
  die "port $1 still taken"
}

# ---------------------------------------------------------------- upstream + OTLP sink
# nginx_conf NAME BODY [MAIN_DIRECTIVES] — writes $WORK/nginx-NAME/nginx.conf (nginx in the
# foreground, so the master is our child and every worker inherits the CPU pin).
nginx_conf() {
  local name=$1 body=$2 main=${3:-} dir="$WORK/nginx-$1"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
$main
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
}

# ---------------------------------------------------------------- workload identities (mTLS rows)
# A trust domain for the run: a CA, the upstream's SVID (spiffe://vantage.local/echo) and the
# gateway's (spiffe://vantage.local/gateway) in spiffe-helper's layout (svid.pem, svid_key.pem,
# svid_bundle.pem), made with the openssl CLI, valid for a day.
PKI="$WORK/pki"
mkdir -p "$PKI/gateway"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
openssl req -x509 -new -key "$PKI/ca.key" -subj "/O=bench/CN=bench trust domain vantage.local" -days 1 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$PKI/ca.crt" 2>/dev/null || die "could not create the run's CA"
svid() { # WORKLOAD KEY_OUT CERT_OUT
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$2" 2>/dev/null
  openssl req -new -key "$2" -subj "/O=bench" -out "$PKI/$1.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=critical,URI:spiffe://vantage.local/$1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth" >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
    -extfile "$PKI/$1.ext" -out "$3" 2>/dev/null || die "could not issue the $1 SVID"
}
svid echo "$PKI/echo.key" "$PKI/echo.crt"
svid gateway "$PKI/gateway/svid_key.pem" "$PKI/gateway/svid.pem"
cp "$PKI/ca.crt" "$PKI/gateway/svid_bundle.pem"

# The upstream echoes the identity header it received (x-seen-user-id) so the set-up checks can
# assert what the upstream actually got; nginx omits the header when it is empty. Its two TLS
# listeners require a client certificate from the run's CA and echo the verification result
# (x-seen-client-verify: SUCCESS).
upstream_location="
    location / {
      default_type application/json;
      add_header x-seen-user-id \$http_x_user_id;
      add_header x-seen-client-verify \$ssl_client_verify;
      return 200 '{\"ok\":true}';
    }"
upstream_tls="
    ssl_certificate $PKI/echo.crt; ssl_certificate_key $PKI/echo.key;
    ssl_client_certificate $PKI/ca.crt; ssl_verify_client on;
    ssl_protocols TLSv1.3;"
nginx_conf upstream "
  access_log off;
  server {
    listen 127.0.0.1:$P_UPSTREAM backlog=4096;$upstream_location
  }
  server {
    listen 127.0.0.1:$P_UPSTREAM_TLS ssl backlog=4096;$upstream_tls$upstream_location
  }
  server {
    listen 127.0.0.1:$P_UPSTREAM_TLS1 ssl backlog=4096;$upstream_tls
    keepalive_timeout 0; ssl_session_tickets off; ssl_session_cache off;$upstream_location
  }"
taskset -c "$LOAD_CPU" "$NGINX" -e "$WORK/nginx-upstream/error.log" -p "$WORK/nginx-upstream" \
  -c "$WORK/nginx-upstream/nginx.conf" 2>>"$WORK/nginx-upstream/error.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_UPSTREAM/"

if [ -x "$SINK" ]; then
  taskset -c "$LOAD_CPU" "$SINK" --grpc "127.0.0.1:$P_SINK_GRPC" --http "127.0.0.1:$P_SINK_HTTP" \
    >"$WORK/otlp-sink.out" 2>"$WORK/otlp-sink.err" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$P_SINK_HTTP/stats"
fi
sink_spans() { curl -fsS "http://127.0.0.1:$P_SINK_HTTP/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["spans"])'; }

# ---------------------------------------------------------------- keys, JWKS, tokens
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/es256.pem" 2>/dev/null
openssl ec -in "$WORK/es256.pem" -pubout -out "$WORK/es256.pub.pem" 2>/dev/null
python3 "$HERE/mint_tokens.py" "$WORK/es256.pem" "$WORK/es256.pub.pem" "$WORK" "$TOKENS" \
  bench-issuer bench-api bench-key-1
TOKEN1="$(head -n1 "$WORK/tokens.txt")"
# The same token with one signature character changed (mid-signature, so it is not a padding bit).
BADSIG="${TOKEN1:0:${#TOKEN1}-10}$([ "${TOKEN1: -10:1}" = A ] && echo B || echo A)${TOKEN1: -9}"
[ "$CG_TOKENS" -le "$TOKENS" ] || die "CG_TOKENS ($CG_TOKENS) must not exceed TOKENS ($TOKENS)"

# ---------------------------------------------------------------- proxy configs
nginx_proxy_body="
  access_log $WORK/nginx-proxy/access.log;
  upstream backend { server 127.0.0.1:$P_UPSTREAM; keepalive 64; }
  server {
    listen 127.0.0.1:$P_PROXY backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
nginx_conf proxy "$nginx_proxy_body"
# Under callgrind nginx runs as one process (no master) so every instruction is in one process.
nginx_conf proxy-cg "${nginx_proxy_body//nginx-proxy\/access.log/nginx-proxy-cg/access.log}" "master_process off;"

haproxy_head() {
  cat <<EOF
global
  nbthread 1
  maxconn 4096
  log stdout format raw local0 info
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
backend echo
  server up 127.0.0.1:$P_UPSTREAM
EOF
}
{ haproxy_head; cat <<EOF
frontend plain
  bind 127.0.0.1:$P_PROXY backlog 4096
  default_backend echo
EOF
} >"$WORK/haproxy-plain.cfg"
# The gateway's gw-jwt job, written the way a HAProxy 2.6 user would (see docs/benchmarks.md for
# where it differs: one key file instead of a JWKS, no verification cache, a sliding-window
# counter instead of GCRA).
{ haproxy_head; cat <<EOF
backend per_user
  stick-table type string len 64 size 100k expire 10m store http_req_rate(1s)
frontend jwt
  bind 127.0.0.1:$P_PROXY backlog 4096
  unique-id-format %[uuid()]
  unique-id-header x-request-id
  option forwardfor
  http-request del-header x-user-id
  http-request del-header x-user-scopes
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str ES256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$WORK/es256.pub.pem") -m int 1 }
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('\$.aud')
  http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.sub')
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('\$.scope')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.nbf) var(txn.bearer),jwt_payload_query('\$.nbf','int')
  http-request set-var(txn.iat) var(txn.bearer),jwt_payload_query('\$.iat','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless { var(txn.iss) -m str bench-issuer }
  http-request deny deny_status 401 unless { var(txn.aud) -m str bench-api }
  http-request deny deny_status 401 unless { var(txn.sub) -m found }
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int le 0 }
  http-request deny deny_status 401 if { var(txn.nbf),sub(txn.now) -m int gt 60 }
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.iat) -m int gt 3600 }
  http-request deny deny_status 403 unless { var(txn.scope) -m reg (^|\ )bench(\ |\$) }
  http-request track-sc0 var(txn.sub) table per_user
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000 }
  http-request set-header x-user-id %[var(txn.sub)]
  http-request set-header x-user-scopes %[var(txn.scope)]
  http-response set-header x-request-id %[unique-id]
  default_backend echo
EOF
} >"$WORK/haproxy-jwt.cfg"
for f in haproxy-plain haproxy-jwt; do
  "$HAPROXY" -c -q -f "$WORK/$f.cfg" >&2 || die "$f.cfg invalid"
done

gw_conf() { # NAME WORKERS POLICY(plain|mtls|mtls-nokeep|jwt|jwt-redis)
  local name=$1 workers=$2 policy=$3 store_line="" upstream="{ endpoints: [\"127.0.0.1:$P_UPSTREAM\"] }"
  local tls="tls: { svid_dir: \"$PKI/gateway\", spiffe_ids: [spiffe://vantage.local/echo] }"
  case $policy in
    mtls) upstream="{ endpoints: [\"127.0.0.1:$P_UPSTREAM_TLS\"], $tls }";;
    # A handshake per request is slow under valgrind (50 at once): no connect timeout may fire.
    mtls-nokeep) upstream="{ endpoints: [\"127.0.0.1:$P_UPSTREAM_TLS1\"], connect_timeout_ms: 60000, $tls }";;
  esac
  {
    cat <<EOF
listeners: { public: "127.0.0.1:$P_PROXY", admin: "127.0.0.1:$P_GW_ADMIN" }
server: { workers: $workers, reload_poll_ms: 0$GW_SERVER }
upstreams:
  echo: $upstream
EOF
    if [ "$policy" != jwt ] && [ "$policy" != jwt-redis ]; then
      cat <<EOF
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: echo
    auth: none
EOF
    else
      if [ "$policy" = jwt-redis ]; then
        # This run's keys only (PREFIX:rl:per_user:…); they expire with their buckets.
        store_line="    store: shared"
        cat <<EOF
stores:
  shared: { redis: "$REDIS_URL", timeout_ms: 50, on_error: allow, key_prefix: "vantage-bench-$$" }
EOF
      fi
      cat <<EOF
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
$store_line
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: echo
    auth: required
    scopes: [bench]
    rate_limits: [per_user]
EOF
    fi
  } >"$WORK/$name.yaml"
  "$GATEWAY" validate "$WORK/$name.yaml" >/dev/null || die "$name.yaml invalid"
}
if [ -x "$GATEWAY" ]; then
  gw_conf gw-plain 1 plain
  gw_conf gw-plain-w2 2 plain
  gw_conf gw-mtls 1 mtls
  gw_conf gw-mtls-nokeep 1 mtls-nokeep
  gw_conf gw-jwt 1 jwt
  has_row gw-jwt-redis && gw_conf gw-jwt-redis 1 jwt-redis
  gw_conf gw-jwt-w2 2 jwt
fi

pingora_conf() { # NAME YAML_LINES...: a Pingora server configuration file for bare_proxy
  local name=$1; shift
  printf -- '---\nversion: 1\n' >"$WORK/pingora-$name.yaml"
  printf '%s\n' "$@" >>"$WORK/pingora-$name.yaml"
}
pingora_conf bare-ws-off "threads: 1" "work_stealing: false"
pingora_conf bare-lt2 "threads: 1" "listener_tasks_per_fd: 2"
pingora_conf bare-pool8 "threads: 1" "upstream_keepalive_pool_size: 8"
pingora_conf bare-pool1024 "threads: 1" "upstream_keepalive_pool_size: 1024"
pingora_conf bare-t2 "threads: 2"
pingora_conf bare-t2-ws-off "threads: 2" "work_stealing: false"
pingora_conf bare-t2-2cpu "threads: 2"

OTLP_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$P_SINK_GRPC" OTEL_EXPORTER_OTLP_PROTOCOL=grpc
  OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0)

label_of() {
  case $1 in
    direct) echo "upstream direct (reference)";;
    nginx) echo "nginx keep-alive proxy (the limit)";;
    haproxy) echo "HAProxy, plain proxy";;
    haproxy-jwt) echo "HAProxy, ES256 jwt_verify + stick table + identity headers";;
    pingora-bare) echo "bare Pingora proxy (the floor)";;
    gw-plain) echo "gateway, no policy";;
    gw-jwt) echo "gateway, ES256 JWT (cached) + GCRA";;
    gw-jwt-redis) echo "gateway, ES256 JWT (cached) + GCRA shared in Redis";;
    gw-full) echo "gateway, full policy: JWT + GCRA + spans exported at ratio 1.0";;
    gw-full-w2) echo "gateway, full policy, workers: 2 on 2 cores";;
    gw-mtls) echo "gateway, no policy, upstream over mTLS (connections reused)";;
    gw-mtls-nokeep) echo "gateway, no policy, upstream over mTLS, a new handshake per request";;
    gw-trace-off) echo "gateway, no policy, OTEL_SDK_DISABLED=true";;
    gw-trace-on) echo "gateway, no policy, spans exported at ratio 1.0";;
    bare-ws-off) echo "bare Pingora, work_stealing: false";;
    bare-lt2) echo "bare Pingora, listener_tasks_per_fd: 2";;
    bare-pool8) echo "bare Pingora, upstream_keepalive_pool_size: 8";;
    bare-pool1024) echo "bare Pingora, upstream_keepalive_pool_size: 1024";;
    bare-t2) echo "bare Pingora, threads: 2 on 1 core";;
    bare-t2-ws-off) echo "bare Pingora, threads: 2, work_stealing: false, 1 core";;
    bare-t2-2cpu) echo "bare Pingora, threads: 2 on 2 cores";;
    gw-plain-w2-1cpu) echo "gateway, no policy, workers: 2 on 1 core";;
    gw-plain-w2) echo "gateway, no policy, workers: 2 on 2 cores";;
  esac
}

# ---------------------------------------------------------------- starting and stopping a row
ROW_PID=""; ROW_URL=""; ROW_AUTH=none; ROW_OTLP=0; ROW_CPUS="$PROXY_CPU"
# row_start NAME MODE — MODE native (pinned) or callgrind (pinned, under valgrind).
row_start() {
  local name=$1 mode=$2 cmd=() envs=() ready="http://127.0.0.1:$P_PROXY/"
  ROW_URL="http://127.0.0.1:$P_PROXY/"; ROW_AUTH=none; ROW_OTLP=0; ROW_CPUS="$PROXY_CPU"; ROW_PID=""
  case $name in
    direct) ROW_URL="http://127.0.0.1:$P_UPSTREAM/"; return 0;;
    nginx)
      if [ "$mode" = callgrind ]; then local d="$WORK/nginx-proxy-cg"; else local d="$WORK/nginx-proxy"; fi
      cmd=("$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf");;
    haproxy) cmd=("$HAPROXY" -db -f "$WORK/haproxy-plain.cfg");;
    haproxy-jwt) cmd=("$HAPROXY" -db -f "$WORK/haproxy-jwt.cfg"); ROW_AUTH=jwt;;
    pingora-bare) cmd=("$BARE" "127.0.0.1:$P_PROXY" "127.0.0.1:$P_UPSTREAM");;
    bare-*) cmd=("$BARE" "127.0.0.1:$P_PROXY" "127.0.0.1:$P_UPSTREAM" "$WORK/pingora-$name.yaml");;
    gw-plain|gw-trace-off|gw-trace-on) cmd=("$GATEWAY" run --config "$WORK/gw-plain.yaml");;
    gw-plain-w2|gw-plain-w2-1cpu) cmd=("$GATEWAY" run --config "$WORK/gw-plain-w2.yaml");;
    gw-mtls|gw-mtls-nokeep) cmd=("$GATEWAY" run --config "$WORK/$name.yaml"); ROW_AUTH=mtls;;
    gw-jwt|gw-full) cmd=("$GATEWAY" run --config "$WORK/gw-jwt.yaml"); ROW_AUTH=jwt;;
    gw-jwt-redis) cmd=("$GATEWAY" run --config "$WORK/gw-jwt-redis.yaml"); ROW_AUTH=jwt;;
    gw-full-w2) cmd=("$GATEWAY" run --config "$WORK/gw-jwt-w2.yaml"); ROW_AUTH=jwt;;
    *) die "no such row: $name";;
  esac
  case $name in
    gw-*) ready="http://127.0.0.1:$P_GW_ADMIN/readyz"; envs=(RUST_LOG=info);;
  esac
  case $name in
    gw-full|gw-full-w2|gw-trace-on) envs+=("${OTLP_ENV[@]}"); ROW_OTLP=1;;
    gw-trace-off) envs+=(OTEL_SDK_DISABLED=true);;
  esac
  case $name in
    *-2cpu|gw-full-w2|gw-plain-w2) ROW_CPUS="$PROXY_CPU,$LOAD_CPU";;
  esac
  local wrap=(taskset -c "$ROW_CPUS")
  if [ "$mode" = callgrind ]; then
    # Under valgrind every iteration of `rep movsb`/`rep stosb` counts as one instruction, so a
    # 10 KiB memcpy costs 10 240 "instructions" (it is a few hundred cycles). Make glibc copy and
    # fill with its vector loops instead (~1 instruction per 10 bytes), which tracks cycles
    # better; CG_REP_STRINGS=1 keeps glibc's choice. Applies to every row alike.
    [ "$CG_REP_STRINGS" = 1 ] || envs+=(GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4294967295:glibc.cpu.x86_rep_stosb_threshold=4294967295)
    wrap+=(valgrind --tool=callgrind --callgrind-out-file="$CG/$name.out" --vgdb-prefix="$CG/vgdb"
      --log-file="$CG/$name.valgrind.log")
  fi
  port_free "$P_PROXY"
  env "${envs[@]}" "${wrap[@]}" "${cmd[@]}" >"$WORK/$name.$mode.out" 2>"$WORK/$name.$mode.err" &
  ROW_PID=$!
  PIDS+=("$ROW_PID")
  local i tries=100; [ "$mode" = callgrind ] && tries=1800
  for i in $(seq 1 "$tries"); do
    # Any HTTP answer means it listens (JWT rows answer 401 without a token).
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$ready" 2>/dev/null)" != 000 ] && break
    kill -0 "$ROW_PID" 2>/dev/null || { tail -n 20 "$WORK/$name.$mode.err" >&2; die "$name ($mode) exited"; }
    sleep 0.1
  done
  [ "$i" -lt "$tries" ] || die "$name ($mode) never became ready"
  row_check "$name"
}

# row_check NAME — the row does what it says, asserted on what the upstream received.
row_check() {
  local name=$1 code seen
  if [ "$ROW_AUTH" = jwt ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "$ROW_URL")
    [ "$code" = 401 ] || die "$name answers $code without a token (want 401)"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BADSIG" "$ROW_URL")
    [ "$code" = 401 ] || die "$name answers $code to a forged signature (want 401)"
    seen=$(curl -fsS -D - -o /dev/null -H "Authorization: Bearer $TOKEN1" -H "x-user-id: mallory" "$ROW_URL" \
      | tr -d '\r' | awk -F': ' 'tolower($1)=="x-seen-user-id"{print $2}')
    [ "$seen" = user-0000 ] || die "$name: upstream saw x-user-id '$seen' (want user-0000, the token's sub)"
  elif [ "$ROW_AUTH" = mtls ]; then
    # The upstream verified the gateway's client certificate (nginx answers 400 without one).
    seen=$(curl -fsS -D - -o /dev/null "$ROW_URL" \
      | tr -d '\r' | awk -F': ' 'tolower($1)=="x-seen-client-verify"{print $2}')
    [ "$seen" = SUCCESS ] || die "$name: the upstream's client verification said '$seen' (want SUCCESS)"
  else
    curl -fsS "$ROW_URL" | grep -q '"ok"' || die "$name does not proxy"
  fi
}

row_stop() {
  [ -n "$ROW_PID" ] || return 0
  local kids c
  kids=$(cat "/proc/$ROW_PID/task/"*/children 2>/dev/null || true)   # nginx's worker
  kill -TERM "$ROW_PID" 2>/dev/null || true
  # Pingora drains on SIGTERM and callgrind writes a final dump we do not need: do not wait long.
  local i; for i in $(seq 1 20); do kill -0 "$ROW_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$ROW_PID" 2>/dev/null || true
  for c in $kids; do kill -KILL "$c" 2>/dev/null || true; done
  wait "$ROW_PID" 2>/dev/null || true
  ROW_PID=""
  port_free "$P_PROXY"
}

# ---------------------------------------------------------------- wrk measurement
# proc_counters PID... -> "utime stime switches": CPU clock ticks in user and kernel mode and
# context switches (voluntary + involuntary, every thread) of the processes and their children
# (nginx: master + worker).
proc_counters() {
  local ut=0 st=0 cs=0 p c t f
  for p in "$@"; do
    for c in $p $(cat "/proc/$p/task/"*/children 2>/dev/null); do
      [ -r "/proc/$c/stat" ] || continue
      # fields 14 (utime) and 15 (stime); strip "pid (comm) " first, comm may contain spaces
      read -r -a f <<<"$(sed 's/^.*) //' "/proc/$c/stat")"
      ut=$((ut + f[11])); st=$((st + f[12]))
      for t in /proc/"$c"/task/*/status; do
        cs=$((cs + $(awk '/ctxt_switches:/{s+=$2} END{print s+0}' "$t" 2>/dev/null || echo 0)))
      done
    done
  done
  echo "$ut $st $cs"
}

to_ms() { # "1.23ms" | "456.00us" | "1.02s" -> ms
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
    else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
    else printf "nan" }'
}

RESULTS="$WORK/wrk.tsv"
CG_RESULTS="$WORK/callgrind.tsv"
SPANS="$WORK/spans.tsv"
: >"$RESULTS"; : >"$CG_RESULTS"; : >"$SPANS"
TICK=$(getconf CLK_TCK)

# run_wrk NAME URL PROXY_PIDS [-s SCRIPT -- SCRIPT_ARGS...]
run_wrk() {
  local name=$1 url=$2 pids=$3; shift 3
  local script=() sargs=()
  if [ "${1:-}" = -s ]; then script=(-s "$2"); shift 2; [ "${1:-}" = -- ] && shift; sargs=(-- "$@"); fi
  say "== $name: warm-up $WARMUP"
  WRK_SENT=$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "${script[@]}" "$url" "${sargs[@]}" \
    | awk '/requests in/{print $1}')
  local before after out perf_pid="" plist="" p c
  # Syscalls of the proxy (every thread, nginx's worker too), counted in the kernel by perf.
  if [ "$SYSCALLS" = 1 ] && [ -n "$pids" ]; then
    for p in $pids; do for c in $p $(cat "/proc/$p/task/"*/children 2>/dev/null); do plist="$plist${plist:+,}$c"; done; done
    taskset -c "$LOAD_CPU" perf stat -x, -e raw_syscalls:sys_enter,page-faults -p "$plist" -o "$WORK/perf-$name.txt" &
    perf_pid=$!
    sleep 0.2
  fi
  before=$(proc_counters $pids)
  say "== $name: taskset -c $LOAD_CPU wrk -t$THREADS -c$CONNS -d$DURATION --latency ${script[*]} $url ${sargs[*]}"
  out="$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "${script[@]}" "$url" "${sargs[@]}")"
  after=$(proc_counters $pids)
  local syscalls="-"
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    syscalls=$(awk -F, '/raw_syscalls:sys_enter/{print $1}' "$WORK/perf-$name.txt" 2>/dev/null)
    case "$syscalls" in ''|*[!0-9]*) syscalls="-";; esac
    # Page faults (software event, counted on any VM): in the log only, to explain kernel time
    # that system calls do not (memory returned to the OS and touched again).
    local faults
    faults=$(awk -F, '/page-faults/{print $1}' "$WORK/perf-$name.txt" 2>/dev/null)
    case "$faults" in ''|*[!0-9]*) ;; *) say "   $name: $faults page faults in the run";; esac
  fi
  printf '%s\n' "$out" >"$WORK/wrk-$name.txt"
  WRK_SENT=$(( ${WRK_SENT:-0} + $(printf '%s\n' "$out" | awk '/requests in/{print $1}') ))
  printf '%s\n' "$out" | sed 's/^/   /' >&2
  local rps p50 p99 non2xx errs total cpu_us sys_us cs_req
  rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/{print $2}')
  p50=$(to_ms "$(printf '%s\n' "$out" | awk '$1=="50%"{print $2}')")
  p99=$(to_ms "$(printf '%s\n' "$out" | awk '$1=="99%"{print $2}')")
  non2xx=$(printf '%s\n' "$out" | awk '/Non-2xx or 3xx responses:/{print $NF}')
  errs=$(printf '%s\n' "$out" | awk '/Socket errors:/{gsub(",","");s=0;for(i=3;i<=NF;i+=2)s+=$(i+1);print s}')
  total=$(printf '%s\n' "$out" | awk '/requests in/{print $1}')
  # CPU time the proxy spent per request (µs; of it in the kernel) and its context switches per
  # request, from /proc; "-" for the direct row.
  if [ -n "$pids" ] && [ "${total:-0}" -gt 0 ]; then
    read -r cpu_us sys_us cs_req <<<"$(awk -v b="$before" -v a="$after" -v hz="$TICK" -v n="$total" 'BEGIN{
      split(b, x, " "); split(a, y, " ")
      printf "%.1f %.1f %.3f", (y[1]-x[1]+y[2]-x[2])/hz*1e6/n, (y[2]-x[2])/hz*1e6/n, (y[3]-x[3])/n }')"
  else
    cpu_us="-"; sys_us="-"; cs_req="-"
  fi
  # perf counted a little before and after the run too (0.2 s of warm-up-free idle): negligible.
  local sc_req="-"
  [ "$syscalls" != - ] && [ "${total:-0}" -gt 0 ] && sc_req=$(awk -v s="$syscalls" -v n="$total" 'BEGIN{printf "%.2f", s/n}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}" "${errs:-0}" "$cpu_us" "${total:-0}" "$sys_us" "$cs_req" "$sc_req" >>"$RESULTS"
}

WRK_SENT=0
wrk_row() {
  local name=$1 spans0=0 spans1
  row_start "$name" native
  [ "$ROW_OTLP" = 1 ] && spans0=$(sink_spans)
  if [ "$ROW_AUTH" = jwt ]; then
    run_wrk "$name" "$ROW_URL" "$ROW_PID" -s "$HERE/rotate_tokens.lua" -- "$WORK/tokens.txt"
  else
    run_wrk "$name" "$ROW_URL" "$ROW_PID"
  fi
  if [ "$ROW_OTLP" = 1 ]; then
    # Spans queued at the end still go out; what never arrives was dropped (queue full).
    cg_settle
    spans1=$(sink_spans)
    printf 'wrk\t%s\t%s\t%s\n' "$name" "$((spans1 - spans0))" "$WRK_SENT" >>"$SPANS"
    say "   OTLP sink: $((spans1 - spans0)) spans received for $WRK_SENT requests (warm-up + run)"
  fi
  row_stop
}

# ---------------------------------------------------------------- callgrind measurement
CG_DUMPS=0
CG_LAST_T=0
CG_IR=0
CG_DUR=0
# cg_dump NAME TAG — dump (and zero) the counters; sets CG_IR (instructions since the last dump
# or zero) and CG_DUR (seconds since then).
cg_dump() {
  local name=$1 tag=$2 f now
  callgrind_control --vgdb-prefix="$CG/vgdb" --dump="$tag" "$ROW_PID" >>"$CG/control.log" 2>&1 \
    || die "callgrind_control could not dump $name"
  now=$(date +%s.%N)
  CG_DUMPS=$((CG_DUMPS + 1))
  f="$CG/$name.out.$CG_DUMPS"
  local i; for i in $(seq 1 100); do grep -q '^totals:' "$f" 2>/dev/null && break; sleep 0.1; done
  grep -q "^desc: Trigger: dump $tag\$" "$f" || die "callgrind dump $f is not $tag"
  CG_IR=$(awk '/^summary:/{print $2}' "$f")
  CG_DUR=$(awk -v a="$now" -v b="$CG_LAST_T" 'BEGIN{printf "%.3f", a-b}')
  CG_LAST_T=$now
}

# h2load_batch N — exactly N requests (JWT rows: N/CG_TOKENS with each of CG_TOKENS tokens, one
# h2load run per token) over H2_CONNS connections per run; dies unless all of them got a 2xx.
# Sets H2_DONE (requests done). Both batch sizes must open the same number of connections, or
# the per-connection cost would not cancel in the subtraction: H2_CONNS is set once per row.
H2_DONE=0
H2_CONNS=$CG_CONNS
h2load_batch() {
  local n=$1 runs=1 per c=$H2_CONNS out done=0 t hdr=()
  [ "$ROW_AUTH" = jwt ] && runs=$CG_TOKENS
  per=$((n / runs)); [ "$per" -lt "$c" ] && c=$per
  for t in $(seq 1 "$runs"); do
    hdr=()
    [ "$ROW_AUTH" = jwt ] && hdr=(-H "authorization: Bearer $(sed -n "${t}p" "$WORK/tokens.txt")")
    out=$(taskset -c "$LOAD_CPU" h2load --h1 -n "$per" -c "$c" -t 1 "${hdr[@]}" "$ROW_URL" 2>&1) \
      || { printf '%s\n' "$out" >&2; die "h2load failed"; }
    local ok two
    ok=$(printf '%s\n' "$out" | awk '/^requests:/{print $8}')
    two=$(printf '%s\n' "$out" | awk '/^status codes:/{print $3}')
    [ "$ok" = "$per" ] && [ "$two" = "$per" ] || { printf '%s\n' "$out" >&2; die "h2load: $ok of $per succeeded, $two 2xx"; }
    done=$((done + per))
  done
  H2_DONE=$done
}

# cg_settle — export rows (wrk rows too): wait until the sink's span count stops moving, so each batch's dump
# holds the export of exactly its own spans (the SDK exports every 500 ms, slower under callgrind).
cg_settle() {
  [ "$ROW_OTLP" = 1 ] || return 0
  local last=-1 now i
  for i in $(seq 1 120); do
    sleep "$CG_SETTLE"
    now=$(sink_spans)
    [ "$now" = "$last" ] && return 0
    last=$now
  done
  die "the OTLP sink's span count never settled"
}

cg_row() {
  local name=$1 rep n spans0=0 spans1
  CG_DUMPS=0
  say "== $name: under callgrind (warm-up $CG_WARMUP, then ${CG_REPEATS}x [$CG_N1, $CG_N2] requests, $CG_CONNS connections)"
  row_start "$name" callgrind
  local runs=1; [ "$ROW_AUTH" = jwt ] && runs=$CG_TOKENS
  H2_CONNS=$CG_CONNS
  [ $((CG_N1 / runs)) -lt "$H2_CONNS" ] && H2_CONNS=$((CG_N1 / runs))
  [ "$H2_CONNS" -ge 1 ] || die "CG_N1 ($CG_N1) is smaller than the $runs h2load runs of a batch"
  [ "$H2_CONNS" = "$CG_CONNS" ] || say "   note: $H2_CONNS connections per h2load run (CG_N1/$runs < CG_CONNS)"
  [ "$ROW_OTLP" = 1 ] && spans0=$(sink_spans)
  h2load_batch "$CG_WARMUP"
  CG_SENT=$H2_DONE
  # Start counting here: start-up and warm-up (first connections, JWT cache fill) are excluded.
  callgrind_control --vgdb-prefix="$CG/vgdb" --zero "$ROW_PID" >>"$CG/control.log" 2>&1 || die "callgrind_control --zero failed"
  CG_LAST_T=$(date +%s.%N)
  for rep in $(seq 1 "$CG_REPEATS"); do
    for n in "$CG_N1" "$CG_N2"; do
      h2load_batch "$n"
      CG_SENT=$((CG_SENT + H2_DONE))
      cg_settle
      cg_dump "$name" "$name-r$rep-n$n"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$H2_DONE" "$CG_IR" "$CG_DUR" "$CG/$name.out.$CG_DUMPS" >>"$CG_RESULTS"
      say "   rep $rep: $H2_DONE requests -> $CG_IR Ir in $CG_DUR s ($((CG_IR / H2_DONE)) Ir/request, start-up excluded, connections included)"
    done
  done
  # Time-proportional background (timer threads, periodic tasks): an idle window.
  sleep "$CG_IDLE"
  cg_dump "$name" "$name-idle"
  printf '%s\tidle\t0\t%s\t%s\t%s\n' "$name" "$CG_IR" "$CG_DUR" "$CG/$name.out.$CG_DUMPS" >>"$CG_RESULTS"
  say "   idle: $CG_IR Ir in $CG_DUR s"
  if [ -n "${PROFILES:-}" ] && case " $PROFILE_ROWS " in *" $name "*) true;; *) false;; esac; then
    cg_profile "$name" "$CG/$name.out.$((CG_DUMPS - 1))" "$CG_N2"
  fi
  if [ "$ROW_OTLP" = 1 ]; then
    cg_settle
    spans1=$(sink_spans)
    printf 'callgrind\t%s\t%s\t%s\n' "$name" "$((spans1 - spans0))" "$CG_SENT" >>"$SPANS"
    say "   OTLP sink: $((spans1 - spans0)) spans received for $CG_SENT requests (warm-up + batches)"
  fi
  row_stop
}

# cg_profile NAME DUMP REQUESTS — callgrind_annotate of one steady-state batch (REQUESTS
# keep-alive requests, no start-up), inclusive and self, into $PROFILES.
cg_profile() {
  local name=$1 dump=$2 n=$3
  mkdir -p "$PROFILES"
  # Calls still on the stack when callgrind dumps are written as `calls=0`; callgrind_annotate
  # 3.19 then books their whole inclusive cost as the caller's self cost (the thread entry shows
  # 100 % self). Count them as one call so self and inclusive costs are both right.
  sed 's/^calls=0 /calls=1 /' "$dump" >"$dump.annotate"
  local kind
  for kind in inclusive self; do
    local incl=no; [ "$kind" = inclusive ] && incl=yes
    {
      echo "# $(label_of "$name"): callgrind_annotate --inclusive=$incl of one batch of $n keep-alive requests"
      echo "# (bench/gateway.sh, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null), $(date -u +%FT%TZ));"
      echo "# the first column divides Ir by $n: instructions per request."
      # Inclusive lists start with the thread entry, tokio and Pingora frames: keep more lines.
      local top=60; [ "$kind" = inclusive ] && top=150
      callgrind_annotate --inclusive="$incl" --threshold=100 --auto=no "$dump.annotate" 2>/dev/null \
        | python3 "$HERE/per_request.py" "$n" "$top"
    } >"$PROFILES/$name.$kind.txt"
  done
  # The gateway's own code and the span exporter, inclusive: where the difference to the floor is.
  {
    echo "# $(label_of "$name"): inclusive Ir/request of gateway::, observability:: and the OTLP exporter"
    echo "# (functions with at least 0.3 % of the batch; from $PROFILES/$name.inclusive.txt's run)"
    callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$dump.annotate" 2>/dev/null \
      | python3 "$HERE/per_request.py" "$n" 1000000 \
      | grep -E 'gateway::|observability::|opentelemetry|tonic::|prost::' \
      | awk 'match($0, /\( *[0-9.]+%\)/) { p = substr($0, RSTART + 1, RLENGTH - 3); if (p + 0 >= 0.3) print }' | head -n 60 \
      || true   # the bare proxy has none of these functions: grep finds nothing
  } >"$PROFILES/$name.ours.txt"
  say "   profile: $PROFILES/$name.{inclusive,self,ours}.txt"
}

# ---------------------------------------------------------------- run
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load $(cut -d' ' -f1-3 /proc/loadavg)"
# (|| true: `head` may close the pipe early, and pipefail would make that fatal.)
VERSIONS="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $( ("$HAPROXY" -v 2>/dev/null || true) | head -n1 | cut -d' ' -f1-3)"
want_wrk && VERSIONS="$VERSIONS, $( (wrk -v 2>&1 || true) | head -n1 | cut -d' ' -f1-2)"
want_cg && VERSIONS="$VERSIONS, $( (h2load --version 2>&1 || true) | head -n1), $(valgrind --version)"
[ -x "$GATEWAY" ] && VERSIONS="$VERSIONS, gateway $("$GATEWAY" --version 2>/dev/null | awk '{print $2}')"
VERSIONS="$VERSIONS, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- gateway observability 2>/dev/null || echo '+local changes')"
say "versions: $VERSIONS"
say "layout: proxy under test on CPU $PROXY_CPU (nginx: 1 worker; HAProxy: nbthread 1; Pingora/gateway: 1 worker thread), load + upstream + OTLP sink on CPU $LOAD_CPU"
say "rows: $ROWS; measures: $MEASURE"
START_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
START_TIME="$(date -u +%FT%TZ)"

if want_wrk; then
  for r in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && say "---- wrk round $r/$ROUNDS"
    for row in $ROWS; do wrk_row "$row"; done
  done
fi
WRK_DONE_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
if want_cg; then
  for row in $ROWS; do
    [ "$row" = direct ] && continue
    cg_row "$row"
  done
fi

# ---------------------------------------------------------------- report
python3 "$HERE/report.py" --wrk "$RESULTS" --callgrind "$CG_RESULTS" --spans "$SPANS" \
  --rows "$ROWS" --labels "$(for r in $ROWS; do printf '%s=%s\n' "$r" "$(label_of "$r")"; done)" \
  --meta "started $START_TIME, load average $START_LOAD at the start, $WRK_DONE_LOAD after the wrk rows, $(cut -d' ' -f1-3 /proc/loadavg) at the end; $VERSIONS" \
  --wrk-cmd "taskset -c $LOAD_CPU wrk -t$THREADS -c$CONNS -d$DURATION --latency (warm-up $WARMUP), $ROUNDS round(s)" \
  --cg-cmd "taskset -c $LOAD_CPU h2load --h1 -c$CG_CONNS -t1 -n {$CG_N1,$CG_N2}, JWT rows split over $CG_TOKENS tokens, ${CG_REPEATS} repeats, warm-up $CG_WARMUP" \
  >"$WORK/report.md"
cat "$WORK/report.md"
[ -n "${REPORT:-}" ] && cp "$WORK/report.md" "$REPORT" && say "report copied to $REPORT"
true
