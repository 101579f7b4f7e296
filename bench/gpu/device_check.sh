#!/usr/bin/env bash
# One-shot GPU check of the CUDA backend (docs/cuda.md): builds the kernels,
# test_gpu and bench_kernels stand-alone (bench/gpu/standalone: no gRPC,
# protobuf or nlohmann_json needed; GoogleTest if present, else the built-in
# mini runner) for the local GPU's architecture only, runs the tests (JSON
# results), the benchmarks and compute-sanitizer on the small tests, and writes
# one JSON report to $OUT/report.json. With nlohmann_json's headers at hand
# (installed, or carried in build-deps/ by --prepare) it also builds and runs
# the CUDA backend's test_gpu_model and bench_e2e (model/cuda, CudaLlama).
# Designed to finish well inside 8 minutes on a 16-core H200 machine: every
# step's timeout is capped by what is left of CHATRADIO_DEVICE_BUDGET seconds.
#
#   bench/gpu/device_check.sh --prepare            # here, once: fills build-deps/
#   OUT=/some/dir bench/gpu/device_check.sh        # default OUT: build-device-check/
#   CHATRADIO_CUDA_ARCHS=80 bench/gpu/device_check.sh   # another GPU (default 90a)
#
# --prepare copies what the GPU machine lacks into build-deps/ (ignored by git,
# like every /build*/ folder): nlohmann_json's headers and ../shared/models/
# stories260K (the ../shared beside a checkout does not travel). Then, from the
# session that holds the checkout, one device call runs everything:
#   run(command="bench/gpu/device_check.sh", carry=["build-deps"], timeout_s=600)
# $OUT comes back with report.json and logs.tgz (the raw logs), two files, well
# inside the tool's 8-file limit.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

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

OUT="${OUT:-$ROOT/build-device-check}"
BUILD="${CHATRADIO_DEVICE_BUILD:-/tmp/chatradio-device-check}"
ARCH="${CHATRADIO_CUDA_ARCHS:-90a}"
JOBS="${JOBS:-16}"
BUDGET="${CHATRADIO_DEVICE_BUDGET:-480}"
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo "== $* (t=$(($(date +%s) - t0))s)"; }
# cap SECONDS: the step's own timeout, or what is left of the budget (0: none left).
cap() {
  local left=$((BUDGET - ($(date +%s) - t0)))
  if [ "$left" -lt 20 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# capped SECONDS CMD...: CMD under `timeout`, capped by the budget; skipped (rc
# 124, as a timeout) once the budget is spent (`timeout 0` would mean no limit).
capped() {
  local t
  t=$(cap "$1")
  shift
  if [ "$t" -le 0 ]; then echo "skipped: the device-check budget ($BUDGET s) is spent"; return 124; fi
  timeout "$t" "$@"
}

step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv >"$OUT/nvidia_smi.csv" 2>&1 || echo "nvidia-smi failed" >>"$OUT/nvidia_smi.csv"
cat "$OUT/nvidia_smi.csv"

step "configure + build for sm_$ARCH"
gen="Ninja"
command -v ninja >/dev/null 2>&1 || gen="Unix Makefiles"
nvcc_arg=()
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  nvcc_arg=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
fi
# -Xptxas=-v puts every kernel's registers / spills / shared memory in build.log.
cmake -S "$ROOT/bench/gpu/standalone" -B "$BUILD" -G "$gen" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_FLAGS="-Xptxas=-v" "${nvcc_arg[@]}" >"$OUT/build.log" 2>&1 &&
  cmake --build "$BUILD" -j "$JOBS" --target test_gpu bench_kernels >>"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc $build_rc"
# The CUDA backend's targets exist only when nlohmann_json was found (see standalone/CMakeLists.txt).
model_build_rc=-1
if [ "$build_rc" -eq 0 ] && grep -qs "test_gpu_model" "$BUILD/build.ninja" "$BUILD/Makefile"; then
  cmake --build "$BUILD" -j "$JOBS" --target test_gpu_model bench_e2e >"$OUT/build_model.log" 2>&1
  model_build_rc=$?
  echo "model build rc $model_build_rc"
else
  echo "test_gpu_model / bench_e2e not configured (nlohmann_json missing? run --prepare and carry build-deps)" |
    tee "$OUT/build_model.log"
fi

test_rc=-1 bench_rc=-1 san_rc=-1 model_test_rc=-1 e2e_rc=-1 model_san_rc=-1
if [ "$build_rc" -eq 0 ]; then
  step "test_gpu"
  capped 240 "$BUILD/test_gpu" --gtest_output=json:"$OUT/test_gpu.json" >"$OUT/test_gpu.log" 2>&1
  test_rc=$?
  grep -E "FAILED|PASSED|passed|Failure|error" "$OUT/test_gpu.log" | tail -20
  step "bench_kernels"
  capped 180 "$BUILD/bench_kernels" "$OUT/bench.json" >"$OUT/bench.log" 2>&1
  bench_rc=$?
  cat "$OUT/bench.log"
fi
if [ "$model_build_rc" -eq 0 ]; then
  step "test_gpu_model"
  capped 180 "$BUILD/test_gpu_model" --gtest_output=json:"$OUT/test_gpu_model.json" \
    >"$OUT/test_gpu_model.log" 2>&1
  model_test_rc=$?
  grep -E "FAILED|PASSED|passed|Failure|error|stories260K|head_dim" "$OUT/test_gpu_model.log" | tail -40
  step "bench_e2e"
  capped 150 "$BUILD/bench_e2e" "$OUT/bench_e2e.json" >"$OUT/bench_e2e.log" 2>&1
  e2e_rc=$?
  cat "$OUT/bench_e2e.log"
fi
if command -v compute-sanitizer >/dev/null 2>&1; then
  if [ "$build_rc" -eq 0 ] && [ "$(cap 120)" -gt 0 ]; then
    step "compute-sanitizer memcheck (small kernel tests)"
    capped 120 compute-sanitizer --tool memcheck --error-exitcode 99 "$BUILD/test_gpu" \
      --gtest_filter='CudaOps.*:*Stories*:*Odd*:*SmallAndOdd*' >"$OUT/sanitizer.log" 2>&1
    san_rc=$?
    tail -5 "$OUT/sanitizer.log"
  fi
  if [ "$model_build_rc" -eq 0 ] && [ "$(cap 90)" -gt 0 ]; then
    step "compute-sanitizer memcheck (small backend tests)"
    capped 90 compute-sanitizer --tool memcheck --error-exitcode 99 "$BUILD/test_gpu_model" \
      --gtest_filter='CudaModel.Malformed*:CudaModel.CopyKv*:CudaModel.ChunkedPrefill*' >"$OUT/sanitizer_model.log" 2>&1
    model_san_rc=$?
    tail -5 "$OUT/sanitizer_model.log"
  fi
fi

step "report"
python3 - "$OUT" "$build_rc" "$test_rc" "$bench_rc" "$san_rc" "$ARCH" "$(($(date +%s) - t0))" \
  "$model_build_rc" "$model_test_rc" "$e2e_rc" "$model_san_rc" <<'EOF'
import json, os, re, sys
out, build_rc, test_rc, bench_rc, san_rc, arch, secs = sys.argv[1:8]
model_build_rc, model_test_rc, e2e_rc, model_san_rc = sys.argv[8:12]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception as e:  # missing or truncated: say so in the report
        return {"missing": f"{name}: {e}"}

def tail(name, n):
    try:
        with open(os.path.join(out, name), errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []

def tests_summary(j):
    rows = []
    if "testsuites" in j:  # GoogleTest's format
        for suite in j["testsuites"]:
            for t in suite.get("testsuite", []):
                failed = bool(t.get("failures"))
                skipped = t.get("result") == "SKIPPED"
                msg = "\n".join(f.get("failure", "") for f in t.get("failures", []))
                rows.append({"name": f"{suite['name']}.{t['name']}",
                             "result": "FAILED" if failed else "SKIPPED" if skipped else "OK",
                             "message": msg[:2000]})
    elif "tests" in j:  # mini_gtest's format
        rows = [{"name": t["name"], "result": t["result"], "message": t["messages"][:2000]} for t in j["tests"]]
    return rows

def tests_block(rows):
    return {"ok": sum(t["result"] == "OK" for t in rows),
            "failed": [t for t in rows if t["result"] == "FAILED"],
            "skipped": [t["name"] for t in rows if t["result"] == "SKIPPED"],
            "all": [t["name"] + ": " + t["result"] for t in rows]}

build_log = tail("build.log", 100000)
ptxas = [l.strip() for l in build_log if re.search(r"Compiling entry|registers|spill", l)]
tests = tests_summary(load("test_gpu.json"))
model_tests = tests_summary(load("test_gpu_model.json"))
report = {
    "arch": arch, "elapsed_s": int(secs),
    "rc": {"build": int(build_rc), "test_gpu": int(test_rc), "bench": int(bench_rc), "sanitizer": int(san_rc),
           "build_model": int(model_build_rc), "test_gpu_model": int(model_test_rc), "bench_e2e": int(e2e_rc),
           "sanitizer_model": int(model_san_rc)},
    "gpu": tail("nvidia_smi.csv", 5),
    "tests": tests_block(tests),
    "tests_model": tests_block(model_tests),
    # The backend tests print their measured errors (nmse, greedy agreement): keep those lines.
    "tests_model_figures": [l for l in tail("test_gpu_model.log", 400)
                            if re.search(r"nmse|greedy|teacher-forced", l)][-60:],
    "bench": load("bench.json"),
    "bench_e2e": load("bench_e2e.json"),
    "sanitizer_tail": tail("sanitizer.log", 30),
    "sanitizer_model_tail": tail("sanitizer_model.log", 30),
    "ptxas": ptxas[-200:],
    "build_tail": build_log[-40:] if int(build_rc) != 0 else [],
    "build_model_tail": tail("build_model.log", 40) if int(model_build_rc) != 0 else [],
    "test_log_tail": tail("test_gpu.log", 60) if int(test_rc) != 0 else [],
    "test_model_log_tail": tail("test_gpu_model.log", 60) if int(model_test_rc) != 0 else [],
}
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
print(f"report: {os.path.join(out, 'report.json')}")
print(f"build {build_rc}  tests {test_rc} ({report['tests']['ok']} ok, {len(report['tests']['failed'])} failed, "
      f"{len(report['tests']['skipped'])} skipped)  bench {bench_rc}  sanitizer {san_rc}  {secs}s")
print(f"model build {model_build_rc}  tests {model_test_rc} ({report['tests_model']['ok']} ok, "
      f"{len(report['tests_model']['failed'])} failed, {len(report['tests_model']['skipped'])} skipped)  "
      f"bench_e2e {e2e_rc}  sanitizer {model_san_rc}")
for t in report["tests"]["failed"] + report["tests_model"]["failed"]:
    print("FAILED", t["name"], t["message"][:300].replace("\n", " | "))
EOF

# The device tool returns at most 8 files from $OUT: keep report.json, pack the raw logs.
step "pack logs"
(cd "$OUT" && raw=$(ls | grep -v -e '^report\.json$' -e '^logs\.tgz$') &&
  [ -n "$raw" ] && tar -czf logs.tgz $raw && rm -f $raw)
ls -la "$OUT"
