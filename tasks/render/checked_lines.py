"""One voice's lines rendered, post-processed and checked, failing lines rendered again.

    render_checked(synthesize, lines, post, qc, voice_key, mode) -> list[Checked], one per line
      synthesize: list[LineRequest] -> list[LineAudio | Exception]   (one voice, one batched call)

    attempt k = 0 .. retries (enforce) or 0 only (report / off), for the lines still pending:
      synthesize with seed = retry_seed(line seed, k)
      -> a line with target_seconds whose speech is off by more than the tolerance is synthesised
         again at the speed expected to meet it (bounded to the model's range), same seed
      -> postprocess (trim, bounded stretch, loudness) -> QC -> done, or pending again

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

from .line_qc import LineQC, retry_seed
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


def render_checked(synthesize: Callable[[list], list], lines: Sequence[tuple[Any, float | None]], post: PostConfig,
                   qc: LineQC | None, voice_key: Any, mode: str) -> list[Checked]:
    """`lines`: (LineRequest, target_seconds or None) in order; `mode`: "off" | "report" | "enforce"."""
    n = len(lines)
    logs: list[list[dict]] = [[] for _ in range(n)]
    final: list[Checked | None] = [None] * n
    pending = list(range(n))
    attempts = 1 + (qc.cfg.retries if mode == "enforce" and qc is not None else 0)
    for attempt in range(attempts):
        if not pending:
            break
        reqs = [replace(lines[i][0], settings=replace(lines[i][0].settings,
                                                      seed=retry_seed(lines[i][0].settings.seed, attempt)))
                for i in pending]
        targets = [lines[i][1] for i in pending]
        entries = [{"attempt": attempt + 1, "seed": r.settings.seed} for r in reqs]
        results = list(synthesize(reqs))
        _fit_speeds(synthesize, reqs, results, targets, post, entries)
        still = []
        for i, req, res, target, entry in zip(pending, reqs, results, targets, entries):
            entry["speed"] = round(float(req.settings.speed), 4)
            logs[i].append(entry)
            if isinstance(res, Exception):
                entry["error"] = str(res)
                final[i] = Checked(None, str(res), _columns(None, None, target, logs[i], None))
                continue
            t0 = time.perf_counter()
            processed = postprocess(res.wav, res.sample_rate, post, target)
            t1 = time.perf_counter()
            entry.update(truncated=bool(res.truncated), duration_s=round(processed.duration_s, 4),
                         stretch=round(processed.stretch, 4), loudness_lufs=_r(processed.loudness_lufs),
                         true_peak_dbtp=_r(processed.true_peak_dbtp),
                         duration_deviation_s=_r(processed.duration_deviation_s))
            result = None
            if mode != "off" and qc is not None:
                result = qc.check(voice_key, req.text, req.language, res.wav, res.sample_rate, res.truncated,
                                  processed, post.duration_tolerance_s)
                entry.update(result.metrics, passed=result.passed, reasons=result.reasons, notes=result.notes)
            entry.update(postprocess_s=round(t1 - t0, 3), qc_s=round(time.perf_counter() - t1, 3))
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
