"""Bulk rendering on Ray Data: script -> plan -> synthesis actor pool -> shards + Parquet index.

    read script (Ray Data reader, streamed)
      -> plan_batch      drop lines already in the index, refuse lines whose voice the principal
                         may not use (no compute spent on them), give each line its seed
      -> SynthesizeLines actor pool: each actor keeps loaded voices, renders a batch per voice
                         with the model's batched GPT + SoVITS, encodes FLAC
      -> write_shard_batch  one WebDataset shard + its index part per batch of finished lines
      -> the driver iterates the small index rows for progress and counts

A killed job is rerun with the same job id: lines with an index row are skipped, so nothing is
rendered twice and finished work is kept (see tasks/shards.py for the write order).
"""
from __future__ import annotations

import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import ray

from .audio import encode_flac, load_audio, peak_dbfs, rms_dbfs
from .runtime import Resources
from .script import OPTIONAL, REQUIRED, ScriptInfo, script_format
from .shards import finished_line_ids, write_shard
from .storage import Store

PLAN_COLUMNS = list(REQUIRED) + ["voice_version", "status", "error", "seed"] + [c for c in OPTIONAL if c != "seed"]


@dataclass
class VoiceDecision:
    allowed: bool
    reason: str = ""
    version: int | None = None


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
    max_tokens_per_phone: float = 6.0


# ---------------------------------------------------------------- read + plan
def read_script_dataset(url: str) -> "ray.data.Dataset":
    fmt = script_format(url)
    fs, path = fsspec.core.url_to_fs(url)
    if fmt == "csv":
        return ray.data.read_csv(path, filesystem=fs, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in REQUIRED}))
    if fmt == "jsonl":
        return ray.data.read_json(path, filesystem=fs, lines=True)
    return ray.data.read_parquet(path, filesystem=fs)


def line_seed(line_id: str, text: str) -> int:
    return zlib.crc32(f"{line_id}\x1f{text}".encode())


def plan_batch(batch: pa.Table, finished: set[str], decisions: dict[str, VoiceDecision]) -> pa.Table:
    """Keep unfinished lines; mark each `pending` or `refused` (with the reason)."""
    rows = []
    for r in batch.to_pylist():
        line_id = str(r["line_id"])
        if line_id in finished:
            continue
        voice = "" if r.get("voice_id") is None else str(r["voice_id"])
        d = decisions.get(voice) or VoiceDecision(False, f"unknown voice {voice!r}")
        text = "" if r.get("text") is None else str(r["text"])
        seed = r.get("seed")
        out = {"line_id": line_id, "voice_id": voice, "text": text,
               "language": "" if r.get("language") is None else str(r["language"]),
               "voice_version": None if d.version is None else str(d.version),
               "status": "pending" if d.allowed else "refused", "error": None if d.allowed else d.reason,
               "seed": int(seed) if seed not in (None, "") else line_seed(line_id, text)}
        for c in OPTIONAL:
            if c != "seed":
                v = r.get(c)
                out[c] = None if v in (None, "") else float(v)
        rows.append(out)
    schema = pa.schema([(c, pa.int64() if c == "seed" else pa.float64() if c in OPTIONAL else pa.string())
                        for c in PLAN_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


# ---------------------------------------------------------------- synthesis
class SynthesizeLines:
    """Ray Data callable class: loads models once per actor, renders one batch per call."""

    def __init__(self, store_uri: str, settings: RenderSettings, bert_dir: str | None = None, max_voices: int = 4):
        import torch

        from voicefleet.model.synthesizer import Synthesizer
        from voicefleet.model.text.frontend import TextFrontend

        from .registry import VoiceRegistry

        torch.set_num_threads(max(1, int(settings.resources.num_cpus)))
        self.store = Store(store_uri)
        self.registry = VoiceRegistry(self.store)
        self.settings = settings
        self.synth = Synthesizer(TextFrontend(bert_dir=bert_dir), device=settings.resources.device,
                                 max_batch=settings.batch_size)
        self.voices: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.max_voices = max_voices

    def voice(self, voice_id: str, version: str):
        from voicefleet.model.synthesizer import VoicePrompt

        from .voice_artifacts import load_voice_models

        key = (voice_id, version)
        if key in self.voices:
            self.voices.move_to_end(key)
            return self.voices[key]
        rec = self.registry.version(voice_id, int(version))
        gpt, sovits = load_voice_models(self.store, rec.files)  # full checkpoints, or shared base + LoRA delta
        ref = load_audio(self.store.read_bytes(rec.files["ref_wav"]), sovits.cfg.sampling_rate, name="ref.wav")
        loaded = self.synth.load_voice(gpt, sovits, VoicePrompt(ref, rec.ref_text, rec.ref_language,
                                                                 np.asarray(rec.prompt_tokens)))
        self.voices[key] = loaded
        while len(self.voices) > self.max_voices:
            self.voices.popitem(last=False)
        return loaded

    def __call__(self, batch: pa.Table) -> pa.Table:
        from voicefleet.model.synthesizer import LineRequest, LineSettings

        rows = batch.to_pylist()
        out: list[dict] = []
        by_voice: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            if r["status"] == "pending":
                by_voice.setdefault((r["voice_id"], r["voice_version"]), []).append(r)
            else:
                out.append(_result(r, None))
        s = self.settings
        for key, group in by_voice.items():
            try:
                voice = self.voice(*key)
            except Exception as e:  # noqa: BLE001 — a broken voice fails its lines, not the job
                out.extend(_result(r, None, f"voice {key[0]} v{key[1]} could not be loaded: {e}") for r in group)
                continue
            reqs = [LineRequest(r["text"], r["language"], LineSettings(
                seed=r["seed"], speed=r["speed"] or 1.0, top_k=int(r["top_k"] or s.top_k),
                temperature=r["temperature"] or s.temperature, noise_scale=s.noise_scale if r["noise_scale"] is None else r["noise_scale"],
                max_tokens_per_phone=s.max_tokens_per_phone)) for r in group]
            t0 = time.perf_counter()
            results = self.synth.synthesize(voice, reqs)
            elapsed = time.perf_counter() - t0
            audio_s = sum(len(a.wav) / a.sample_rate for a in results if not isinstance(a, Exception)) or 1e-9
            for r, a in zip(group, results):
                if isinstance(a, Exception):
                    out.append(_result(r, None, str(a)))
                else:
                    out.append(_result(r, a, rtf=elapsed / audio_s))
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


RESULT_SCHEMA = pa.schema([
    ("line_id", pa.string()), ("voice_id", pa.string()), ("voice_version", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("text", pa.string()), ("language", pa.string()), ("peak_dbfs", pa.float64()),
    ("rms_dbfs", pa.float64()), ("rtf", pa.float64()), ("attempts", pa.int32()), ("flac", pa.binary()),
])


def _result(r: dict, audio, error: str | None = None, rtf: float | None = None) -> dict:
    base = {"line_id": r["line_id"], "voice_id": r["voice_id"] or None, "voice_version": r["voice_version"],
            "text": r["text"], "language": r["language"], "attempts": 0 if r["status"] == "refused" else 1}
    if audio is None:
        status = "refused" if r["status"] == "refused" else "failed"
        return {**base, "status": status, "error": r["error"] if status == "refused" else error,
                "peak_dbfs": None, "rms_dbfs": None, "rtf": None, "flac": None}
    peak, rms = peak_dbfs(audio.wav), rms_dbfs(audio.wav)
    return {**base, "status": "ok", "error": None, "peak_dbfs": peak if np.isfinite(peak) else None,
            "rms_dbfs": rms if np.isfinite(rms) else None, "rtf": rtf,
            "flac": encode_flac(audio.wav, audio.sample_rate)}


# ---------------------------------------------------------------- shards
def write_shard_batch(batch: pa.Table, store_uri: str, job_id: str) -> pa.Table:
    """One shard + index part per batch; returns the index rows (no audio) for the driver."""
    rows = batch.to_pylist()
    if not rows:
        return pa.table({"line_id": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                         "duration_s": pa.array([], pa.float64()), "error": pa.array([], pa.string())})
    items = []
    for r in rows:
        flac = r.pop("flac")
        items.append((r, flac))
    written = write_shard(Store(store_uri), job_id, f"part-{uuid.uuid4().hex[:12]}", items)
    return pa.Table.from_pylist([{"line_id": w["line_id"], "status": w["status"], "duration_s": w["duration_s"],
                                  "error": w["error"]} for w in written],
                                schema=pa.schema([("line_id", pa.string()), ("status", pa.string()),
                                                  ("duration_s", pa.float64()), ("error", pa.string())]))


# ---------------------------------------------------------------- the job
@dataclass
class RenderCounts:
    ok: int = 0
    failed: int = 0
    refused: int = 0
    skipped: int = 0  # already in the index from an earlier run
    audio_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (line_id, error), first few


def render_lines(store: Store, job_id: str, info: ScriptInfo, decisions: dict[str, VoiceDecision],
                 settings: RenderSettings, bert_dir: str | None = None,
                 on_progress: Callable[[RenderCounts], None] | None = None) -> RenderCounts:
    """Run the Ray Data pipeline for one job; returns the counts of this run."""
    finished = finished_line_ids(store, job_id)
    counts = RenderCounts(skipped=len(finished))
    ds = read_script_dataset(info.url)
    ds = ds.map_batches(plan_batch, batch_format="pyarrow", fn_kwargs={"finished": finished, "decisions": decisions},
                        num_cpus=0.1)
    ds = ds.map_batches(SynthesizeLines, batch_format="pyarrow", batch_size=settings.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=settings.actors),
                        fn_constructor_kwargs={"store_uri": store.uri, "settings": settings, "bert_dir": bert_dir},
                        **settings.resources.options())
    ds = ds.map_batches(write_shard_batch, batch_format="pyarrow", batch_size=settings.lines_per_shard,
                        fn_kwargs={"store_uri": store.uri, "job_id": job_id}, num_cpus=0.1)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for r in batch.to_pylist():
            if r["status"] == "ok":
                counts.ok += 1
                counts.audio_s += r["duration_s"] or 0.0
            else:
                setattr(counts, r["status"], getattr(counts, r["status"]) + 1)
                if len(counts.failures) < 20:
                    counts.failures.append((r["line_id"], r["error"]))
        if on_progress:
            on_progress(counts)
    return counts
