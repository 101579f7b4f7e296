#!/usr/bin/python3
"""CTest bench.serving: the load generator against the real chatradio-server.

Starts chatradio-server on ../shared/models/stories260K, then runs
serving_bench.py for a few seconds in each arrival mode (a Poisson sweep, a
Poisson run bounded by duration, a burst, a trace) and checks its reports:
the JSON structure, one recorded request per arrival, every request answered,
the Python prompt renderer agreeing with the server's prompt token count on
every request, and one Markdown row per run. No timing is asserted.

    serving_test.py --server BIN --model DIR --templates FILE --proto-root DIR

Exits 0 when every check passed, 1 with a message otherwise, 77 (skip) when
../shared is absent.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../tests/service"))
sys.path.insert(0, os.path.join(HERE, "../../tests/common"))
from client_test import check, fail  # noqa: E402
from grpc_testing import ServerProcess, add_server_arguments  # noqa: E402

LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s")
FIELDS = ("count", "mean", "p50", "p90", "p99", "max")


def bench(args, out_dir, name, timeout=300):
    """Runs serving_bench.py; returns (report, markdown text)."""
    js, md = os.path.join(out_dir, name + ".json"), os.path.join(out_dir, name + ".md")
    r = subprocess.run([sys.executable, os.path.join(HERE, "serving_bench.py")] + args +
                       ["--json", js, "--markdown", md], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    check(r.returncode == 0, "%s: exit %d\n%s" % (name, r.returncode, r.stderr))
    with open(js, encoding="utf-8") as f:
        report = json.load(f)
    with open(md, encoding="utf-8") as f:
        table = f.read()
    check(table in r.stdout, "%s: the printed table differs from --markdown's" % name)
    return report, table


def check_report(name, report, table, arrivals, max_tokens):
    """arrivals: expected count per run (None = whatever the Poisson draw gave)."""
    check(report["target"]["kind"] == "grpc" and report["template_id"] == "story-en", "%s: header" % name)
    runs = report["runs"]
    check(len(runs) == len(arrivals), "%s: %d runs, expected %d" % (name, len(runs), len(arrivals)))
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| offered")]
    check(len(rows) == len(runs), "%s: %d table rows for %d runs" % (name, len(rows), len(runs)))
    for run, expected in zip(runs, arrivals):
        s = run["summary"]
        if expected is not None:
            check(s["arrivals"] == expected, "%s: %d arrivals, expected %d" % (name, s["arrivals"], expected))
        check(s["arrivals"] >= 1, "%s: no arrivals" % name)
        check(s["requests"] == s["arrivals"], "%s: %d requests recorded for %d arrivals" %
              (name, s["requests"], s["arrivals"]))
        check(s["errors"] == {} and s["completed"] == s["requests"], "%s: errors %s" % (name, s["errors"]))
        check(run["prompt_token_mismatches"] == 0,
              "%s: %d prompts rendered differently from the server" % (name, run["prompt_token_mismatches"]))
        for metric in LATENCIES:
            d = s["latency"][metric]
            check(set(FIELDS) <= set(d), "%s: latency.%s lacks fields: %s" % (name, metric, d))
        lat = s["latency"]
        check(lat["ttft_s"]["count"] == lat["e2e_s"]["count"] == lat["queue_s"]["count"] == s["completed"],
              "%s: a completed request lacks TTFT, e2e or queue time" % name)
        check(lat["ttft_s"]["p50"] <= lat["ttft_s"]["p99"] <= lat["ttft_s"]["max"], "%s: TTFT order" % name)
        check(0 <= lat["ttft_s"]["max"] <= lat["e2e_s"]["max"], "%s: TTFT beyond e2e" % name)
        out = s["output_tokens"]
        check(out["count"] == s["completed"] and 1 <= out["max"] <= max_tokens,
              "%s: output tokens %s (max_tokens %d)" % (name, out, max_tokens))
        check(s["prompt_tokens"]["max"] > 1, "%s: prompt tokens %s" % (name, s["prompt_tokens"]))
        check(s["throughput_rps"] > 0 and s["output_tokens_per_s"] > 0, "%s: throughput" % name)
        check(0 <= s["goodput_rps"] <= s["throughput_rps"] + 1e-9, "%s: goodput above throughput" % name)
        check(s["send_lag_s"]["count"] == s["requests"], "%s: send lag" % name)


def main():
    ap = argparse.ArgumentParser()
    add_server_arguments(ap)
    ap.add_argument("--shared", required=True)
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.shared, "data/iu-xray")) or not os.path.isdir(a.model):
        print("serving_test: SKIP: ../shared (models/stories260K, data/iu-xray) is absent")
        return 77

    # Usage errors exit 2 with a message before touching any server.
    r = subprocess.run([sys.executable, os.path.join(HERE, "serving_bench.py"), "--target", "http://x:1",
                        "--rate", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    check(r.returncode == 2 and "--target must be grpc://HOST:PORT" in r.stderr, "bad target: %s" % r.stderr)
    r = subprocess.run([sys.executable, os.path.join(HERE, "serving_bench.py"), "--target", "grpc://x:1",
                        "--sweep", "1,-2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    check(r.returncode == 2 and "expected positive rates" in r.stderr, "bad sweep: %s" % r.stderr)

    server = ServerProcess([a.server, "--model", a.model, "--templates", a.templates, "--port", "0",
                            "--metrics-port", "0", "--threads", "1", "--drain-timeout", "20"])
    try:
        port = server.wait_event("listening", timeout=60)["port"]
        # Listening comes before the model is loaded; a request in between is
        # answered UNAVAILABLE ("still loading"), which a loaded CI machine hit.
        server.wait_event("ready", timeout=120)
        max_tokens = 24
        common = ["--target", "grpc://127.0.0.1:%d" % port, "--proto-root", a.proto_root, "--shared", a.shared,
                  "--templates", a.templates, "--tokenizer", os.path.join(a.model, "tokenizer.model"),
                  # stories260K has 512 positions: short findings keep every prompt inside them.
                  "--max-findings-chars", "300", "--output-len-range", "4:%d" % max_tokens,
                  "--slo-ttft", "30", "--slo-tpot", "5"]
        with tempfile.TemporaryDirectory() as tmp:
            report, table = bench(common + ["--sweep", "2,4", "--num-requests", "5"], tmp, "sweep")
            check_report("sweep", report, table, [5, 5], max_tokens)
            check("knee_rate" in report, "sweep: no knee_rate")
            check([r["load"]["rate"] for r in report["runs"]] == [2, 4], "sweep: rates")

            report, table = bench(common + ["--rate", "3", "--duration", "2"], tmp, "duration")
            check_report("duration", report, table, [None], max_tokens)

            report, table = bench(common + ["--burst", "6"], tmp, "burst")
            check_report("burst", report, table, [6], max_tokens)

            trace = os.path.join(tmp, "trace.jsonl")
            with open(trace, "w") as f:
                for t, n in ((0.0, 8), (0.2, 4), (0.2, 16), (1.0, 8)):
                    f.write(json.dumps({"t": t, "output_len": n}) + "\n")
            report, table = bench(common + ["--trace", trace], tmp, "trace")
            check_report("trace", report, table, [4], 16)

            r = subprocess.run([sys.executable, os.path.join(HERE, "serving_bench.py"), "compare",
                                os.path.join(tmp, "sweep.json"), os.path.join(tmp, "sweep.json")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
            check(r.returncode == 0 and r.stdout.count("\n| 2 req/s |") == 1 and "4 req/s" in r.stdout,
                  "compare: %s %s" % (r.stdout, r.stderr))
    finally:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
    for line in server.lines:
        if "lungs" in line or "pleural" in line:
            fail("report text in a server log line: " + line)
    print("serving_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
