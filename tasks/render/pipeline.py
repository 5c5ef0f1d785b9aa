"""Bulk rendering on Ray Data: this run's work list -> synthesis actor pool -> shards + Parquet index.

    todo parts (tasks/render/plan.py: checked lines sorted by voice and length bucket, Parquet)
      -> SynthesizeLines actor pool: each actor keeps `voice_cache` loaded voices, renders one
                         batch per voice with the model's batched GPT + SoVITS; a failing batch is
                         split down to single lines (tasks/render/fault_isolation.py); voice loads and
                         shard writes are retried with backoff when the error is transient
      -> write_shard_batch  one WebDataset shard + its index part per batch of finished lines,
                         named after its content, so a retried write replaces itself
      -> the driver iterates the small summary rows for progress and counts

Rows follow the one index schema (tasks/render/index_schema.py). A line whose sentence hit the runaway-
length guard stays `ok` (its audio exists) with `truncated` true, `qc_passed` false and the reason
in `qc_reasons`, so quality control can retry it and reports can show it.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray

from voicefleet.tasks.cluster.runtime import Resources
from voicefleet.tasks.measure.audio import encode_flac, load_audio, peak_dbfs, rms_dbfs
from voicefleet.tasks.safety import watermark
from voicefleet.tasks.safety.fingerprint import index_rendered
from voicefleet.tasks.store.storage import Store

from .checked_lines import render_checked
from .fault_isolation import synthesize_isolated, with_backoff
from .index_schema import RESULT_SCHEMA, SUMMARY_SCHEMA
from .line_qc import LineQC, QCConfig
from .metrics import RenderMetrics
from .plan import VoiceDecision
from .postprocess import PostConfig, normalize_loudness
from .shards import content_name, write_shard


@dataclass
class RenderSettings:
    """Knobs of a render job (per-line columns override the sampling ones)."""

    actors: int = 1
    batch_size: int = 16  # lines per synthesis call
    lines_per_shard: int = 256
    resources: Resources = field(default_factory=Resources)
    top_k: int = 15
    temperature: float = 1.0
    noise_scale: float = 0.5
    speed: float = 1.0
    max_tokens_per_phone: float = 6.0
    voice_cache: int = 4  # loaded voices kept per actor
    retries: int = 3  # calls in all for a voice load / shard write failing with a transient error
    line_retries: int = 1  # extra calls for a single line failing with a transient error
    backoff_s: float = 0.5
    post: PostConfig = field(default_factory=PostConfig)  # loudness, silence pads, target length
    qc: QCConfig = field(default_factory=QCConfig)  # per-line quality control and retries
    precision: str | None = None  # fp32 | bf16 | fp16 | int8; None: bf16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size", "lines_per_shard", "voice_cache", "retries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def line_settings(r: dict, s: RenderSettings):
    """The model's LineSettings for a plan row; temperature 0 is greedy decoding (top_k 1)."""
    from voicefleet.model.synthesizer import LineSettings

    temperature = s.temperature if r["temperature"] is None else r["temperature"]
    top_k = s.top_k if r["top_k"] is None else int(r["top_k"])
    if temperature == 0:
        top_k, temperature = 1, 1.0
    return LineSettings(seed=int(r["seed"]), speed=s.speed if r["speed"] is None else r["speed"], top_k=top_k,
                        temperature=temperature, noise_scale=s.noise_scale if r["noise_scale"] is None else r["noise_scale"],
                        max_tokens_per_phone=s.max_tokens_per_phone)


class SynthesizeLines:
    """Ray Data callable class: loads models once per actor, renders one batch per call."""

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
        self.voices: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.metrics = RenderMetrics()
        # quality control: one ASR + speaker model per actor, each voice's reference embedded once
        self.qc = LineQC(settings.qc, threads=max(1, int(settings.resources.num_cpus)))

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
        from voicefleet.tasks.voices.artifacts import load_voice_models

        rec = self.records.get(voice_id)
        if rec is None or str(rec.version) != str(version):
            raise LookupError(f"voice {voice_id} v{version} was not authorized by this run's plan")
        gpt, sovits = load_voice_models(self.store, rec.files)  # full checkpoints, or shared base + LoRA delta
        ref = load_audio(self.store.read_bytes(rec.files["ref_wav"]), sovits.cfg.sampling_rate, name="ref.wav")
        if self.settings.qc.mode_for(rec.untrained) != "off":
            self.qc.add_reference((voice_id, version), ref, sovits.cfg.sampling_rate)
        return self.synth.load_voice(gpt, sovits, VoicePrompt(ref, rec.ref_text, rec.ref_language,
                                                              np.asarray(rec.prompt_tokens)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict] = []
        by_voice: dict[tuple[str, str], list[dict]] = {}
        for r in batch.to_pylist():
            if r["status"] == "pending":
                by_voice.setdefault((r["voice_id"], r["voice_version"]), []).append(r)
            else:
                out.append(self.result(r, "refused", error=r["error"], attempts=0))
        for key, group in by_voice.items():
            try:
                voice = self.voice(*key)
            except Exception as e:  # noqa: BLE001 — a broken voice fails its lines, not the job
                error = f"voice {key[0]} v{key[1]} could not be loaded: {type(e).__name__}: {e}"
                out.extend(self.result(r, "failed", error=error, attempts=0) for r in group)
                continue
            out.extend(self.render_group(key, voice, group))
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)

    def render_group(self, key: tuple[str, str], voice, group: list[dict]) -> list[dict]:
        """Synthesis (a failing batch split down to single lines) -> post-processing -> QC, with
        lines that fail QC rendered again with another seed (tasks/render/checked_lines.py)."""
        from voicefleet.model.synthesizer import LineRequest, SynthesisError

        s = self.settings
        calls: dict[int, list] = {i: [] for i in range(len(group))}  # isolation log per line, every attempt
        invoked = {i: 0 for i in range(len(group))}  # synthesize() calls that included the line
        elapsed = [0.0]

        def synthesize(requests: list) -> list:
            t0 = time.perf_counter()
            outcomes = synthesize_isolated(
                lambda reqs: self.synth.synthesize(voice, reqs), requests, line_retries=s.line_retries,
                backoff_s=s.backoff_s, on_retry=lambda e, n: self.metrics.retry("batch_split" if n > 1 else "line_retry"))
            elapsed[0] += time.perf_counter() - t0
            out = []
            for req, o in zip(requests, outcomes):
                calls[req.tag].extend(o.log)
                invoked[req.tag] += 1
                failed = o.error is not None or isinstance(o.result, Exception)
                out.append(SynthesisError(o.error or str(o.result)) if failed else o.result)
            return out

        lines = [(LineRequest(r["text"], r["language"], line_settings(r, s), tag=i), r["target_seconds"])
                 for i, r in enumerate(group)]
        record = self.records.get(key[0])
        checked = render_checked(synthesize, lines, s.post, self.qc, key,
                                 s.qc.mode_for(bool(record is not None and record.untrained)))
        audio_s = sum(c.audio.duration_s for c in checked if c.audio is not None)
        self.metrics.batch(elapsed[0], audio_s)
        out = []
        for i, (r, c) in enumerate(zip(group, checked)):
            cols = dict(c.columns)
            log = json.loads(cols.get("attempt_log") or "[]")
            # QC attempts (a speed re-render for target_seconds belongs to its attempt), plus the
            # extra calls fault isolation made (batch splits, transient retries)
            cols["attempts"] = len(log) + len(calls[i]) - invoked[i]
            if log:  # every call (batch size, seconds, error) with the last QC attempt
                log[-1]["synthesis_calls"] = calls[i]
                cols["attempt_log"] = json.dumps(log, ensure_ascii=False)
            if c.audio is None:
                out.append(self.result(r, "failed", error=c.error, quality=cols))
            else:
                out.append(self.result(r, "ok", audio=c.audio, quality=cols,
                                       rtf=elapsed[0] / audio_s if audio_s else None))
        return out

    def result(self, r: dict, status: str, audio=None, error: str | None = None, attempts: int = 0,
               quality: dict | None = None, rtf: float | None = None) -> dict:
        """An index row (RESULT_SCHEMA); `audio` is the post-processed line (tasks/postprocess.Processed)."""
        row = {"line_id": r["line_id"], "voice_id": r["voice_id"] or None, "voice_version": r["voice_version"],
               "status": status, "error": error, "text": r["text"], "language": r["language"],
               "attempts": attempts, "run": self.run, "seed": r["seed"], "target_seconds": r["target_seconds"],
               "flac": None, **(quality or {})}
        if audio is None:
            self.metrics.line(status)
            return row
        truncated = bool(row.get("truncated"))
        wav, lufs, tp = mark_line(audio.wav, audio.sample_rate, self.settings.post)  # voice safety
        if row.get("loudness_lufs") is not None:  # the index describes the delivered audio
            row.update(loudness_lufs=None if lufs is None else round(lufs, 4),
                       true_peak_dbtp=None if tp is None else round(tp, 4))
        peak, rms = peak_dbfs(wav), rms_dbfs(wav)
        row.update(peak_dbfs=peak if np.isfinite(peak) else None, rms_dbfs=rms if np.isfinite(rms) else None,
                   rtf=rtf, truncated=truncated, flac=encode_flac(wav, audio.sample_rate))
        if truncated and not row.get("qc_reasons"):
            row.update(qc_passed=False, qc_reasons=f"truncated: a sentence hit the runaway-length guard "
                                                   f"({self.settings.max_tokens_per_phone:g} tokens per phone)")
        self.metrics.line("ok", audio.duration_s, truncated)
        return row


def mark_line(wav: np.ndarray, sr: int, post: PostConfig) -> tuple[np.ndarray, float | None, float | None]:
    """A post-processed line with the watermark, at the target loudness and under the true-peak
    ceiling again; returns (audio, LUFS, dBTP) as delivered.

    The mark is quiet (~15 dB under the speech) but peaky: on real speech it took the true peak
    from -1.2 to 0.0 dBTP. Loudness and the ceiling are applied again after marking; the limiter
    keeps the mark (tests/test_watermark.py).
    """
    return normalize_loudness(watermark.mark(wav, sr), sr, post.loudness_lufs, post.true_peak_dbtp)


# ---------------------------------------------------------------- shards
def write_shard_batch(batch: pa.Table, store_uri: str, job_id: str, retries: int = 3, backoff_s: float = 0.5) -> pa.Table:
    """One shard + index part per batch, named after its content; returns summary rows (no audio)."""
    rows = batch.to_pylist()
    if not rows:
        return SUMMARY_SCHEMA.empty_table()
    items = [(r, r.pop("flac")) for r in rows]
    store = Store(store_uri)
    name = content_name(items)
    index_rendered(store, job_id, name, items)  # voice safety: fingerprints before the index part
    written = with_backoff(lambda: write_shard(store, job_id, name, items, replace=True), retries, backoff_s)
    return pa.Table.from_pylist([{c: w[c] for c in SUMMARY_SCHEMA.names} for w in written], schema=SUMMARY_SCHEMA)


# ---------------------------------------------------------------- the run
@dataclass
class RenderCounts:
    ok: int = 0
    failed: int = 0
    refused: int = 0
    truncated: int = 0
    skipped: int = 0  # already finished in an earlier run
    audio_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (line_id, error), first few


def render_lines(store: Store, job_id: str, todo_keys: list[str], voices: dict[str, VoiceDecision],
                 settings: RenderSettings, run: int, bert_dir: str | None = None, skipped: int = 0,
                 on_progress: Callable[[RenderCounts], None] | None = None) -> RenderCounts:
    """Run the Ray Data pipeline over this run's todo parts; returns the counts of this run."""
    counts = RenderCounts(skipped=skipped)
    if not todo_keys:
        return counts
    # reads are light: they must not wait for CPUs the synthesis actors hold
    ds = ray.data.read_parquet([store.fs_path(k) for k in todo_keys], filesystem=store.fs, num_cpus=0.1)
    # a todo part holds thousands of lines; an actor's output leaves it only when its input block is
    # done, so small blocks keep finished lines flowing to the shard writer (progress, and little
    # work lost to a crash) instead of arriving all at once at the end of a part
    ds = ds.repartition(target_num_rows_per_block=settings.batch_size)
    ds = ds.map_batches(SynthesizeLines, batch_format="pyarrow", batch_size=settings.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=settings.actors),
                        fn_constructor_kwargs={"store_uri": store.uri, "settings": settings, "voices": voices,
                                               "run": run, "bert_dir": bert_dir},
                        **settings.resources.options())
    ds = ds.map_batches(write_shard_batch, batch_format="pyarrow", batch_size=settings.lines_per_shard,
                        fn_kwargs={"store_uri": store.uri, "job_id": job_id, "retries": settings.retries,
                                   "backoff_s": settings.backoff_s}, num_cpus=0.1)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for r in batch.to_pylist():
            setattr(counts, r["status"], getattr(counts, r["status"]) + 1)
            if r["status"] == "ok":
                counts.audio_s += r["duration_s"] or 0.0
                counts.truncated += bool(r["truncated"])
            elif len(counts.failures) < 20:
                counts.failures.append((r["line_id"], r["error"]))
        if on_progress:
            on_progress(counts)
    return counts
