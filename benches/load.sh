#!/usr/bin/env bash
# Load test: the same small request sent directly to a fast upstream, through portcullis,
# and through nginx as a plain reverse proxy, interleaved in one run; prints medians and
# ratios. Needs wrk and nginx (Debian packages); builds portcullis in release mode.
#
#   benches/load.sh [--rounds N] [--duration S] [--connections C]
#
# Bounded: ROUNDS x 3 targets x DURATION seconds, on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3 DURATION=10 CONNS=256
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for t in wrk nginx; do command -v $t >/dev/null || { echo "needs $t (apt-get install $t)" >&2; exit 2; }; done

WORKERS=${WORKERS:-$(nproc)}
cargo build --release --quiet
BIN=target/release/portcullis
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$DIR"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port); PC=$(free_port)

# The upstream: nginx answering a small body from memory, one worker (it must not be
# the bottleneck of the direct run either; it is the same in all three).
mkdir -p "$DIR/up" "$DIR/ng"
cat > "$DIR/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $DIR/up/pid; error_log $DIR/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
# nginx as a plain reverse proxy: as many workers as portcullis has threads, keep-alive
# pool to the upstream at least as large as the connection count.
cat > "$DIR/ng/nginx.conf" <<CONF
daemon off; worker_processes $WORKERS; pid $DIR/ng/pid; error_log $DIR/ng/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive $CONNS; }
  server { listen 127.0.0.1:$NG;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$DIR/portcullis.toml" <<CONF
[server]
listen = "127.0.0.1:$PC"
admin_listen = "off"
workers = $WORKERS
[server.limits]
max_connections = 100000
[[upstream]]
name = "app"
url = "http://127.0.0.1:$UP"
pool_max_idle = $CONNS
[[route]]
path = "/"
upstream = "app"
auth = "public"
CONF
nginx -c "$DIR/up/nginx.conf" -e "$DIR/up/error.log" & PIDS+=($!)
nginx -c "$DIR/ng/nginx.conf" -e "$DIR/ng/error.log" & PIDS+=($!)
RUST_LOG=warn "$BIN" --config "$DIR/portcullis.toml" 2>"$DIR/portcullis.log" & PC_PID=$!; PIDS+=($PC_PID)
for port in $UP $NG $PC; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
nginx_ticks() { local t=0; for p in $(pgrep -f "nginx.*$DIR/ng/nginx.conf" || true) $(pgrep -P "$(cat "$DIR/ng/pid")" || true); do t=$((t + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done; echo $t; }

# wrk -> "rps p50_ms p99_ms requests"
run_wrk() {
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/" 2>&1 | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ {rps=$2} / 50%/ {p50=ms($2)} / 99%/ {p99=ms($2)} /requests in/ {n=$1}
    END {printf "%s %s %s %s\n", rps, p50, p99, n}'
}

echo "machine: $(nproc) cores, $(uname -r); workers=$WORKERS connections=$CONNS duration=${DURATION}s rounds=$ROUNDS"
declare -a D_RPS D_P50 D_P99 P_RPS P_P50 P_P99 N_RPS N_P50 N_P99 P_CPU N_CPU
for r in $(seq "$ROUNDS"); do
  read -r rps p50 p99 n < <(run_wrk "$UP"); D_RPS+=("$rps"); D_P50+=("$p50"); D_P99+=("$p99")
  c0=$(cpu_ticks $PC_PID); read -r rps p50 p99 n < <(run_wrk "$PC"); c1=$(cpu_ticks $PC_PID)
  P_RPS+=("$rps"); P_P50+=("$p50"); P_P99+=("$p99"); P_CPU+=("$(python3 -c "print(($c1-$c0)*1e6/$(getconf CLK_TCK)/max($n,1))")")
  c0=$(nginx_ticks); read -r rps p50 p99 n < <(run_wrk "$NG"); c1=$(nginx_ticks)
  N_RPS+=("$rps"); N_P50+=("$p50"); N_P99+=("$p99"); N_CPU+=("$(python3 -c "print(($c1-$c0)*1e6/$(getconf CLK_TCK)/max($n,1))")")
  echo "round $r: direct ${D_RPS[-1]} rps | portcullis ${P_RPS[-1]} rps p99 ${P_P99[-1]}ms | nginx ${N_RPS[-1]} rps p99 ${N_P99[-1]}ms"
done
RSS=$(awk '/VmRSS/ {print $2}' /proc/$PC_PID/status)
HWM=$(awk '/VmHWM/ {print $2}' /proc/$PC_PID/status)

python3 - "$RSS" "$HWM" <<PY
import statistics as s, sys
m = lambda xs: s.median(float(x) for x in xs)
d = dict(rps=m("${D_RPS[*]}".split()), p50=m("${D_P50[*]}".split()), p99=m("${D_P99[*]}".split()))
p = dict(rps=m("${P_RPS[*]}".split()), p50=m("${P_P50[*]}".split()), p99=m("${P_P99[*]}".split()), cpu=m("${P_CPU[*]}".split()))
n = dict(rps=m("${N_RPS[*]}".split()), p50=m("${N_P50[*]}".split()), p99=m("${N_P99[*]}".split()), cpu=m("${N_CPU[*]}".split()))
print()
print(f"{'target':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}")
print(f"{'direct':<12}{d['rps']:>10.0f}{d['p50']:>9.2f}{d['p99']:>9.2f}{'':>12}")
print(f"{'portcullis':<12}{p['rps']:>10.0f}{p['p50']:>9.2f}{p['p99']:>9.2f}{p['cpu']:>12.1f}")
print(f"{'nginx':<12}{n['rps']:>10.0f}{n['p50']:>9.2f}{n['p99']:>9.2f}{n['cpu']:>12.1f}")
print()
print(f"portcullis/nginx req/s: {p['rps']/n['rps']:.2f}x   p99: {p['p99']/n['p99']:.2f}x   CPU/req: {p['cpu']/max(n['cpu'],1e-9):.2f}x")
print(f"portcullis/direct req/s: {p['rps']/d['rps']:.2f}x")
print(f"portcullis RSS after run: {int(sys.argv[1])/1024:.1f} MiB (peak {int(sys.argv[2])/1024:.1f} MiB) at {${CONNS}} connections")
PY
