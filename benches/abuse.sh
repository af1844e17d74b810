#!/usr/bin/env bash
# Abuse test: a steady client's latency through portcullis, quiet and under one hostile
# flood at a time, on 127.0.0.1 only. For each flood, in one run:
#   quiet   the steady client alone (RATE requests/s over 8 keep-alive HTTP/1.1
#           connections to the public route), SECS seconds
#   flood   the same steady client while examples/abuse.rs floods the proxy
#   quiet   the steady client alone again, SECS seconds after the flood ended
# and prints the steady p99 under the flood as a ratio of the quiet p99 (the mean of the
# runs just before and just after it: the machine may be shared, and its load drifts),
# the steady client's errors, the proxy's CPU seconds during the flood, its RSS before,
# at the end of the flood and after it, that it still answers afterwards (a curl 200), and
# the sizes of its negative caches (/metrics). Goals (issue 15): p99 ratio <= 3, RSS
# growth <= 64 MiB per flood.
#
#   benches/abuse.sh [--secs S] [--rate R] [--only "rapid-reset idle ..."] [--workers N]
#                    [--idle N] [--no-build (use the binaries already in the target dir)]
# PORTCULLIS_BIN=path measures that portcullis binary instead (before/after comparisons);
# STEADY=upstream sends the steady client straight to the upstream (a control);
# FLOOD_EXTRA="--batch 64" adds options to every flood (raw floods: frames per write).
#
# Floods (examples/abuse.rs MODE, with the size used here):
#   rapid-reset   4 HTTP/2 connections: HEADERS + RST_STREAM in a loop (CVE-2023-44487)
#   continuation  4 raw HTTP/2 connections: a header block that never ends (CVE-2024-27316)
#   settings      4 raw HTTP/2 connections writing SETTINGS frames in a loop
#   ping          4 raw HTTP/2 connections writing PINGs, never reading the answers
#   window        16 HTTP/2 connections, all streams open, 1-byte windows
#   idle          10,000 idle keep-alive connections (max_connections and fds raised)
#   slowloris     500 connections trickling a request head a byte a second
#   bearer        20,000 distinct junk bearer tokens a minute (333/s)
#   cookie        20,000 distinct junk session cookies a minute (333/s)
#   kid           1,000 ES256 JWTs a second with fresh unknown kids (JWKS fetches counted)
#
# Needs nginx, curl, python3; builds portcullis and the examples bench_env and abuse in
# release mode. Time: about (3 x SECS + 8) s a flood, 10 floods: ~7 minutes at SECS=10.
# The idle flood needs `ulimit -n` >= 10,000 + 2,000 for each of the proxy and the
# attacker (the script raises the soft limit to the hard one and refuses below that).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=10 RATE=500 NO_BUILD="" WORKERS=${WORKERS:-$(nproc)}
ONLY="rapid-reset continuation settings ping window idle slowloris bearer cookie kid"
IDLE=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for t in nginx curl python3; do command -v $t >/dev/null || { echo "needs $t (apt-get install $t)" >&2; exit 2; }; done

# File descriptors: the proxy holds one per client connection, one per upstream
# connection in use or pooled, and a few dozen of its own.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
case " $ONLY " in *" idle "*)
  [ "$FDS" -ge $((IDLE + 2000)) ] || { echo "ulimit -n is $FDS; the idle flood needs $((IDLE + 2000)) (raise the hard limit, or --idle N)" >&2; exit 2; } ;;
esac
# Room for the idle flood, the steady client and the rest; every idle connection sits on
# the proxy at once, so max_connections must exceed it (README: sizing).
MAXCONN=$((IDLE + 500))

START=$(date +%s)
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin portcullis --example bench_env --example abuse
TARGET=${CARGO_TARGET_DIR:-target}
DIR=$(mktemp -d)
cp "${PORTCULLIS_BIN:-$TARGET/release/portcullis}" "$DIR/portcullis"
cp "$TARGET/release/examples/bench_env" "$TARGET/release/examples/abuse" "$DIR/"
BIN=$DIR/portcullis ENV_BIN=$DIR/bench_env ABUSE=$DIR/abuse
NAME=abuse.sh
# shellcheck source=benches/env.sh
. benches/env.sh
trap env_cleanup EXIT
LOGS+=("$DIR/portcullis.log")
UP=$(free_port); PC=$(free_port); AD=$(free_port)
start_upstream "$UP"
start_bench_env "$ENV_BIN"
env_cmd token "$DIR/good.token"

SECRET=$(head -c 32 /dev/urandom | base64)
cat > "$DIR/portcullis.toml" <<CONF
[server]
listen = "127.0.0.1:$PC"
public_url = "http://127.0.0.1:$PC"
admin_listen = "127.0.0.1:$AD"
workers = $WORKERS
[server.limits]
max_connections = $MAXCONN
[provider]
issuer = "$ISSUER"
client_id = "portcullis-demo"
client_secret = "portcullis-demo-secret"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
[bearer]
audiences = ["$AUDIENCE"]
algorithms = ["RS256", "ES256"]
introspection = "off"
[session]
secrets = ["$SECRET"]
[[upstream]]
name = "app"
url = "http://127.0.0.1:$UP"
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
[[route]]
name = "app"
path = "/app"
upstream = "app"
auth = "login"
CONF
"$BIN" check --config "$DIR/portcullis.toml" >/dev/null || die "portcullis check refused the generated config"
RUST_LOG=warn "$BIN" --config "$DIR/portcullis.toml" 2>"$DIR/portcullis.log" & PC_PID=$!; PIDS+=($PC_PID)
wait_ready "$AD"
ADDR=127.0.0.1:$PC
# STEADY=upstream: a control run, the steady client straight to the upstream while the
# proxy is flooded (a p99 that moves there too is the machine's, not the proxy's).
STEADY_ADDR=$ADDR
[ "${STEADY:-}" != upstream ] || STEADY_ADDR=127.0.0.1:$UP
code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" || true; }
[ "$(code "http://$ADDR/pub/x")" = 200 ] || die "public route does not answer 200"
[ "$(code -H "Authorization: Bearer $(cat "$DIR/good.token")" "http://$ADDR/api/x")" = 200 ] || die "bearer route refuses a good token"
[ "$(code "http://$ADDR/api/x")" = 401 ] || die "bearer route lets a request without a token in"

metric() { curl -sf -m 5 "http://127.0.0.1:$AD/metrics" | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'; }
jwks_fetches() { curl -sf -m 5 "http://127.0.0.1:$AD/metrics" | awk '/^portcullis_provider_request_duration_seconds_count/ && /endpoint="jwks"/ {s += $2} END {print s + 0}'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$PC_PID/status"; }
ticks() { awk '{print $14+$15}' "/proc/$PC_PID/stat"; }
TCK=$(getconf CLK_TCK)

# steady SECONDS -> "p50 p99 requests errors" (errors: non-2xx answers + I/O errors)
steady() {
  "$ABUSE" steady --addr "$STEADY_ADDR" --secs "$1" --conns 8 --rate "$RATE" --path /pub/x | tee -a "$DIR/steady.log" | python3 -c '
import sys
kv = dict(w.split("=", 1) for w in sys.stdin.read().split() if "=" in w)
err = sum(int(kv.get(k, 0)) for k in ("3xx", "4xx", "5xx", "io_errors"))
print(kv.get("p50_ms", "nan"), kv.get("p99_ms", "nan"), kv.get("requests", 0), err)'
}

flood_args() {
  case "$1" in
    rapid-reset|continuation|settings|ping) echo "--conns 4 --path /pub/x" ;;
    window) echo "--conns 16 --path /pub/x" ;;
    idle) echo "--conns $IDLE --path /pub/x" ;;
    slowloris) echo "--conns 500 --path /pub/x" ;;
    bearer) echo "--conns 4 --rate 333 --path /api/x" ;;
    cookie) echo "--conns 4 --rate 333 --path /app/x" ;;
    kid) echo "--conns 8 --rate 1000 --path /api/x --iss $ISSUER --aud $AUDIENCE" ;;
  esac
}
# Seconds the flood runs before the steady client starts (the idle flood opens its
# connections first: 10,000 at up to 2,000 a second).
ramp() { case "$1" in idle) echo $((IDLE / 1500 + 2)) ;; slowloris) echo 2 ;; *) echo 1 ;; esac; }

echo "machine: $(nproc) cores (shared), $(uname -r), load average$(uptime | sed 's/.*load average//'); workers=$WORKERS steady=${RATE}/s over 8 connections, ${SECS}s per measurement; ulimit -n $FDS, max_connections $MAXCONN"
"$ABUSE" steady --addr "$ADDR" --secs 3 --conns 8 --rate "$RATE" --path /pub/x >/dev/null # warm-up
ROWS=()
for f in $ONLY; do
  read -r q50 q99 qn qerr < <(steady "$SECS")
  r0=$(rss_kib); c0=$(ticks); j0=$(jwks_fetches)
  R=$(ramp "$f")
  # shellcheck disable=SC2046
  "$ABUSE" "$f" --addr "$ADDR" --secs $((SECS + R + 1)) $(flood_args "$f") ${FLOOD_EXTRA:-} > "$DIR/flood.$f" 2>&1 & FP=$!; PIDS+=($FP)
  sleep "$R"
  read -r f50 f99 fn ferr < <(steady "$SECS")
  r1=$(rss_kib); open=$(metric portcullis_connections_open)
  wait $FP || true
  c1=$(ticks); j1=$(jwks_fetches)
  sleep 1
  r2=$(rss_kib)
  ok=$(code "http://$ADDR/pub/x")
  neg=$(metric portcullis_token_negative_cache_entries)
  cache=$(metric portcullis_token_cache_entries)
  read -r a50 a99 an aerr < <(steady "$SECS")
  quiet=$(python3 -c "print(($q99 + $a99) / 2)")
  echo "$f: quiet p99 ${q99} ms before, ${a99} ms after; under flood p99 ${f99} ms (p50 ${q50} -> ${f50} -> ${a50}), steady errors ${ferr}/${fn}; open connections during ${open}; after: GET ${ok}; attacker: $(cut -d' ' -f3- "$DIR/flood.$f")"
  ROWS+=("$f $quiet $f99 $ferr $fn $(( (c1 - c0) )) $r0 $r1 $r2 $ok $neg $cache $((j1 - j0)) $open")
done
[ "$(code -H "Authorization: Bearer $(cat "$DIR/good.token")" "http://$ADDR/api/x")" = 200 ] || echo "WARNING: the bearer route no longer accepts a good token"

cat > "$DIR/table.py" <<'PY'
import sys
tck, secs = float(sys.argv[1]), sys.argv[2]
print()
print(f"{'flood':<13}{'quiet p99':>10}{'flood p99':>10}{'ratio':>7}{'errors':>9}{'CPU s':>7}{'RSS before':>11}{'during':>8}{'after':>8}{'growth':>8}{'then':>6}{'neg cache':>10}{'jwks':>6}  goals")
bad = 0
for line in sys.stdin:
    f, q, p, err, n, cpu, r0, r1, r2, ok, neg, cache, jw, opened = line.split()
    q, p = float(q), float(p)
    ratio = p / q if q > 0 else float("inf")
    growth = (max(int(r1), int(r2)) - int(r0)) / 1024
    met = ratio <= 3 and growth <= 64 and ok == "200" and int(err) == 0
    bad += not met
    print(f"{f:<13}{q:>10.2f}{p:>10.2f}{ratio:>7.2f}{err + '/' + n:>9}{int(cpu) / tck:>7.1f}"
          f"{int(r0) / 1024:>11.1f}{int(r1) / 1024:>8.1f}{int(r2) / 1024:>8.1f}{growth:>8.1f}{ok:>6}{neg:>10}{jw:>6}  {'met' if met else 'MISSED'}")
print("(p99 in ms of the steady client; quiet p99: the mean of the runs before and after the flood; ratio = flood p99 / quiet p99; errors: non-2xx or I/O errors of the steady client / its requests;")
print(" CPU s: the proxy's user+system seconds from the flood's start to its end; RSS in MiB before the flood, at the end of the steady run under it, 1 s after it;")
print(" growth: the larger of during/after minus before; then: a GET on the public route after the flood; neg cache: portcullis_token_negative_cache_entries after;")
print(" jwks: JWKS fetches by the proxy during the flood. goals: ratio <= 3, growth <= 64 MiB, 0 steady errors, 200 after)")
sys.exit(1 if bad else 0)
PY
printf '%s\n' "${ROWS[@]}" | python3 "$DIR/table.py" "$TCK" "$SECS" && status=0 || status=$?
echo "total time $(( $(date +%s) - START )) s"
exit $status
