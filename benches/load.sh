#!/usr/bin/env bash
# Load test, interleaved in one run, the same small GET to the same fast upstream (nginx
# answering from memory):
#   direct          straight to the upstream
#   nginx           through nginx as a plain reverse proxy
#   public          through portcullis, route /pub, auth = "public"
#   bearer cached   through portcullis, route /api, auth = "bearer": one valid RS256 JWT
#                   reused (a token-cache hit per request)
#   bearer RS256    the same route, every request a distinct, valid, never-seen RS256 JWT
#                   (a full signature check per request)
#   session         through portcullis, route /app, auth = "login", with the cookie of a
#                   real browser login (authorization code + PKCE) done before measuring
# and prints medians, each portcullis path as a ratio of the public path, the public path
# against nginx, CPU per request and RSS, beside the goals of issues 2, 3 and 4.
#
#   benches/load.sh [--rounds N] [--duration S] [--connections C] [--tokens N] [--warmup S]
#
# Needs wrk, nginx, curl, python3 (Debian packages); builds portcullis and
# examples/bench_env.rs in release mode. bench_env runs the built-in development provider
# (portcullis::dev_idp) on 127.0.0.1: it signs the tokens and is the provider of the
# login route. Everything binds 127.0.0.1 only; the script stops what it started.
#
# Time: ROUNDS x 6 targets x DURATION seconds of load (3 x 6 x 10 s = 3 min), plus the
# minting of the uncached tokens before each round's uncached run, which dominates setup:
# RSA-2048 signing costs ~1 ms of CPU per token (tens of times a verification), so a round
# needs about rate x DURATION tokens. Round 1 mints 0.8 x the best portcullis rate of
# that round x DURATION, later rounds 1.15 x the best uncached rate seen; --tokens N
# fixes the count per round. The script prints how long each minting took (on a busy
# 2-core machine about 500 tokens/s, so 2-6 minutes a round; expect 15-30 minutes in
# all). Tokens never repeat: a run that runs out is discarded and run again once with
# more; a second shortage, any 4xx/5xx answer, or a cached run that misses the cache
# marks the run INVALID (exit status 1).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3 DURATION=10 CONNS=256 TOKENS="" WARMUP=5
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for t in wrk nginx curl python3; do command -v $t >/dev/null || { echo "needs $t (apt-get install $t)" >&2; exit 2; }; done

START=$(date +%s)
WORKERS=${WORKERS:-$(nproc)}
WRK_THREADS=2
cargo build --release --quiet --bin portcullis --example bench_env
BUILT=$(date +%s)
DIR=$(mktemp -d)
# Copies: target/ may be rebuilt by someone else while this runs.
cp target/release/portcullis target/release/examples/bench_env "$DIR/"
BIN=$DIR/portcullis ENV_BIN=$DIR/bench_env
NAME=load.sh
# shellcheck source=benches/env.sh
. benches/env.sh
trap env_cleanup EXIT
LOGS+=("$DIR/portcullis.log")
UP=$(free_port); NG=$(free_port); PC=$(free_port); AD=$(free_port)

# The upstream: nginx answering a small body from memory, one worker (it must not be
# the bottleneck of the direct run either; it is the same for every target).
start_upstream "$UP"
# nginx as a plain reverse proxy: as many workers as portcullis has threads, keep-alive
# pool to the upstream at least as large as the connection count.
mkdir -p "$DIR/ng"
cat > "$DIR/ng/nginx.conf" <<CONF
daemon off; worker_processes $WORKERS; pid $DIR/ng/pid; error_log $DIR/ng/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive $CONNS; }
  server { listen 127.0.0.1:$NG;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c "$DIR/ng/nginx.conf" -e "$DIR/ng/error.log" & PIDS+=($!)

# bench_env: the development provider, and a token minter / login client driven over
# two FIFOs (one command a line, one answer a line: "ok ..." or "err ...").
start_bench_env "$ENV_BIN"
env_cmd token "$DIR/cached.token"
env_cmd mint 4 "$DIR/check.tokens"

SECRET=$(head -c 32 /dev/urandom | base64)
# idle_timeout 8h: a cookie session is re-sealed (a new Set-Cookie) once a tenth of it has
# passed since its last write; 48 minutes is longer than this run, so every request of
# the session target opens the cookie and nothing more, as for a browser between renewals.
# The provider's tokens live 2 h (bench_env), so no refresh happens during the run either.
cat > "$DIR/portcullis.toml" <<CONF
[server]
listen = "127.0.0.1:$PC"
public_url = "http://127.0.0.1:$PC"
admin_listen = "127.0.0.1:$AD"
workers = $WORKERS
[server.limits]
max_connections = 100000
[provider]
issuer = "$ISSUER"
client_id = "portcullis-demo"
client_secret = "portcullis-demo-secret"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
[bearer]
audiences = ["$AUDIENCE"]
algorithms = ["RS256"]
introspection = "off"
[session]
secrets = ["$SECRET"]
lifetime = "8h"
idle_timeout = "8h"
[[upstream]]
name = "app"
url = "http://127.0.0.1:$UP"
pool_max_idle = $CONNS
[[route]]
name = "pub"
path = "/pub"
upstream = "app"
auth = "public"
[[route]]
name = "api"
path = "/api"
upstream = "app"
auth = "bearer"
scopes = ["read:items"]
[[route]]
name = "app"
path = "/app"
upstream = "app"
auth = "login"
CONF
"$BIN" check --config "$DIR/portcullis.toml" >/dev/null || die "portcullis check refused the generated config"
RUST_LOG=warn "$BIN" --config "$DIR/portcullis.toml" 2>"$DIR/portcullis.log" & PC_PID=$!; PIDS+=($PC_PID)
wait_ready "$AD"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$NG/" >/dev/null && break; sleep 0.1; done

D_URL="http://127.0.0.1:$UP/pub/x" N_URL="http://127.0.0.1:$NG/pub/x"
P_URL="http://127.0.0.1:$PC/pub/x" B_URL="http://127.0.0.1:$PC/api/x" S_URL="http://127.0.0.1:$PC/app/x"

metric() { # name with labels -> value
  curl -sf "http://127.0.0.1:$AD/metrics" | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'
}
nonok_total() { # answers of portcullis that were not 2xx, all routes
  curl -sf "http://127.0.0.1:$AD/metrics" | awk '/^portcullis_requests_total/ && !/status="2xx"/ {s += $2} END {print s + 0}'
}

# Before measuring: every path answers 200 with its credentials, and the authenticated
# routes refuse a request without them (so a 200 there is portcullis letting us in).
expect direct 200 "$D_URL"
expect nginx 200 "$N_URL"
expect public 200 "$P_URL"
expect "bearer without a token" 401 "$B_URL"
BAD=$(python3 -c 'import sys; t = open(sys.argv[1]).read().strip(); i = t.rindex(".") + 20; print(t[:i] + ("B" if t[i] == "A" else "A") + t[i+1:])' "$DIR/cached.token")
expect "bearer with a bad signature" 401 "$B_URL" -H "Authorization: Bearer $BAD"
expect "bearer cached" 200 "$B_URL" -H "Authorization: Bearer $(cat "$DIR/cached.token")"
while read -r t; do expect "bearer uncached RS256" 200 "$B_URL" -H "Authorization: Bearer $t"; done < "$DIR/check.tokens"
env_cmd login "http://127.0.0.1:$PC" /app/x "$DIR/cookie"
expect "session without a cookie" 401 "$S_URL"
expect "session cookie" 200 "$S_URL" -H "Cookie: $(cat "$DIR/cookie")"
! grep -qi '^set-cookie' "$DIR/head" || die "session: portcullis re-sets the cookie on every request"
NONOK_BEFORE=$(nonok_total)
COOKIE_BYTES=$(($(wc -c < "$DIR/cookie") - 1)); TOKEN_BYTES=$(($(wc -c < "$DIR/cached.token") - 1))

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
nginx_ticks() { local t=0; for p in $(cat "$DIR/ng/pid") $(pgrep -P "$(cat "$DIR/ng/pid")" || true); do t=$((t + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done; echo $t; }
TCK=$(getconf CLK_TCK)

# wrk URL [script args...] -> "rps p50_ms p99_ms requests non2xx socket_errors repeated"
run_wrk() {
  local url=$1; shift
  local script=() args=()
  if [ $# -gt 0 ]; then script=(-s "$1"); shift; fi
  if [ $# -gt 0 ]; then args=(-- "$@"); fi
  wrk -t$WRK_THREADS -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" "$url" "${args[@]}" 2>&1 | tee -a "$DIR/wrk.log" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    BEGIN {rps=0; p50=0; p99=0; n=0; bad=0; err=0; rep=0}
    /Requests\/sec/ {rps=$2} / 50%/ {p50=ms($2)} / 99%/ {p99=ms($2)} /requests in/ {n=$1}
    /Non-2xx or 3xx responses/ {bad=$NF}
    /Socket errors/ {gsub(",", ""); err=$4+$6+$8+$10}
    /^tokens: used/ {rep=$5}
    END {printf "%s %s %s %s %s %s %s\n", rps, p50, p99, n, bad, err, rep}'
}

INVALID=()
# measure NAME ticks-fn URL [script args...]: one wrk run, a result line in $DIR/res.NAME
measure() {
  local name=$1 ticks=$2; shift 2
  local c0 c1 rps p50 p99 n bad err rep
  c0=$($ticks); read -r rps p50 p99 n bad err rep < <(run_wrk "$@"); c1=$($ticks)
  [ "$n" != 0 ] || die "$name: wrk made no requests (see wrk output: $(tail -n 5 "$DIR/wrk.log"))"
  local cpu; cpu=$(python3 -c "print(($c1-$c0)*1e6/$TCK/max($n,1))")
  [ "$bad" = 0 ] || INVALID+=("round $r $name: $bad of $n answers were 4xx/5xx")
  LAST_RPS=$rps LAST_P99=$p99 LAST_N=$n LAST_REP=$rep
  [ "$rep" = 0 ] || return 0 # not recorded: the caller mints more and runs it again
  [ "$r" = warm-up ] || echo "$rps $p50 $p99 $cpu $n $bad $err $rep" >> "$DIR/res.$name"
}
pc_ticks() { cpu_ticks $PC_PID; }
no_ticks() { echo 0; }

echo "machine: $(nproc) cores, $(uname -r), load average$(uptime | sed 's/.*load average//'); workers=$WORKERS connections=$CONNS duration=${DURATION}s rounds=$ROUNDS"
echo "token ${TOKEN_BYTES} bytes (RS256, typ at+jwt); session cookie ${COOKIE_BYTES} bytes; build $((BUILT - START)) s, setup $(( $(date +%s) - BUILT )) s"
# Warm-up (not recorded): connection pools, allocator, caches, CPU frequency.
if [ "$WARMUP" != 0 ]; then
  r=warm-up; SAVED=$DURATION; DURATION=$WARMUP
  measure public pc_ticks "$P_URL"; measure nginx nginx_ticks "$N_URL"
  measure cached pc_ticks "$B_URL" benches/bearer.lua "$DIR/cached.token"
  measure session pc_ticks "$S_URL" benches/cookie.lua "$DIR/cookie"
  DURATION=$SAVED
  echo "warm-up: ${WARMUP}s each of public, nginx, bearer cached, session"
fi
BEST_UNCACHED=0 RSS_PUBLIC=0
for r in $(seq "$ROUNDS"); do
  measure direct no_ticks "$D_URL"; d=$LAST_RPS
  measure public pc_ticks "$P_URL"; p=$LAST_RPS p99=$LAST_P99
  [ "$r" != 1 ] || RSS_PUBLIC=$(awk '/VmRSS/ {print $2}' /proc/$PC_PID/status)
  measure nginx nginx_ticks "$N_URL"; ng=$LAST_RPS ng99=$LAST_P99
  h0=$(metric portcullis_token_cache_hits_total)
  measure cached pc_ticks "$B_URL" benches/bearer.lua "$DIR/cached.token"; bc=$LAST_RPS bn=$LAST_N
  h1=$(metric portcullis_token_cache_hits_total)
  measure session pc_ticks "$S_URL" benches/cookie.lua "$DIR/cookie"; s=$LAST_RPS
  # Tokens for this round's uncached run, minted now (not while anything is measured):
  # round 1 guesses 0.8x the best portcullis rate of the round (the uncached path does
  # the most work of all), later rounds 1.15x the best uncached rate so far. A run that runs out of tokens is not recorded; it is run again once with
  # 1.15x its own rate (an upper bound: its repeated tokens were cheap cache hits).
  if [ -n "$TOKENS" ]; then need=$TOKENS
  elif [ "$r" = 1 ]; then need=$(python3 -c "print(int(max(float('$p'), float('$bc'), float('$s'))*0.8*$DURATION)+2000)")
  else need=$(python3 -c "print(int(float('$BEST_UNCACHED')*1.15*$DURATION)+2000)"); fi
  minted=""
  for attempt in 1 2; do
    need=$(( need > 3000000 ? 3000000 : need ))
    env_cmd mint "$need" "$DIR/tokens.$r"; minted="$minted${minted:+, then }${ANSWER% *} tokens in ${ANSWER#* } s"
    v0=$(metric 'portcullis_token_validations_total{result="ok"}')
    measure uncached pc_ticks "$B_URL" benches/tokens.lua "$DIR/tokens.$r" "$WRK_THREADS"; u=$LAST_RPS un=$LAST_N
    v1=$(metric 'portcullis_token_validations_total{result="ok"}')
    rm -f "$DIR/tokens.$r"
    [ "$LAST_REP" != 0 ] || break
    [ "$attempt" = 1 ] || INVALID+=("round $r uncached: ran out of tokens twice; not recorded (use --tokens)")
    echo "round $r: bearer RS256 ran out of tokens ($LAST_REP requests reused one); minting more and running it again"
    need=$(python3 -c "print(int(float('$u')*1.15*$DURATION)+2000)")
  done
  BEST_UNCACHED=$(python3 -c "print(max(float('$BEST_UNCACHED'), float('$u')))")
  # The uncached run must validate every request; the cached run must hit the cache.
  python3 -c "import sys; sys.exit(0 if ($v1-$v0) >= 0.99*$un else 1)" \
    || INVALID+=("round $r uncached: only $((v1 - v0)) signature checks for $un requests")
  python3 -c "import sys; sys.exit(0 if ($h1-$h0) >= 0.99*$bn else 1)" \
    || INVALID+=("round $r cached: only $((h1 - h0)) cache hits for $bn requests")
  echo "round $r req/s: direct $d | public $p (p99 ${p99}ms) | nginx $ng (p99 ${ng99}ms) | bearer cached $bc | session $s | bearer RS256 $u ($((v1 - v0)) signature checks for $un requests; minted $minted)"
done
RSS=$(awk '/VmRSS/ {print $2}' /proc/$PC_PID/status)
HWM=$(awk '/VmHWM/ {print $2}' /proc/$PC_PID/status)
NONOK=$(( $(nonok_total) - NONOK_BEFORE ))
[ "$NONOK" = 0 ] || INVALID+=("portcullis counted $NONOK non-2xx answers during the runs: $(curl -sf "http://127.0.0.1:$AD/metrics" | grep '^portcullis_requests_total' | grep -v 'status="2xx"' | tr '\n' ' ')")
ENTRIES=$(metric portcullis_token_cache_entries)

python3 - "$DIR" "$RSS" "$HWM" "$RSS_PUBLIC" "$CONNS" "$ENTRIES" <<'PY'
import statistics as st, sys
d, rss, hwm, rss_pub, conns, entries = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
def load(name):
    try:
        rows = [list(map(float, l.split())) for l in open(f"{d}/res.{name}")]
    except FileNotFoundError:
        rows = []
    rows = rows or [[float("nan")] * 8]
    return dict(rps=[x[0] for x in rows], p50=[x[1] for x in rows], p99=[x[2] for x in rows],
                cpu=[x[3] for x in rows], bad=sum(x[5] for x in rows), err=sum(x[6] for x in rows))
names = [("direct", "direct"), ("nginx", "nginx"), ("public", "public"),
         ("cached", "bearer cached"), ("uncached", "bearer RS256"), ("session", "session")]
R = {k: load(k) for k, _ in names}
med = lambda k, f: st.median(R[k][f])
pub = med("public", "rps")
print()
print(f"{'target':<15}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'x public':>10}{'errors':>8}")
for k, label in names:
    cpu = "" if k == "direct" else f"{med(k, 'cpu'):.1f}"
    print(f"{label:<15}{med(k, 'rps'):>9.0f}{med(k, 'p50'):>9.2f}{med(k, 'p99'):>9.2f}{cpu:>12}"
          f"{med(k, 'rps') / pub:>10.2f}{int(R[k]['bad'] + R[k]['err']):>8}")
print("(medians of the rounds; CPU us/req: the proxy's own CPU time, user+system; errors: 4xx/5xx answers + socket errors)")
print()
def paired(k, base="public"):
    return [a / b for a, b in zip(R[k]["rps"], R[base]["rps"])]
def goal(label, value, op, target, extra=""):
    ok = value >= target if op == ">=" else value <= target if op == "<=" else value < target
    print(f"{label:<34}{value:>7.2f}   goal {op} {target:<5} {'met' if ok else 'MISSED':<7}{extra}")
rng = lambda xs: f"per round {min(xs):.2f}-{max(xs):.2f}"
goal("bearer cached / public req/s", med("cached", "rps") / pub, ">=", 0.95, rng(paired("cached")))
goal("bearer RS256 uncached / public", med("uncached", "rps") / pub, ">=", 0.4, rng(paired("uncached")))
goal("session cookie / public req/s", med("session", "rps") / pub, ">=", 0.95, rng(paired("session")))
goal("public / nginx req/s", pub / med("nginx", "rps"), ">=", 0.9, rng(paired("public", "nginx")))
goal("public / nginx p99", med("public", "p99") / med("nginx", "p99"), "<=", 1.5)
goal("public RSS, MiB", rss_pub / 1024, "<", 30, f"after round 1's public run, {conns} connections")
print(f"{'public / nginx CPU per request':<34}{med('public', 'cpu') / max(med('nginx', 'cpu'), 1e-9):>7.2f}")
print(f"{'public / direct req/s':<34}{pub / med('direct', 'rps'):>7.2f}")
print(f"portcullis RSS at the end: {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB), with {entries} identities in the token cache")
PY
echo "total time $(( $(date +%s) - START )) s"
if [ ${#INVALID[@]} -gt 0 ]; then
  echo >&2; echo "INVALID RUN:" >&2; printf '  %s\n' "${INVALID[@]}" >&2; exit 1
fi
