"""One training unit: fine-tune one voice from the shared base, store its files, evaluate it.

    base (read once per process) -> dataset rows -> finetune (checkpoint every epoch, resume if
    a state exists) -> voice files (full or LoRA) -> evaluation clips + figures + gate verdict
    -> train/result.json (the unit's record; a retried unit that finds it returns it as is)

Every failure of the voice (NaN loss, out of memory, unreadable data or checkpoint) comes back as
a `failed` result with a reason a person can act on; nothing is raised to the scheduler, so one
voice never stops the others. Only the death of the worker process itself reaches the scheduler,
which retries the unit (tasks/train/scheduler.py).
"""
from __future__ import annotations

import time
import traceback
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import numpy as np

from voicefleet.tasks.enroll.ingest import SR
from voicefleet.tasks.enroll.prepare import SpeakerResult
from voicefleet.tasks.measure.audio import encode_flac, load_audio
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.artifacts import artifact_bytes, save_full, save_lora
from voicefleet.tasks.voices.base_store import BaseRef, cached_base, fresh_models

from .checkpoint import CorruptCheckpoint, StoreCheckpointer
from .evaluate import EVAL_SENTENCES, Gate, eval_language, measure, speaker_centroid
from .finetune import Recipe, TrainingFailed, finetune
from .rows import dataset_rows

TrainHook = Callable[[str, str, int], None]  # (voice id, event, epoch)


def pipeline_version() -> str:
    try:
        return f"voicefleet {version('voicefleet')}"
    except PackageNotFoundError:
        return "voicefleet (not installed)"


@lru_cache(maxsize=2)
def _frontend(bert_dir: str | None):
    from voicefleet.model.text.frontend import TextFrontend

    return TextFrontend(bert_dir=bert_dir)


def result_key(run_prefix: str) -> str:
    return f"{run_prefix}/train/result.json"


def train_unit(store_uri: str, prepared: SpeakerResult, base: BaseRef, recipe: dict, gate: dict | None = None,
               device: str = "cpu", hook: TrainHook | None = None) -> SpeakerResult:
    store, prefix, voice = Store(store_uri), prepared.run_prefix, prepared.speaker_id
    if store.exists(result_key(prefix)):  # finished earlier; the worker died before reporting it
        return SpeakerResult.model_validate_json(store.read_bytes(result_key(prefix)))
    rec, gate_cfg = Recipe(**recipe), Gate(**(gate or {}))
    try:
        cached = cached_base(store, base.prefix)
        gpt, sovits = fresh_models(cached)
        frontend = _frontend(base.bert_dir)
        rows = dataset_rows(store.read_bytes(f"{prefix}/dataset.parquet"), frontend)
        checkpoint = StoreCheckpointer(store, prefix)
        result = finetune(rows, gpt, sovits, rec, device, cached.discriminator_state, log=lambda *_: None,
                          checkpoint=checkpoint, hook=(lambda event, epoch: hook(voice, event, epoch)) if hook else None)
        if result.lora is not None:
            files = save_lora(store, prefix, result.lora, base)
        else:
            files = {**save_full(store, prefix, result.gpt, result.sovits, info=f"voicefleet {voice}"), **base.files()}
        files.update({"ref_wav": f"{prefix}/ref.wav", "dataset": f"{prefix}/dataset.parquet"})
        evaluation, clips = _evaluate(store, prefix, prepared, result, rows, frontend, device, gate_cfg)
        if clips:
            files["eval"] = clips[0]
        metrics = dict(result.metrics, base_model=base.name, untrained_base=base.untrained,
                       checkpoint_bytes=checkpoint.saved_bytes, artifact_bytes=artifact_bytes(store, files),
                       kind="lora" if result.lora is not None else "full")
    except TrainingFailed as e:
        return _failed(prepared, str(e))
    except (MemoryError, CorruptCheckpoint, FileNotFoundError, ValueError) as e:
        return _failed(prepared, f"{type(e).__name__}: {e}")
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        oom = "out of memory" in str(e).lower()
        return _failed(prepared, f"{'out of memory on ' + device + ': ' if oom else type(e).__name__ + ': '}{str(e)[:300]}")
    except Exception as e:  # noqa: BLE001 — report, never crash the batch
        return _failed(prepared, f"unexpected {type(e).__name__}: {e}", traceback.format_exc(limit=3))
    out = prepared.model_copy(update={"status": "trained", "metrics": metrics, "files": files,
                                      "evaluation": evaluation, "pipeline_version": pipeline_version()})
    store.write_bytes(result_key(prefix), out.model_dump_json().encode())
    checkpoint.clear()
    return out


def _failed(prepared: SpeakerResult, *reasons: str) -> SpeakerResult:
    return prepared.model_copy(update={"status": "failed", "reasons": list(reasons)})


def _evaluate(store: Store, prefix: str, prepared: SpeakerResult, result, rows: list[dict], frontend,
              device: str, gate: Gate) -> tuple[dict, list[str]]:
    """Render the fixed sentences, store the clips, measure them; ({figures, gate verdict}, clip keys)."""
    from voicefleet.model.synthesizer import LineRequest, LineSettings, Synthesizer, VoicePrompt

    if gate.mode == "off":
        return {"gate": {"mode": "off", "passed": True, "reasons": ["evaluation and gate are off"]}}, []
    ref = load_audio(store.read_bytes(f"{prefix}/ref.wav"), SR, name="ref.wav")
    synth = Synthesizer(frontend, device=device)
    voice = synth.load_voice(result.gpt, result.sovits, VoicePrompt(
        ref, prepared.ref_text, prepared.ref_language, np.asarray(prepared.prompt_tokens)))
    lang = eval_language(prepared.ref_language or "en")
    texts = EVAL_SENTENCES[lang]
    t0 = time.perf_counter()
    outs = synth.synthesize(voice, [LineRequest(t, lang, LineSettings(seed=0)) for t in texts])
    render_s = time.perf_counter() - t0
    failed = [f"{t!r}: {o}" for t, o in zip(texts, outs) if isinstance(o, Exception)]
    if failed:
        raise TrainingFailed(f"evaluation sentence could not be rendered: {failed[0]}")
    keys = []
    for i, o in enumerate(outs):
        keys.append(f"{prefix}/eval/{i:02d}.flac")
        store.write_bytes(keys[-1], encode_flac(o.wav, o.sample_rate))
    figures = measure([(t, o.wav) for t, o in zip(texts, outs)], SR, lang,
                      speaker_centroid([r["audio"] for r in rows], SR))
    audio_s = sum(len(o.wav) for o in outs) / SR
    passed, reasons = gate.judge(figures)
    figures.update(clips=keys, render_rtf=round(render_s / max(audio_s, 1e-6), 3),
                   truncated=sum(o.truncated for o in outs),
                   gate={**gate.model_dump(), "passed": passed, "reasons": reasons})
    return figures, keys
