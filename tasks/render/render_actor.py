"""The synthesis actor of a render job: a Ray Data callable class, one per actor of the pool.

    part (one voice's lines, or several LoRA voices' over one base)
      -> per batch of `batch_size` lines (of at most `voice_cache` voices), on the actor's main thread:
           voices loaded (kept in an LRU of `voice_cache`), first synthesis of the batch: one voice's
           lines batched, or LoRA voices' lines through `Synthesizer.synthesize_many` (their GPT rows
           decode in shared batches, each with its own adapter; SoVITS runs per voice)
      -> on the actor's finishing thread, while the main thread synthesises the next batch:
           speed refits and QC retries (they take the model in turn with the main thread),
           post-processing, line QC, watermark, loudness again, FLAC
      -> index rows (RESULT_SCHEMA), one table per batch, in the order of the batches

The model is used by one thread at a time (a lock); everything else a line needs runs beside it,
so the accelerator is not idle while its lines are checked and encoded (`post_overlap` batches may
wait there; 0 turns the overlap off). Stage busy seconds go to `voicefleet_render_stage_seconds`.
"""
from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.tasks.measure.audio import encode_flac, load_audio, peak_dbfs, rms_dbfs
from voicefleet.tasks.safety import watermark
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.records import decode_group

from .checked_lines import attempt_requests, render_checked
from .fault_isolation import synthesize_isolated, with_backoff
from .index_schema import RESULT_SCHEMA
from .line_qc import LineQC
from .metrics import RenderMetrics
from .plan import VoiceDecision
from .postprocess import PostConfig, normalize_loudness
from .settings import RenderSettings, line_settings


class SynthesizeLines:
    """Ray Data callable class: loads models once per actor, renders the lines of one part per call."""

    def __init__(self, store_uri: str, settings: RenderSettings, voices: dict[str, VoiceDecision], run: int,
                 bert_dir: str | None = None):
        import torch

        from voicefleet.model.synthesizer import Synthesizer
        from voicefleet.model.text.frontend import TextFrontend

        torch.set_num_threads(max(1, int(settings.resources.num_cpus)))
        self.store = Store(store_uri)
        self.settings = settings
        self.records = {v: d.record for v, d in voices.items() if d.allowed}  # registry read once, by the plan
        self.run = run
        self.synth = Synthesizer(TextFrontend(bert_dir=bert_dir), device=settings.resources.device,
                                 max_batch=settings.batch_size, precision=settings.precision)
        self.model_lock = threading.Lock()  # the model (and its text frontend) serves one thread at a time
        self.finisher = (ThreadPoolExecutor(1, thread_name_prefix="render-finish") if settings.post_overlap
                         else None)
        self.voices: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.broken: dict[tuple[str, str], str] = {}  # voices that failed to load here, with the reason
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # in each line's attempt log: which actor rendered it
        self.metrics = RenderMetrics()
        # quality control: one ASR + speaker model per actor (on its GPU when it has one), each voice's
        # reference embedded once, a batch's lines scored together
        self.qc = LineQC(settings.qc, threads=max(1, int(settings.resources.num_cpus)), device=settings.resources.device)

    def voice(self, voice_id: str, version: str):
        key = (voice_id, version)
        if key in self.voices:
            self.voices.move_to_end(key)
            return self.voices[key]
        loaded = with_backoff(lambda: self._load(voice_id, version), self.settings.retries, self.settings.backoff_s,
                              on_retry=lambda e, n: self.metrics.retry("voice_load"))
        self.voices[key] = loaded
        while len(self.voices) > self.settings.voice_cache:
            self.voices.popitem(last=False)
        return loaded

    def _load(self, voice_id: str, version: str):
        from voicefleet.model.synthesizer import VoicePrompt
        from voicefleet.tasks.voices.artifacts import load_sv_emb, load_voice_for_batching

        rec = self.records.get(voice_id)
        if rec is None or str(rec.version) != str(version):
            raise LookupError(f"voice {voice_id} v{version} was not authorized by this run's plan")
        # full checkpoints; or a LoRA voice: the shared base GPT with its factors apart, its SoVITS merged
        gpt, sovits, adapter = load_voice_for_batching(self.store, rec.files)
        ref = load_audio(self.store.read_bytes(rec.files["ref_wav"]), sovits.cfg.sampling_rate, name="ref.wav")
        if self.settings.qc.mode_for(rec.untrained) != "off":
            self.qc.add_reference((voice_id, version), ref, sovits.cfg.sampling_rate)
        sv_emb = load_sv_emb(self.store, rec.files)  # v2Pro / v2ProPlus: the embedding enrollment stored
        with self.model_lock:
            return self.synth.load_voice(gpt, sovits, VoicePrompt(ref, rec.ref_text, rec.ref_language,
                                                                  np.asarray(rec.prompt_tokens), sv_emb=sv_emb),
                                         adapter=adapter)

    def batch_group(self, key: tuple[str, str]) -> tuple:
        """Lines of one group may share a synthesis batch: voices whose GPT rows decode together
        (LoRA voices over one base) and whose lines get the same QC mode."""
        rec = self.records.get(key[0])
        if rec is None or str(rec.version) != str(key[1]):
            return ("voice", key)  # its load fails with the reason
        return (decode_group(rec.files), self.settings.qc.mode_for(rec.untrained))

    def __call__(self, parts: pa.Table) -> Iterator[pa.Table]:
        """Index rows for work-list parts (`parts["part"]`: store keys; a part is one voice's lines),
        yielded one synthesis batch (`batch_size` lines) at a time."""
        for key in parts.column("part").to_pylist():
            table = with_backoff(lambda k=key: pq.read_table(io.BytesIO(self.store.read_bytes(k))),
                                 self.settings.retries, self.settings.backoff_s)
            yield from self.render_part(table)

    def render_part(self, part: pa.Table) -> Iterator[pa.Table]:
        """Index rows for one part's lines, per synthesis batch; an error that escapes a batch fails
        its lines with the reason (recorded), never the part (which would end the run)."""
        by_group: dict[tuple, list[dict]] = {}
        refused = []
        for r in part.to_pylist():
            if r["status"] == "pending":
                by_group.setdefault(self.batch_group((r["voice_id"], r["voice_version"])), []).append(r)
            else:
                refused.append(self.result(r, "refused", error=r["error"], attempts=0))
        if refused:
            yield pa.Table.from_pylist(refused, schema=RESULT_SCHEMA)
        waiting = deque()
        for lines in by_group.values():
            for group in self.batches(lines):
                finish = self.start_batch(group)
                if self.finisher is None:
                    yield pa.Table.from_pylist(finish(), schema=RESULT_SCHEMA)
                    continue
                waiting.append(self.finisher.submit(finish))
                while len(waiting) > self.settings.post_overlap:
                    yield pa.Table.from_pylist(waiting.popleft().result(), schema=RESULT_SCHEMA)
        while waiting:
            yield pa.Table.from_pylist(waiting.popleft().result(), schema=RESULT_SCHEMA)

    def batches(self, lines: list[dict]) -> Iterator[list[dict]]:
        """One group's lines (in part order: by voice) cut into batches of `batch_size` lines of at most
        `voice_cache` voices (a batch holds its voices loaded)."""
        batch: list[dict] = []
        voices: set[tuple[str, str]] = set()
        for r in lines:
            key = (r["voice_id"], r["voice_version"])
            if len(batch) == self.settings.batch_size or (key not in voices and len(voices) == self.settings.voice_cache):
                yield batch
                batch, voices = [], set()
            batch.append(r)
            voices.add(key)
        if batch:
            yield batch

    def start_batch(self, group: list[dict]) -> Callable[[], list[dict]]:
        """Load the batch's voices and synthesise its first attempt (this thread); returns what finishes
        the batch into index rows. A voice that cannot load fails its lines with the reason; an error
        that escapes rendering (e.g. a bug in post-processing) fails the batch's lines with it."""
        voices, lost = {}, []
        for r in group:
            key = (r["voice_id"], r["voice_version"])
            if key not in voices and key not in self.broken:
                try:
                    voices[key] = self.voice(*key)
                except Exception as e:  # noqa: BLE001 — a broken voice fails its lines, not the job
                    self.broken[key] = f"voice {key[0]} v{key[1]} could not be loaded: {type(e).__name__}: {e}"
            if key in self.broken:  # its next batches fail at once, not after the load's retries again
                lost.append(self.result(r, "failed", error=self.broken[key], attempts=0))
        live = [r for r in group if (r["voice_id"], r["voice_version"]) in voices]
        if not live:
            return lambda: lost

        def failed(e: Exception) -> list[dict]:
            error = f"rendering failed: {type(e).__name__}: {str(e).strip()[:300]}"
            return lost + [self.result(r, "failed", error=error, attempts=1) for r in live]

        try:
            batch = _Batch(self, voices, live)
        except Exception as e:  # noqa: BLE001 — its lines fail, the run goes on
            rows = failed(e)
            return lambda: rows

        def finish() -> list[dict]:
            try:
                return lost + batch.finish()
            except Exception as e:  # noqa: BLE001 — its lines fail, the run goes on
                return failed(e)
        return finish

    def result(self, r: dict, status: str, audio=None, error: str | None = None, attempts: int = 0,
               quality: dict | None = None, rtf: float | None = None) -> dict:
        """An index row (RESULT_SCHEMA); `audio` is the post-processed line (tasks/postprocess.Processed)."""
        row = {"line_id": r["line_id"], "voice_id": r["voice_id"] or None, "voice_version": r["voice_version"],
               "status": status, "error": error, "text": r["text"], "language": r["language"],
               "attempts": attempts, "run": self.run, "seed": r["seed"], "target_seconds": r["target_seconds"],
               "line_hash": r.get("line_hash"), "flac": None, **(quality or {})}
        if audio is None:
            self.metrics.line(status)
            return row
        truncated = bool(row.get("truncated"))
        t0 = time.perf_counter()
        wav, lufs, tp = mark_line(audio.wav, audio.sample_rate, self.settings.post)  # voice safety
        t1 = time.perf_counter()
        self.metrics.stage("watermark", t1 - t0)
        if row.get("loudness_lufs") is not None:  # the index describes the delivered audio
            row.update(loudness_lufs=None if lufs is None else round(lufs, 4),
                       true_peak_dbtp=None if tp is None else round(tp, 4))
        peak, rms = peak_dbfs(wav), rms_dbfs(wav)
        row.update(peak_dbfs=peak if np.isfinite(peak) else None, rms_dbfs=rms if np.isfinite(rms) else None,
                   rtf=rtf, truncated=truncated, flac=encode_flac(wav, audio.sample_rate))
        self.metrics.stage("encode", time.perf_counter() - t1)
        if truncated and not row.get("qc_reasons"):
            row.update(qc_passed=False, qc_reasons=f"truncated: a sentence hit the runaway-length guard "
                                                   f"({self.settings.max_tokens_per_phone:g} tokens per phone)")
        self.metrics.line("ok", audio.duration_s, truncated)
        return row


class _Batch:
    """One batch of lines (one voice's, or several LoRA voices' over one base): its first synthesis made
    on construction (the caller's thread), `finish()` (any thread) the rest: refits and QC retries,
    post-processing, QC, index rows."""

    def __init__(self, actor: SynthesizeLines, voices: dict[tuple[str, str], Any], group: list[dict]):
        from voicefleet.model.synthesizer import LineRequest

        self.actor, self.voices, self.group = actor, voices, group
        self.keys = [(r["voice_id"], r["voice_version"]) for r in group]  # each line's voice
        s = actor.settings
        self.calls: dict[int, list] = {i: [] for i in range(len(group))}  # isolation log per line, every attempt
        self.invoked = {i: 0 for i in range(len(group))}  # synthesize() calls that included the line
        self.synth_s = self.wait_s = 0.0  # seconds in the model, and waiting for it
        self.lines = [(LineRequest(r["text"], r["language"], line_settings(r, s), tag=i), r["target_seconds"])
                      for i, r in enumerate(group)]
        self.first = self.synthesize(attempt_requests(self.lines, range(len(group)), 0, actor.run))

    def synthesize(self, requests: list) -> list:
        """One batched call of the model (a failing batch split down to single lines), in its turn."""
        from voicefleet.model.synthesizer import SynthesisError

        actor, s = self.actor, self.actor.settings
        t_ask = time.perf_counter()
        with actor.model_lock:
            t0 = time.perf_counter()
            outcomes = synthesize_isolated(
                self._model_call, requests, line_retries=s.line_retries,
                backoff_s=s.backoff_s,
                on_retry=lambda e, n: actor.metrics.retry("batch_split" if n > 1 else "line_retry"))
            t1 = time.perf_counter()
        self.synth_s += t1 - t0
        self.wait_s += t0 - t_ask
        actor.metrics.stage("synthesis", t1 - t0)
        out = []
        for req, o in zip(requests, outcomes):
            self.calls[req.tag].extend(o.log)
            self.invoked[req.tag] += 1
            failed = o.error is not None or isinstance(o.result, Exception)
            out.append(SynthesisError(o.error or str(o.result)) if failed else o.result)
        return out

    def _model_call(self, requests: list) -> list:
        """One call of the model for `requests` (tags: line indexes), per voice in order of appearance
        (`synthesize_many`: LoRA voices over one base decode their GPT rows in shared batches)."""
        keys = [self.keys[r.tag] for r in requests]
        order = list(dict.fromkeys(keys))
        per_voice = self.actor.synth.synthesize_many(
            [(self.voices[k], [r for r, rk in zip(requests, keys) if rk == k]) for k in order])
        taken = {k: iter(results) for k, results in zip(order, per_voice)}
        return [next(taken[k]) for k in keys]

    def finish(self) -> list[dict]:
        """Synthesis refits and retries -> post-processing -> QC (tasks/render/checked_lines.py) -> rows."""
        actor, s = self.actor, self.actor.settings
        record = actor.records.get(self.keys[0][0])  # a batch's voices share their QC mode (batch_group)
        t0, synth0, wait0 = time.perf_counter(), self.synth_s, self.wait_s
        checked = render_checked(self.synthesize, self.lines, s.post, actor.qc, self.keys,
                                 s.qc.mode_for(bool(record is not None and record.untrained)), run=actor.run,
                                 first=self.first)
        audio_s = sum(c.audio.duration_s for c in checked if c.audio is not None)
        actor.metrics.batch(self.synth_s, audio_s)
        actor.metrics.stage("post_qc", time.perf_counter() - t0 - (self.synth_s - synth0) - (self.wait_s - wait0))
        out = []
        for i, (r, c) in enumerate(zip(self.group, checked)):
            cols = dict(c.columns)
            log = json.loads(cols.get("attempt_log") or "[]")
            # QC attempts (a speed re-render for target_seconds belongs to its attempt), plus the
            # extra calls fault isolation made (batch splits, transient retries)
            cols["attempts"] = len(log) + len(self.calls[i]) - self.invoked[i]
            if log:  # the seed of the attempt whose audio is kept (or the last one tried)
                cols["seed"] = log[-1]["seed"]
            if log:  # every call (batch size, seconds, error) with the last QC attempt, and the actor
                log[-1]["synthesis_calls"] = self.calls[i]
                log[-1]["worker"] = actor.worker
                cols["attempt_log"] = json.dumps(log, ensure_ascii=False)
            if c.audio is None:
                out.append(actor.result(r, "failed", error=c.error, quality=cols))
            else:
                out.append(actor.result(r, "ok", audio=c.audio, quality=cols,
                                        rtf=self.synth_s / audio_s if audio_s else None))
        return out


def mark_line(wav: np.ndarray, sr: int, post: PostConfig) -> tuple[np.ndarray, float | None, float | None]:
    """A post-processed line with the watermark, at the target loudness and under the true-peak
    ceiling again; returns (audio, LUFS, dBTP) as delivered.

    The mark is quiet (~15 dB under the speech) but peaky: on real speech it took the true peak
    from -1.2 to 0.0 dBTP. Loudness and the ceiling are applied again after marking; the limiter
    keeps the mark (tests/test_watermark.py).
    """
    return normalize_loudness(watermark.mark(wav, sr), sr, post.loudness_lufs, post.true_peak_dbtp)
