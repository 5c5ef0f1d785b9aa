"""One training unit: fine-tune one voice from the shared base, store its files, evaluate it.

    base (read once per process) -> dataset rows (v2Pro / v2ProPlus: + each utterance's speaker embedding,
    and the reference clip's, stored with the voice as `sv_emb`) -> finetune (checkpoint every epoch, resume if
    a state exists) -> voice files (full or LoRA) -> evaluation clips + figures + gate verdict
    -> train/result.json (the unit's record; a retried unit, or a later run, that finds it returns it:
       `stored_result`)

The folder (`prepared.run_prefix`) is named by what is trained (tasks/enroll/prepare.py, `training_key`),
not by the run, so a flow that died and runs again resumes the same checkpoint, or finds the result of a
training that finished and was never registered. A stored result is judged again when the gate changed
since; one evaluated with the gate off cannot be, and is trained again.

Every failure of the voice (NaN loss, out of memory, unreadable data or checkpoint, rows whose ids
or lengths the models cannot take) comes back as a `failed` result with a reason a person can act
on; nothing is raised to the scheduler, so one voice never stops the others. Only the death of the
worker process itself reaches the scheduler, which retries the unit (tasks/train/scheduler.py).

A CUDA error (a device-side assert, an illegal address: `device_fault`) leaves the process's CUDA
context unusable for every later voice, unlike an out-of-memory error. Its result carries
`device_fault`, and the scheduler replaces that trainer's process instead of handing it the next
voice. On CUDA the unit synchronises before it reports, so an asynchronous error surfaces in the
voice that caused it, not in the next one.
"""
from __future__ import annotations

import copy
import time
import traceback
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import numpy as np
import torch

from voicefleet.tasks.enroll.ingest import SR
from voicefleet.tasks.enroll.prepare import SpeakerResult
from voicefleet.tasks.measure.audio import encode_flac, load_audio
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.artifacts import artifact_bytes, save_full, save_lora, save_sv_emb
from voicefleet.tasks.voices.base_store import BaseRef, cached_base, fresh_models

from .checkpoint import CorruptCheckpoint, StoreCheckpointer
from .evaluate import EVAL_SENTENCES, Gate, eval_language, measure, speaker_centroid
from .finetune import Recipe, TrainingFailed, finetune
from .rows import BadTrainingData, check_rows, dataset_rows

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


def device_fault(e: BaseException) -> bool:
    """A CUDA error after which the process's CUDA context cannot be trusted (not an out-of-memory error)."""
    if isinstance(e, torch.OutOfMemoryError):
        return False
    if isinstance(e, torch.AcceleratorError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(m in text for m in (
        "CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_EXECUTION_FAILED",
        "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))


def result_key(run_prefix: str) -> str:
    return f"{run_prefix}/train/result.json"


def stored_result(store: Store, prepared: SpeakerResult, gate: dict | None = None) -> SpeakerResult | None:
    """The result of this training folder's finished training (a worker or a whole flow run died before
    registering it), with the gate's verdict for `gate`; None when there is none to use."""
    key = result_key(prepared.run_prefix)
    if not store.exists(key):
        return None
    try:
        out = SpeakerResult.model_validate_json(store.read_bytes(key))
    except ValueError:  # unreadable: the training runs again and writes it anew
        return None
    if out.status != "trained" or out.speaker_id != prepared.speaker_id or out.run_prefix != prepared.run_prefix:
        return None
    out = _judged(out, Gate(**(gate or {})))
    if out is not None:
        StoreCheckpointer(store, prepared.run_prefix).clear()  # left when the process died right after the result
    return out


def _judged(out: SpeakerResult, gate: Gate) -> SpeakerResult | None:
    """`out` with `gate`'s verdict on its figures (as stored when the gate is the same); None when its figures
    were never measured (evaluated with the gate off) and `gate` needs them."""
    verdict = out.evaluation.get("gate", {})
    if {k: verdict.get(k) for k in gate.model_dump()} == gate.model_dump():
        return out
    if gate.mode == "off":
        judged = {"mode": "off", "passed": True, "reasons": ["evaluation and gate are off"]}
    elif verdict.get("mode", "off") == "off":
        return None
    else:
        passed, reasons = gate.judge(out.evaluation)
        judged = {**gate.model_dump(), "passed": passed, "reasons": reasons}
    return out.model_copy(update={"evaluation": {**out.evaluation, "gate": judged}})


def train_unit(store_uri: str, prepared: SpeakerResult, base: BaseRef, recipe: dict, gate: dict | None = None,
               device: str = "cpu", hook: TrainHook | None = None) -> SpeakerResult:
    store, prefix, voice = Store(store_uri), prepared.run_prefix, prepared.speaker_id
    done = stored_result(store, prepared, gate)  # finished earlier; the worker (or the flow) died before using it
    if done is not None:
        return done
    rec, gate_cfg = Recipe(**recipe), Gate(**(gate or {}))
    try:
        cached = cached_base(store, base.prefix)
        gpt, sovits = fresh_models(cached)
        frontend = _frontend(base.bert_dir)
        rows = dataset_rows(store.read_bytes(f"{prefix}/dataset.parquet"), frontend)
        check_rows(rows, gpt.cfg, sovits.cfg, prepared.prompt_tokens)
        sv_emb = None  # v2Pro / v2ProPlus: each utterance's embedding into its row; the voice's returned
        if cached.sv is not None:
            sv_emb = speaker_embeddings(cached.sv, rows, store.read_bytes(f"{prefix}/ref.wav"), device)
        checkpoint = StoreCheckpointer(store, prefix)
        result = finetune(rows, gpt, sovits, rec, device, cached.discriminator_state, log=lambda *_: None,
                          checkpoint=checkpoint, hook=(lambda event, epoch: hook(voice, event, epoch)) if hook else None)
        if result.lora is not None:
            files = save_lora(store, prefix, result.lora, base)
        else:
            files = {**save_full(store, prefix, result.gpt, result.sovits, info=f"voicefleet {voice}"), **base.files()}
        files.update({"ref_wav": f"{prefix}/ref.wav", "dataset": f"{prefix}/dataset.parquet"})
        if sv_emb is not None:
            files.update(save_sv_emb(store, prefix, sv_emb))
        evaluation, clips = _evaluate(store, prefix, prepared, result, rows, frontend, device, gate_cfg, sv_emb)
        if clips:
            files["eval"] = clips[0]
        metrics = dict(result.metrics, base_model=base.name, untrained_base=base.untrained,
                       checkpoint_bytes=checkpoint.saved_bytes, artifact_bytes=artifact_bytes(store, files),
                       kind="lora" if result.lora is not None else "full")
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)  # an asynchronous CUDA error belongs to this voice
    except TrainingFailed as e:
        return _failed(prepared, str(e))
    except BadTrainingData as e:
        return _failed(prepared, f"bad training data, nothing trained: {e}")
    except (MemoryError, CorruptCheckpoint, FileNotFoundError, ValueError) as e:
        return _failed(prepared, f"{type(e).__name__}: {e}")
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if device_fault(e):
            return _failed(prepared, f"CUDA error on {device} ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                                     "its trainer process is replaced").model_copy(update={"device_fault": True})
        oom = "out of memory" in str(e).lower()
        return _failed(prepared, f"{'out of memory on ' + device + ': ' if oom else type(e).__name__ + ': '}{str(e)[:300]}")
    except Exception as e:  # noqa: BLE001 — report, never crash the batch
        return _failed(prepared, f"unexpected {type(e).__name__}: {e}", traceback.format_exc(limit=3))
    out = prepared.model_copy(update={"status": "trained", "metrics": metrics, "files": files,
                                      "evaluation": evaluation, "pipeline_version": pipeline_version()})
    store.write_bytes(result_key(prefix), out.model_dump_json().encode())
    checkpoint.clear()
    return out


def speaker_embeddings(sv, rows: list[dict], ref_wav: bytes, device: str) -> np.ndarray:
    """v2Pro / v2ProPlus (`sv`: the base's ERes2NetV2): each utterance's speaker embedding into its row
    (`sv_emb`, what the reference's fine-tuning conditions each utterance on), and the reference clip's,
    returned: the voice's embedding, computed once and stored with it. On one CPU thread ~2.4 s per 5 s
    utterance, 2.4-3.2x its HuBERT features (benchmarks/sv_embedding_cost.py)."""
    from voicefleet.model.sv import SpeakerEncoder

    encoder = SpeakerEncoder(sv if device == "cpu" else copy.deepcopy(sv).to(device))
    for r in rows:
        r["sv_emb"] = encoder(torch.as_tensor(r["audio"], dtype=torch.float32), SR)[0].cpu()
    ref = load_audio(ref_wav, SR, name="ref.wav")
    return encoder(torch.from_numpy(ref), SR)[0].cpu().numpy()


def _failed(prepared: SpeakerResult, *reasons: str) -> SpeakerResult:
    return prepared.model_copy(update={"status": "failed", "reasons": list(reasons)})


def _evaluate(store: Store, prefix: str, prepared: SpeakerResult, result, rows: list[dict], frontend,
              device: str, gate: Gate, sv_emb: np.ndarray | None = None) -> tuple[dict, list[str]]:
    """Render the fixed sentences, store the clips, measure them; ({figures, gate verdict}, clip keys)."""
    from voicefleet.model.synthesizer import LineRequest, LineSettings, Synthesizer, VoicePrompt

    if gate.mode == "off":
        return {"gate": {"mode": "off", "passed": True, "reasons": ["evaluation and gate are off"]}}, []
    ref = load_audio(store.read_bytes(f"{prefix}/ref.wav"), SR, name="ref.wav")
    synth = Synthesizer(frontend, device=device)
    voice = synth.load_voice(result.gpt, result.sovits, VoicePrompt(
        ref, prepared.ref_text, prepared.ref_language, np.asarray(prepared.prompt_tokens), sv_emb=sv_emb))
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
