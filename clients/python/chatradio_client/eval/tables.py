"""The paper's tables from a run's records: mean ROUGE-1/2/L F1 by
institution × body system and by modality × language, counts, null-output and
repetition rates, and seconds per report next to the paper's 22.36 s.
Written as CSV (one file per table) and as one Markdown file."""
import csv
import math
import os
from typing import Any, Dict, Iterable, List, Sequence, Tuple

PAPER_SECONDS_PER_REPORT = 22.36
ROUGES = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rouge_l", "ROUGE-L"))

Table = Tuple[List[str], List[List[Any]]]  # header, rows


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: Iterable[float]) -> float:
    xs = list(values)
    return sum(xs) / len(xs) if xs else math.nan


def _label(value: str) -> str:
    return value or "(unspecified)"


def quality_row(records: Sequence[Dict[str, Any]]) -> List[Any]:
    """n, errors, mean F1 of ROUGE-1/2/L (null outputs count as 0), null-output
    and repetition rates, over the records that were generated."""
    ok = [r for r in records if "error" not in r]
    row: List[Any] = [len(records), len(records) - len(ok)]
    row += [_mean(r["rouge"][k]["f"] for r in ok) for k, _ in ROUGES]
    row += [_mean(float(r["null_output"]) for r in ok), _mean(float(r["repetition"]) for r in ok)]
    return row


QUALITY_HEADER = ["reports", "errors", "ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1", "null output", "repetition"]


def grouped(records: Sequence[Dict[str, Any]], keys: Sequence[str], names: Sequence[str]) -> Table:
    groups: Dict[Tuple[str, ...], List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(_label(r.get(k) or "") for k in keys), []).append(r)
    rows = [list(g) + quality_row(rs) for g, rs in sorted(groups.items())]
    rows.append(["all"] + [""] * (len(keys) - 1) + quality_row(records))
    return list(names) + QUALITY_HEADER, rows


def timing_table(records: Sequence[Dict[str, Any]]) -> Table:
    gen = [r["timings"]["generate_s"] for r in records if "error" not in r]
    server = [r["timings"]["server_total_s"] for r in records if "error" not in r]
    tokens = [r["tokens"]["generated"] for r in records if "error" not in r]
    header = ["seconds per report", "reports", "mean", "p50", "p90", "p99", "paper (mean)"]
    rows = [["client (GenerateImpression call)", len(gen), _mean(gen), percentile(gen, 50), percentile(gen, 90),
             percentile(gen, 99), PAPER_SECONDS_PER_REPORT],
            ["server (accepted -> response)", len(server), _mean(server), percentile(server, 50),
             percentile(server, 90), percentile(server, 99), ""],
            ["generated tokens per report", len(tokens), _mean(tokens), percentile(tokens, 50),
             percentile(tokens, 90), percentile(tokens, 99), ""]]
    return header, rows


def all_tables(records: Sequence[Dict[str, Any]]) -> Dict[str, Table]:
    return {
        "by_institution_system": grouped(records, ("institution", "body_system"), ("institution", "body system")),
        "by_modality_language": grouped(records, ("modality", "language"), ("modality", "language")),
        "timing": timing_table(records),
    }


TITLES = {
    "by_institution_system": "Mean ROUGE F1 by institution × body system",
    "by_modality_language": "Mean ROUGE F1 by modality × language",
    "timing": "Seconds per report",
}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else "%.4f" % v
    return str(v)


def markdown(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str, table: Table) -> None:
    header, rows = table
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def rouge_description(records: Sequence[Dict[str, Any]]) -> str:
    """Which ROUGE the numbers are, from what the server said it computed."""
    used = sorted({(r.get("rouge_mode"), r.get("rouge_segmenter"), r.get("language"))
                   for r in records if r.get("rouge_mode")})
    if not used:
        return "no report was scored"
    return "; ".join("mode %s, segmenter %s (%s)" % (m, s, lang) for m, s, lang in used)


def write_report(out_dir: str, records: Sequence[Dict[str, Any]], settings: Dict[str, Any],
                 tables: Dict[str, Table], plots: Sequence[str] = ()) -> None:
    """tables/*.csv and tables/tables.md (linking the PNGs of `plots`) under out_dir."""
    tdir = os.path.join(out_dir, "tables")
    os.makedirs(tdir, exist_ok=True)
    models = sorted({"%s %s (%s, %s)" % (m["name"], m["version"], m["weights"], m["backend"])
                     for m in (r.get("model") for r in records) if m})
    md = ["# chatradio-eval", "",
          "- reports: %d (%d with an error)" % (len(records), sum("error" in r for r in records)),
          "- model: %s" % (", ".join(models) or "n/a"),
          "- sampling: %s" % ", ".join("%s=%s" % kv for kv in sorted(settings.get("scoring", {}).items())),
          "- ROUGE: %s" % rouge_description(records),
          "- ROUGE means count a null (empty) output as 0; errors are left out of every mean.", ""]
    for name, table in tables.items():
        write_csv(os.path.join(tdir, name + ".csv"), table)
        md += ["## " + TITLES[name], "", markdown(table), ""]
    md += ["![%s](%s)" % (os.path.basename(p), os.path.relpath(p, tdir)) for p in plots if p.endswith(".png")]
    with open(os.path.join(tdir, "tables.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md).rstrip() + "\n")
