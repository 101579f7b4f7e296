#!/usr/bin/env bash
# One-shot GPU check of the CUDA backend (docs/cuda.md): builds the kernels,
# test_gpu and bench_kernels stand-alone (bench/gpu/standalone: no gRPC,
# protobuf or nlohmann_json needed; GoogleTest if present, else the built-in
# mini runner) for the local GPU's architecture only, runs the tests (JSON
# results), the benchmarks and compute-sanitizer on the small tests, and writes
# one JSON report to $OUT/report.json. Designed to finish well inside 8 minutes
# on a 16-core H200 machine.
#
#   OUT=/some/dir bench/gpu/device_check.sh        # default OUT: build-device-check/
#   CHATRADIO_CUDA_ARCHS=80 bench/gpu/device_check.sh   # another GPU (default 90a)
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build-device-check}"
BUILD="${CHATRADIO_DEVICE_BUILD:-/tmp/chatradio-device-check}"
ARCH="${CHATRADIO_CUDA_ARCHS:-90a}"
JOBS="${JOBS:-16}"
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo "== $* (t=$(($(date +%s) - t0))s)"; }

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

test_rc=-1 bench_rc=-1 san_rc=-1
if [ "$build_rc" -eq 0 ]; then
  step "test_gpu"
  timeout 240 "$BUILD/test_gpu" --gtest_output=json:"$OUT/test_gpu.json" >"$OUT/test_gpu.log" 2>&1
  test_rc=$?
  grep -E "FAILED|PASSED|passed|Failure|error" "$OUT/test_gpu.log" | tail -20
  step "bench_kernels"
  timeout 180 "$BUILD/bench_kernels" "$OUT/bench.json" >"$OUT/bench.log" 2>&1
  bench_rc=$?
  cat "$OUT/bench.log"
  if command -v compute-sanitizer >/dev/null 2>&1; then
    step "compute-sanitizer memcheck (small tests)"
    timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 "$BUILD/test_gpu" \
      --gtest_filter='CudaOps.*:*Stories*:*Odd*:*SmallAndOdd*' >"$OUT/sanitizer.log" 2>&1
    san_rc=$?
    tail -5 "$OUT/sanitizer.log"
  fi
fi

step "report"
python3 - "$OUT" "$build_rc" "$test_rc" "$bench_rc" "$san_rc" "$ARCH" "$(($(date +%s) - t0))" <<'EOF'
import json, os, re, sys
out, build_rc, test_rc, bench_rc, san_rc, arch, secs = sys.argv[1:]

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

build_log = tail("build.log", 100000)
ptxas = [l.strip() for l in build_log if re.search(r"Compiling entry|registers|spill", l)]
tests = tests_summary(load("test_gpu.json"))
report = {
    "arch": arch, "elapsed_s": int(secs),
    "rc": {"build": int(build_rc), "test_gpu": int(test_rc), "bench": int(bench_rc), "sanitizer": int(san_rc)},
    "gpu": tail("nvidia_smi.csv", 5),
    "tests": {"ok": sum(t["result"] == "OK" for t in tests),
              "failed": [t for t in tests if t["result"] == "FAILED"],
              "skipped": [t["name"] for t in tests if t["result"] == "SKIPPED"],
              "all": [t["name"] + ": " + t["result"] for t in tests]},
    "bench": load("bench.json"),
    "sanitizer_tail": tail("sanitizer.log", 30),
    "ptxas": ptxas[-200:],
    "build_tail": build_log[-40:] if int(build_rc) != 0 else [],
    "test_log_tail": tail("test_gpu.log", 60) if int(test_rc) != 0 else [],
}
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
print(f"report: {os.path.join(out, 'report.json')}")
print(f"build {build_rc}  tests {test_rc} ({report['tests']['ok']} ok, {len(report['tests']['failed'])} failed, "
      f"{len(report['tests']['skipped'])} skipped)  bench {bench_rc}  sanitizer {san_rc}  {secs}s")
for t in report["tests"]["failed"]:
    print("FAILED", t["name"], t["message"][:300].replace("\n", " | "))
EOF
