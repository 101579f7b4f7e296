#!/usr/bin/env bash
# Stand-in for the GPU binaries in `device_check.sh --dry-run` (linked under each
# tool's name): canned outputs in the formats the real tools write, so the
# report writer is exercised on the host. Deliberately: test_gpu has a failure
# and a skip (GoogleTest JSON), test_gpu_model passes (mini_gtest JSON),
# bench_e2e writes a partial JSON and overruns its timeout, compute-sanitizer
# refuses the device. CHATRADIO_DRY_RUN_HANG=<tool> makes that tool stop the
# whole check with SIGTERM (as the device tool's time limit would) and hang.
set -u
tool="$(basename "$0")"
if [ "${CHATRADIO_DRY_RUN_HANG:-}" = "$tool" ]; then
  kill -TERM "$CHATRADIO_DRY_RUN_PID"
  exec sleep 300
fi
json_arg() { for a in "$@"; do case "$a" in --gtest_output=json:*) echo "${a#--gtest_output=json:}" ;; esac; done; }
case "$tool" in
  nvidia-smi)
    echo "name, driver_version, clocks.sm [MHz], clocks.max.sm [MHz], clocks.mem [MHz], temperature.gpu, power.draw [W]"
    echo "FAKE H200 (dry run), 000.00, 1980, 1980, 3201, 30, 80.00 W" ;;
  test_gpu)
    echo "[ RUN      ] CudaInt4.GemvAndGemmMatchCpuAtLlama7bShapes"
    echo "test_gpu_int4.cpp:211: Failure"
    echo "[  FAILED  ] CudaInt4.GemvAndGemmMatchCpuAtLlama7bShapes (12 ms)"
    cat >"$(json_arg "$@")" <<'J'
{"tests": 3, "failures": 1, "testsuites": [{"name": "CudaInt4", "testsuite": [
  {"name": "GemvAndGemmMatchCpuAtLlama7bShapes", "result": "COMPLETED", "failures": [{"failure": "test_gpu_int4.cpp:211\nExpected: (st.nmse) < (1e-6), actual: 0.5 vs 1e-06\ngemm n 4096 k 4096 g 128 m 1", "type": ""}]},
  {"name": "RowsAreBitwiseInvariantForM1To64", "result": "COMPLETED"}]},
 {"name": "Int4LayoutHost", "testsuite": [{"name": "Gpu", "result": "SKIPPED", "skipped": {"message": "no CUDA GPU present"}}]}]}
J
    exit 1 ;;
  test_gpu_model)
    echo "head_dim 32 step 0: vs exact nmse 1.2e-06 rel 0.003 | vs cpu int4 nmse 0.0002 rel 0.02"
    echo "stories260K greedy: GPU equals CPU int4 for 201 of 201 ids"
    cat >"$(json_arg "$@")" <<'J'
{"runner": "mini_gtest", "tests": [
  {"name": "CudaModel.StoriesGreedyMatchesCpuInt4", "result": "OK", "ms": 900, "messages": ""},
  {"name": "CudaModel.GraphReplayEqualsEagerBitwise", "result": "OK", "ms": 800, "messages": ""}
], "passed": 2, "failed": 0, "skipped": 0}
J
    ;;
  bench_e2e)
    cat >"$1" <<'J'
{
 "device": "FAKE H200", "layers": 32, "weight_bytes": 3770000000, "copy_GBps": 4300,
 "decode": [
  {"batch": 1, "ctx": 0, "graphs": true, "ms_median": 1.2, "ms_min": 1.1, "tokens_per_s": 833.3, "read_GBps": 2900, "roofline_fraction": 0.67, "kernels_per_step": 324},
  {"batch": 1, "ctx": 0, "graphs": false, "ms_median": 2.0, "ms_min": 1.9, "tokens_per_s": 500, "read_GBps": 1750, "roofline_fraction": 0.4, "kernels_per_step": 324}
 ],
 "prefill": null, "logits_finite": true, "complete": false
}
J
    exec sleep 60 ;;  # overruns the dry run's 2 s limit
  bench_kernels)
    cat >"$1" <<'J'
{"device": "FAKE H200", "sms": 132, "l2_mb": 60, "complete": true, "copy_gb_per_s": 4300,
 "int4_gemv": [{"n": 4096, "k": 4096, "m": 1, "us": 3.1, "gb_per_s": 2900, "pct_of_copy": 67}],
 "int4_gemm_vs_cublas": [
  {"n": 4096, "k": 4096, "m": 1, "int4_us": 3.1, "int4_tflops": 0.01, "cublas_fp16_us": 9.0, "cublas_tflops": 0.004, "path": "gemv"},
  {"n": 4096, "k": 4096, "m": 256, "int4_us": 40, "int4_tflops": 215, "cublas_fp16_us": 20, "cublas_tflops": 430, "path": "gemm"}],
 "attention": [{"kind": "decode", "seqs": 1, "new": 1, "ctx": 4096, "us": 20, "kv_gb_per_s": 3300, "tflops": 0.1}],
 "norms": [{"rows": 1, "dim": 4096, "rmsnorm_us": 2, "rmsnorm_gb_per_s": 8, "add_rmsnorm_us": 2.5, "add_rmsnorm_gb_per_s": 13}]}
J
    ;;
  compute-sanitizer)
    echo "========= COMPUTE-SANITIZER"
    echo "========= Error: Device not supported. Please refer to the \"Supported Devices\" section of the sanitizer documentation"
    exit 1 ;;
  *) echo "dryrun_fake.sh: unknown tool $tool" >&2; exit 2 ;;
esac
