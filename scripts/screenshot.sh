#!/usr/bin/env bash
# Regenerates docs/demo.png, the README's screenshot: builds portcullis, starts
# `portcullis demo` on a free 127.0.0.1 port, signs in as alice with headless Chromium
# (driven by playwright-core, scripts/screenshot/) and saves the identity page, 1200x800.
#
#   scripts/screenshot.sh [--release] [OUT.png]
#
# Needs chromium and node >= 20; installs chromium with apt-get when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
build=(cargo build --quiet --bin portcullis)
out=docs/demo.png
for arg in "$@"; do
  case "$arg" in
    --release) profile=release; build+=(--release) ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) out=$arg ;;
  esac
done

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  echo "==> installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  echo "screenshot.sh: node >= 20 is needed (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
if [ ! -d scripts/screenshot/node_modules/playwright-core ]; then
  echo "==> npm ci (scripts/screenshot)"
  (cd scripts/screenshot && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "==> ${build[*]}"
"${build[@]}"
bin=target/$profile/portcullis

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A port that nothing answers on; if the demo still cannot bind it, try another.
started=
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
  TMPDIR=$work NO_COLOR=1 "$bin" demo --port "$port" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 1 300); do
    if grep -q "Ctrl-C stops everything" "$work/out" 2>/dev/null; then started=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$started" ] && break
  wait "$pid" 2>/dev/null || true
  pid=
done
if [ -z "$started" ]; then
  echo "screenshot.sh: the demo did not start:" >&2
  cat "$work/out" "$work/err" >&2
  exit 1
fi
url=$(sed -n 's/^ *Open: *\(http[^ ]*\).*/\1/p' "$work/out")
metrics=$(sed -n 's/^ *Metrics: *\(http[^ ]*\).*/\1/p' "$work/out")
echo "==> demo at $url"

# Wait until the proxy has the provider's metadata (admin /readyz).
for _ in $(seq 1 100); do
  curl -fs -o /dev/null "${metrics%/metrics}/readyz" && break
  sleep 0.1
done

mkdir -p "$(dirname "$out")"
out=$(realpath "$out" 2>/dev/null || echo "$PWD/$out")
(cd scripts/screenshot && node shoot.mjs "$url" "$out")
