# Shared by the benchmark scripts that run a whole portcullis: sourced, not run.
# The caller sets NAME (its name, for messages) and DIR (a scratch directory it removes),
# and may add to PIDS and LOGS. Everything binds 127.0.0.1; only what was started here
# is stopped.
PIDS=()
LOGS=()
env_cleanup() {
  exec 3>&- 4<&- || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$DIR"
}
die() {
  echo >&2
  echo "$NAME: FAILED: $*" >&2
  for f in "${LOGS[@]}"; do
    [ -s "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_upstream PORT: nginx answering "hello from upstream\n" from memory, one worker.
start_upstream() {
  mkdir -p "$DIR/up"
  cat > "$DIR/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $DIR/up/pid; error_log $DIR/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "hello from upstream\n"; } } }
CONF
  nginx -c "$DIR/up/nginx.conf" -e "$DIR/up/error.log" & PIDS+=($!)
  LOGS+=("$DIR/up/error.log")
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$1/" >/dev/null && return; sleep 0.1; done
  die "the upstream nginx did not answer on port $1"
}

# start_bench_env BIN: examples/bench_env.rs (the development provider, token minter and
# login client), driven over two FIFOs; sets ISSUER and AUDIENCE. env_cmd WORDS... sends
# one command and leaves its answer (after "ok") in ANSWER.
start_bench_env() {
  mkfifo "$DIR/env.in" "$DIR/env.out"
  RUST_LOG=warn "$1" <"$DIR/env.in" >"$DIR/env.out" 2>"$DIR/bench_env.log" & PIDS+=($!)
  LOGS+=("$DIR/bench_env.log")
  exec 3>"$DIR/env.in" 4<"$DIR/env.out"
  local word
  read -r -t 60 word ISSUER AUDIENCE <&4 || die "bench_env did not start"
  [ "$word" = ready ] || die "bench_env: $word $ISSUER $AUDIENCE"
}
env_cmd() {
  echo "$*" >&3
  local a
  read -r -t 1800 a <&4 || die "bench_env did not answer '$*'"
  case "$a" in
    ok*) ANSWER=${a#ok}; ANSWER=${ANSWER# } ;;
    *) die "bench_env '$*': $a" ;;
  esac
}

# wait_ready ADMIN_PORT [SECONDS]: /readyz answers 200 (provider metadata and keys
# loaded) within SECONDS (10).
wait_ready() {
  for _ in $(seq $((${2:-10} * 10))); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return
    sleep 0.1
  done
  die "portcullis not ready after ${2:-10} s (provider metadata and keys)"
}

# expect WHAT STATUS URL [curl args...]: one request, its status must be STATUS (the
# answer's head in $DIR/head, its body in $DIR/body).
expect() {
  local what=$1 want=$2 url=$3; shift 3
  local got
  got=$(curl -s -o "$DIR/body" -D "$DIR/head" -w '%{http_code}' "$@" "$url") || true
  [ "$got" = "$want" ] || die "$what: $url answered $got, expected $want: $(head -c 300 "$DIR/body")"
}

# rss_kib PID / open_fds PID: from /proc.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
open_fds() { ls "/proc/$1/fd" | wc -l; }
