#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (as root), then runs every test:
# the deployment-file checks (scripts/check-deploy.sh), a short pass of every fuzz target
# (scripts/fuzz.sh, FUZZ_SECONDS each, default 15; cargo-fuzz installed when missing) and
# the Rust tests (cargo-nextest, installed when missing), whose summary line ends the run.
# This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
# Debian's self-signed pair, named by the shipped nginx recipe (nginx -t loads it).
[ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] || need+=(ssl-cert)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
# libFuzzer (the fuzz targets' runtime) is C++, compiled from source by cargo-fuzz.
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -f tests/idp/package-lock.json ]; then
  echo "==> npm ci (tests/idp)"
  (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "==> deployment files (scripts/check-deploy.sh)"
scripts/check-deploy.sh

echo "==> the example assertion verifier's venv (scripts/verifier-venv.sh)"
PORTCULLIS_VERIFIER_PYTHON="$(scripts/verifier-venv.sh)"
export PORTCULLIS_VERIFIER_PYTHON

echo "==> fuzz targets, ${FUZZ_SECONDS:-15}s each (scripts/fuzz.sh)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> cargo nextest run"
exec cargo nextest run --no-fail-fast --profile ci "$@"
