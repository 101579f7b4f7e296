#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/targets/ with clang under
# ASan+UBSan and runs each for a bounded time; prints each target's exec count
# and fails (exit 1) on any crash, sanitizer report, leak, timeout or
# uncaught exception. Crash inputs are kept as BUILD/fuzz/NAME/crash-*.
#
#   tests/fuzz/run.sh [--seconds N] [--build-dir DIR] [TARGET...]
#
# --seconds N     time per target (default 60)
# --build-dir DIR clang build directory (default build-fuzz); configured here
# TARGET...       only these targets (file names in targets/ without .cpp)
# JOBS            build parallelism (default 2)
#
# A target is one file targets/NAME.cpp defining LLVMFuzzerTestOneInput
# (becomes fuzz_NAME). Lines in its leading comment configure it:
#   // fuzz-seeds: PATTERN...   seed files, globs relative to the repository
#                               root (../shared/... allowed; a missing asset
#                               only means fewer seeds)
#   // fuzz-seed-text: TEXT     one seed whose bytes are TEXT
#   // fuzz-options: FLAG...    extra libFuzzer flags (e.g. -max_len=16384)
#   // fuzz-link: LIB...        project libraries beyond chatradio_model
# Seeds are gathered into BUILD/fuzz/NAME/seeds at every run (never copied
# into the repository); what the fuzzer finds accumulates in
# BUILD/fuzz/NAME/corpus, so later runs start further along.
set -euo pipefail

seconds=60
build=build-fuzz
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --seconds needs a positive integer" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/tests/fuzz"
[[ "$build" = /* ]] || build="$root/$build"
if [[ ${#targets[@]} -eq 0 ]]; then
  for src in "$here"/targets/*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
for t in "${targets[@]}"; do
  [[ -f "$here/targets/$t.cpp" ]] || { echo "run.sh: no target $t (tests/fuzz/targets/$t.cpp)" >&2; exit 2; }
done

command -v clang++ >/dev/null || { echo "run.sh: clang++ not found (scripts/setup installs clang)" >&2; exit 2; }
# The whole build is instrumented, so a bug inside the parsers' libraries is
# caught where it happens; -fno-sanitize-recover makes every UBSan report fatal.
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize=fuzzer-no-link -fno-omit-frame-pointer"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_FLAGS="$sanitize" \
  -DCHATRADIO_CUDA=OFF -DCHATRADIO_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j "${JOBS:-2}" --target "${targets[@]/#/fuzz_}"

# Values of the "// fuzz-KEY:" lines of a target source, one per line.
directive() { sed -n "s|^// fuzz-$2: ||p" "$here/targets/$1.cpp"; }

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=()
summary=()
for t in "${targets[@]}"; do
  dir="$build/fuzz/$t"
  rm -rf "$dir/seeds"
  mkdir -p "$dir/seeds" "$dir/corpus"
  n=0
  while read -r pattern; do
    for f in $(cd "$root" && compgen -G "$pattern" || true); do
      cp "$root/$f" "$dir/seeds/file-$((n++))"
    done
  done < <(directive "$t" seeds | tr ' ' '\n' | grep -v '^$' || true)
  while IFS= read -r text; do
    printf '%s' "$text" > "$dir/seeds/text-$((n++))"
  done < <(directive "$t" seed-text)
  read -r -a options <<< "$(directive "$t" options | tr '\n' ' ')"
  echo "== fuzz_$t: ${seconds}s, $n seeds"
  status=0
  (cd "$dir" && "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
      -artifact_prefix="$dir/" ${options[@]+"${options[@]}"} corpus seeds) > "$dir/log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  if [[ $status -ne 0 ]]; then
    failed+=("$t")
    summary+=("fuzz_$t: FAILED (exit $status) after ${execs:-?} execs; log $dir/log")
    grep -E "ERROR|runtime error|SUMMARY|Test unit written|uncaught|deadly" "$dir/log" | head -20 || true
  else
    summary+=("fuzz_$t: ok, ${execs:-?} execs in ${seconds}s, coverage ${cov:-?}, corpus $(ls "$dir/corpus" | wc -l)")
  fi
done

echo "== summary (load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
