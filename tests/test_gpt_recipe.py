"""The fine-tune recipe (issue 24): the GPT's warm-up-then-decay schedule with RMS-scaled rates and
4-batch steps as the reference's s1 training, LoRA training at its own rates, training clips brought
to the reference's level. Side-by-side curves against the reference: `benchmarks/finetune.py --part curves`."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from voicefleet.model.config import GPTConfig
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.lr_schedule import warmup_cosine
from voicefleet.model.train import GPTTrainer
from voicefleet.tasks.enroll.features import build_dataset, normalise_level, read_dataset
from voicefleet.tasks.enroll.ingest import SpeakerUpload, Utterance
from voicefleet.tasks.enroll.prepare import feature_models
from voicefleet.tasks.train.finetune import FULL_LR, LORA_LR, Recipe, gpt_batch, gpt_schedule


def test_the_schedule_warms_up_linearly_to_the_peak_then_decays_to_its_end() -> None:
    f = [warmup_cosine(s, warmup_steps=10, decay_steps=50, init_ratio=0.001, end_ratio=0.01) for s in range(60)]
    assert f[0] == pytest.approx(0.001)
    assert f[5] == pytest.approx(0.001 + 0.999 * 0.5)  # linear: half-way at half the warm-up
    assert all(b > a for a, b in zip(f[:10], f[1:11]))
    assert f[10] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert f[30] == pytest.approx(0.01 + 0.5 * 0.99)  # cosine: half-way at half the decay
    assert all(b < a for a, b in zip(f[10:50], f[11:51]))
    assert f[50:] == [pytest.approx(0.01)] * 10
    assert [warmup_cosine(s, 10, 0, 0.001, 0.01) for s in (10, 100)] == [1.0, 1.0]  # no decay: the peak is held


def rows(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"phones": rng.integers(1, 700, 10).tolist(), "semantic": rng.integers(0, 1024, 20).tolist()} for _ in range(n)]


def test_the_trainer_follows_the_schedule_per_optimiser_step_summing_four_batches() -> None:
    torch.manual_seed(0)
    gpt = Text2SemanticDecoder(GPTConfig.tiny())
    t = GPTTrainer(gpt, lr=0.002, warmup_steps=2, decay_steps=4, lr_init=0.0002, lr_end=0.00002, rms_scaled=True,
                   accumulate=4)
    assert len(t.optim.param_groups) == len(t.params)  # one group per tensor, its rate x its RMS
    for g in t.optim.param_groups[:3]:
        w = g["params"][0]
        assert g["initial_lr"] == pytest.approx(0.002 * float(w.detach().pow(2).mean().sqrt()))
    emb = t.params[0]
    batch = gpt_batch(rows(), gpt.cfg.bert_dim)
    before = emb.detach().clone()
    lrs = []
    for i in range(16):
        t.step(batch)
        if i == 2:
            assert torch.equal(emb, before)  # three batches summed, no step yet
        lrs.append(t.optim.param_groups[0]["lr"] / t.optim.param_groups[0]["initial_lr"])
    assert not torch.equal(emb, before)
    steps = lrs[3::4]  # the factor after optimiser steps 1..4
    assert steps == [pytest.approx(x) for x in (0.55, 1.0, 0.505, 0.01)]


def test_lora_trains_at_its_own_rates_unless_the_recipe_names_one() -> None:
    full, lora = Recipe(), Recipe(lora_rank=8)
    assert full.learning_rate("gpt") == FULL_LR["gpt"] and full.learning_rate("sovits") == FULL_LR["sovits"]
    assert lora.learning_rate("gpt") == LORA_LR["gpt"] != FULL_LR["gpt"]
    assert lora.learning_rate("sovits") == LORA_LR["sovits"] != FULL_LR["sovits"]
    assert gpt_schedule(lora, 24)["lr"] == LORA_LR["gpt"] and not gpt_schedule(lora, 24)["rms_scaled"]
    assert gpt_schedule(full, 24)["rms_scaled"]  # LoRA's B factors start at zero: no RMS to scale by
    assert Recipe(lora_rank=8, gpt_lr=3e-3).learning_rate("gpt") == 3e-3  # a named rate wins
    # 24 rows -> 96 items -> 13 batches of 8 -> 4 steps an epoch (4 batches each, the last one's 1)
    assert gpt_schedule(full, 24)["decay_steps"] == full.gpt_epochs * 4
    assert gpt_schedule(Recipe(gpt_decay=False), 24)["decay_steps"] == 0


def test_training_clips_come_to_the_reference_level() -> None:
    t = np.linspace(0, 1, 32000, dtype=np.float32)
    quiet, loud = 0.1 * np.sin(2 * np.pi * 220 * t), 0.95 * np.sin(2 * np.pi * 220 * t)
    assert np.abs(normalise_level(quiet)).max() == pytest.approx(0.5 * 0.95 + 0.5 * 0.1, rel=1e-4)
    assert np.allclose(normalise_level(loud), loud, atol=1e-6)
    assert np.abs(normalise_level(3.0 * loud)).max() == pytest.approx(0.5 * 0.95 + 0.5, rel=1e-4)  # over full scale
    assert not normalise_level(np.zeros(100, np.float32)).any()

    base, frontend = feature_models("tiny")
    utt = Utterance("a.wav", "hello there", "en", quiet.astype(np.float32))
    data, problems = build_dataset(SpeakerUpload("s", None, [utt], utt), base, frontend)
    stored = read_dataset(data)[0]["audio"]
    assert not problems and np.abs(stored).max() == pytest.approx(0.525, abs=2e-3)


def test_a_trainer_resumed_at_an_epoch_boundary_matches_one_that_ran_through() -> None:
    """Six batches an epoch at 4 per step: the epoch's last 2 are stepped at its end, never left half-summed."""
    batches = [gpt_batch(rows(2)[i % 2:][:1] * 2, 1024) for i in range(6)]
    settings = dict(lr=0.002, warmup_steps=2, decay_steps=8, lr_init=2e-6, lr_end=2e-5, rms_scaled=True, accumulate=4)

    def epoch(t: GPTTrainer) -> None:
        for b in batches:
            t.step(b)
        t.end_epoch()

    torch.manual_seed(0)
    straight = GPTTrainer(Text2SemanticDecoder(GPTConfig.tiny()), **settings)
    epoch(straight)
    saved = io.BytesIO()
    torch.save(straight.state_dict(), saved)  # as checkpoint.save: no tensor shared with the running trainer
    rng = torch.get_rng_state()  # dropout draws: finetune saves them too
    torch.manual_seed(0)
    resumed = GPTTrainer(Text2SemanticDecoder(GPTConfig.tiny()), **settings)
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert straight.pending == 0 and straight.sched.last_epoch == 2  # 4 + 2 batches: two optimiser steps
    for t in (straight, resumed):
        torch.set_rng_state(rng)
        epoch(t)
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)
