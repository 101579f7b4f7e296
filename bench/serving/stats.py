"""Summaries of one run (latency percentiles, throughput, goodput under an
SLO, errors by status) and their Markdown tables."""

METRICS = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s")
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def quantile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values):
    v = sorted(x for x in values if x is not None)
    out = {"count": len(v), "mean": sum(v) / len(v) if v else None}
    for name, q in QUANTILES:
        out[name] = quantile(v, q)
    out["max"] = v[-1] if v else None
    return out


def tpot(r):
    """Time per output token after the first: (e2e - ttft) / (tokens - 1)."""
    if r.code != "OK" or r.output_tokens < 2:
        return None
    return (r.e2e_s - r.ttft_s) / (r.output_tokens - 1)


def meets_slo(r, slo_ttft, slo_tpot):
    if r.code != "OK":
        return False
    if slo_ttft is not None and r.ttft_s > slo_ttft:
        return False
    t = tpot(r)
    return slo_tpot is None or t is None or t <= slo_tpot


def summarize(results, arrivals, wall_s, slo_ttft, slo_tpot):
    """One run's report. wall_s: first send to last completion."""
    ok = [r for r in results if r.code == "OK"]
    errors = {}
    for r in results:
        if r.code != "OK":
            errors[r.code] = errors.get(r.code, 0) + 1
    good = sum(1 for r in results if meets_slo(r, slo_ttft, slo_tpot))
    out_tokens = sum(r.output_tokens for r in ok)
    per = lambda f: [f(r) for r in ok]  # noqa: E731
    wall = max(wall_s, 1e-9)
    return {
        "arrivals": arrivals,
        "requests": len(results),
        "completed": len(ok),
        "errors": errors,
        "wall_s": wall_s,
        "throughput_rps": len(ok) / wall,
        "output_tokens_per_s": out_tokens / wall,
        "goodput_rps": good / wall,
        "slo": {"ttft_s": slo_ttft, "tpot_s": slo_tpot, "met": good, "attainment": good / max(arrivals, 1)},
        "prompt_tokens": distribution(per(lambda r: r.prompt_tokens)),
        "output_tokens": distribution(per(lambda r: r.output_tokens)),
        "latency": {
            "ttft_s": distribution(per(lambda r: r.ttft_s)),
            "tpot_s": distribution(per(tpot)),
            "itl_s": distribution([x for r in ok for x in r.itl_s]),
            "e2e_s": distribution(per(lambda r: r.e2e_s)),
            "queue_s": distribution(per(lambda r: r.queue_s)),
        },
        # How far behind schedule the generator sent (a loaded client machine
        # would otherwise quietly turn an open loop into a closed one).
        "send_lag_s": distribution([r.sent_s - r.arrival_s for r in results]),
    }


def _ms(x):
    return "–" if x is None else "%.0f" % (x * 1e3) if x >= 0.1 else "%.1f" % (x * 1e3)


def markdown(runs, title):
    """One row per run: offered load, throughput, goodput, latency percentiles (ms)."""
    head = ("| offered | done/arrived | errors | req/s | tok/s | goodput req/s | TTFT p50/p90/p99 ms "
            "| TPOT p50/p99 ms | ITL p99 ms | e2e p50/p99 ms | queue p99 ms | SLO met |")
    lines = ["### " + title, "", head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        s, lat = run["summary"], run["summary"]["latency"]
        pct = lambda m, *qs: "/".join(_ms(lat[m][q]) for q in qs)  # noqa: E731
        errors = ", ".join("%s %d" % kv for kv in sorted(s["errors"].items())) or "0"
        lines.append("| %s | %d/%d | %s | %.2f | %.1f | %.2f | %s | %s | %s | %s | %s | %.0f %% |" % (
            run["load"]["label"], s["completed"], s["arrivals"], errors, s["throughput_rps"],
            s["output_tokens_per_s"], s["goodput_rps"], pct("ttft_s", "p50", "p90", "p99"),
            pct("tpot_s", "p50", "p99"), pct("itl_s", "p99"), pct("e2e_s", "p50", "p99"), pct("queue_s", "p99"),
            100 * s["slo"]["attainment"]))
    return "\n".join(lines) + "\n"


def knee(runs, fraction=0.9):
    """The highest offered rate at which at least `fraction` of the arrivals
    met the SLO (all completed ones when no SLO is set): past it, requests miss
    the SLO or fail. Attainment rather than goodput/rate, because a short run's
    rate is dominated by its Poisson draw and its drain tail."""
    best = None
    for run in runs:
        rate = run["load"].get("rate")
        if rate and run["summary"]["slo"]["attainment"] >= fraction:
            best = rate if best is None else max(best, rate)
    return best


def compare_markdown(reports, names):
    """Side by side, one row per offered load present in every report: goodput,
    throughput and TTFT/TPOT p99 of each (e.g. chatradio-server vs llama-server)."""
    cols = ("goodput req/s", "tok/s", "TTFT p99 ms", "TPOT p99 ms")
    head = "| offered | " + " | ".join("%s %s" % (n, c) for c in cols for n in names) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_label = [{r["load"]["label"]: r["summary"] for r in rep["runs"]} for rep in reports]
    for run in reports[0]["runs"]:
        label = run["load"]["label"]
        if not all(label in b for b in by_label):
            continue
        s = [b[label] for b in by_label]
        cells = (["%.2f" % x["goodput_rps"] for x in s] + ["%.1f" % x["output_tokens_per_s"] for x in s] +
                 [_ms(x["latency"]["ttft_s"]["p99"]) for x in s] + [_ms(x["latency"]["tpot_s"]["p99"]) for x in s])
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
    return "\n".join(lines) + "\n"
