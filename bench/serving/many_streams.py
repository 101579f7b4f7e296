#!/usr/bin/python3
"""Thousands of concurrent StreamImpression calls against the real
chatradio-server: does the service hold them without a thread per call, and
is every call answered and accounted exactly once?

Starts chatradio-server (its queue limit raised above --streams), opens
--streams streaming calls at once from one asyncio client spread over
--channels HTTP/2 connections, and while they are in flight samples the
server's thread count and RSS (/proc) and its running/waiting gauges
(/metrics). Then it checks, and prints as a Markdown table (and --json):

- every call ended with a status (OK unless the server refused it);
- the server logged exactly one `request` line per call, with the code the
  client saw, and its `chatradio_requests_total` grew by the same counts;
- the deltas a client received concatenate to the final impression;
- the engine's gauges are back to 0 afterwards;
- threads and RSS idle vs. at the peak, TTFT and end-to-end latency
  percentiles (reported, never asserted: bench/README.md has the figures).

    many_streams.py --server BIN --model DIR --templates FILE --proto-root DIR \\
        [--streams 2000] [--max-tokens 16] [--channels 8] [--threads N] [--json FILE]

Exits 0 when every check passed, 1 otherwise, 77 when ../shared is absent.
"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../tests/common"))
sys.path.insert(0, os.path.join(HERE, "../../tests/service"))
from client_test import scrape  # noqa: E402  (/metrics as {series: value})
from grpc_testing import ServerProcess, add_server_arguments, free_port, make_stubs  # noqa: E402
from stats import distribution  # noqa: E402  (count, mean, p50/p90/p99, max)

FINDINGS = ("The cat sat by the window and watched the rain.", "Lily found a red ball in the garden.",
            "Tom and his dog ran to the park in the sun.", "The little bird sang a happy song.")


def proc_status(pid):
    """(threads, VmRSS KiB) of `pid`, or (None, None) once it is gone."""
    threads = rss = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return threads, rss


class Sampler(threading.Thread):
    """Samples the server's threads/RSS and the engine gauges every 0.1 s."""

    def __init__(self, pid, metrics_port):
        super().__init__(daemon=True)
        self.pid, self.metrics_port = pid, metrics_port
        self.stop = threading.Event()
        self.samples = []  # (threads, rss_kib, running, waiting)

    def run(self):
        while not self.stop.is_set():
            threads, rss = proc_status(self.pid)
            m = scrape(self.metrics_port)
            self.samples.append((threads, rss, m.get("chatradio_requests_running", 0.0),
                                 m.get("chatradio_requests_waiting", 0.0)))
            self.stop.wait(0.1)


async def one_stream(grpc, pb, stub, i, args, out, active):
    req = pb.GenerateImpressionRequest(findings=FINDINGS[i % len(FINDINGS)], client_request_id="many-%d" % i)
    req.context.template_id = "story-en"
    req.sampling.preset = pb.SamplingParams.PRESET_GREEDY
    req.sampling.max_tokens = args.max_tokens
    rec = {"i": i, "code": "OK", "ttft_s": None, "e2e_s": None, "deltas": "", "final": None}
    t0 = time.monotonic()
    active[0] += 1
    active[1] = max(active[1], active[0])
    try:
        async for msg in stub.StreamImpression(req, timeout=args.deadline):
            if msg.HasField("final"):
                rec["final"] = {"impression": msg.final.impression, "request_id": msg.final.request_id,
                                "generated_tokens": msg.final.tokens.generated_tokens}
            elif msg.delta:
                if rec["ttft_s"] is None:
                    rec["ttft_s"] = time.monotonic() - t0
                rec["deltas"] += msg.delta
    except grpc.aio.AioRpcError as e:
        rec["code"] = e.code().name
    rec["e2e_s"] = time.monotonic() - t0
    active[0] -= 1
    out.append(rec)


async def run_load(grpc, pb, pb_grpc, port, args):
    channels = [grpc.aio.insecure_channel("127.0.0.1:%d" % port) for _ in range(args.channels)]
    for ch in channels:
        await ch.channel_ready()
    stubs = [pb_grpc.ImpressionServiceStub(ch) for ch in channels]
    out, active = [], [0, 0]
    t0 = time.monotonic()
    await asyncio.gather(*(one_stream(grpc, pb, stubs[i % len(stubs)], i, args, out, active)
                           for i in range(args.streams)))
    wall = time.monotonic() - t0
    for ch in channels:
        await ch.close()
    return out, wall, active[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(ap)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--channels", type=int, default=8, help="HTTP/2 connections the streams are spread over")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0 = the server's default)")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--deadline", type=float, default=600.0, help="per-call deadline, seconds")
    ap.add_argument("--json", help="write the report here too")
    args = ap.parse_args()
    if not os.path.isdir(args.model):
        print("many_streams: %s missing (../shared): skipped" % args.model)
        return 77
    import grpc  # noqa: E402  (after the skip check: only needed when running)

    failures = []

    def check(cond, msg):
        if not cond:
            failures.append(msg)

    with tempfile.TemporaryDirectory(prefix="chatradio-many-") as tmp:
        pb, pb_grpc, _, _ = make_stubs(args.proto_root, tmp)
        mport = free_port()
        cmd = [args.server, "--model", args.model, "--templates", args.templates, "--port", "0",
               "--metrics-host", "127.0.0.1", "--metrics-port", str(mport),
               "--max-waiting", str(args.streams + 16), "--max-batch-size", str(args.max_batch_size),
               "--drain-grace", "0"]
        if args.threads > 0:
            cmd += ["--threads", str(args.threads)]
        srv = ServerProcess(cmd)
        try:
            port = srv.wait_event("listening", 60)["port"]
            srv.wait_event("ready", 120)
            idle_threads, idle_rss = proc_status(srv.proc.pid)
            before = scrape(mport)
            sampler = Sampler(srv.proc.pid, mport)
            sampler.start()
            results, wall, peak_active = asyncio.run(run_load(grpc, pb, pb_grpc, port, args))
            sampler.stop.set()
            sampler.join()
            # The last call's log line and metric sample are written before its
            # status goes out, so they are all there now; the gauges follow the
            # engine's next step.
            deadline = time.monotonic() + 30
            while True:
                after = scrape(mport)
                if (after.get("chatradio_requests_running", 1) == 0 and
                        after.get("chatradio_requests_waiting", 1) == 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            if srv.proc.poll() is None:
                srv.proc.terminate()
                srv.proc.wait(60)
        check(srv.proc.returncode == 0, "the server exited %s after SIGTERM" % srv.proc.returncode)

        codes = {}
        for r in results:
            codes[r["code"]] = codes.get(r["code"], 0) + 1
        check(len(results) == args.streams, "%d results for %d calls" % (len(results), args.streams))
        check(codes == {"OK": args.streams}, "statuses %s" % codes)
        for r in results:
            if r["code"] == "OK":
                check(r["final"] is not None and r["final"]["impression"] == r["deltas"],
                      "call %d: the deltas differ from the final impression" % r["i"])
        lines = [e for e in srv.events("request") if e.get("rpc") == "StreamImpression"]
        logged = {}
        for e in lines:
            logged[e.get("code")] = logged.get(e.get("code"), 0) + 1
        check(len(lines) == args.streams, "%d request log lines for %d calls" % (len(lines), args.streams))
        check(logged == codes, "log codes %s, client codes %s" % (logged, codes))
        ids = [r["final"]["request_id"] for r in results if r["final"]]
        logged_ids = {e.get("request_id") for e in lines}
        check(all(i in logged_ids for i in ids) and len(set(ids)) == len(ids), "request ids missing from the log")
        for code, n in codes.items():
            series = 'chatradio_requests_total{code="%s",rpc="StreamImpression"}' % code
            grew = after.get(series, 0) - before.get(series, 0)
            check(grew == n, "%s grew by %s, %d calls ended %s" % (series, grew, n, code))
        check(after.get("chatradio_requests_running") == 0 and after.get("chatradio_requests_waiting") == 0,
              "gauges not back to 0: running %s waiting %s" % (after.get("chatradio_requests_running"),
                                                              after.get("chatradio_requests_waiting")))

    s = sampler.samples
    in_server = [run + wait for _, _, run, wait in s]
    report = {
        "streams": args.streams, "channels": args.channels, "max_tokens": args.max_tokens,
        "max_batch_size": args.max_batch_size, "codes": codes, "wall_s": wall,
        "client_peak_in_flight": peak_active, "server_peak_running_plus_waiting": max(in_server, default=0),
        "threads_idle": idle_threads, "threads_peak": max((t for t, _, _, _ in s if t), default=None),
        "rss_idle_mib": idle_rss / 1024 if idle_rss else None,
        "rss_peak_mib": max((r for _, r, _, _ in s if r), default=0) / 1024,
        "ttft_s": distribution(r["ttft_s"] for r in results), "e2e_s": distribution(r["e2e_s"] for r in results),
        "generated_tokens": sum(r["final"]["generated_tokens"] for r in results if r["final"]),
        "load_average": open("/proc/loadavg").read().split()[:3],
        "failures": failures,
    }
    f = lambda x: "-" if x is None else "%.2f" % x  # noqa: E731
    print("| streams | in server at peak | OK | threads idle / peak | RSS idle / peak MiB | TTFT p50 / p99 s "
          "| e2e p50 / p99 / max s | wall s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("| %d | %d | %d | %s / %s | %.0f / %.0f | %s / %s | %s / %s / %s | %.1f | %.0f |" % (
        args.streams, report["server_peak_running_plus_waiting"], codes.get("OK", 0), idle_threads,
        report["threads_peak"], report["rss_idle_mib"] or 0, report["rss_peak_mib"], f(report["ttft_s"]["p50"]),
        f(report["ttft_s"]["p99"]), f(report["e2e_s"]["p50"]), f(report["e2e_s"]["p99"]), f(report["e2e_s"]["max"]),
        wall, report["generated_tokens"] / wall if wall > 0 else 0))
    print("load average %s" % " ".join(report["load_average"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    for msg in failures:
        print("FAIL: " + msg)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
