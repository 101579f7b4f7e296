#!/usr/bin/python3
"""Open-loop serving benchmark: what users of a radiology impression service
feel under load (bench/README.md, "Serving under load").

Requests arrive on a schedule that does not wait for answers (Poisson at a
rate, a burst, or a recorded trace), each carrying real findings from
../shared/data; the generator measures time to first token (TTFT), time per
output token (TPOT), inter-token latency (ITL), end-to-end latency and the
server's queue time (p50/p90/p99/max), throughput, goodput under an SLO and
errors by status, and writes JSON plus a Markdown table. `--sweep` repeats the
run at several rates to find the knee.

    # chatradio-server (gRPC StreamImpression; the server renders the findings)
    serving_bench.py --target grpc://127.0.0.1:50051 --sweep 0.5,1,2,4 --num-requests 100 \\
        --tokenizer MODEL/tokenizer.model --slo-ttft 2 --slo-tpot 0.2 --json ours.json
    # llama.cpp's llama-server: the same prompts as token ids, ignore_eos + n_predict
    serving_bench.py --target openai://127.0.0.1:8080 --sweep 0.5,1,2,4 --num-requests 100 \\
        --tokenizer MODEL/tokenizer.model --slo-ttft 2 --slo-tpot 0.2 --json peer.json
    serving_bench.py compare ours.json peer.json   # side-by-side Markdown

Run with /usr/bin/python3 (Debian's python3-grpcio, python3-protobuf,
python3-sentencepiece). Prints the Markdown table; exit 0 when every run
finished (errors are data, not failures), 2 on bad usage.
"""
import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prompts  # noqa: E402
import stats  # noqa: E402
from targets import GrpcTarget, OpenAITarget, Request, Result  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def positive(kind):
    def parse(text):
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be > 0, got %s" % text)
        return v
    return parse


def output_range(text):
    lo, sep, hi = text.partition(":")
    try:
        lo, hi = int(lo), int(hi)
    except ValueError:
        lo = hi = 0
    if not sep or lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError("expected LO:HI with 1 <= LO <= HI, got '%s'" % text)
    return lo, hi


def rate_list(text):
    try:
        rates = [float(x) for x in text.split(",")]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("expected positive rates like 0.5,1,2,4, got '%s'" % text)
    return rates


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="grpc://HOST:PORT (chatradio-server) or openai://HOST:PORT "
                    "(an OpenAI-compatible /v1/completions, e.g. llama-server)")
    load = ap.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=positive(float), help="Poisson arrivals, requests per second")
    load.add_argument("--sweep", type=rate_list, help="comma-separated Poisson rates, one run each")
    load.add_argument("--burst", type=positive(int), help="N requests all at once")
    load.add_argument("--trace", help='JSONL, one arrival per line: {"t": SECONDS[, "output_len": N]}')
    ap.add_argument("--num-requests", type=positive(int), default=100, help="arrivals per run (default 100)")
    ap.add_argument("--duration", type=positive(float),
                    help="instead of --num-requests: arrivals during this many seconds per run")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--output-len", type=positive(int), default=128, help="max_tokens of every request (128)")
    out.add_argument("--output-len-range", type=output_range, help="max_tokens uniform in LO:HI per request")
    ap.add_argument("--sampling", choices=("greedy", "paper"), default="greedy",
                    help="PRESET_GREEDY or PRESET_PAPER (seeded per request); the peer gets the same settings")
    ap.add_argument("--dataset", choices=sorted(prompts.DATASETS), default="iu-xray")
    ap.add_argument("--max-findings-chars", type=int, default=0,
                    help="skip longer findings (0 = none), for small-context models")
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(REPO), "shared"))
    ap.add_argument("--templates", default=os.path.join(REPO, "deploy/templates.json"),
                    help="the server's templates file (to render the peer's prompts)")
    ap.add_argument("--template-id", default="", help="template to use (default: the server's selection)")
    ap.add_argument("--tokenizer", help="tokenizer.model of the served model: renders prompt ids for the peer and "
                    "checks the server's prompt token counts (required for openai://)")
    ap.add_argument("--proto-root", default=os.path.join(REPO, "proto"))
    ap.add_argument("--channels", type=positive(int), default=1, help="gRPC channels (connections), round-robin")
    ap.add_argument("--no-cache-prompt", action="store_true", help="openai: send cache_prompt false")
    ap.add_argument("--request-timeout", type=positive(float), default=600.0)
    ap.add_argument("--slo-ttft", type=positive(float), help="goodput SLO: TTFT at most this many seconds")
    ap.add_argument("--slo-tpot", type=positive(float), help="goodput SLO: TPOT at most this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="title of the Markdown table")
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--markdown", help="write the table here (it is printed either way)")
    a = ap.parse_args(argv)
    scheme, sep, address = a.target.partition("://")
    if not sep or scheme not in ("grpc", "openai") or ":" not in address:
        ap.error("--target must be grpc://HOST:PORT or openai://HOST:PORT, got '%s'" % a.target)
    if scheme == "openai" and not a.tokenizer:
        ap.error("openai:// targets need --tokenizer (prompts are sent as token ids)")
    if a.tokenizer and not os.path.isfile(a.tokenizer):
        ap.error("--tokenizer %s: no such file" % a.tokenizer)
    if not os.path.isdir(a.shared):
        ap.error("--shared %s: not a directory (the test assets, ../shared)" % a.shared)
    a.scheme, a.address = scheme, address
    return a


def read_trace(path):
    """[(arrival seconds, output_len or None)] sorted by time; SystemExit on a bad line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                j = json.loads(line)
                t, length = float(j["t"]), j.get("output_len")
                if t < 0 or (length is not None and (not isinstance(length, int) or length < 1)):
                    raise ValueError("t must be >= 0 and output_len a positive integer")
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit("%s:%d: bad arrival %r (%s)" % (path, n, line.strip()[:80], e))
            out.append((t, length))
    if not out:
        raise SystemExit("%s: no arrivals" % path)
    return sorted(out, key=lambda x: x[0])


def loads(a):
    """[(load description, [(arrival seconds, output_len or None)])], one per run."""
    rng = random.Random(a.seed)
    if a.trace:
        return [({"mode": "trace", "file": a.trace, "label": "trace " + os.path.basename(a.trace)},
                 read_trace(a.trace))]
    if a.burst:
        return [({"mode": "burst", "n": a.burst, "label": "burst of %d" % a.burst}, [(0.0, None)] * a.burst)]
    runs = []
    for rate in a.sweep or [a.rate]:
        times, t = [], 0.0  # the first arrival at once, then exponential gaps
        while len(times) < a.num_requests if a.duration is None else t <= a.duration:
            times.append((t, None))
            t += rng.expovariate(rate)
        runs.append(({"mode": "poisson", "rate": rate, "label": "%g req/s" % rate}, times))
    return runs


async def run_one(target, reqs, schedule):
    """Sends reqs[i] at schedule[i] seconds from now without waiting for answers."""
    results = []
    t0 = time.perf_counter()

    async def call(req, res):
        await target.send(req, res)
        res.end_s = time.perf_counter() - t0

    tasks = []
    for req, (arrival, _) in zip(reqs, schedule):
        delay = t0 + arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        res = Result(index=req.index, arrival_s=arrival, sent_s=time.perf_counter() - t0)
        results.append(res)
        tasks.append(asyncio.ensure_future(call(req, res)))
    await asyncio.gather(*tasks)
    first = min(r.sent_s for r in results)
    return results, max(r.end_s for r in results) - first


async def bench(a, stubs_dir):
    source = prompts.PromptSource(a.shared, a.dataset, a.templates, a.template_id, a.tokenizer,
                                  a.max_findings_chars, a.seed)
    if a.scheme == "grpc":
        target = GrpcTarget(a.address, stubs_dir, a.proto_root, a.template_id, source.lang, source.modality,
                            source.body, a.sampling, a.channels, a.request_timeout)
    else:
        target = OpenAITarget(a.address, a.sampling, not a.no_cache_prompt, a.request_timeout)
    length_rng = random.Random(a.seed + 1)
    runs = []
    try:
        for load, schedule in loads(a):
            reqs = []
            for i, (_, length) in enumerate(schedule):
                if length is None:
                    length = length_rng.randint(*a.output_len_range) if a.output_len_range else a.output_len
                findings, ids = source.next()
                reqs.append(Request(index=i, findings=findings, prompt_ids=ids, max_tokens=length))
            load_before = os.getloadavg()
            results, wall = await run_one(target, reqs, schedule)
            summary = stats.summarize(results, len(schedule), wall, a.slo_ttft, a.slo_tpot)
            run = {"load": load, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                   "summary": summary}
            if a.tokenizer:
                # Our renderer must agree with the server's, token for token.
                run["prompt_token_mismatches"] = sum(
                    1 for r, q in zip(results, reqs) if r.code == "OK" and r.prompt_tokens != len(q.prompt_ids))
            runs.append(run)
            print("%s: %d/%d done, %.2f req/s, load average %.2f" % (
                load["label"], summary["completed"], summary["arrivals"], summary["throughput_rps"],
                load_before[0]), file=sys.stderr)
    finally:
        close = getattr(target, "close", None)
        if close:
            await close()
    return {
        "tool": "bench/serving/serving_bench.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": {"kind": a.scheme, "address": a.address},
        "dataset": a.dataset,
        "template_id": source.template["id"],
        "sampling": a.sampling,
        "output_len": list(a.output_len_range) if a.output_len_range else a.output_len,
        "ignore_eos": a.scheme == "openai",  # our API has no ignore-EOS: output lengths are reported as generated
        "seed": a.seed,
        "runs": runs,
        "knee_rate": stats.knee(runs) if a.sweep else None,
    }


def compare(paths):
    reports = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            reports.append(json.load(f))
    print(stats.compare_markdown(reports, [os.path.basename(p) for p in paths]), end="")
    return 0


def main(argv):
    if argv[:1] == ["compare"]:
        if len(argv) < 3:
            print("usage: serving_bench.py compare A.json B.json [...]", file=sys.stderr)
            return 2
        return compare(argv[1:])
    a = parse_args(argv)
    stubs_dir = tempfile.mkdtemp(prefix="chatradio-bench-stubs-")
    try:
        report = asyncio.run(bench(a, stubs_dir))
    finally:
        shutil.rmtree(stubs_dir, ignore_errors=True)
    title = a.label or "%s %s, %s, max_tokens %s" % (a.scheme, a.address, a.dataset, report["output_len"])
    table = stats.markdown(report["runs"], title)
    if report["knee_rate"] is not None:
        table += "\nknee (highest rate with >= 90 %% of requests within the SLO): %g req/s\n" % report["knee_rate"]
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
