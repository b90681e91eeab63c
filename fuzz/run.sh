#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input, on stable Rust.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 180 s, every target)
#
# Builds the targets in fuzz/fuzz_targets/ with libFuzzer (the libfuzzer-sys crate, which
# compiles libFuzzer with the system C++ compiler) and LLVM SanitizerCoverage enabled through
# stable `-C passes` / `-C llvm-args` flags — what `cargo fuzz` does, minus AddressSanitizer
# (which needs nightly; Rust code here is memory-safe outside the reviewed `unsafe`, and what
# we hunt is panics, aborts, hangs and huge allocations). Seeds each corpus from the fixtures
# and the repository's own files (fuzz/seed.sh), then runs each target for the given time with
# a 10 s per-input timeout and a 2 GiB memory limit. Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-180}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors index config tokenizer manifest packfile trace device http_request)
fi
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# With an explicit --target, RUSTFLAGS reach only the targets, not build scripts or proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$host"
./seed.sh
for t in "${targets[@]}"; do
  mkdir -p "artifacts/$t" "corpus/$t"
  echo "== $t: ${secs}s"
  "target/$host/release/$t" "corpus/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=1048576 -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY|Done)' || true
  n=$(find "artifacts/$t" -type f | wc -l)
  echo "== $t: $n crash/timeout/oom artifact(s)"
done
