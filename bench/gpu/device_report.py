#!/usr/bin/env python3
"""The report of bench/gpu/device_check.sh: one JSON with every step's outcome,
every GPU test's result (failure text included), the model-vs-CPU figures, the
kernel and end-to-end benchmarks, a summary of the headline figures, the
sanitizer verdicts and ptxas register/spill lines.

  device_report.py WORK OUT.json --mode M --arch A --elapsed S --exit WHY   # write
  device_report.py --print OUT.json                                        # one-screen summary
  device_report.py --check OUTDIR                                          # the dry run's assertions
  device_report.py --check-interrupted OUTDIR                              # ... of a run stopped by SIGTERM

Writing never fails on missing or truncated inputs (a step cut short): they are
reported as such. Standard library only (the GPU machine has python3, no more).
"""
import json
import os
import re
import sys
import tarfile

STEP_FIELDS = ("name", "rc", "seconds", "status", "note")


def read_lines(path, n=None):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return lines if n is None else lines[-n:]


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        return {"missing": f"{os.path.basename(path)}: {e.strerror}"}
    except ValueError as e:
        return {"missing": f"{os.path.basename(path)}: truncated or invalid JSON ({e})"}


def steps_of(work):
    steps = []
    for line in read_lines(os.path.join(work, "steps.tsv")):
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        row = dict(zip(STEP_FIELDS, parts + [""] * (5 - len(parts))))
        row["rc"] = int(row["rc"]) if re.fullmatch(r"-?\d+", row["rc"]) else row["rc"]
        row["seconds"] = int(row["seconds"]) if row["seconds"].isdigit() else row["seconds"]
        steps.append(row)
    return steps


def tests_from_json(j):
    """Rows {name, result, message} from GoogleTest's JSON or mini_gtest's."""
    rows = []
    if "testsuites" in j:
        for suite in j["testsuites"]:
            for t in suite.get("testsuite", []):
                failures = t.get("failures", [])
                result = "FAILED" if failures else "SKIPPED" if t.get("result") == "SKIPPED" else "OK"
                msg = "\n".join(f.get("failure", "") for f in failures)
                if result == "SKIPPED":
                    msg = t.get("skipped", {}).get("message", "")
                rows.append({"name": f"{suite['name']}.{t['name']}", "result": result, "message": msg[:3000]})
    elif "tests" in j and isinstance(j["tests"], list):
        rows = [{"name": t["name"], "result": t["result"], "message": t.get("messages", "")[:3000]}
                for t in j["tests"]]
    return rows


# A test's own verdict line ("... (12 ms)"), not the summary's list of names.
VERDICT = re.compile(r"^\[\s*(OK|FAILED|SKIPPED)\s*\] (\S+) \(\d+ ms\)")


def tests_from_log(lines):
    """The same rows from the console output, for a run cut before its JSON."""
    rows, current = [], []
    for line in lines:
        if line.startswith("[ RUN      ]"):
            current = []
            continue
        m = VERDICT.match(line)
        if m and "." in m.group(2):
            rows.append({"name": m.group(2), "result": m.group(1), "message": "\n".join(current)[-3000:]})
            current = []
        else:
            current.append(line)
    return rows


def tests_block(work, name):
    j = load_json(os.path.join(work, f"{name}.json"))
    rows = tests_from_json(j)
    logged = tests_from_log(read_lines(os.path.join(work, f"{name}.log")))
    source = "json"
    if not rows:
        rows = logged
        source = "log" if rows else j.get("missing", "no results")
    # GoogleTest's JSON has no skip message: take the console's.
    said = {t["name"]: t["message"] for t in logged}
    for t in rows:
        if not t["message"] and t["result"] != "OK":
            t["message"] = said.get(t["name"], "")[-3000:]
    return {"source": source,
            "ok": sum(t["result"] == "OK" for t in rows),
            "failed": [t for t in rows if t["result"] == "FAILED"],
            "skipped": [{"name": t["name"], "why": t["message"][:300]} for t in rows if t["result"] == "SKIPPED"],
            "all": [f"{t['name']}: {t['result']}" for t in rows]}


def summary_of(e2e, kernels):
    s = {}
    decode = e2e.get("decode", []) if isinstance(e2e, dict) else []
    by_case = {}
    for d in decode:
        key = f"batch {d.get('batch')} ctx {d.get('ctx')}"
        by_case.setdefault(key, {})["graph" if d.get("graphs") else "eager"] = {
            k: d.get(k) for k in ("tokens_per_s", "ms_median", "roofline_fraction", "kernels_per_step")}
    s["decode"] = by_case
    b1 = by_case.get("batch 1 ctx 0", {})
    s["decode_batch1_tokens_per_s"] = {k: v.get("tokens_per_s") for k, v in b1.items()}
    s["decode_batch1_hbm_roofline_fraction"] = {k: v.get("roofline_fraction") for k, v in b1.items()}
    s["kernels_per_decode_step"] = next((v.get("kernels_per_step") for v in b1.values()), None)
    pre = e2e.get("prefill") if isinstance(e2e, dict) else None
    s["prefill_tokens_per_s"] = pre.get("tokens_per_s") if isinstance(pre, dict) else None
    s["e2e_complete"] = bool(isinstance(e2e, dict) and e2e.get("complete"))
    rows = kernels.get("int4_gemm_vs_cublas", []) if isinstance(kernels, dict) else []
    s["int4_vs_cublas_fp16"] = [
        {"n": r.get("n"), "k": r.get("k"), "m": r.get("m"), "path": r.get("path"),
         "int4_tflops": r.get("int4_tflops"), "cublas_tflops": r.get("cublas_tflops"),
         "speedup": (r["cublas_fp16_us"] / r["int4_us"]) if r.get("int4_us") and r.get("cublas_fp16_us") else None}
        for r in rows]
    s["int4_gemv_pct_of_copy"] = [
        {"n": r.get("n"), "k": r.get("k"), "m": r.get("m"), "pct": r.get("pct_of_copy")}
        for r in (kernels.get("int4_gemv", []) if isinstance(kernels, dict) else [])]
    return s


def sanitizer_block(work, steps, name):
    step = next((st for st in steps if st["name"] == name), None)
    return {"status": step["status"] if step else "not run", "note": step["note"] if step else "",
            "tail": read_lines(os.path.join(work, f"{name}.log"), 25)}


def write(argv):
    work, out = argv[0], argv[1]
    opts = dict(zip(argv[2::2], argv[3::2]))
    steps = steps_of(work)
    build_log = read_lines(os.path.join(work, "configure_build.log"))
    build = next((st for st in steps if st["name"] == "configure_build"), None)
    e2e = load_json(os.path.join(work, "bench_e2e.json"))
    kernels = load_json(os.path.join(work, "bench_kernels.json"))
    report = {
        "mode": opts.get("--mode", "device"),
        "arch": opts.get("--arch", ""),
        "elapsed_s": int(opts.get("--elapsed", "0")),
        "exit": opts.get("--exit", ""),
        "steps": steps,
        "gpu": read_lines(os.path.join(work, "device.log"), 5),
        "summary": summary_of(e2e, kernels),
        "tests": {"test_gpu": tests_block(work, "test_gpu"), "test_gpu_model": tests_block(work, "test_gpu_model")},
        # The backend tests print their measured errors against the CPU backend.
        "model_vs_cpu": [l for l in read_lines(os.path.join(work, "test_gpu_model.log"))
                         if re.search(r"nmse|greedy|teacher-forced|graph", l)][-80:],
        "e2e": e2e,
        "kernels": kernels,
        "sanitizer": {"kernels": sanitizer_block(work, steps, "sanitizer"),
                      "model": sanitizer_block(work, steps, "sanitizer_model")},
        "ptxas": [l.strip() for l in build_log if re.search(r"Compiling entry|registers|spill", l)][-300:],
        "build_tail": build_log[-40:] if build and build["status"] != "ok" else [],
        "build_model_tail": read_lines(os.path.join(work, "build_model.log"), 40)
        if any(st["name"] == "build_model" and st["status"] != "ok" for st in steps) else [],
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, out)  # never a half-written report


def print_summary(path):
    r = load_json(path)
    if "missing" in r:
        print(r["missing"])
        return
    print(f"mode {r['mode']}, exit: {r['exit']}, {r['elapsed_s']} s")
    for st in r["steps"]:
        print(f"  {st['name']:16} {st['status']:8} rc {st['rc']:>4} {st['seconds']:>4} s  {st['note']}")
    for name, t in r["tests"].items():
        print(f"  {name}: {t['ok']} ok, {len(t['failed'])} failed, {len(t['skipped'])} skipped ({t['source']})")
        for f in t["failed"]:
            print("    FAILED", f["name"], f["message"][:300].replace("\n", " | "))
    s = r["summary"]
    print(f"  decode batch 1 tokens/s {s['decode_batch1_tokens_per_s']}, roofline "
          f"{s['decode_batch1_hbm_roofline_fraction']}, kernels/step {s['kernels_per_decode_step']}, "
          f"prefill tokens/s {s['prefill_tokens_per_s']}")


def fail(msg):
    print(f"device_report --check: {msg}", file=sys.stderr)
    sys.exit(1)


def check_common(outdir):
    files = sorted(os.listdir(outdir))
    if files != ["logs.tgz", "report.json"]:
        fail(f"$OUT must hold report.json and logs.tgz only, has {files}")
    r = load_json(os.path.join(outdir, "report.json"))
    if "missing" in r:
        fail(r["missing"])
    with tarfile.open(os.path.join(outdir, "logs.tgz")) as t:
        names = {os.path.basename(n) for n in t.getnames()}
    for need in ("steps.tsv", "test_gpu.log", "test_gpu.json"):
        if need not in names:
            fail(f"logs.tgz lacks {need}: {sorted(names)}")
    steps = {st["name"]: st for st in r["steps"]}
    return r, steps


def check(outdir):
    r, steps = check_common(outdir)
    expect = {"device": "ok", "build": "skipped", "test_gpu": "failed", "test_gpu_model": "ok",
              "bench_e2e": "timeout", "bench_kernels": "ok", "sanitizer": "skipped"}
    for name, status in expect.items():
        if steps.get(name, {}).get("status") != status:
            fail(f"step {name}: expected {status}, got {steps.get(name)}")
    if "not support" not in steps["sanitizer"]["note"]:
        fail(f"sanitizer skip reason: {steps['sanitizer']}")
    if r["mode"] != "dry-run" or r["exit"] != "finished":
        fail(f"mode/exit: {r['mode']} / {r['exit']}")
    tg, tm = r["tests"]["test_gpu"], r["tests"]["test_gpu_model"]
    if len(tg["failed"]) != 1 or "actual: 0.5" not in tg["failed"][0]["message"] or len(tg["skipped"]) != 1:
        fail(f"test_gpu (GoogleTest JSON) parsed wrongly: {tg}")
    if tm["ok"] != 2 or tm["failed"]:
        fail(f"test_gpu_model (mini_gtest JSON) parsed wrongly: {tm}")
    s = r["summary"]
    if s["decode_batch1_tokens_per_s"].get("graph") != 833.3 or s["kernels_per_decode_step"] != 324:
        fail(f"the partial bench_e2e.json (cut by its timeout) was lost: {s}")
    if s["decode_batch1_hbm_roofline_fraction"].get("eager") != 0.4 or s["e2e_complete"]:
        fail(f"roofline / completeness: {s}")
    if [x["m"] for x in s["int4_vs_cublas_fp16"]] != [1, 256] or s["int4_vs_cublas_fp16"][1]["speedup"] != 0.5:
        fail(f"int4 vs cuBLAS: {s['int4_vs_cublas_fp16']}")
    if not any("greedy" in l for l in r["model_vs_cpu"]):
        fail("model-vs-CPU figures missing")


def check_interrupted(outdir):
    r, steps = check_common(outdir)
    if r["exit"] != "stopped by signal TERM":
        fail(f"exit: {r['exit']}")
    if steps.get("bench_kernels", {}).get("status") != "killed":
        fail(f"the running step must be recorded as killed: {steps.get('bench_kernels')}")
    if steps.get("bench_e2e", {}).get("status") != "timeout" or r["summary"]["kernels_per_decode_step"] != 324:
        fail("results of the steps before the signal were lost")
    if "sanitizer" in steps:
        fail("steps after the signal must not run")


def main(argv):
    if len(argv) == 2 and argv[0] == "--print":
        print_summary(argv[1])
    elif len(argv) == 2 and argv[0] == "--check":
        check(argv[1])
        print("device_report --check: ok")
    elif len(argv) == 2 and argv[0] == "--check-interrupted":
        check_interrupted(argv[1])
        print("device_report --check-interrupted: ok")
    elif len(argv) >= 2 and not argv[0].startswith("--"):
        write(argv)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
