"""Reading and validating report files (CSV or JSONL) before anything is sent.

Every problem names the file and the row (CSV: the data row number and the
line it starts on; JSONL: the line), so a user can fix the file; a run never
starts on a file with an error, so nothing already scored is touched."""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .._common import enum_value
from .._proto.chatradio.v1 import impression_service_pb2 as pb

# Context fields a report may carry, each from a column or a constant, and the
# enum (with its prefix) that validates it; institution is free text.
CONTEXT_FIELDS = {
    "institution": None,
    "modality": (pb.Modality, "MODALITY_"),
    "body_system": (pb.BodySystem, "BODY_SYSTEM_"),
    "language": (pb.Language, "LANGUAGE_"),
}


class InputError(Exception):
    """A problem with the input file; the message names the row."""


@dataclass
class InputSpec:
    """Where each field comes from. `columns` maps findings, reference, id and
    the CONTEXT_FIELDS to column (or JSON key) names; `constants` gives a fixed
    value for context fields that have no column. id: None = the row number."""
    path: str
    source: str
    findings: str = "findings"
    reference: str = "impression"
    id: Optional[str] = None
    columns: Dict[str, str] = field(default_factory=dict)
    constants: Dict[str, str] = field(default_factory=dict)
    format: Optional[str] = None  # csv | jsonl; None = from the extension


@dataclass(frozen=True)
class Report:
    source: str
    id: str
    row: str  # "row 17 (line 19)" / "line 17": how messages name it
    findings: str
    reference: str
    institution: str
    modality: str
    body_system: str
    language: str

    @property
    def key(self) -> str:
        return "%s/%s" % (self.source, self.id)


def _decode(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        raise InputError("%s line %d: invalid UTF-8 at byte %d of the line (offset %d in the file); "
                         "convert the file to UTF-8" % (path, line, col + 1, e.start)) from None


def _records(spec: InputSpec, text: str) -> List[Tuple[str, Dict[str, str]]]:
    fmt = spec.format or ("jsonl" if spec.path.endswith((".jsonl", ".ndjson", ".json")) else "csv")
    needed = [spec.findings, spec.reference] + ([spec.id] if spec.id else []) + list(spec.columns.values())
    out: List[Tuple[str, Dict[str, str]]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [c for c in needed if c not in header]
        if missing:
            raise InputError("%s: no column %s (its columns: %s)" %
                             (spec.path, ", ".join(repr(m) for m in missing), ", ".join(header)))
        n = 0
        start = reader.line_num + 1
        for rec in reader:
            n += 1
            if None in rec:
                raise InputError("%s row %d (line %d): more fields than the header has" % (spec.path, n, start))
            out.append(("row %d (line %d)" % (n, start), {k: v or "" for k, v in rec.items()}))
            start = reader.line_num + 1
        return out
    if fmt != "jsonl":
        raise InputError("%s: unknown format %r (csv or jsonl)" % (spec.path, fmt))
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = "line %d" % i
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError("%s %s: not a JSON object (%s)" % (spec.path, where, e.msg)) from None
        if not isinstance(rec, dict):
            raise InputError("%s %s: not a JSON object" % (spec.path, where))
        missing = [c for c in needed if c not in rec]
        if missing:
            raise InputError("%s %s: no key %s" % (spec.path, where, ", ".join(repr(m) for m in missing)))
        out.append((where, {k: "" if v is None else str(v) for k, v in rec.items()}))
    return out


def _context_value(spec: InputSpec, name: str, rec: Dict[str, str], where: str) -> str:
    value = rec[spec.columns[name]].strip() if name in spec.columns else spec.constants.get(name, "")
    enum = CONTEXT_FIELDS[name]
    if enum is not None and value:
        try:
            enum_value(enum[0], enum[1], value)
        except ValueError as e:
            raise InputError("%s %s: %s" % (spec.path, where, e)) from None
        value = value.lower().replace("_", "-")
    return value


def load(spec: InputSpec, *, skip_incomplete: bool = False) -> Tuple[List[Report], List[str]]:
    """The reports of the file, and the rows skipped for an empty findings or
    reference when skip_incomplete (otherwise such a row is an InputError)."""
    if not os.path.isfile(spec.path):
        raise InputError("%s: no such file" % spec.path)
    for name in spec.constants:
        _context_value(spec, name, {}, "--" + name.replace("_", "-"))  # validates constants up front
    reports: List[Report] = []
    skipped: List[str] = []
    seen: Dict[str, str] = {}
    for n, (where, rec) in enumerate(_records(spec, _decode(spec.path)), 1):
        rid = rec[spec.id].strip() if spec.id else str(n)
        if spec.id and not rid:
            raise InputError("%s %s: the id column %r is empty" % (spec.path, where, spec.id))
        if rid in seen:
            raise InputError("%s %s: id %r already used by %s; ids must be unique (or leave out --id-column "
                             "to number the rows)" % (spec.path, where, rid, seen[rid]))
        seen[rid] = where
        findings, reference = rec[spec.findings], rec[spec.reference]
        empty = " and ".join(what for what, v in ((spec.findings, findings), (spec.reference, reference))
                             if not v.strip())
        if empty:
            if not skip_incomplete:
                raise InputError("%s %s (id %s): empty %s (--skip-incomplete skips such rows)" %
                                 (spec.path, where, rid, empty))
            skipped.append("%s (id %s): empty %s" % (where, rid, empty))
            continue
        ctx = {name: _context_value(spec, name, rec, where) for name in CONTEXT_FIELDS}
        reports.append(Report(source=spec.source, id=rid, row=where, findings=findings, reference=reference, **ctx))
    if not reports:
        raise InputError("%s: no reports to evaluate" % spec.path)
    return reports, skipped
