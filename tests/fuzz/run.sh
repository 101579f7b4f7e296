#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/targets/ with clang under
# ASan+UBSan and runs each for a bounded time; prints each target's exec count
# and fails (exit 1) on any crash, sanitizer report, leak, timeout or
# uncaught exception. Crash inputs are kept as BUILD/fuzz/NAME/crash-*.
#
#   tests/fuzz/run.sh [--seconds N] [--jobs N] [--build-dir DIR] [TARGET...]
#
# --seconds N     time per target (default 60)
# --jobs N        targets fuzzed at once, one process (one core) each
#                 (default 1); the summary stays in target order
# --build-dir DIR clang build directory (default build-fuzz). One already
#                 configured with -DCHATRADIO_FUZZ=ON (e.g. scripts/test
#                 --sanitize address's build-asan) is used as it is, never
#                 reconfigured; an empty one is configured here; one
#                 configured without CHATRADIO_FUZZ is refused
# TARGET...       only these targets (file names in targets/ without .cpp)
# JOBS            build parallelism (default 2)
#
# A target is one file targets/NAME.cpp defining LLVMFuzzerTestOneInput
# (becomes fuzz_NAME). Lines in its leading comment configure it:
#   // fuzz-seeds: PATTERN...   seed files, globs relative to the repository
#                               root (../shared/... and absolute paths
#                               allowed; a missing asset only means fewer
#                               seeds)
#   // fuzz-seed-head: N PATTERN...  the same, cut to their first N bytes
#                               (at a line end when the file is longer)
#   // fuzz-seed-text: TEXT     one seed whose bytes are TEXT
#   // fuzz-seed-bytes: TEXT    one seed: TEXT with printf %b escapes
#                               (\xHH, \n, \t, \\)
#   // fuzz-seed-command: CMD...  run from the repository root with the
#                               seed folder as its last argument; writes
#                               seed files there
#   // fuzz-options: FLAG...    extra libFuzzer flags (e.g. -max_len=16384)
#   // fuzz-link: LIB...        project libraries beyond chatradio_model
# Seeds are gathered into BUILD/fuzz/NAME/seeds at every run (never copied
# into the repository); what the fuzzer finds accumulates in
# BUILD/fuzz/NAME/corpus, so later runs start further along. A target that
# prints "SKIP: reason" and exits 0 (a missing ../shared asset) is reported
# as skipped.
set -euo pipefail

seconds=60
jobs=1
build=build-fuzz
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --seconds needs a positive integer" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --jobs needs a positive integer" >&2; exit 2; }

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
if [[ -f "$build/CMakeCache.txt" ]]; then
  # Someone else's instrumented build (or ours from an earlier run): build
  # the targets there with its flags; reconfiguring would rebuild it all.
  grep -q '^CHATRADIO_FUZZ:BOOL=ON$' "$build/CMakeCache.txt" || {
    echo "run.sh: $build is configured without -DCHATRADIO_FUZZ=ON; not reconfiguring it (use another --build-dir)" >&2
    exit 2
  }
else
  # The whole build is instrumented, so a bug inside the parsers' libraries is
  # caught where it happens; -fno-sanitize-recover makes every UBSan report fatal.
  sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize=fuzzer-no-link -fno-omit-frame-pointer"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_FLAGS="$sanitize" \
    -DCHATRADIO_CUDA=OFF -DCHATRADIO_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
fi
cmake --build "$build" -j "${JOBS:-2}" --target "${targets[@]/#/fuzz_}"

# Values of the "// fuzz-KEY:" lines of a target source, one per line.
directive() { sed -n "s|^// fuzz-$2: ||p" "$here/targets/$1.cpp"; }

# Files matching the patterns (relative to the repository root unless absolute).
seed_files() {
  local pattern f
  for pattern in "$@"; do
    for f in $(cd "$root" && compgen -G "$pattern" || true); do
      [[ "$f" = /* ]] && echo "$f" || echo "$root/$f"
    done
  done
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# Gathers the seeds of target $1, fuzzes it, and leaves its summary line in
# BUILD/fuzz/NAME/summary (and a file "failed" when it failed). Prints its
# header when it starts and the failure's key lines when it ends.
run_one() {
  local t="$1" dir="$build/fuzz/$1" n=0 status=0 execs cov f line bytes
  rm -rf "$dir/seeds" "$dir/tmp" "$dir/failed" "$dir/summary"
  mkdir -p "$dir/seeds" "$dir/corpus" "$dir/tmp"
  local patterns=()
  read -r -a patterns <<< "$(directive "$t" seeds | tr '\n' ' ')"
  while read -r f; do
    cp "$f" "$dir/seeds/file-$((n++))"
  done < <(seed_files ${patterns[@]+"${patterns[@]}"})
  while read -r bytes line; do
    read -r -a patterns <<< "$line"
    while read -r f; do
      head -c "$bytes" "$f" > "$dir/seeds/head-$n"
      if [[ $(stat -c %s "$f") -gt $bytes ]]; then sed -i '$d' "$dir/seeds/head-$n"; fi
      n=$((n + 1))
    done < <(seed_files "${patterns[@]}")
  done < <(directive "$t" seed-head)
  while IFS= read -r line; do
    printf '%s' "$line" > "$dir/seeds/text-$((n++))"
  done < <(directive "$t" seed-text)
  while IFS= read -r line; do
    printf '%b' "$line" > "$dir/seeds/bytes-$((n++))"
  done < <(directive "$t" seed-bytes)
  while IFS= read -r line; do
    read -r -a patterns <<< "$line"
    (cd "$root" && "${patterns[@]}" "$dir/seeds") || echo "run.sh: fuzz_$t: seed command failed: $line" >&2
  done < <(directive "$t" seed-command)
  n=$(find "$dir/seeds" -type f | wc -l)
  local options=()
  read -r -a options <<< "$(directive "$t" options | tr '\n' ' ')"
  echo "== fuzz_$t: ${seconds}s, $n seeds"
  (cd "$dir" && TMPDIR="$dir/tmp" "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 \
      -print_final_stats=1 -artifact_prefix="$dir/" ${options[@]+"${options[@]}"} corpus seeds) > "$dir/log" 2>&1 ||
    status=$?
  rm -rf "$dir/tmp"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  if [[ $status -ne 0 ]]; then
    touch "$dir/failed"
    echo "fuzz_$t: FAILED (exit $status) after ${execs:-?} execs; log $dir/log" > "$dir/summary"
    grep -E "ERROR|runtime error|SUMMARY|Test unit written|uncaught|deadly" "$dir/log" | head -20 || true
  elif line=$(grep -m1 '^SKIP: ' "$dir/log"); then
    echo "fuzz_$t: skipped: ${line#SKIP: }" > "$dir/summary"
  else
    echo "fuzz_$t: ok, ${execs:-?} execs in ${seconds}s, coverage ${cov:-?}, corpus $(ls "$dir/corpus" | wc -l)" \
      > "$dir/summary"
  fi
}

running=0
for t in "${targets[@]}"; do
  if [[ $jobs -eq 1 ]]; then
    run_one "$t"
    continue
  fi
  run_one "$t" &
  running=$((running + 1))
  if [[ $running -ge $jobs ]]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=()
summary=()
for t in "${targets[@]}"; do
  summary+=("$(cat "$build/fuzz/$t/summary")")
  [[ ! -f "$build/fuzz/$t/failed" ]] || failed+=("$t")
done
echo "== summary (load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
