#!/usr/bin/env bash
# Bounded fuzzing of the inbound path: each cargo-fuzz target in fuzz/ runs for
# FUZZ_SECONDS (default 30) starting from its committed corpus (fuzz/corpus/<target>).
# Exits non-zero on the first crash, leak, timeout or out-of-memory, naming the input.
#
#   bash .ci/fuzz.sh                     # all targets, 30 s each
#   FUZZ_SECONDS=600 bash .ci/fuzz.sh verify
#
# The stable toolchain builds the fuzz crate with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# -Z flags). Its build is kept in FUZZ_TARGET_DIR (default ~/.cache/sym-circleci-approver/
# fuzz-target) so that later runs on the same machine only rebuild what changed. New corpus
# entries found by a run go to a temporary folder and are thrown away: the committed corpus
# only changes by hand (see fuzz/README.md).
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
# address (default) or none. CI uses none: the service forbids unsafe code, so what the run
# looks for is a panic, which needs no sanitizer, and the uninstrumented build is much faster.
sanitizer="${FUZZ_SANITIZER:-address}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(signature_header verify sym_event)
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/sym-circleci-approver/fuzz-target}"
mkdir -p "$CARGO_TARGET_DIR"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fuzz: building the fuzz targets (into $CARGO_TARGET_DIR)"
cargo fuzz build --sanitizer "$sanitizer"

failed=0
for target in "${targets[@]}"; do
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
  echo "fuzz: $target for ${seconds}s on fuzz/corpus/$target ($(find "fuzz/corpus/$target" -type f | wc -l) inputs)"
  if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "$work/corpus/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/$target/" 2>"$work/$target.log"; then
    failed=1
    grep -A 4 'panicked at' "$work/$target.log" | head -n 20 || true
    tail -n 40 "$work/$target.log"
    for artifact in "$work/artifacts/$target"/*; do
      [ -e "$artifact" ] || continue
      mkdir -p fuzz/artifacts/"$target"
      cp "$artifact" fuzz/artifacts/"$target"/
      echo "fuzz: $target FAILED on fuzz/artifacts/$target/$(basename "$artifact") (base64: $(base64 -w0 < "$artifact" | head -c 2000))"
      echo "fuzz: reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/$(basename "$artifact")"
    done
  else
    grep -E '^stat::number_of_executed_units|^Done' "$work/$target.log" | sed "s/^/fuzz: $target: /" || true
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "fuzz: FAILED"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
