"""Fault isolation in training (issue 24): rows the models cannot take are refused before any step, with the
row named; a unit that hits a CUDA error reports a device fault, and the scheduler replaces that trainer's
process instead of handing it the next voice. The CUDA error is simulated on the CPU: a hook raises
RuntimeError("CUDA error: device-side assert triggered") inside the first voice's training loop."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.tasks.cluster.runtime import Resources
from voicefleet.tasks.enroll.features import DATASET_SCHEMA
from voicefleet.tasks.enroll.ingest import SR
from voicefleet.tasks.enroll.prepare import SpeakerResult
from voicefleet.tasks.measure.audio import encode_flac
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.checkpoint import state_key
from voicefleet.tasks.train.finetune import Recipe
from voicefleet.tasks.train.rows import BadTrainingData, check_rows
from voicefleet.tasks.train.unit import device_fault, train_unit
from voicefleet.tasks.voices.base_store import publish_base

RECIPE = Recipe(sovits_epochs=1, gpt_epochs=1, batch_size=4, min_items_per_epoch=4).model_dump()
GATE_OFF = {"mode": "off"}
TEXTS = ["Hello there, how are you?", "The weather is fine today.", "We will see.", "Thanks a lot."]
POISON = "CUDA error: device-side assert triggered"


def rows(n: int = 4) -> list[dict]:
    from voicefleet.model.text.frontend import TextFrontend

    frontend, rng = TextFrontend(), np.random.default_rng(0)
    out = []
    for i, text in enumerate(TEXTS[:n]):
        audio = (0.1 * rng.standard_normal(int(SR * (1.0 + 0.2 * i)))).astype(np.float32)
        phones = list(frontend.phonemize(text, "en").ids)
        out.append({"file": f"take{i}.wav", "text": text, "language": "en", "phones": phones,
                    "semantic": [int(t) for t in rng.integers(0, 1024, round(audio.size / 1280))],
                    "duration_s": audio.size / SR, "audio": audio, "bert": torch.zeros(1024, len(phones))})
    return out


def store_voice(store: Store, voice: str, data: list[dict]) -> SpeakerResult:
    prefix = f"voices/{voice}/runs/r1"
    table = pa.Table.from_pylist([{**{k: v for k, v in r.items() if k not in ("audio", "bert")},
                                   "audio_flac": encode_flac(r["audio"], SR)} for r in data], schema=DATASET_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes(f"{prefix}/dataset.parquet", buf.getvalue())
    return SpeakerResult(speaker_id=voice, status="prepared", run_prefix=prefix, ref_text=TEXTS[0],
                         ref_language="en", prompt_tokens=[1, 2, 3])


def test_rows_the_models_cannot_take_are_refused_naming_the_row() -> None:
    gpt, sovits = GPTConfig.tiny(), SoVITSConfig.tiny()
    good = rows(2)
    check_rows(good, gpt, sovits, [0, 1023])
    cases = [
        ({"semantic": [5000] * len(good[1]["semantic"])}, (r"row 1 \('take1.wav'\): semantic token 5000 is out "
                                                            r"of range: the codebook indexes 0..1023")),
        ({"phones": [3, 732]}, r"row 1 .*phone id 732 is out of range: the phone embeddings indexes 0..731"),
        ({"phones": [-1, 3]}, r"phone id -1 is out of range"),
        ({"semantic": good[1]["semantic"][:10]}, r"10 semantic tokens for 1.20 s of audio; 25 Hz gives about 30"),
        ({"semantic": []}, r"0 semantic tokens"),
        ({"audio": np.full(SR, np.nan, np.float32)}, r"32000 NaN or infinite samples"),
        ({"bert": torch.zeros(1024, 3)}, r"BERT features of shape \(1024, 3\) for \d+ phones"),
    ]
    for change, message in cases:
        with pytest.raises(BadTrainingData, match=message):
            check_rows([good[0], {**good[1], **change}], gpt, sovits)
    with pytest.raises(BadTrainingData, match="reference prompt: semantic token 1024 is out of range"):
        check_rows(good, gpt, sovits, [5, 1024])   # the GPT's EOS is no token of a clip


def test_cuda_errors_are_told_from_out_of_memory() -> None:
    assert device_fault(RuntimeError(POISON)) and device_fault(torch.AcceleratorError("CUDA error: an illegal "
                                                                                      "memory access was encountered"))
    assert not device_fault(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not device_fault(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) and not device_fault(IndexError())


def test_a_unit_refuses_bad_rows_before_training_and_reports_a_cuda_error_as_a_device_fault(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    base = publish_base(store, "tiny")
    data = rows()
    bad = store_voice(store, "bad", [data[0], {**data[1], "semantic": [5000] * len(data[1]["semantic"])}])
    out = train_unit(store.uri, bad, base, RECIPE, GATE_OFF)
    assert out.status == "failed" and not out.device_fault
    assert out.reasons == [("bad training data, nothing trained: row 1 ('take1.wav'): semantic token 5000 is out "
                            "of range: the codebook indexes 0..1023")]
    assert not store.exists(state_key(bad.run_prefix))   # no step ran

    def poison(voice, event, epoch):
        if event == "epoch_start":
            raise RuntimeError(POISON)

    voice = store_voice(store, "ada", data)
    out = train_unit(store.uri, voice, base, RECIPE, GATE_OFF, hook=poison)
    assert out.status == "failed" and out.device_fault
    assert out.reasons[0].startswith("CUDA error on cpu (RuntimeError: CUDA error: device-side assert triggered)")


@pytest.mark.slow
def test_a_trainer_that_hit_a_cuda_error_is_replaced_and_the_next_voice_trains_on_a_fresh_process(tmp_path) -> None:
    import ray

    from voicefleet.tasks.cluster.runtime import ensure_ray
    from voicefleet.tasks.train.scheduler import train_voices

    started = not ray.is_initialized()
    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    try:
        store = Store(str(tmp_path / "store"))
        base = publish_base(store, "tiny")
        data = rows()
        voices = [store_voice(store, "first", data), store_voice(store, "second", data)]
        events = tmp_path / "events.txt"

        def hook(voice, event, epoch, _events=str(events)):
            with open(_events, "a") as f:
                f.write(f"{os.getpid()} {voice} {event} {epoch}\n")
            if voice == "first" and event == "epoch_start":
                raise RuntimeError(POISON)   # what a device-side assert looks like to the unit

        results = {r.speaker_id: r for r in train_voices(store.uri, voices, base, RECIPE, GATE_OFF,
                                                         Resources(num_cpus=1), workers=1, hook=hook)}
    finally:
        if started:
            ray.shutdown()
    first, second = results["first"], results["second"]
    assert first.status == "failed" and first.device_fault and "trainer process is replaced" in first.reasons[0]
    assert second.status == "trained", second.reasons
    assert "attempts" not in second.metrics   # it was never handed to the poisoned process
    pids = {voice: int(pid) for pid, voice, _, _ in (line.split() for line in events.read_text().splitlines())}
    assert first.metrics["trained_on"]["pid"] == pids["first"]
    assert second.metrics["trained_on"]["pid"] == pids["second"] != pids["first"]   # one actor, a fresh process
    assert first.metrics["trained_on"]["actor"] == second.metrics["trained_on"]["actor"]
