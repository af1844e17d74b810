#!/usr/bin/env bash
# Soak: one portcullis (release build, access log at info to a file, as in production)
# under a paced mix of traffic for MINUTES minutes, watched for leaks and miscounts:
#   public        GET /pub/x, auth = "public"
#   cached bearer GET /api/x with one valid RS256 token (a token-cache hit)
#   session       GET /app/x with the cookie of a browser login; the driver logs in again
#                 every 60 s and the client switches to the new cookie
#   new tokens    GET /api/x with a never-used valid token, NEW_RATE a second (a full
#                 signature check each; tokens minted before the run, each expiring 3
#                 minutes after its turn)
#   sign-outs     every 2 s the driver logs in (landing on /acct), checks the session
#                 answers 200 on /acct/x, signs out, and checks the same cookie is now
#                 refused (a browser is sent to sign in: 302)
#   reloads       SIGHUP every 30 s (the config alternates one route timeout, so every
#                 reload builds a new generation)
# Sessions live 3 minutes, so that revocation entries (kept until the session they end
# would have expired) come and go and the in-process set reaches a steady size; the
# identity cache likewise, with the new tokens' short lives. The warm-up (4 minutes by
# default) covers both.
#
# Rate: the mix is first run unpaced for 15 s to measure the capacity (requests/s of the
# mix, with every part of this machine as it is then); the soak then runs at FRACTION of
# it, over CONNECTIONS keep-alive connections (examples/soak_client.rs).
#
# Every 10 s it samples the proxy's resident memory, open descriptors, revocation set
# size and identity-cache size. Passes when: the client saw 0 errors (every answer 200, no broken connection);
# every sign-out check went as expected; every reload succeeded; RSS after the warm-up
# (the first WARMUP minutes) stays within 10% of its first sample after the warm-up;
# open descriptors likewise; and portcullis_requests_total per route (pub, api, app)
# went up by exactly the client's count for that route, all 2xx. Exit status 1 otherwise.
#
#   benches/soak.sh [--minutes 10] [--warmup 4] [--connections 32] [--fraction 0.5]
#                   [--new-rate 20]
#
# Needs nginx, curl, python3 (Debian packages); builds portcullis, bench_env and
# soak_client in release mode (honours CARGO_TARGET_DIR). Time: the build, ~20 s of
# minting, 15 s of capacity run, then MINUTES.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=10 WARMUP=4 CONNS=32 FRACTION=0.5 NEW_RATE=20
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --fraction) FRACTION=$2; shift 2 ;;
    --new-rate) NEW_RATE=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for t in nginx curl python3; do command -v $t >/dev/null || { echo "needs $t (apt-get install $t)" >&2; exit 2; }; done
[ "$WARMUP" -lt "$MINUTES" ] || { echo "--warmup must be less than --minutes" >&2; exit 2; }

NAME=soak.sh
cargo build --release --quiet --bin portcullis --example bench_env --example soak_client
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DIR=$(mktemp -d)
# shellcheck source=benches/env.sh
. benches/env.sh
trap env_cleanup EXIT
trap 'exit 130' INT TERM
# Copies: the target directory may be rebuilt by someone else while this runs.
cp "$TARGET_DIR/release/portcullis" "$TARGET_DIR/release/examples/bench_env" \
  "$TARGET_DIR/release/examples/soak_client" "$DIR/"
LOGS+=("$DIR/portcullis.log" "$DIR/client.err")

UP=$(free_port) PC=$(free_port) AD=$(free_port)
start_upstream "$UP"
start_bench_env "$DIR/bench_env"
env_cmd token "$DIR/cached.token"
SECONDS_RUN=$((MINUTES * 60))
NEW_TOKENS=$(python3 -c "import math; print(math.ceil($NEW_RATE * $SECONDS_RUN * 1.05) + 10)")
# Each expires 3 minutes after its turn comes (the identity cache never keeps an entry
# past its token's exp), so that the cache, like the revocation set, reaches a steady size.
env_cmd mint "$NEW_TOKENS" "$DIR/new.tokens" "$NEW_RATE" 180
echo "minted $NEW_TOKENS never-used tokens in $(echo "$ANSWER" | cut -d' ' -f2) s"

SECRET=$(head -c 32 /dev/urandom | base64)
write_config() { # TIMEOUT: the /pub route's timeout (alternated by the reloads)
  cat > "$DIR/portcullis.toml.new" <<CONF
[server]
listen = "127.0.0.1:$PC"
public_url = "http://127.0.0.1:$PC"
admin_listen = "127.0.0.1:$AD"
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
lifetime = "3m"
idle_timeout = "30m"
revocation = "memory"
[[upstream]]
name = "app"
url = "http://127.0.0.1:$UP"
[[route]]
name = "pub"
path = "/pub"
upstream = "app"
auth = "public"
timeout = "$1"
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
[[route]]
name = "acct"
path = "/acct"
upstream = "app"
auth = "login"
CONF
  mv "$DIR/portcullis.toml.new" "$DIR/portcullis.toml"
}
write_config 30s
"$DIR/portcullis" check --config "$DIR/portcullis.toml" >/dev/null || die "portcullis check refused the generated config"
# SOAK_WRAP: a command to run portcullis under, to see where memory goes, e.g.
#   SOAK_WRAP="valgrind --tool=massif --massif-out-file=/tmp/massif.out" benches/soak.sh
# (the rate then follows the capacity measured under it; RSS figures mean nothing).
# shellcheck disable=SC2086
RUST_LOG=info ${SOAK_WRAP:-} "$DIR/portcullis" --config "$DIR/portcullis.toml" 2>"$DIR/portcullis.log" & PC_PID=$!; PIDS+=($PC_PID)
wait_ready "$AD" "${SOAK_WRAP:+120}"

BASE="http://127.0.0.1:$PC"
expect public 200 "$BASE/pub/x"
expect "bearer without a token" 401 "$BASE/api/x"
expect "bearer cached" 200 "$BASE/api/x" -H "Authorization: Bearer $(cat "$DIR/cached.token")"
expect "session without a cookie (a browser)" 302 "$BASE/app/x" -H "Accept: text/html"

# login FILE: a browser login (landing on /acct), its Cookie header value in FILE
# (written aside, then renamed: the client re-reads the steady cookie's file).
login() {
  env_cmd login "$BASE" /acct/ "$1.new"
  mv "$1.new" "$1"
}
login "$DIR/cookie"
expect session 200 "$BASE/app/x" -H "Cookie: $(cat "$DIR/cookie")"

client() { # SECONDS RATE NEW_RATE -> the client's JSON line on stdout
  "$DIR/soak_client" --addr "127.0.0.1:$PC" --connections "$CONNS" --seconds "$1" \
    --rate "$2" --new-token-rate "$3" --cached-token "$DIR/cached.token" \
    --tokens "$DIR/new.tokens" --cookie "$DIR/cookie" 2>>"$DIR/client.err"
}
json() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))" "$1" "$2"; }

echo "capacity: the mix unpaced for 15 s over $CONNS connections"
CAP_LINE=$(client 15 0 0) || die "the capacity run saw errors: $CAP_LINE"
CAPACITY=$(json "$CAP_LINE" 'round(answered / seconds)')
RATE=$(python3 -c "print(round($CAPACITY * $FRACTION))")
echo "capacity $CAPACITY requests/s; soak at $RATE requests/s + $NEW_RATE new tokens/s for $MINUTES min"

metrics() { curl -sf "http://127.0.0.1:$AD/metrics"; }
# per-route totals, and the non-2xx among them: "ROUTE TOTAL NON2XX" lines
route_counts() {
  metrics | awk '/^portcullis_requests_total\{/ {
      match($0, /route="[^"]*"/); r = substr($0, RSTART + 7, RLENGTH - 8)
      t[r] += $2; if ($0 !~ /status="2xx"/) n[r] += $2 }
    END { for (r in t) print r, t[r], n[r] + 0 }'
}
metric() { metrics | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'; }
route_counts > "$DIR/counts.before"
RELOADS_BEFORE=$(metric 'portcullis_config_reloads_total{result="ok"}')

client $SECONDS_RUN "$RATE" "$NEW_RATE" > "$DIR/client.json" & CLIENT_PID=$!; PIDS+=($CLIENT_PID)
T0=$(date +%s)
SIGNOUTS=0 SIGNOUT_FAILS=0 RELOADS=0 LOGINS=0 NEXT_SAMPLE=0 NEXT_RELOAD=30 NEXT_LOGIN=60 NEXT_SIGNOUT=2
printf '%6s %10s %6s %12s %14s %10s\n' "t (s)" "RSS (KiB)" "fds" "revocations" "token cache" "CPU (s)" | tee "$DIR/samples.txt"
while kill -0 $CLIENT_PID 2>/dev/null; do
  T=$(( $(date +%s) - T0 ))
  if [ "$T" -ge "$NEXT_SAMPLE" ]; then
    CPU=$(metric process_cpu_seconds_total)
    printf '%6d %10d %6d %12s %14s %10s\n' "$T" "$(rss_kib $PC_PID)" "$(open_fds $PC_PID)" \
      "$(metric portcullis_revocation_entries)" "$(metric portcullis_token_cache_entries)" \
      "$CPU" | tee -a "$DIR/samples.txt"
    NEXT_SAMPLE=$((NEXT_SAMPLE + 10))
  fi
  if [ "$T" -ge "$NEXT_RELOAD" ]; then
    RELOADS=$((RELOADS + 1))
    write_config "$((30 + RELOADS % 2))s"
    kill -HUP $PC_PID
    NEXT_RELOAD=$((NEXT_RELOAD + 30))
  fi
  if [ "$T" -ge "$NEXT_LOGIN" ]; then
    login "$DIR/cookie"; LOGINS=$((LOGINS + 1))
    NEXT_LOGIN=$((NEXT_LOGIN + 60))
  fi
  if [ "$T" -ge "$NEXT_SIGNOUT" ]; then
    login "$DIR/leaving"
    C=$(cat "$DIR/leaving")
    a=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $C" "$BASE/acct/x") || a=000
    b=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $C" "$BASE/oauth2/sign_out") || b=000
    c=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $C" -H "Accept: text/html" "$BASE/acct/x") || c=000
    SIGNOUTS=$((SIGNOUTS + 1))
    if [ "$a" != 200 ] || [ "${b:0:1}" != 3 ] || [ "$c" != 302 ]; then
      SIGNOUT_FAILS=$((SIGNOUT_FAILS + 1))
      echo "sign-out check $SIGNOUTS: before $a, sign-out $b, after $c (expected 200, 3xx, 302)"
    fi
    NEXT_SIGNOUT=$((NEXT_SIGNOUT + 2))
  fi
  sleep 0.5
done
CLIENT_OK=1
wait $CLIENT_PID || CLIENT_OK=""
LINE=$(cat "$DIR/client.json")
[ -n "$LINE" ] || die "the soak client printed nothing"
route_counts > "$DIR/counts.after"
RELOADS_OK=$(( $(metric 'portcullis_config_reloads_total{result="ok"}') - RELOADS_BEFORE ))
expect "public, after the soak" 200 "$BASE/pub/x"
kill -0 $PC_PID 2>/dev/null || die "portcullis is not running after the soak"

FAIL=()
echo
echo "client: $LINE"
[ -n "$CLIENT_OK" ] || FAIL+=("the client saw $(json "$LINE" 'unexpected') unexpected answers: $(json "$LINE" 'first_unexpected')")
for r in pub api app; do
  sent=$(json "$LINE" "requests['$r']")
  read -r _ b0 n0 < <(grep "^$r " "$DIR/counts.before" || echo "$r 0 0")
  read -r _ b1 n1 < <(grep "^$r " "$DIR/counts.after" || echo "$r 0 0")
  counted=$(python3 -c "print(int($b1 - $b0))")
  non2xx=$(python3 -c "print(int($n1 - $n0))")
  echo "route $r: client sent $sent, portcullis_requests_total +$counted (non-2xx +$non2xx)"
  [ "$counted" = "$sent" ] || FAIL+=("route $r: /metrics counted $counted, the client $sent")
  [ "$non2xx" = 0 ] || FAIL+=("route $r: $non2xx answers were not 2xx")
done
echo "sign-out cycles: $SIGNOUTS, failed $SIGNOUT_FAILS; steady logins: $LOGINS"
[ "$SIGNOUT_FAILS" = 0 ] || FAIL+=("$SIGNOUT_FAILS of $SIGNOUTS sign-out checks failed")
echo "reloads: $RELOADS sent, $RELOADS_OK counted ok"
[ "$RELOADS_OK" = "$RELOADS" ] || FAIL+=("$RELOADS reloads sent, $RELOADS_OK succeeded")
# Flatness after the warm-up: the largest sample against the first one after it.
read -r RSS0 RSSMAX RSSLAST FD0 FDMAX FDLAST < <(awk -v w=$((WARMUP * 60)) '
  NR > 1 && $1 >= w { if (!n++) { r0 = $2; f0 = $3 } if ($2 > rm) rm = $2; if ($3 > fm) fm = $3; rl = $2; fl = $3 }
  END { print r0, rm, rl, f0, fm, fl }' "$DIR/samples.txt")
echo "after the warm-up: RSS first $RSS0 KiB, largest $RSSMAX KiB, last $RSSLAST KiB; open fds first $FD0, largest $FDMAX, last $FDLAST"
python3 -c "import sys; sys.exit(0 if $RSSMAX <= 1.10 * $RSS0 else 1)" || FAIL+=("RSS grew more than 10% after the warm-up ($RSS0 -> $RSSMAX KiB)")
python3 -c "import sys; sys.exit(0 if $FDMAX <= 1.10 * $FD0 else 1)" || FAIL+=("open fds grew more than 10% after the warm-up ($FD0 -> $FDMAX)")
ANSWERED=$(json "$LINE" 'answered')
SECS=$(json "$LINE" 'round(seconds)')
echo "rate: $(python3 -c "print(round($ANSWERED / $SECS))") requests/s over $SECS s (target $RATE + $NEW_RATE new tokens/s; capacity $CAPACITY)"
if [ ${#FAIL[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${FAIL[@]}"
  for f in "${LOGS[@]}"; do [ -s "$f" ] && { echo "--- last lines of $f:"; grep -v ' access' "$f" | tail -n 15; }; done
  exit 1
fi
echo "PASSED: 0 errors, counts equal, RSS and fds flat within 10% after ${WARMUP} min"
