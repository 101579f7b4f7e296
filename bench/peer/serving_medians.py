#!/usr/bin/python3
"""Medians over the interleaved rounds of bench/peer/llama_server.sh.

usage: bench/peer/serving_medians.py DIR

Reads DIR/round-*-ours.json and DIR/round-*-peer.json (serving_bench.py
reports) and prints, per offered rate, a Markdown table of the median (and
range over rounds) of goodput, output tokens/s, TTFT, TPOT, e2e p99 and the
mean output length for llama-server and chatradio, with the ratio
(> 1: chatradio better), then the load average seen before each run.
"""
import glob
import json
import statistics
import sys

ROWS = [  # name, path in a run's summary, scale, format, lower is better
    ("goodput req/s", ("goodput_rps",), 1, "{:.2f}", False),
    ("tok/s", ("output_tokens_per_s",), 1, "{:.1f}", False),
    ("TTFT p50 ms", ("latency", "ttft_s", "p50"), 1000, "{:.0f}", True),
    ("TTFT p99 ms", ("latency", "ttft_s", "p99"), 1000, "{:.0f}", True),
    ("TPOT p50 ms", ("latency", "tpot_s", "p50"), 1000, "{:.0f}", True),
    ("TPOT p99 ms", ("latency", "tpot_s", "p99"), 1000, "{:.0f}", True),
    ("e2e p99 ms", ("latency", "e2e_s", "p99"), 1000, "{:.0f}", True),
    ("output tokens mean", ("output_tokens", "mean"), 1, "{:.1f}", False),
]


def runs_of(directory, side):
    """{rate label: [run dicts]} over all rounds, and the files read."""
    by_label, files = {}, sorted(glob.glob(f"{directory}/round-*-{side}.json"))
    for f in files:
        with open(f) as fh:
            for run in json.load(fh)["runs"]:
                by_label.setdefault(run["load"]["label"], []).append(run)
    return by_label, files


def value(run, path, scale):
    v = run["summary"]
    for p in path:
        v = v[p]
    return v * scale


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    ours, ours_files = runs_of(sys.argv[1], "ours")
    peer, peer_files = runs_of(sys.argv[1], "peer")
    if not ours_files or not peer_files:
        sys.exit(f"{sys.argv[1]}: no round-*-ours.json / round-*-peer.json reports")
    print(f"{len(ours_files)} rounds of ours, {len(peer_files)} of the peer\n")
    print("| offered | metric | llama-server | chatradio | ratio |")
    print("|---|---|---|---|---|")
    for label in ours:
        if label not in peer:
            continue
        for name, path, scale, fmt, lower_better in ROWS:
            cells = []
            for runs in (peer[label], ours[label]):
                vals = [value(r, path, scale) for r in runs]
                cells.append((statistics.median(vals), min(vals), max(vals)))
            (mp, lp, hp), (mo, lo, ho) = cells
            ratio = (mp / mo if lower_better else mo / mp) if mo and mp else float("nan")
            f = fmt.format
            print(f"| {label} | {name} | {f(mp)} ({f(lp)}–{f(hp)}) | {f(mo)} ({f(lo)}–{f(ho)}) | {ratio:.2f} |")
    for side, runs in (("chatradio", ours), ("llama-server", peer)):
        loads = [r["loadavg_before"][0] for rs in runs.values() for r in rs]
        print(f"\nload average before each {side} run: {min(loads):.2f}–{max(loads):.2f}")


if __name__ == "__main__":
    main()
