"""One voice's lines rendered, post-processed and checked, failing lines rendered again.

    render_checked(synthesize, lines, post, qc, voice_key, mode) -> list[Checked], one per line
      synthesize: list[LineRequest] -> list[LineAudio | Exception]   (one batched call)
      voice_key: the lines' voice for QC, or a list of one per line (a batch of several voices)

    attempt k = 0 .. retries (enforce) or 0 only (report / off), for the lines still pending:
      synthesize with seed = retry_seed(line seed, k, run)
      -> a line with target_seconds whose speech is off by more than the tolerance is synthesised
         again at the speed expected to meet it (bounded to the model's range), same seed
      -> postprocess (trim, bounded stretch, loudness) -> QC of the attempt's lines as one batch
         -> done, or pending again

Every attempt's metrics go to `attempt_log`; a synthesis error ends the line at once (another
seed does not fix a line the model refuses). In enforce mode a line that never passes fails, with
the last attempt's reasons; in report mode it is delivered with `qc_passed` False.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from .line_qc import LineQC, QCLine, retry_seed
from .postprocess import PostConfig, Processed, postprocess, speech_bounds, speed_for_target

QUALITY_COLUMNS = ("loudness_lufs", "true_peak_dbtp", "wer", "asr_text", "speaker_similarity", "qc_passed",
                   "qc_reasons", "attempt_log", "target_seconds", "duration_deviation_s", "truncated", "attempts")


@dataclass
class Checked:
    audio: Processed | None  # None: the line failed
    error: str | None
    columns: dict[str, Any]  # QUALITY_COLUMNS of the index row


def _speech_s(wav: np.ndarray, sr: int, top_db: float) -> float:
    start, end = speech_bounds(wav, top_db)
    return (end - start) / sr


def _fit_speeds(synthesize: Callable, reqs: list, results: list, targets: list[float | None],
                post: PostConfig, log: list[dict]) -> None:
    """Re-synthesise, in one call, the lines whose length misses their target by more than the tolerance."""
    redo = []
    for i, (req, res, target) in enumerate(zip(reqs, results, targets)):
        if target is None or isinstance(res, Exception):
            continue
        speech = _speech_s(res.wav, res.sample_rate, post.trim_top_db)
        want = target - 2 * post.pad_s
        if speech <= 0 or want <= 0 or abs(speech - want) <= post.duration_tolerance_s:
            continue
        speed = speed_for_target(speech, want, req.settings.speed)
        if abs(speed - req.settings.speed) > 1e-3:
            redo.append((i, replace(req, settings=replace(req.settings, speed=speed))))
    if not redo:
        return
    again = synthesize([r for _, r in redo])
    for (i, req), res in zip(redo, again):
        if isinstance(res, Exception):
            log[i]["speed_refit_error"] = str(res)
        else:
            results[i], reqs[i] = res, req
            log[i]["speed_refit"] = True


def attempt_requests(lines: Sequence[tuple[Any, float | None]], pending: Sequence[int], attempt: int,
                     run: int) -> list:
    """The LineRequests of `attempt` (0: the first) for the lines at `pending`, each with its attempt's seed."""
    return [replace(lines[i][0], settings=replace(lines[i][0].settings,
                                                  seed=retry_seed(lines[i][0].settings.seed, attempt, run)))
            for i in pending]


def render_checked(synthesize: Callable[[list], list], lines: Sequence[tuple[Any, float | None]], post: PostConfig,
                   qc: LineQC | None, voice_key: Any, mode: str, run: int = 1,
                   first: list | None = None) -> list[Checked]:
    """`lines`: (LineRequest, target_seconds or None) in order; `voice_key`: their voice (QC's reference),
    or a list with each line's; `mode`: "off" | "report" | "enforce";
    `run`: the job run (seeds differ per run and attempt: `retry_seed`); `first`: the results of
    `synthesize(attempt_requests(lines, range(len(lines)), 0, run))` when the caller has already made
    that call (the render actor synthesises a batch's first attempt while the batch before it is
    still being checked)."""
    n = len(lines)
    voice_keys = voice_key if isinstance(voice_key, list) else [voice_key] * n
    logs: list[list[dict]] = [[] for _ in range(n)]
    final: list[Checked | None] = [None] * n
    pending = list(range(n))
    attempts = 1 + (qc.cfg.retries if mode == "enforce" and qc is not None else 0)
    for attempt in range(attempts):
        if not pending:
            break
        reqs = attempt_requests(lines, pending, attempt, run)
        targets = [lines[i][1] for i in pending]
        entries = [{"attempt": attempt + 1, "seed": r.settings.seed} for r in reqs]
        results = list(first) if attempt == 0 and first is not None else list(synthesize(reqs))
        _fit_speeds(synthesize, reqs, results, targets, post, entries)
        still, done = [], []  # done: (i, req, res, target, entry, processed) of lines with audio
        for i, req, res, target, entry in zip(pending, reqs, results, targets, entries):
            entry["speed"] = round(float(req.settings.speed), 4)
            logs[i].append(entry)
            if isinstance(res, Exception):
                entry["error"] = str(res)
                final[i] = Checked(None, str(res), _columns(None, None, target, logs[i], None))
                continue
            t0 = time.perf_counter()
            processed = postprocess(res.wav, res.sample_rate, post, target)
            entry.update(truncated=bool(res.truncated), duration_s=round(processed.duration_s, 4),
                         stretch=round(processed.stretch, 4), loudness_lufs=_r(processed.loudness_lufs),
                         true_peak_dbtp=_r(processed.true_peak_dbtp),
                         duration_deviation_s=_r(processed.duration_deviation_s),
                         postprocess_s=round(time.perf_counter() - t0, 3))
            done.append((i, req, res, target, entry, processed))
        results_qc: list = [None] * len(done)
        if mode != "off" and qc is not None and done:  # the attempt's lines scored as one batch
            t0 = time.perf_counter()
            results_qc = qc.check_many([QCLine(voice_keys[i], req.text, req.language, res.wav, res.sample_rate,
                                               res.truncated, processed) for i, req, res, _, _, processed in done],
                                       post.duration_tolerance_s)
            per_line = round((time.perf_counter() - t0) / len(done), 3)
        for (i, req, res, target, entry, processed), result in zip(done, results_qc):
            if result is not None:
                entry.update(result.metrics, passed=result.passed, reasons=result.reasons, notes=result.notes,
                             qc_s=per_line)  # the batch's QC time, shared out
            cols = _columns(processed, result, target, logs[i], res.truncated)
            if result is None or result.passed or mode != "enforce":
                final[i] = Checked(processed, None, cols)
            elif attempt + 1 < attempts:
                still.append(i)
            else:
                final[i] = Checked(None, f"quality check failed after {attempt + 1} attempt(s): "
                                         + "; ".join(result.reasons), cols)
        pending = still
    return [c for c in final if c is not None]


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _columns(p: Processed | None, result, target: float | None, log: list[dict], truncated: bool | None) -> dict:
    m = result.metrics if result is not None else {}
    return {"loudness_lufs": p.loudness_lufs if p else None, "true_peak_dbtp": p.true_peak_dbtp if p else None,
            "wer": m.get("wer"), "asr_text": m.get("asr_text"), "speaker_similarity": m.get("speaker_similarity"),
            "qc_passed": None if result is None else result.passed,
            "qc_reasons": ("; ".join(result.reasons + result.notes) or None) if result is not None else None,
            "attempt_log": json.dumps(log, ensure_ascii=False), "target_seconds": target,
            "duration_deviation_s": p.duration_deviation_s if p else None,
            "truncated": truncated, "attempts": len(log)}
