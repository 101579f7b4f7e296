"""Runs GenerateImpression then Score for every report over the service with
bounded concurrency, appending one result line per finished report."""
import asyncio
import datetime
import hashlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import grpc

from .._common import Sampling, enum_name
from .._proto.chatradio.v1 import impression_service_pb2 as pb
from ..aio import AsyncClient
from ..errors import ChatradioError
from .inputs import Report
from .progress import Progress
from .results import ResultsWriter

# Failures that say nothing about the report: it stays unfinished (not
# recorded) and the next run retries it. Any other error is the report's own
# (e.g. findings longer than the context) and is recorded as its result.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.CANCELLED)


@dataclass(frozen=True)
class EvalSettings:
    greedy: bool = False
    max_tokens: Optional[int] = None  # None: the preset's 512 (lowered to what the context leaves)
    seed: int = 0                     # base of the per-report seeds
    rouge_mode: str = "chinese-compat"
    rouge_segmenter: Optional[str] = None  # None: the mode's default

    def as_dict(self) -> Dict[str, Any]:
        return {"sampling": "greedy" if self.greedy else "paper", "max_tokens": self.max_tokens,
                "seed": None if self.greedy else self.seed, "rouge_mode": self.rouge_mode,
                "rouge_segmenter": self.rouge_segmenter}


def report_seed(base: int, report: Report) -> int:
    """A seed per report from the base seed and the report's key, so a run is
    repeatable and independent of the order reports finish in."""
    digest = hashlib.sha256(("%d/%s" % (base, report.key)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _score_dict(s: pb.RougeScore) -> Dict[str, float]:
    return {"p": s.precision, "r": s.recall, "f": s.f1}


def _context(report: Report) -> Dict[str, Any]:
    return {"language": report.language or None, "modality": report.modality or None,
            "body_system": report.body_system or None, "institution": report.institution or None}


def _base_record(report: Report) -> Dict[str, Any]:
    return {"key": report.key, "source": report.source, "id": report.id, "row": report.row,
            "institution": report.institution, "modality": report.modality, "body_system": report.body_system,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


async def evaluate_one(client: AsyncClient, report: Report, settings: EvalSettings) -> Dict[str, Any]:
    """The result record of one report; raises ChatradioError for transient failures."""
    seed = None if settings.greedy else report_seed(settings.seed, report)
    sampling = Sampling(preset="greedy" if settings.greedy else "paper", max_tokens=settings.max_tokens, seed=seed)
    ctx = _context(report)
    rec = _base_record(report)
    rec["seed"] = seed
    t0 = time.monotonic()
    try:
        g = await client.impression(report.findings, sampling=sampling, client_request_id=report.key[:128], **ctx)
    except ChatradioError as e:
        if e.code in TRANSIENT:
            raise
        rec.update(language=report.language, error={"rpc": "GenerateImpression", "code": e.code.name,
                                                     "message": e.details})
        return rec
    gen_s = time.monotonic() - t0
    flags = [f.name for f, v in g.flags.ListFields() if v]
    rec.update(
        language=enum_name(pb.Language, "LANGUAGE_", g.language),
        impression=g.impression,
        finish_reason=enum_name(pb.FinishReason, "FINISH_REASON_", g.finish_reason),
        flags=flags,
        null_output=not g.impression.strip(),
        repetition=g.flags.repetition_detected or g.finish_reason == pb.FINISH_REASON_REPETITION,
        tokens={"prompt": g.tokens.prompt_tokens, "generated": g.tokens.generated_tokens},
        timings={"generate_s": gen_s, "server_queue_s": g.timings.queue_seconds,
                 "server_first_token_s": g.timings.first_token_seconds, "server_total_s": g.timings.total_seconds},
        model={"name": g.model.name, "version": g.model.version, "backend": g.model.backend,
               "weights": g.model.weights},
        template_id=g.template_id)
    if rec["null_output"]:
        # Nothing to score (Score refuses an empty candidate): ROUGE 0 by definition.
        zero = {"p": 0.0, "r": 0.0, "f": 0.0}
        rec.update(rouge={"rouge1": zero, "rouge2": zero, "rouge_l": zero}, logprob=None,
                   rouge_mode=None, rouge_segmenter=None)
        return rec
    t1 = time.monotonic()
    try:
        s = await client.score(report.findings, g.impression, report.reference, rouge_mode=settings.rouge_mode,
                               rouge_segmenter=settings.rouge_segmenter, client_request_id=report.key[:128], **ctx)
    except ChatradioError as e:
        if e.code in TRANSIENT:
            raise
        rec.update(error={"rpc": "Score", "code": e.code.name, "message": e.details})
        return rec
    rec["timings"]["score_s"] = time.monotonic() - t1
    rec.update(
        rouge={"rouge1": _score_dict(s.rouge.rouge1), "rouge2": _score_dict(s.rouge.rouge2),
               "rouge_l": _score_dict(s.rouge.rouge_l)},
        rouge_mode=enum_name(pb.RougeMode, "ROUGE_MODE_", s.rouge_mode),
        rouge_segmenter=enum_name(pb.ScoreRequest.Segmenter, "SEGMENTER_", s.rouge_segmenter),
        logprob={"total": s.total_logprob, "mean": s.mean_logprob, "perplexity": s.perplexity,
                 "tokens": s.candidate_tokens})
    return rec


@dataclass
class RunOutcome:
    finished: int = 0
    unfinished: int = 0
    errors: int = 0
    stopped: Optional[str] = None  # why the run stopped early


async def run_reports(client: AsyncClient, reports: Sequence[Report], settings: EvalSettings,
                      writer: ResultsWriter, *, concurrency: int, done_before: int, total: int,
                      out=sys.stderr) -> RunOutcome:
    """Evaluates `reports` (those not yet done) with at most `concurrency` in
    flight. Gives up after 2 × concurrency transient failures in a row: the
    servers are down, and what is done stays done."""
    queue: "asyncio.Queue[Report]" = asyncio.Queue()
    for r in reports:
        queue.put_nowait(r)
    outcome = RunOutcome()
    progress = Progress(total=total, done=done_before, out=out)
    streak = 0  # transient failures in a row
    limit = 2 * concurrency

    async def worker() -> None:
        nonlocal streak
        while outcome.stopped is None:
            try:
                report = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                rec = await evaluate_one(client, report, settings)
            except ChatradioError as e:
                outcome.unfinished += 1
                streak += 1
                progress.note("chatradio-eval: %s (%s) not finished: %s: %s" % (report.key, report.row, e.code.name,
                                                                               e.details))
                if streak >= limit:
                    outcome.stopped = "%d calls in a row failed (last: %s: %s)" % (streak, e.code.name, e.details)
                continue
            streak = 0
            writer.append(rec)
            outcome.finished += 1
            outcome.errors += "error" in rec
            progress.advance()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    outcome.unfinished += queue.qsize()
    progress.close()
    return outcome
