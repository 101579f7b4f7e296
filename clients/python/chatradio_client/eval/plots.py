"""Plots of a run (PNG and SVG): ROUGE bars per institution × body system and
per modality × language, and the latency histogram. matplotlib is optional:
without it the plots are skipped with a message."""
import math
import os
from typing import Any, Dict, List, Sequence

from .tables import PAPER_SECONDS_PER_REPORT, ROUGES, Table


def _bars(plt: Any, table: Table, groups: int, title: str, path_stem: str) -> List[str]:
    header, rows = table
    rows = [r for r in rows if r[0] != "all"]
    labels = ["\n".join(str(v) for v in r[:groups]) for r in rows]
    first = header.index("ROUGE-1 F1")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 2), 3.6))
    width = 0.8 / len(ROUGES)
    top = 0.0
    for i, (_, name) in enumerate(ROUGES):
        values = [0.0 if math.isnan(r[first + i]) else r[first + i] for r in rows]
        top = max([top] + values)
        xs = [x + (i - 1) * width for x in range(len(rows))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("mean F1")
    # Up to 1 at most, but low scores (a small model) still show.
    ax.set_ylim(0, min(1.0, top * 1.3) if top > 0 else 1.0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, path_stem)


def _latency(plt: Any, records: Sequence[Dict[str, Any]], path_stem: str) -> List[str]:
    secs = [r["timings"]["generate_s"] for r in records if "error" not in r]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(secs, bins=min(40, max(5, len(secs) // 5)), color="tab:blue")
    ax.set_xlabel("seconds per report (GenerateImpression)")
    ax.set_ylabel("reports")
    mean = sum(secs) / len(secs) if secs else 0.0
    ax.axvline(mean, color="black", linestyle="--", label="mean %.2f s" % mean)
    if not secs or max(secs) * 1.5 >= PAPER_SECONDS_PER_REPORT:
        ax.axvline(PAPER_SECONDS_PER_REPORT, color="tab:red", label="paper %.2f s" % PAPER_SECONDS_PER_REPORT)
    else:
        # Drawing the paper's line would squash every bar against the y axis.
        ax.plot([], [], " ", label="paper: %.2f s (off the scale)" % PAPER_SECONDS_PER_REPORT)
    ax.legend(fontsize=8)
    ax.set_title("Latency per report", fontsize=10)
    return _save(plt, fig, path_stem)


def _save(plt: Any, fig: Any, path_stem: str) -> List[str]:
    fig.tight_layout()
    out = []
    for ext in ("png", "svg"):
        # Fixed metadata: the same run gives byte-identical plots.
        fig.savefig(path_stem + "." + ext, dpi=110, metadata={"Software": None} if ext == "png" else {"Date": None})
        out.append(path_stem + "." + ext)
    plt.close(fig)
    return out


def write_plots(out_dir: str, tables: Dict[str, Table], records: Sequence[Dict[str, Any]]) -> List[str]:
    """The plot files written (PNG and SVG), or [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        # SVG element ids are random unless salted: fixed, so plots are reproducible files.
        matplotlib.rcParams["svg.hashsalt"] = "chatradio-eval"
        import matplotlib.pyplot as plt
    except ImportError:
        print("chatradio-eval: matplotlib is not installed: no plots (Debian: python3-matplotlib; "
              "pip: chatradio-client[plots])")
        return []
    pdir = os.path.join(out_dir, "plots")
    os.makedirs(pdir, exist_ok=True)
    files = _bars(plt, tables["by_institution_system"], 2, "Mean ROUGE F1 by institution × body system",
                  os.path.join(pdir, "rouge_by_institution_system"))
    files += _bars(plt, tables["by_modality_language"], 2, "Mean ROUGE F1 by modality × language",
                   os.path.join(pdir, "rouge_by_modality_language"))
    files += _latency(plt, records, os.path.join(pdir, "latency"))
    return files
