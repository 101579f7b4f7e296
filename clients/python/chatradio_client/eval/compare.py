"""Two runs side by side (two models, or int4 vs float): every quality row of
both, and the paired difference of ROUGE F1 over the reports both scored."""
import os
from typing import Any, Dict, List, Sequence

from .tables import ROUGES, Table, _mean, all_tables, markdown, write_csv

COMPARED = ("ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1", "null output", "repetition")


def side_by_side(a: Table, b: Table, groups: int, name_a: str, name_b: str) -> Table:
    header_a, rows_a = a
    _, rows_b = b
    by_b = {tuple(r[:groups]): r for r in rows_b}
    by_a = {tuple(r[:groups]): r for r in rows_a}
    header = header_a[:groups] + ["reports " + name_a, "reports " + name_b]
    for col in COMPARED:
        header += ["%s %s" % (col, name_a), "%s %s" % (col, name_b)]
    rows = []
    for key in list(by_a) + [k for k in by_b if k not in by_a]:
        ra, rb = by_a.get(key), by_b.get(key)
        row: List[Any] = list(key) + [ra[groups] if ra else 0, rb[groups] if rb else 0]
        for col in COMPARED:
            i = header_a.index(col)
            row += [ra[i] if ra else "", rb[i] if rb else ""]
        rows.append(row)
    return header, rows


def paired(records_a: Sequence[Dict[str, Any]], records_b: Sequence[Dict[str, Any]], name_a: str,
           name_b: str) -> Table:
    """Mean of (B - A) per ROUGE over reports both runs scored without error."""
    a = {r["key"]: r for r in records_a if "error" not in r}
    b = {r["key"]: r for r in records_b if "error" not in r}
    common = sorted(set(a) & set(b))
    header = ["paired over", "reports"] + ["mean %s F1 %s - %s" % (label, name_b, name_a) for _, label in ROUGES]
    row: List[Any] = ["reports in both runs", len(common)]
    row += [_mean(b[k]["rouge"][key]["f"] - a[k]["rouge"][key]["f"] for k in common) for key, _ in ROUGES]
    return header, [row]


def compare(records_a: Sequence[Dict[str, Any]], records_b: Sequence[Dict[str, Any]], name_a: str, name_b: str,
            out_dir: str) -> str:
    """Writes compare_*.csv and compare.md under out_dir; returns the Markdown."""
    ta, tb = all_tables(records_a), all_tables(records_b)
    tables = {
        "by_institution_system": side_by_side(ta["by_institution_system"], tb["by_institution_system"], 2,
                                              name_a, name_b),
        "by_modality_language": side_by_side(ta["by_modality_language"], tb["by_modality_language"], 2,
                                             name_a, name_b),
        "paired": paired(records_a, records_b, name_a, name_b),
    }
    # The client's seconds per report of each run (the first timing row).
    header, rows_a = ta["timing"]
    _, rows_b = tb["timing"]
    tables["timing"] = (["seconds per report", "run"] + header[1:],
                        [[rows_a[0][0], name_a] + rows_a[0][1:], [rows_b[0][0], name_b] + rows_b[0][1:]])
    os.makedirs(out_dir, exist_ok=True)
    md = ["# chatradio-eval: %s (A) vs %s (B)" % (name_a, name_b), ""]
    for name, table in tables.items():
        write_csv(os.path.join(out_dir, "compare_%s.csv" % name), table)
        md += ["## " + name.replace("_", " "), "", markdown(table), ""]
    text = "\n".join(md).rstrip() + "\n"
    with open(os.path.join(out_dir, "compare.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text

