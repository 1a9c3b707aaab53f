#!/usr/bin/env bash
# Run with `bench/saga.sh` from the repository root (needs RabbitMQ at AMQP_URL).
#
# Drives checkouts through the real gateway at rising rates and reports, per step:
# orders placed/s, orders completed (SHIPPED)/s, placed→shipped latency p50/p99 (from the
# CloudEvent times in the audit log), messages/s through the broker (sum of every service's
# shop_messages_consumed_total and shop_messages_published_total), and each service's RSS.
#
# Knobs (env): RATES="100 200 400 800 1600" loadgen iterations/s per step (half of the
# iterations are checkouts, half add-to-cart), DURATION_SECS=20 per step, VUS=32 (each one
# registers and logs in first: argon2 at the default cost, so many VUs mostly measure users),
# BASE_PORT=17001, GATEWAY_PORT=18080. The gateway runs the example policy with its rate limits
# raised far above the offered load (the bench measures the saga, not the limiter).
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"100 200 400 800 1600"}
DURATION_SECS=${DURATION_SECS:-20}
VUS=${VUS:-32}
BASE_PORT=${BASE_PORT:-17001}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
ADMIN_PORT=$((GATEWAY_PORT + 1))
SERVICES=(users inventory cart orders payment shipping audit)

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "saga.sh: RabbitMQ is not reachable; start it with: rabbitmq-server -detached" >&2
    exit 1
fi

echo "saga.sh: building release binaries…" >&2
cargo build --release --quiet \
    --bin users --bin inventory --bin cart --bin orders --bin payment --bin shipping --bin audit \
    --bin gateway --bin stack --bin loadgen
BIN="$(pwd)/target/release"

RUN=$(mktemp -d /tmp/saga-bench.XXXXXX)
PREFIX="saga-bench-$$."
echo "saga.sh: run directory $RUN" >&2

# The example policy with every rate limit lifted far above the offered load.
python3 - "$RUN/gateway.yaml" <<'PY'
import sys, yaml
policy = yaml.safe_load(open("gateway/config/example.yaml"))
for limit in policy.get("rate_limits", {}).values():
    if "rate" in limit:
        limit.update(rate=1_000_000, per="second", burst=1_000_000)
    for tier in (limit.get("tiers") or {}).values():
        tier.update(rate=1_000_000, per="second", burst=1_000_000)
yaml.safe_dump(policy, open(sys.argv[1], "w"), sort_keys=False)
PY

SHOP_ADMIN_PASSWORD=bench-admin-password "$BIN/stack" --no-build --bin-dir "$BIN" \
    --run-dir "$RUN/stack" --fresh --queue-prefix "$PREFIX" \
    --base-port "$BASE_PORT" --gateway-addr "127.0.0.1:$GATEWAY_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --gateway-config "$RUN/gateway.yaml" >"$RUN/stack.log" 2>&1 &
STACK_PID=$!
cleanup() {
    kill -INT "$STACK_PID" 2>/dev/null || true
    wait "$STACK_PID" 2>/dev/null || true
    # Delete this run's queues, exchanges (its prefix only, in the stack's vhost) and broker users.
    for q in $(rabbitmqctl -q -p vantage list_queues name 2>/dev/null | grep "^${PREFIX//./\\.}" || true); do
        rabbitmqctl -q -p vantage delete_queue "$q" >/dev/null 2>&1 || true
    done
    for x in $(rabbitmqctl -q -p vantage list_exchanges name 2>/dev/null | grep "^${PREFIX//./\\.}" || true); do
        rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"vantage\">>, exchange, <<\"$x\">>), false, <<\"saga.sh\">>)." >/dev/null 2>&1 || true
    done
    for s in "${SERVICES[@]}"; do
        rabbitmqctl -q delete_user "${PREFIX}$s" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

for _ in $(seq 1 240); do
    grep -q "Vantage is up" "$RUN/stack.log" && break
    kill -0 "$STACK_PID" 2>/dev/null || { cat "$RUN/stack.log" >&2; exit 1; }
    sleep 0.5
done
grep -q "Vantage is up" "$RUN/stack.log" || { echo "saga.sh: stack did not come up" >&2; cat "$RUN/stack.log" >&2; exit 1; }

# Stock large enough that no step runs out (out_of_stock would cut the saga short), set through
# the gateway as the admin. The invariant check below counts from these values.
python3 - "http://127.0.0.1:$GATEWAY_PORT" <<'PY'
import json, sys, urllib.request
base = sys.argv[1]
def call(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req) as r:
        return json.load(r)
token = call("POST", "/api/users/login",
             {"email": "admin@vantage.local", "password": "bench-admin-password"})["access_token"]
for p in call("GET", "/api/products"):
    call("PUT", f"/api/products/{p['id']}/stock", {"available": 10_000_000}, token)
PY

# Sum of one counter over every service's /metrics.
counter_sum() {
    local total=0 port v
    for i in "${!SERVICES[@]}"; do
        port=$((BASE_PORT + i))
        v=$(curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 ~ "^"m"(\\{|$)" {s += $2} END {printf "%d", s}')
        total=$((total + v))
    done
    echo "$total"
}

rss_line() {
    local out="" pid rss
    for svc in "${SERVICES[@]}"; do
        pid=$(pgrep -f "^$BIN/$svc\$" | head -1 || true)
        rss=$([ -n "$pid" ] && ps -o rss= -p "$pid" | tr -d ' ' || echo 0)
        out+="$svc=$((rss / 1024))MB "
    done
    echo "$out"
}

# Where the CPU goes: user+system ticks of each process, read from /proc.
procs() {
    for svc in "${SERVICES[@]}" gateway loadgen; do
        for pid in $(pgrep -f "^$BIN/$svc( |\$)" || true); do echo "$svc:$pid"; done
    done
    for pid in $(pgrep -f "beam.smp.*rabbit" || true); do echo "rabbitmq:$pid"; done
}
cpu_ticks() { # name:pid ... → name=ticks ...
    for p in "$@"; do
        local pid=${p#*:}
        [ -r "/proc/$pid/stat" ] || continue
        echo "${p%%:*}=$(awk '{print $14 + $15}' "/proc/$pid/stat")"
    done
}

RESULTS="$RUN/results.md"
{
    echo "| offered it/s | placed/s | shipped/s | unsettled | p50 placed→shipped | p99 | broker msg/s | RSS per service | CPU % (of one core) |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >"$RESULTS"

for RATE in $RATES; do
    echo "saga.sh: step $RATE iterations/s for ${DURATION_SECS}s…" >&2
    CONSUMED0=$(counter_sum shop_messages_consumed_total)
    PUBLISHED0=$(counter_sum shop_messages_published_total)
    T0=$(date +%s.%N)
    "$BIN/loadgen" --help >/dev/null # warm the page cache; the real run starts below
    CPU0=$(cpu_ticks $(procs | grep -v loadgen))
    "$BIN/loadgen" --gateway-url "http://127.0.0.1:$GATEWAY_PORT" --vus "$VUS" --rate "$RATE" \
        --duration "${DURATION_SECS}s" --weights 0,50,50 --payment-token tok_visa \
        --settle-timeout 30s --max-error-rate 1 --no-progress \
        --summary-json "$RUN/load-$RATE.json" >"$RUN/load-$RATE.txt" 2>&1 || true
    T1=$(date +%s.%N)
    CONSUMED1=$(counter_sum shop_messages_consumed_total)
    PUBLISHED1=$(counter_sum shop_messages_published_total)
    RSS=$(rss_line)
    CPU1=$(cpu_ticks $(procs | grep -v loadgen))
    CPU=$(python3 - "$CPU0" "$CPU1" "$T0" "$T1" "$(getconf CLK_TCK)" <<'PY'
import sys
before = dict(kv.split("=") for kv in sys.argv[1].split())
after = dict(kv.split("=") for kv in sys.argv[2].split())
secs = float(sys.argv[4]) - float(sys.argv[3])
hz = float(sys.argv[5])
print(" ".join(f"{k}={100 * (int(after[k]) - int(before.get(k, after[k]))) / hz / secs:.0f}"
               for k in sorted(after, key=lambda k: -(int(after[k]) - int(before.get(k, after[k]))))))
PY
)
    python3 - "$RUN/stack/data/audit.db" "$T0" "$T1" "$DURATION_SECS" "$RATE" \
        "$((CONSUMED1 - CONSUMED0 + PUBLISHED1 - PUBLISHED0))" "$RSS" "$RUN/load-$RATE.json" "$CPU" >>"$RESULTS" <<'PY'
import json, re, sqlite3, sys
from datetime import datetime
db, t0, t1, duration, rate, messages, rss, summary, cpu = sys.argv[1:]
t0, t1, duration = float(t0), float(t1), float(duration)
def ts(s):
    s = re.sub(r"(\.\d{6})\d+", r"\1", s).replace("Z", "+00:00")
    return datetime.fromisoformat(s).timestamp()
rows = sqlite3.connect(db).execute("SELECT subject, type, time FROM audit_log").fetchall()
placed, shipped = {}, {}
for subject, ty, time in rows:
    if ty == "shop.order.placed.v1":
        placed[subject] = ts(time)
    elif ty == "shop.shipment.scheduled.v1":
        shipped[subject] = ts(time)
window = {o: t for o, t in placed.items() if t0 <= t <= t1}
lat = sorted((shipped[o] - t) * 1000 for o, t in window.items() if o in shipped)
def pct(p):
    return f"{lat[min(len(lat) - 1, int(p * len(lat)))]:.0f} ms" if lat else "n/a"
try:
    unsettled = json.load(open(summary))["orders"]["unsettled"]
except Exception:
    unsettled = "?"
print(f"| {rate} | {len(window) / duration:.0f} | {len(lat) / duration:.0f} | {unsettled} | {pct(0.50)} | {pct(0.99)} "
      f"| {int(messages) / (t1 - t0):.0f} | {rss.strip()} | {cpu} |")
PY
    tail -1 "$RESULTS" >&2
    sleep 5 # let queues drain before the next step
done

echo
cat "$RESULTS"
echo
echo "Raw loadgen output and summaries: $RUN"
