"""chatradio-eval: the ChatRadio-Valuer evaluation over a chatradio service.

  chatradio-eval run --input FILE --out RUN_DIR [--preset iu-xray|cov-ctr] [--target HOST:PORT ...]
  chatradio-eval report RUN_DIR
  chatradio-eval compare RUN_A RUN_B [--out DIR]      (also: chatradio-eval --compare RUN_A RUN_B)

`run` generates the impression of every report (the paper's sampling:
temperature 1.0, top-k 50, top-p 1.0, max 512 tokens, one seed per report;
--greedy for argmax), scores it against the reference with ROUGE (default the
rouge_chinese-compatible mode) and appends one JSON line per report to
RUN_DIR/results.jsonl as it finishes. Run the same command again after a crash
or Ctrl-C: finished reports are kept and never sent again. Several --input
files (one run each) can share RUN_DIR; the tables cover all of them.
Tables (CSV, Markdown) go to RUN_DIR/tables, plots (PNG, SVG) to RUN_DIR/plots.

Exit codes: 0 done; 1 some reports are unfinished (servers unavailable: run
again to resume); 2 bad usage or a bad input file (the message names the row).
"""
import argparse
import asyncio
import hashlib
import os
import sys
from typing import Any, Dict, List, Optional

from .._common import enum_value
from .._proto.chatradio.v1 import impression_service_pb2 as pb
from ..aio import AsyncClient
from ..cli import add_connection_args, connection_kwargs
from . import compare as compare_mod
from .inputs import CONTEXT_FIELDS, InputError, InputSpec, load
from .plots import write_plots
from .results import ResultsWriter, RunError, load_results, load_settings, merge_settings, save_settings
from .runner import EvalSettings, run_reports
from .tables import all_tables, write_report

EXIT_UNFINISHED = 1
EXIT_USAGE = 2

# The two datasets of ../shared/data as they are.
PRESETS: Dict[str, Dict[str, Any]] = {
    "iu-xray": {"findings": "findings", "reference": "impression", "id": "uid",
                "constants": {"institution": "Indiana University", "modality": "xr", "body_system": "chest",
                              "language": "en"}},
    # image_id repeats (several reports per paper figure): rows are numbered instead.
    "cov-ctr": {"findings": "findings", "reference": "impression", "id": None,
                "constants": {"institution": "Harbin Medical University", "modality": "ct", "body_system": "chest",
                              "language": "zh"}},
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chatradio-eval", description=__doc__.split("\n")[0],
                                 epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="evaluate a file of reports (resumable)")
    p.add_argument("--input", required=True, help="CSV or JSONL of reports")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="results, tables and plots go here")
    p.add_argument("--preset", choices=sorted(PRESETS), help="columns and context of a dataset in ../shared/data")
    p.add_argument("--name", help="name of this input in the run's report keys (default: the preset, else the "
                                  "file's name without extension)")
    p.add_argument("--format", choices=("csv", "jsonl"), help="default: from the extension (.jsonl = JSONL)")
    g = p.add_argument_group("columns (JSONL: keys)")
    g.add_argument("--findings-column", help="default: findings")
    g.add_argument("--reference-column", help="reference impression; default: impression")
    g.add_argument("--id-column", help="unique report id; default: the row number")
    for name in CONTEXT_FIELDS:
        opt = name.replace("_", "-")
        g.add_argument("--%s-column" % opt, help="column holding the %s" % name.replace("_", " "))
        g.add_argument("--" + opt, help="the same %s for every report" % name.replace("_", " "))
    p.add_argument("--skip-incomplete", action="store_true",
                   help="skip rows whose findings or reference is empty (listed in RUN_DIR/skipped_NAME.txt)")
    p.add_argument("--limit", type=int, help="only the first N reports of the file (a quick subset)")
    g = p.add_argument_group("generation and scoring (fixed for a RUN_DIR)")
    g.add_argument("--greedy", action="store_true", help="argmax decoding instead of the paper's sampling")
    g.add_argument("--max-tokens", type=int, help="default: the paper's 512 (lowered to what the context leaves)")
    g.add_argument("--seed", type=int, default=0, help="base of the per-report seeds (default 0)")
    g.add_argument("--rouge-mode", default="chinese-compat",
                   help="chinese-compat (rouge_chinese 1.0.3, comparable to published Chinese tables; default) "
                        "or lin (rouge-score); docs/rouge.md")
    g.add_argument("--rouge-segmenter", help="char, jieba or jieba-no-hmm (default: the mode's)")
    p.add_argument("--concurrency", type=int, default=4, help="reports in flight at once (default 4)")
    p.add_argument("--no-plots", action="store_true")
    add_connection_args(p)
    p = sub.add_parser("report", help="(re)write the tables and plots of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--no-plots", action="store_true")
    p = sub.add_parser("compare", help="two runs side by side")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--out", help="folder for compare.md and CSVs (default: RUN_B/compare)")
    return ap


def input_spec(a: argparse.Namespace) -> InputSpec:
    preset = PRESETS.get(a.preset or "", {})
    source = a.name or a.preset or os.path.splitext(os.path.basename(a.input))[0]
    columns = {n: getattr(a, n + "_column") for n in CONTEXT_FIELDS if getattr(a, n + "_column")}
    constants = {n: v for n, v in preset.get("constants", {}).items() if n not in columns}
    constants.update({n: getattr(a, n) for n in CONTEXT_FIELDS if getattr(a, n)})
    for n in columns:
        if n in constants and getattr(a, n):
            raise InputError("give --%s or --%s-column, not both" % ((n.replace("_", "-"),) * 2))
        constants.pop(n, None)
    return InputSpec(path=a.input, source=source, format=a.format,
                     findings=a.findings_column or preset.get("findings", "findings"),
                     reference=a.reference_column or preset.get("reference", "impression"),
                     id=a.id_column or preset.get("id"), columns=columns, constants=constants)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finish_report(run_dir: str, plots: bool) -> None:
    records = load_results(run_dir)
    tables = all_tables(records)
    files = write_plots(run_dir, tables, records) if plots and records else []
    write_report(run_dir, records, load_settings(run_dir) or {}, tables, files)
    print("chatradio-eval: %d reports; tables in %s" % (len(records), os.path.join(run_dir, "tables", "tables.md")))


def cmd_run(a: argparse.Namespace) -> int:
    if a.concurrency < 1 or (a.limit is not None and a.limit < 1):
        raise InputError("--concurrency and --limit must be at least 1")
    # Names checked before anything is read or sent.
    enum_value(pb.RougeMode, "ROUGE_MODE_", a.rouge_mode)
    enum_value(pb.ScoreRequest.Segmenter, "SEGMENTER_", a.rouge_segmenter)
    spec = input_spec(a)
    reports, skipped = load(spec, skip_incomplete=a.skip_incomplete)
    if a.limit is not None:
        reports = reports[:a.limit]
    settings = EvalSettings(greedy=a.greedy, max_tokens=a.max_tokens, seed=a.seed, rouge_mode=a.rouge_mode,
                            rouge_segmenter=a.rouge_segmenter)
    os.makedirs(a.out, exist_ok=True)
    new = {"scoring": settings.as_dict(),
           "inputs": {spec.source: {"path": os.path.abspath(spec.path), "sha256": file_sha256(spec.path),
                                    "skipped_rows": len(skipped)}}}
    merged, diffs = merge_settings(load_settings(a.out), new)
    if diffs:
        raise RunError("%s was started with other settings; use another folder or the same settings:\n  %s" %
                       (a.out, "\n  ".join(diffs)))
    records = load_results(a.out, repair=True)
    done = {r["key"] for r in records}
    pending = [r for r in reports if r.key not in done]
    save_settings(a.out, merged)
    if skipped:
        with open(os.path.join(a.out, "skipped_%s.txt" % spec.source), "w", encoding="utf-8") as f:
            f.write("\n".join(skipped) + "\n")
        print("chatradio-eval: %s: skipped %d incomplete rows (listed in skipped_%s.txt)" %
              (spec.path, len(skipped), spec.source))
    print("chatradio-eval: %s: %d reports, %d already done, %d to run" %
          (spec.source, len(reports), len(reports) - len(pending), len(pending)))

    async def go() -> Any:
        async with AsyncClient(**connection_kwargs(a)) as client:
            writer = ResultsWriter(a.out)
            try:
                return await run_reports(client, pending, settings, writer, concurrency=a.concurrency,
                                         done_before=len(reports) - len(pending), total=len(reports))
            finally:
                writer.close()

    outcome = asyncio.run(go()) if pending else None
    if outcome is not None:
        print("chatradio-eval: %s: %d reports finished now (%d with an error recorded), %d unfinished" %
              (spec.source, outcome.finished, outcome.errors, outcome.unfinished))
    finish_report(a.out, not a.no_plots)
    if outcome is not None and (outcome.unfinished or outcome.stopped):
        why = " (stopped: %s)" % outcome.stopped if outcome.stopped else ""
        print("chatradio-eval: %d reports unfinished%s; run the same command again to resume" %
              (outcome.unfinished, why), file=sys.stderr)
        return EXIT_UNFINISHED
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--compare"]:
        argv[0] = "compare"
    a = build_parser().parse_args(argv)
    try:
        if a.command == "run":
            return cmd_run(a)
        if a.command == "report":
            if not os.path.isdir(a.run_dir):
                raise RunError("%s: no such run folder" % a.run_dir)
            finish_report(a.run_dir, not a.no_plots)
            return 0
        for d in (a.run_a, a.run_b):
            if not os.path.isdir(d):
                raise RunError("%s: no such run folder" % d)
        name_a, name_b = os.path.basename(os.path.normpath(a.run_a)), os.path.basename(os.path.normpath(a.run_b))
        if name_a == name_b:
            name_a, name_b = "A", "B"
        print(compare_mod.compare(load_results(a.run_a), load_results(a.run_b), name_a, name_b,
                                  a.out or os.path.join(a.run_b, "compare")), end="")
        return 0
    except (InputError, RunError, ValueError) as e:
        print("chatradio-eval: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nchatradio-eval: interrupted; finished reports are saved: run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
