#!/usr/bin/env bash
# One-shot GPU check of the CUDA backend (docs/cuda.md, "Device check"): builds
# the kernels, test_gpu and bench_kernels stand-alone (bench/gpu/standalone: no
# gRPC or protobuf; GoogleTest if present, else tests/gpu/mini_gtest.h) for the
# local GPU's architecture, plus test_gpu_model and bench_e2e when
# nlohmann_json's headers are at hand (installed, or carried in build-deps/ by
# --prepare), runs them and compute-sanitizer, and writes ONE report,
# $OUT/report.json, with every figure, plus $OUT/logs.tgz (the raw logs).
#
#   bench/gpu/device_check.sh --prepare      # here, once: fills build-deps/
#   OUT=/some/dir bench/gpu/device_check.sh  # on the GPU machine (default OUT: build-device-check/)
#   bench/gpu/device_check.sh --dry-run      # host-only rehearsal (CTest DeviceCheck.DryRun)
#
# It cannot lose its results:
# - every step runs under `timeout`, capped by what is left of
#   CHATRADIO_DEVICE_BUDGET (default 420 s; the device tool allows 600 s);
# - the report and the log archive are rewritten after every step, and once more
#   from an EXIT trap (SIGTERM/SIGINT/SIGHUP stop the running step first), so a
#   run cut short, even by SIGKILL, returns everything measured until then;
# - $OUT only ever holds report.json and logs.tgz (the tool returns <= 8 files):
#   raw logs live in a work folder under /tmp and travel packed.
# compute-sanitizer is looked up on PATH, then in /usr/local/cuda/bin; a device
# it does not support ("Device not supported") makes its steps "skipped".
#
# --dry-run runs this very script on the host with stand-in binaries
# (bench/gpu/dryrun_fake.sh: canned outputs in both test JSON formats, a step
# that overruns its timeout, a sanitizer that refuses the device), then checks
# the report with device_report.py --check. No GPU, no nvcc, no build.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/bench/gpu"
PY="${PYTHON:-python3}"

if [ "${1:-}" = "--prepare" ]; then
  deps="$ROOT/build-deps"
  mkdir -p "$deps/shared/models"
  inc=""
  for d in /usr/include /usr/local/include; do [ -f "$d/nlohmann/json.hpp" ] && inc="$d" && break; done
  if [ -z "$inc" ]; then echo "nlohmann/json.hpp not found under /usr/include or /usr/local/include" >&2; exit 1; fi
  rm -rf "$deps/nlohmann" && cp -r "$inc/nlohmann" "$deps/"
  if [ -d "$ROOT/../shared/models/stories260K" ]; then
    rm -rf "$deps/shared/models/stories260K" && cp -r "$ROOT/../shared/models/stories260K" "$deps/shared/models/"
  else
    echo "warning: ../shared/models/stories260K absent: the stories260K GPU test will skip" >&2
  fi
  du -sh "$deps"
  exit 0
fi

MODE=device
if [ "${1:-}" = "--dry-run" ]; then
  MODE=dry-run
  DRY="${CHATRADIO_DRY_RUN_DIR:-$(mktemp -d /tmp/chatradio-dry-run.XXXXXX)}"
  export CHATRADIO_DRY_RUN_PID=$$  # the fake of CHATRADIO_DRY_RUN_HANG signals it (DryRunInterrupted)
  OUT="$DRY/out"
  BUILD="$DRY/build"
  mkdir -p "$BUILD/bin"
  for tool in test_gpu test_gpu_model bench_kernels bench_e2e compute-sanitizer nvidia-smi; do
    ln -s "$HERE/dryrun_fake.sh" "$BUILD/bin/$tool"
  done
  PATH="$BUILD/bin:$PATH"
  BUDGET=200  # generous: the fakes are instant, a loaded CI machine is not
  T_E2E=2  # the fake bench_e2e overruns this: the report must say "timeout" and keep its partial JSON
else
  OUT="${OUT:-$ROOT/build-device-check}"
  BUILD="${CHATRADIO_DEVICE_BUILD:-/tmp/chatradio-device-check}"
  BUDGET="${CHATRADIO_DEVICE_BUDGET:-420}"
  T_E2E=120
fi
T_BUILD="${CHATRADIO_DEVICE_BUILD_TIMEOUT:-240}"  # (a busy 2-core machine needs ~19 min for both builds)
ARCH="${CHATRADIO_CUDA_ARCHS:-90a}"
JOBS="${JOBS:-16}"
# Raw logs and step records, packed into $OUT/logs.tgz (never in $OUT itself).
if [ "$MODE" = dry-run ]; then WORK="$DRY/work"; else WORK="$(mktemp -d /tmp/chatradio-device-logs.XXXXXX)"; fi
mkdir -p "$OUT" "$WORK"
rm -f "$OUT/report.json" "$OUT/logs.tgz"
t0=$(date +%s)
: >"$WORK/steps.tsv"
CHILD="" CURRENT="start" step_t0=$t0
EXIT_REASON="finished"
export PYTHONDONTWRITEBYTECODE=1

# Report + archive, from whatever exists so far (called after every step).
snapshot() {
  "$PY" "$HERE/device_report.py" "$WORK" "$OUT/report.json" --mode "$MODE" --arch "$ARCH" \
    --elapsed "$(($(date +%s) - t0))" --exit "$1" >>"$WORK/report_writer.log" 2>&1
  (cd "$WORK" && tar -czf "$OUT/logs.tgz.tmp" --exclude='*.tmp' . 2>/dev/null && mv -f "$OUT/logs.tgz.tmp" "$OUT/logs.tgz")
}
finish() {
  trap - EXIT TERM INT HUP
  snapshot "$EXIT_REASON"
  echo "== report: $OUT/report.json ($(ls "$OUT" | tr '\n' ' '))"
  "$PY" "$HERE/device_report.py" --print "$OUT/report.json"
}
on_signal() {
  EXIT_REASON="stopped by signal $1"
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  echo "$CURRENT	143	$(($(date +%s) - step_t0))	killed	$EXIT_REASON" >>"$WORK/steps.tsv"
  exit 143
}
trap finish EXIT
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

# step NAME TIMEOUT CMD...: runs CMD under `timeout` (capped by the budget) in
# the background (so a signal reaches the trap at once), output to
# $WORK/NAME.log; records "name rc seconds status note" and snapshots.
step() {
  local name="$1" limit="$2" left status note=""
  shift 2
  CURRENT="$name"
  step_t0=$(date +%s)
  left=$((BUDGET - (step_t0 - t0)))
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== $name (limit ${limit}s, t=$((step_t0 - t0))s)"
  if [ "$left" -lt 10 ]; then
    echo "$name	-1	0	skipped	the device-check budget ($BUDGET s) is spent" >>"$WORK/steps.tsv"
    snapshot running
    return 1
  fi
  timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1 &
  CHILD=$!
  wait "$CHILD"
  local rc=$?
  CHILD=""
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout; note="over its ${limit}s limit" ;;
    *) status=failed ;;
  esac
  if [ "$status" = failed ] && grep -qs "Device not supported" "$WORK/$name.log"; then
    status=skipped
    note="compute-sanitizer does not support this device"
  fi
  echo "$name	$rc	$(($(date +%s) - step_t0))	$status	$note" >>"$WORK/steps.tsv"
  tail -3 "$WORK/$name.log"
  snapshot running
  [ "$status" = ok ]
}
skip() {  # skip NAME REASON
  echo "$1	-1	0	skipped	$2" >>"$WORK/steps.tsv"
}

sanitizer=""
for s in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer; do
  [ -n "$s" ] && [ -x "$s" ] && sanitizer="$s" && break
done

step device 20 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv

built=0 model_built=0
if [ "$MODE" = dry-run ]; then
  skip build "dry run: stand-in binaries"
  built=1 model_built=1
else
  gen="Ninja"
  command -v ninja >/dev/null 2>&1 || gen="Unix Makefiles"
  nvcc_arg=()
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    nvcc_arg=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
  fi
  # -Xptxas=-v puts every kernel's registers / spills / shared memory in configure_build.log.
  if step configure_build "$T_BUILD" bash -c 'cmake -S "$0/bench/gpu/standalone" -B "$1" -G "$2" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CUDA_ARCHITECTURES="$3" -DCMAKE_CUDA_FLAGS="-Xptxas=-v" "${@:5}" &&
      cmake --build "$1" -j "$4" --target test_gpu bench_kernels' \
      "$ROOT" "$BUILD" "$gen" "$ARCH" "$JOBS" "${nvcc_arg[@]}"; then
    built=1
    BUILD_BIN="$BUILD"
    # The CUDA backend's targets exist only when nlohmann_json was found (standalone/CMakeLists.txt).
    if grep -qs "test_gpu_model" "$BUILD/build.ninja" "$BUILD/Makefile"; then
      step build_model "$((T_BUILD * 5 / 8))" cmake --build "$BUILD" -j "$JOBS" --target test_gpu_model bench_e2e && model_built=1
    else
      skip build_model "test_gpu_model / bench_e2e not configured: nlohmann_json missing (run --prepare, carry build-deps)"
    fi
  fi
fi
BIN="${BUILD_BIN:-$BUILD/bin}"

# Most important first: correctness, then the end-to-end figures, then kernels, then the sanitizer.
if [ "$built" = 1 ]; then
  step test_gpu 150 "$BIN/test_gpu" --gtest_output=json:"$WORK/test_gpu.json"
else
  skip test_gpu "not built"
fi
if [ "$model_built" = 1 ]; then
  step test_gpu_model 120 "$BIN/test_gpu_model" --gtest_output=json:"$WORK/test_gpu_model.json"
  step bench_e2e "$T_E2E" "$BIN/bench_e2e" "$WORK/bench_e2e.json"
else
  skip test_gpu_model "not built"
  skip bench_e2e "not built"
fi
if [ "$built" = 1 ]; then
  step bench_kernels 120 "$BIN/bench_kernels" "$WORK/bench_kernels.json"
else
  skip bench_kernels "not built"
fi
if [ -z "$sanitizer" ]; then
  skip sanitizer "compute-sanitizer not found on PATH or in /usr/local/cuda/bin"
  skip sanitizer_model "compute-sanitizer not found on PATH or in /usr/local/cuda/bin"
else
  if [ "$built" = 1 ]; then
    step sanitizer 90 "$sanitizer" --tool memcheck --error-exitcode 99 "$BIN/test_gpu" \
      --gtest_filter='CudaOps.*:*Stories*:*Odd*:*SmallAndOdd*:*UpperBound*'
  fi
  if [ "$model_built" = 1 ] && ! grep -qs "Device not supported" "$WORK/sanitizer.log"; then
    step sanitizer_model 90 "$sanitizer" --tool memcheck --error-exitcode 99 "$BIN/test_gpu_model" \
      --gtest_filter='CudaModel.Malformed*:CudaModel.CopyKv*:CudaModel.ChunkedPrefill*:CudaModel.Graph*'
  elif [ "$model_built" = 1 ]; then
    skip sanitizer_model "compute-sanitizer does not support this device"
  fi
fi

if [ "$MODE" = dry-run ]; then
  # Check what the CTest test relies on, then let the EXIT trap write the final report.
  snapshot finished
  "$PY" "$HERE/device_report.py" --check "$OUT" || { EXIT_REASON="dry-run check failed"; exit 1; }
  trap - EXIT
  [ -z "${CHATRADIO_DRY_RUN_DIR:-}" ] && rm -rf "$DRY"
  echo "dry run: report and archive checked"
fi
exit 0
