"""The run folder: settings (run.json) and one JSON line per finished report
(results.jsonl), appended and fsynced as each report finishes so that a run
killed at any moment resumes without losing or repeating a report."""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

RESULTS = "results.jsonl"
SETTINGS = "run.json"


class RunError(Exception):
    """The run folder cannot be used as asked; the message says why."""


def load_results(run_dir: str, *, repair: bool = False) -> List[Dict[str, Any]]:
    """The records of a run, first one per key. A last line cut short by a
    kill is dropped (and, with repair, cut off the file so appends stay
    line-aligned); any other unreadable line is an error."""
    path = os.path.join(run_dir, RESULTS)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    # Each record is written with its newline in one write: everything up to
    # the last newline is whole records; anything after it was torn by a kill.
    good_end = data.rfind(b"\n") + 1
    records: List[Dict[str, Any]] = []
    seen = set()
    for i, raw in enumerate(data[:good_end].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise RunError("%s line %d is not a JSON record; was the file edited?" % (path, i)) from None
        if rec.get("key") not in seen:
            seen.add(rec.get("key"))
            records.append(rec)
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


class ResultsWriter:
    def __init__(self, run_dir: str):
        self._f = open(os.path.join(run_dir, RESULTS), "a", encoding="utf-8")

    def append(self, record: Dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def load_settings(run_dir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(run_dir, SETTINGS)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_settings(run_dir: str, settings: Dict[str, Any]) -> None:
    path = os.path.join(run_dir, SETTINGS)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def merge_settings(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Settings for a run continuing `old` with `new`: generation and scoring
    settings must match (else the results would mix two experiments); input
    files accumulate, and a source must keep the same file contents."""
    if old is None:
        return new, []
    diffs = ["%s: %r in this folder, %r now" % (k, old["scoring"].get(k), v)
             for k, v in new["scoring"].items() if old["scoring"].get(k) != v]
    for source, info in new["inputs"].items():
        before = old["inputs"].get(source)
        if before is not None and before["sha256"] != info["sha256"]:
            diffs.append("input %r: its file changed since this folder was started (%s)" % (source, info["path"]))
    merged = dict(old)
    merged["inputs"] = dict(old["inputs"], **new["inputs"])
    return merged, diffs
