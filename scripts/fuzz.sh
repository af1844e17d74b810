#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ (cargo-fuzz), each for SECONDS (default 60), one
# after the other, and prints one line of figures per target. Exits non-zero when a
# target finds a failure (its input is left in fuzz/artifacts/TARGET/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      every target when none is named
#
# Needs: cargo-fuzz (installed here with `cargo install --locked cargo-fuzz` when
# missing) and a C++ compiler (libFuzzer is built from source). The fuzz flags need a
# nightly compiler; on the stable toolchain RUSTC_BOOTSTRAP=1 (set here) allows them.
# Builds go to $CARGO_TARGET_DIR/fuzz (default target/fuzz), without sanitizer (the code is
# safe Rust; the properties and panics are what the targets check), with debug
# assertions and overflow checks. The corpus grows in fuzz/corpus/TARGET (not committed);
# the committed seeds (fuzz/seeds/TARGET) and dictionaries (fuzz/dict/TARGET.dict) are
# read as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

target_dir="${CARGO_TARGET_DIR:-target}/fuzz"
build=(-s none --codegen-units 16 --target-dir "$target_dir")
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building ${#targets[@]} fuzz targets"
cargo fuzz build "${build[@]}" >/dev/null

logs=$(mktemp -d)
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
  echo "==> fuzz $t for ${secs}s"
  start=$(date +%s)
  if ! cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=3072 -max_len=8192 \
      -print_final_stats=1 "${dict[@]}" >"$logs/$t.log" 2>&1; then
    tail -n 60 "$logs/$t.log"
    echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/)"
    exit 1
  fi
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  summary+=("$(printf '%-14s %6ss %12s execs  cov %6s  ft %7s  corpus %6s' "$t" "$took" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
done
echo "==> fuzz summary (no failure)"
printf '%s\n' "${summary[@]}"
