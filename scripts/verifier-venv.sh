#!/usr/bin/env bash
# Creates (once per requirements file) the venv of the example assertion verifier
# (examples/assertion_verifier.py: PyJWT and cryptography, pinned in
# examples/assertion_verifier.requirements.txt) and prints its python. Called by
# scripts/test.sh, which hands the path to the e2e tests as PORTCULLIS_VERIFIER_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PORTCULLIS_VERIFIER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/assertion-verifier}"
req=examples/assertion_verifier.requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  echo "==> installing the assertion verifier's packages into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  cp "$req" "$venv/requirements.txt"
fi
echo "$venv/bin/python"
