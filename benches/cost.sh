#!/usr/bin/env bash
# Deterministic cost per request: user-space instructions (valgrind --tool=callgrind) and
# system calls (strace -c -f) of one proxy process, for the same small GET to the same
# upstream (a separate nginx answering "hello from upstream\n" from memory, not measured):
#   nginx     nginx as a plain reverse proxy, one process (master_process off, 1 worker),
#             keep-alive pool to the upstream
#   public    portcullis, route /pub, auth = "public"
#   bearer    portcullis, route /api, auth = "bearer", scopes = ["read:items"]: the same
#             valid RS256 token on every request (a token-cache hit)
#   session   portcullis, route /app, auth = "login", with the cookie of a real browser
#             login made before measuring
#   bearer-assert  portcullis, route /asserted: as bearer (same token, scopes), with
#             assertion = true (keys derived from the session secret): the signed identity
#             assertion added upstream, from its cache after the first request. Only when
#             this target is asked for does the config get this route (last) and
#             [assertion] on: the other targets of such a run then share a config with one
#             more route and the JWKS path check (a comparison a request).
#   bearer-dpop  portcullis, route /dpop: as bearer (scopes), with the same DPoP-bound
#             token (RFC 9449, cnf.jkt) on every request and a fresh proof each (ES256,
#             distinct jti), made by bench_env just before the measured requests (after
#             the proxy is ready, so their iat is within the 60 s window): the DPoP check
#             (proof signature and claims, binding, jti replay set) beside the token-cache
#             hit. Only when asked for does the config get this route (last).
#
# Method: for each target and each tool, the proxy is started fresh twice, once for a run
# of SMALL and once for a run of LARGE keep-alive requests over C connections (each
# connection sequential, N/C requests; every answer must be 200 with the upstream's
# body, else the script fails). It is then stopped with SIGTERM, and the total is read
# (the "totals:" line of the callgrind output file; the "total" line of strace -c).
# Per request: (count(LARGE) - count(SMALL)) / (LARGE - SMALL)
# so startup, connection setup and shutdown cancel out. portcullis runs with
# [server] workers = 1 and RUST_LOG=warn (--log LEVEL: another level, e.g. info for an
# access line per request, written to a file as in production). callgrind counts the instructions of all
# threads of the process; strace -f the system calls of all threads.
# Readiness is waited for without touching the measured process (its port in LISTEN
# state, from /proc/net/tcp), then, for portcullis, GET /readyz on the admin listener
# every 0.5 s until 200 (the provider's metadata and keys are loaded) and one
# GET /oauth2/ping on the main listener. Before stopping it, one GET /metrics (which
# checks the bearer runs hit the token cache). Those few requests are the same in both
# runs except the number of /readyz polls, which is printed per run.
#
#   benches/cost.sh [--requests-small 400] [--requests-large 4400] [--connections 8]
#                   [--targets nginx,public,bearer,session[,bearer-assert][,bearer-dpop]]
#                   [--keep DIR]
#                   [--log warn]
#
# --keep DIR: where the callgrind and strace outputs are kept (default: a new directory
# under ${TMPDIR:-/tmp}, printed at the end), e.g. for
#   callgrind_annotate --inclusive=yes DIR/callgrind.public.4400.out | head -60
#
# Prints a table of instructions and system calls per request, the totals of both runs
# (the SMALL run's total shows any startup or first-request pause), and the targets:
# public <= 33k instructions/request and <= 1.5x nginx, bearer <= public + 3k,
# session <= public + 8k, bearer-assert <= bearer + 5k, system calls per request <= nginx's.
# Exit status 1 if a run failed (a goal missed is reported, not a failure).
#
# Before measuring, a plain portcullis (not under valgrind) with the same config checks
# that /pub answers 200, /api and /app 401 without credentials and 200 with them, and
# makes the login whose cookie the session runs send (sessions are sealed with the
# config's secret, so any portcullis with the same config accepts the cookie).
# Tokens and the login come from examples/bench_env.rs (the development provider), as in
# benches/load.sh. Builds portcullis and bench_env in release mode (honours
# CARGO_TARGET_DIR). Needs valgrind, strace, nginx, python3, curl (Debian packages).
# Everything binds 127.0.0.1; the script stops only what it started.
#
# Determinism: instructions per request repeat within ~0.2% for portcullis and ~1% for
# nginx from one run to the next. The fixed cost (~441M instructions for portcullis,
# mostly aws-lc seeding its random generator from CPU jitter on the worker's first
# request) is the same in both runs and cancels out. System calls are not fully
# deterministic: 2 recvfrom + 2 writev a request are fixed (nginx: + 1 getsockopt), but
# the number of epoll_wait calls depends on how many connections are ready at each
# wake-up (timing): 0.2-1.7 a request from one run to the next. The script prints the
# split by call.
# Under valgrind, CPU feature detection sees valgrind's CPU (no SHA-NI, no AVX-512), so
# crypto runs its AVX/SSE code paths: hashing the bearer token, for one, costs more
# instructions there than on a CPU with SHA extensions.
#
# Time: 4 runs per target (2 counts x 2 tools), ~80 s in all on a shared 2-core machine
# after the build (a portcullis run under callgrind takes 5-15 s, most of it startup and
# the first request).
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=400 LARGE=4400 CONNS=8 TARGETS=nginx,public,bearer,session KEEP="" LOG=warn
while [ $# -gt 0 ]; do
  case "$1" in
    --requests-small) SMALL=$2; shift 2 ;;
    --requests-large) LARGE=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for t in valgrind callgrind_annotate strace nginx python3 curl; do
  command -v $t >/dev/null || { echo "needs $t (apt-get install valgrind strace nginx python3 curl)" >&2; exit 2; }
done
for n in "$SMALL" "$LARGE" "$CONNS"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "counts must be positive integers" >&2; exit 2; }
done
[ "$LARGE" -gt "$SMALL" ] || { echo "--requests-large must be more than --requests-small" >&2; exit 2; }
if [ $((SMALL % CONNS)) != 0 ] || [ $((LARGE % CONNS)) != 0 ]; then
  echo "request counts must be multiples of --connections" >&2; exit 2
fi
IFS=, read -r -a TARGET_LIST <<< "$TARGETS"
NEED_PC="" NEED_LOGIN="" NEED_ASSERT="" NEED_DPOP=""
for t in "${TARGET_LIST[@]}"; do
  case "$t" in
    nginx) ;;
    public|bearer) NEED_PC=1 ;;
    session) NEED_PC=1 NEED_LOGIN=1 ;;
    bearer-assert) NEED_PC=1 NEED_ASSERT=1 ;;
    bearer-dpop) NEED_PC=1 NEED_DPOP=1 ;;
    *) echo "unknown target $t (nginx, public, bearer, session, bearer-assert, bearer-dpop)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
cargo build --release --quiet --bin portcullis --example bench_env
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DIR=$(mktemp -d)
if [ -z "$KEEP" ]; then KEEP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-cost.XXXXXX"); fi
mkdir -p "$KEEP"; KEEP=$(cd "$KEEP" && pwd)
# Copies: the target directory may be rebuilt by someone else while this runs.
cp "$TARGET_DIR/release/portcullis" "$TARGET_DIR/release/examples/bench_env" "$DIR/"
BIN=$DIR/portcullis ENV_BIN=$DIR/bench_env
CLIENT=$PWD/benches/cost_client.py
BODY=$'hello from upstream\n'
PIDS=()     # long-lived background processes this script started
RUN_PIDS=() # those of the current proxy run (emptied once they have exited)
cleanup() {
  exec 3>&- 4<&- || true
  # strace ignores SIGTERM while it runs a command: stop what it traces (its children).
  for p in "${RUN_PIDS[@]}"; do kill $(pgrep -P "$p") "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3; rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
CUR_RUN=""
die() {
  echo >&2; echo "cost.sh: FAILED: $*" >&2
  for f in "$CUR_RUN"/{valgrind.log,stderr.log,error.log,strace.txt} "$DIR/plain.log" "$DIR/bench_env.log"; do
    [ -s "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 15 "$f" >&2; }
  done
  if [ -n "$CUR_RUN" ] && [ -d "$CUR_RUN" ]; then
    cp -r "$CUR_RUN" "$KEEP/failed.${CUR_RUN##*/run.}" && echo "(files of the failed run: $KEEP/failed.${CUR_RUN##*/run.})" >&2
  fi
  exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port); PC=$(free_port); AD=$(free_port)

# The upstream, not measured: nginx answering from memory.
mkdir -p "$DIR/up"
cat > "$DIR/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $DIR/up/pid; error_log $DIR/up/error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $DIR/up/t1; proxy_temp_path $DIR/up/t2; fastcgi_temp_path $DIR/up/t3;
  uwsgi_temp_path $DIR/up/t4; scgi_temp_path $DIR/up/t5;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
nginx -p "$DIR/up" -c "$DIR/up/nginx.conf" -e "$DIR/up/error.log" & PIDS+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$UP/" >/dev/null && break; sleep 0.1; done
[ "$(curl -s "http://127.0.0.1:$UP/pub/x")" = "${BODY%$'\n'}" ] || die "the upstream nginx does not answer"

# nginx as the measured proxy: one process, keep-alive pool to the upstream.
cat > "$DIR/nginx-proxy.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $DIR/nginx-proxy.pid;
error_log $DIR/nginx-proxy.error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $DIR/ng1; proxy_temp_path $DIR/ng2; fastcgi_temp_path $DIR/ng3;
  uwsgi_temp_path $DIR/ng4; scgi_temp_path $DIR/ng5;
  upstream app { server 127.0.0.1:$UP; keepalive $CONNS; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NG;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF

if [ -n "$NEED_PC" ]; then
  # bench_env: the development provider, and a token minter / login client driven over
  # two FIFOs (one command a line, one answer a line: "ok ..." or "err ..."). It runs
  # until the end: every portcullis loads the provider's metadata and keys at start.
  mkfifo "$DIR/env.in" "$DIR/env.out"
  RUST_LOG=warn "$ENV_BIN" <"$DIR/env.in" >"$DIR/env.out" 2>"$DIR/bench_env.log" & PIDS+=($!)
  exec 3>"$DIR/env.in" 4<"$DIR/env.out"
  env_cmd() { # command words...
    echo "$*" >&3
    local a
    read -r -t 600 a <&4 || die "bench_env did not answer '$*'"
    case "$a" in ok*) ;; *) die "bench_env '$*': $a" ;; esac
  }
  read -r -t 60 word ISSUER AUDIENCE <&4 || die "bench_env did not start"
  [ "$word" = ready ] || die "bench_env: $word $ISSUER $AUDIENCE"
  env_cmd token "$DIR/token"
  echo "Bearer $(cat "$DIR/token")" > "$DIR/authorization"
  if [ -n "$NEED_DPOP" ]; then
    env_cmd dpop-token "$DIR/dpop-token"
    echo "DPoP $(cat "$DIR/dpop-token")" > "$DIR/dpop-authorization"
  fi

  SECRET=$(head -c 32 /dev/urandom | base64)
  # The shape of benches/load.sh's config, one worker. idle_timeout 8h: the session is
  # not re-sealed during the run (the client fails on any Set-Cookie).
  cat > "$DIR/portcullis.toml" <<CONF
[server]
listen = "127.0.0.1:$PC"
public_url = "http://127.0.0.1:$PC"
admin_listen = "127.0.0.1:$AD"
workers = 1
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
  if [ -n "$NEED_ASSERT" ]; then
    cat >> "$DIR/portcullis.toml" <<CONF
[[route]]
name = "asserted"
path = "/asserted"
upstream = "app"
auth = "bearer"
scopes = ["read:items"]
assertion = true
CONF
  fi
  if [ -n "$NEED_DPOP" ]; then
    cat >> "$DIR/portcullis.toml" <<CONF
[[route]]
name = "dpop"
path = "/dpop"
upstream = "app"
auth = "bearer"
scopes = ["read:items"]
CONF
  fi
  "$BIN" check --config "$DIR/portcullis.toml" >/dev/null || die "portcullis check refused the generated config"
fi

pc_ready() { # wait for admin /readyz; echoes the number of polls
  local polls=0 deadline=$(( $(date +%s) + $1 ))
  while :; do
    polls=$((polls + 1))
    curl -sf -o /dev/null "http://127.0.0.1:$AD/readyz" && break
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
  echo "$polls"
}
expect() { # what status url [curl args...]
  local what=$1 want=$2 url=$3; shift 3
  local got
  got=$(curl -s -o "$DIR/body" -D "$DIR/head" -w '%{http_code}' "$@" "$url") || true
  [ "$got" = "$want" ] || die "$what: GET $url answered $got, expected $want: $(head -c 300 "$DIR/body")"
}

# A plain portcullis: checks of the routes, and the login of the session runs.
if [ -n "$NEED_PC" ]; then
  RUST_LOG=warn "$BIN" --config "$DIR/portcullis.toml" 2>"$DIR/plain.log" & PLAIN=$!; RUN_PIDS=("$PLAIN")
  pc_ready 60 >/dev/null || die "portcullis not ready after 60 s (provider metadata and keys)"
  expect public 200 "http://127.0.0.1:$PC/pub/x"
  [ "$(cat "$DIR/body")" = "${BODY%$'\n'}" ] || die "public: not the upstream's body"
  expect "bearer without a token" 401 "http://127.0.0.1:$PC/api/x"
  expect "bearer with the token" 200 "http://127.0.0.1:$PC/api/x" -H "Authorization: $(cat "$DIR/authorization")"
  if [ -n "$NEED_ASSERT" ]; then
    expect "asserted bearer without a token" 401 "http://127.0.0.1:$PC/asserted/x"
    expect "asserted bearer with the token" 200 "http://127.0.0.1:$PC/asserted/x" -H "Authorization: $(cat "$DIR/authorization")"
    expect "the assertion keys" 200 "http://127.0.0.1:$PC/.well-known/portcullis/jwks.json"
    grep -q '"kid"' "$DIR/body" || die "the JWKS has no kid: $(head -c 300 "$DIR/body")"
  fi
  if [ -n "$NEED_DPOP" ]; then
    expect "DPoP without a proof" 401 "http://127.0.0.1:$PC/dpop/x" -H "Authorization: $(cat "$DIR/dpop-authorization")"
    env_cmd dpop-proofs 1 "http://127.0.0.1:$PC/dpop/x" "$DIR/dpop-token" "$DIR/proofs"
    expect "DPoP with a proof" 200 "http://127.0.0.1:$PC/dpop/x" -H "Authorization: $(cat "$DIR/dpop-authorization")" -H "DPoP: $(cat "$DIR/proofs")"
  fi
  if [ -n "$NEED_LOGIN" ]; then
    env_cmd login "http://127.0.0.1:$PC" /app/x "$DIR/cookie"
    expect "session without a cookie" 401 "http://127.0.0.1:$PC/app/x"
    expect "session cookie" 200 "http://127.0.0.1:$PC/app/x" -H "Cookie: $(cat "$DIR/cookie")"
    ! grep -qi '^set-cookie' "$DIR/head" || die "session: portcullis sets the cookie again on a plain request"
  fi
  kill -TERM "$PLAIN"; wait "$PLAIN" || true; RUN_PIDS=()
fi

listening() { # port: is 127.0.0.1:port in LISTEN state? (without connecting to it)
  local hex; hex=$(printf '0100007F:%04X' "$1")
  awk -v a="$hex" '$2 == a && $4 == "0A" {f=1} END {exit !f}' /proc/net/tcp
}
alive() { kill -0 "$1" 2>/dev/null; }

# run TARGET TOOL N: one fresh proxy under TOOL (callgrind|strace), N requests, stopped
# with SIGTERM; appends "TARGET TOOL N TOTAL POLLS SECONDS" to $DIR/results
run() {
  local target=$1 tool=$2 n=$3
  local rd=$DIR/run.$target.$tool.$n port path hdr=() extra=() cmd=() wrap=() polls=0 t0 t1
  CUR_RUN=$rd
  mkdir -p "$rd"
  case "$target" in
    nginx) port=$NG path=/pub/x cmd=(nginx -p "$DIR" -c "$DIR/nginx-proxy.conf" -e "$rd/error.log") ;;
    *) port=$PC cmd=("$BIN" --config "$DIR/portcullis.toml") ;;
  esac
  case "$target" in
    public) path=/pub/x ;;
    bearer) path=/api/x hdr=(Authorization "$DIR/authorization") ;;
    bearer-assert) path=/asserted/x hdr=(Authorization "$DIR/authorization") ;;
    bearer-dpop) path=/dpop/x hdr=(Authorization "$DIR/dpop-authorization") extra=(--per-request DPoP "$rd/proofs") ;;
    session) path=/app/x hdr=(Cookie "$DIR/cookie") ;;
  esac
  case "$tool" in
    callgrind) wrap=(valgrind --tool=callgrind --callgrind-out-file="$rd/callgrind.out" --log-file="$rd/valgrind.log") ;;
    strace) wrap=(strace -c -f -o "$rd/strace.txt") ;;
  esac
  ! listening "$port" || die "port $port is still in use before the $target $tool run"
  t0=$(date +%s)
  RUST_LOG=$LOG "${wrap[@]}" "${cmd[@]}" 2>"$rd/stderr.log" & local top=$!; RUN_PIDS=("$top")
  # The measured process: valgrind runs it in its own process; strace as a child, the
  # one running the binary (strace forks short-lived test children of its own first).
  local pid=$top exe c
  if [ "$tool" = strace ]; then
    exe=$(readlink -f "$(command -v "${cmd[0]}")")
    for _ in $(seq 100); do
      for c in $(pgrep -P "$top" || true); do
        [ "$(readlink "/proc/$c/exe" 2>/dev/null)" != "$exe" ] || pid=$c
      done
      [ "$pid" = "$top" ] || break
      sleep 0.1
    done
    [ "$pid" != "$top" ] || die "$target under strace: no traced process running $exe"
    RUN_PIDS+=("$pid")
  fi
  local deadline=$(( $(date +%s) + 600 ))
  until listening "$port"; do
    alive "$pid" || die "$target under $tool exited before listening"
    [ "$(date +%s)" -lt "$deadline" ] || die "$target under $tool: not listening after 600 s"
    sleep 0.2
  done
  if [ "$target" != nginx ]; then
    polls=$(pc_ready 600) || die "$target under $tool: /readyz not 200 after 600 s"
    expect "$target under $tool: ping" 200 "http://127.0.0.1:$PC/oauth2/ping"
  fi
  if [ "$target" = bearer-dpop ]; then
    # Fresh proofs for this run, made now (the proxy is ready): iat within the window.
    env_cmd dpop-proofs "$n" "http://127.0.0.1:$PC/dpop/x" "$DIR/dpop-token" "$rd/proofs"
  fi
  python3 "$CLIENT" "$port" "$path" "$n" "$CONNS" "${hdr[@]}" "${extra[@]}" --expect-body "$BODY" > "$rd/client.out" 2> "$rd/client.err" \
    || die "$target under $tool, $n requests: $(cat "$rd/client.err")"
  if [ "$target" != nginx ]; then
    curl -sf "http://127.0.0.1:$AD/metrics" > "$rd/metrics" || die "$target: no /metrics"
    local bad hits
    bad=$(awk '/^portcullis_requests_total/ && !/status="2xx"/ {s += $2} END {print s + 0}' "$rd/metrics")
    [ "$bad" = 0 ] || die "$target under $tool: portcullis counted $bad non-2xx answers"
    if [ "$target" = bearer ] || [ "$target" = bearer-assert ] || [ "$target" = bearer-dpop ]; then
      hits=$(awk '$1 == "portcullis_token_cache_hits_total" {print $2}' "$rd/metrics")
      [ "${hits:-0}" -ge $((n - 1)) ] || die "bearer under $tool: ${hits:-0} token-cache hits for $n requests"
    fi
  fi
  kill -TERM "$pid"
  deadline=$(( $(date +%s) + 300 ))
  while alive "$pid" || alive "$top"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$target under $tool did not stop within 300 s of SIGTERM"
    sleep 0.2
  done
  wait "$top" || true
  RUN_PIDS=()
  t1=$(date +%s)
  local total
  case "$tool" in
    callgrind)
      total=$(awk '$1 == "totals:" {t = $2} $1 == "summary:" {s = $2} END {print (t != "" ? t : s)}' "$rd/callgrind.out" 2>/dev/null || true)
      [ -n "$total" ] || die "$target: no totals line in the callgrind output"
      cp "$rd/callgrind.out" "$KEEP/callgrind.$target.$n.out" ;;
    strace)
      total=$(awk '$NF == "total" {print $4}' "$rd/strace.txt")
      [ -n "$total" ] || die "$target: no total line in the strace -c output"
      cp "$rd/strace.txt" "$KEEP/strace.$target.$n.txt" ;;
  esac
  echo "$target $tool $n $total $polls $((t1 - t0))" >> "$DIR/results"
  printf '  %-8s %-9s %5d requests: %12s total, %ss%s\n' "$target" "$tool" "$n" "$total" "$((t1 - t0))" \
    "$([ "$target" = nginx ] || echo ", $polls /readyz polls")"
}

echo "machine: $(nproc) cores, load average$(uptime | sed 's/.*load average//'); $SMALL and $LARGE requests over $CONNS connections; targets $TARGETS"
for target in "${TARGET_LIST[@]}"; do
  for tool in callgrind strace; do
    for n in "$SMALL" "$LARGE"; do run "$target" "$tool" "$n"; done
  done
done
CUR_RUN=""

python3 - "$DIR/results" "$SMALL" "$LARGE" "$KEEP" <<'PY'
import os, sys
rows = [l.split() for l in open(sys.argv[1])]
small, large, keep = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
d = large - small
tot = {(r[0], r[1], int(r[2])): int(r[3]) for r in rows}
targets = list(dict.fromkeys(r[0] for r in rows))
per = {t: {tool: (tot[(t, tool, large)] - tot[(t, tool, small)]) / d for tool in ("callgrind", "strace")}
       for t in targets}
print()
print(f"{'target':<14}{'instr/request':>15}{'syscalls/request':>18}{f'instr, {small} run':>17}"
      f"{f'instr, {large} run':>17}{'fixed instr':>15}{f'syscalls {small}/{large}':>19}")
for t in targets:
    fixed = tot[(t, "callgrind", small)] - small * per[t]["callgrind"]
    print(f"{t:<14}{per[t]['callgrind']:>15,.0f}{per[t]['strace']:>18.2f}"
          f"{tot[(t, 'callgrind', small)]:>17,}{tot[(t, 'callgrind', large)]:>17,}{fixed:>15,.0f}"
          f"{str(tot[(t, 'strace', small)]) + '/' + str(tot[(t, 'strace', large)]):>19}")
print(f"per request = (run of {large} - run of {small}) / {d}; instructions: user space, all threads")
print("(callgrind); syscalls: strace -c -f, all threads; fixed = the run of "
      f"{small} - {small} x per request:")
print("startup, first requests, connection setup and shutdown.")
print()
def calls(t, n):  # syscall name -> count, from the kept strace -c output
    out = {}
    for line in open(os.path.join(keep, f"strace.{t}.{n}.txt")):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            out[f[-1]] = int(f[3])
    return out
print("syscalls/request by call (>= 0.01):")
for t in targets:
    a, b = calls(t, small), calls(t, large)
    by = sorted(((b.get(k, 0) - a.get(k, 0)) / d, k) for k in set(a) | set(b))
    rest = sum(v for v, k in by if k != "epoll_wait")
    print(f"  {t:<14}" + "  ".join(f"{k} {v:.2f}" for v, k in reversed(by) if abs(v) >= 0.01)
          + f"   (all but epoll_wait: {rest:.2f})")
print()
def goal(label, value, op, target, fmt):
    ok = value <= target
    print(f"{label:<40}{fmt.format(value):>10}   target {op} {fmt.format(target):<8} {'met' if ok else 'MISSED'}")
ins = lambda t: per[t]["callgrind"]
sysc = lambda t: per[t]["strace"]
if "public" in per:
    goal("public instructions/request", ins("public"), "<=", 33000, "{:,.0f}")
if "public" in per and "nginx" in per:
    goal("public / nginx instructions", ins("public") / ins("nginx"), "<=", 1.5, "{:.2f}")
if "bearer" in per and "public" in per:
    goal("bearer - public instructions/request", ins("bearer") - ins("public"), "<=", 3000, "{:,.0f}")
if "session" in per and "public" in per:
    goal("session - public instructions/request", ins("session") - ins("public"), "<=", 8000, "{:,.0f}")
if "bearer-assert" in per and "bearer" in per:
    goal("bearer-assert - bearer instructions/req", ins("bearer-assert") - ins("bearer"), "<=", 5000, "{:,.0f}")
if "bearer-dpop" in per and "bearer" in per:
    # No target set: the DPoP check's cost, measured (issue 17).
    print(f"{'bearer-dpop - bearer instructions/req':<40}{ins('bearer-dpop') - ins('bearer'):>10,.0f}   (the DPoP check)")
if "nginx" in per:
    for t in ("public", "bearer", "session", "bearer-assert", "bearer-dpop"):
        if t in per:
            goal(f"{t} syscalls/request (nginx's {sysc('nginx'):.2f})", sysc(t), "<=", sysc("nginx"), "{:.2f}")
PY
echo
echo "callgrind and strace outputs: $KEEP"
echo "  e.g. callgrind_annotate --inclusive=yes $KEEP/callgrind.${TARGET_LIST[0]}.$LARGE.out | head -60"
echo "total time $(( $(date +%s) - START )) s"
