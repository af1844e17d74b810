#!/usr/bin/env bash
# Checks every shipped deployment file that is not run by the e2e tests (nginx and Caddy
# recipes are: tests/e2e/forward_auth.rs). Called by scripts/test.sh; runs alone too.
#   Dockerfile                      hadolint
#   deploy/**/*.yaml, .yml          yamllint (.yamllint.yaml)
#   deploy/kubernetes/overlays/*    kubectl kustomize, then kubernetes-validate --strict and
#                                   checkov (skips only by inline checkov.io annotations)
#   deploy/kubernetes/examples/*    kubernetes-validate --strict and checkov
#   deploy/systemd/*.service        systemd-analyze verify
# The checkers are pinned in scripts/deploy-tools.txt and installed (once, from PyPI's
# packages) into a venv under ~/.cache/portcullis.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PORTCULLIS_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/deploy-tools}"
req=scripts/deploy-tools.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  echo "==> installing the deployment checkers into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
bin="$venv/bin"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "==> hadolint Dockerfile"
"$bin/hadolint" Dockerfile

echo "==> yamllint deploy/"
"$bin/yamllint" --strict -c .yamllint.yaml deploy/ .yamllint.yaml

echo "==> kubectl kustomize + kubernetes-validate --strict"
mkdir -p "$out/rendered"
for overlay in deploy/kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  "$bin/kubectl" kustomize "$overlay" > "$out/rendered/$name.yaml"
done
cp deploy/kubernetes/examples/*.yaml "$out/rendered/"
"$bin/kubernetes-validate" --strict --quiet "$out"/rendered/*.yaml

echo "==> checkov (rendered overlays and examples)"
# --skip-download: no calls home; every skip is a checkov.io/skipN annotation with its reason.
BC_SKIP_MAPPING=TRUE "$bin/checkov" -d "$out/rendered" --framework kubernetes \
  --compact --quiet --skip-download

echo "==> systemd-analyze verify deploy/systemd/portcullis.service"
# verify wants ExecStart's binary to exist: a stand-in for the one not installed here.
sed "s|^ExecStart=/usr/local/bin/portcullis|ExecStart=$(command -v true)|" \
  deploy/systemd/portcullis.service > "$out/portcullis.service"
systemd-analyze verify --man=no "$out/portcullis.service"

echo "deployment checks: all passed"
