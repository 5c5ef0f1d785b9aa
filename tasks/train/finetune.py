"""Fine-tune one voice: SoVITS, then GPT, from the base model on the speaker's dataset.

Read it top to bottom like a recipe: config (`Recipe`), batches, the epoch loop (SoVITS epochs,
then GPT epochs), the result. Defaults follow the reference (SoVITS AdamW 1e-4 for ~8 epochs, GPT
~15 epochs at its s1 rates: 0.002 x each tensor's RMS, one step per 4 batches, a warm-up then a
cosine decay; small datasets repeated to >= 100 items per epoch); a LoRA recipe trains the GPT at
its own rate (`LORA_LR`, from a sweep); `Recipe.demo()` is a short run for the tiny model.

Resumable: after every epoch the loop hands a `TrainingState` (trainable weights, optimisers,
schedulers, grad scaler, RNG states, epoch, per-epoch log) to `checkpoint.save`; a run that finds
a saved state continues with the next epoch, so a killed worker repeats at most the epoch it was
in. `recipe.lora_rank > 0` trains LoRA adapters over a frozen base (model/lora.py) instead of
every weight.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from pydantic import BaseModel

from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.lora import LoRAConfig, add_lora, lora_state, merged_in_place
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.spectrogram import spectrogram
from voicefleet.model.train import GPTBatch, GPTTrainer, SoVITSBatch, SoVITSTrainer, enable_gradient_checkpointing


# Full fine-tune: the GPT at 0.002 x each tensor's RMS, 4 batches a step, 8 warm-up steps, cosine decay:
# on the same small data (benchmarks/finetune.py --part curves, tiny GPT) within 6.0 % of the reference's
# ScaledAdam loss in every epoch after the first, final loss 1.06x its (no decay: 8.8 %, 0.91x; the old
# constant AdamW 2e-4 every batch: 21.6 %, 0.78x).
FULL_LR = {"gpt": 0.002, "sovits": 1e-4}  # SoVITS: the reference s2.json
# LoRA rank 8, GPT (plain AdamW, same schedule), final loss by rate (same run): 1e-2 4.354, 2e-2 3.874,
# 3e-2 3.729, 5e-2 3.678, 1e-1 5.030 (spiked at epoch 4). 3e-2: within 1.4 % of the best and 3x below
# the rate that diverged. SoVITS LoRA rank 8 (benchmarks/finetune.py --part sovits-lora: tiny random base, demo
# speech, 4 epochs of 3 steps), final mel loss: 1e-4 221.3, 1e-3 219.3, 1e-2 183.9, 3e-2 128.8, 1e-1 247.8 and
# 3e-1 265.4 (rising). 1e-2, not the best 3e-2: on a random base the decoder learns from scratch, which favours
# high rates, and the discriminator trains in full at the same rate; 1e-4 (the full rate) left the loss unmoved.
LORA_LR = {"gpt": 3e-2, "sovits": 1e-2}
PLAIN_GPT = {"gpt_rms_scaled": False, "gpt_accumulate": 1, "gpt_warmup_steps": 0, "gpt_decay": False}  # a constant
# rate every batch: for runs of a few steps (demos, tests), where 4-batch steps and a warm-up would leave the GPT as it was
GPT_LR_INIT_RATIO = 1e-3  # the reference's lr_init / lr: 1e-5 / 0.01
GPT_LR_END_RATIO = 1e-2  # the reference's lr_end / lr: 1e-4 / 0.01


class Recipe(BaseModel):
    sovits_epochs: int = 8
    gpt_epochs: int = 15
    batch_size: int = 8
    sovits_lr: float | None = None  # None: FULL_LR or LORA_LR["sovits"], by `lora_rank`
    gpt_lr: float | None = None  # the peak; None: FULL_LR or LORA_LR["gpt"], by `lora_rank`
    gpt_rms_scaled: bool | None = None  # each GPT tensor's rate x its RMS (ScaledAdam's rule); None: full only
    gpt_warmup_steps: int = 8  # linear from gpt_lr x GPT_LR_INIT_RATIO; ~13 % of a 60-step run (the reference's
    # 2,000 outlast any fine-tune; an earlier curves run without warm-up: 6.1 % from the reference, 1.061x)
    gpt_decay: bool = True  # cosine to gpt_lr x GPT_LR_END_RATIO over the run's GPT steps
    gpt_accumulate: int = 4  # batches per GPT optimiser step, as the reference
    min_items_per_epoch: int = 100
    precision: str = "fp16"  # on CUDA; CPU always trains in fp32
    max_utterance_s: float = 12.0
    seed: int = 1234
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank over the frozen base; 0: every weight
    lora_alpha: float = 16.0
    gradient_checkpointing: bool = False  # recompute GPT layer activations in backward (saves memory)

    @property
    def epochs(self) -> int:
        return self.sovits_epochs + self.gpt_epochs

    def learning_rate(self, stage: str) -> float:
        """The rate `stage` ("gpt" peak | "sovits") trains at: the recipe's own, else its mode's default."""
        own = self.gpt_lr if stage == "gpt" else self.sovits_lr
        return own if own is not None else (LORA_LR if self.lora_rank > 0 else FULL_LR)[stage]

    def lora(self) -> LoRAConfig | None:
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha) if self.lora_rank > 0 else None

    @classmethod
    def demo(cls) -> "Recipe":
        """Few, short epochs: the GPT steps every batch at a constant plain rate, no warm-up."""
        return cls(sovits_epochs=1, gpt_epochs=6, batch_size=4, sovits_lr=5e-4, gpt_lr=2e-3, min_items_per_epoch=12,
                   **PLAIN_GPT)


def gpt_schedule(recipe: Recipe, n_rows: int) -> dict:
    """GPTTrainer's rate settings for `recipe` over `n_rows` training rows (model/lr_schedule.py)."""
    batches = -(-n_rows * epoch_repeats(n_rows, recipe) // recipe.batch_size)
    steps = recipe.gpt_epochs * -(-batches // recipe.gpt_accumulate)  # optimiser steps in the run
    lr = recipe.learning_rate("gpt")
    rms = recipe.gpt_rms_scaled if recipe.gpt_rms_scaled is not None else recipe.lora_rank == 0
    return {"lr": lr, "rms_scaled": rms, "accumulate": recipe.gpt_accumulate, "warmup_steps": recipe.gpt_warmup_steps,
            "lr_init": lr * GPT_LR_INIT_RATIO, "decay_steps": steps if recipe.gpt_decay else 0,
            "lr_end": lr * GPT_LR_END_RATIO}


class TrainingFailed(RuntimeError):
    """Fine-tuning diverged or had nothing to learn from; the message says which."""


@dataclass
class FineTuneResult:
    gpt: Text2SemanticDecoder  # with LoRA adapters merged when the recipe used LoRA
    sovits: SynthesizerTrn
    metrics: dict = field(default_factory=dict)
    lora: dict[str, dict] | None = None  # {"gpt": factors, "sovits": factors} for a LoRA recipe


class Checkpointer(Protocol):
    """Where a run's `TrainingState` lives between epochs (tasks/train/checkpoint.py: the object store)."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


Hook = Callable[[str, int], None]  # (event "epoch_start" | "epoch_end" | "checkpoint", epoch 1-based)


def epoch_repeats(n_rows: int, recipe: Recipe) -> int:
    """How many times an epoch holds each row: small datasets repeat to >= `min_items_per_epoch` items."""
    return max(1, -(-recipe.min_items_per_epoch // n_rows))


def _epoch_items(rows: list[dict], recipe: Recipe, rng: random.Random) -> list[list[dict]]:
    items = list(rows) * epoch_repeats(len(rows), recipe)
    rng.shuffle(items)
    return [items[i: i + recipe.batch_size] for i in range(0, len(items), recipe.batch_size)]


def _pad(seqs: list[torch.Tensor], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([s.shape[-1] for s in seqs])
    out = seqs[0].new_full((len(seqs), *seqs[0].shape[:-1], int(lens.max())), value)
    for i, s in enumerate(seqs):
        out[i, ..., : s.shape[-1]] = s
    return out, lens


def gpt_batch(rows: list[dict], bert_dim: int) -> GPTBatch:
    phones, phone_lens = _pad([torch.tensor(r["phones"], dtype=torch.long) for r in rows])
    bert, _ = _pad([r.get("bert", torch.zeros(bert_dim, len(r["phones"]))) for r in rows])
    sem, sem_lens = _pad([torch.tensor(r["semantic"], dtype=torch.long) for r in rows])
    return GPTBatch(phones, phone_lens, bert, sem, sem_lens)


def sovits_batch(rows: list[dict], hop: int) -> SoVITSBatch:
    wavs = [torch.as_tensor(r["audio"], dtype=torch.float32) for r in rows]
    specs = [spectrogram(w[None])[0] for w in wavs]
    spec, spec_lens = _pad(specs)
    wav, _ = _pad([w[None] for w in wavs])
    wav = torch.nn.functional.pad(wav, (0, spec.shape[-1] * hop - wav.shape[-1])) if wav.shape[-1] < spec.shape[-1] * hop else wav
    codes, _ = _pad([torch.tensor(r["semantic"], dtype=torch.long) for r in rows])
    text, text_lens = _pad([torch.tensor(r["phones"], dtype=torch.long) for r in rows])
    sv = torch.stack([torch.as_tensor(r["sv_emb"]) for r in rows]) if "sv_emb" in rows[0] else None  # v2Pro
    return SoVITSBatch(None, spec, spec_lens, wav, text, text_lens, codes=codes[None], sv_emb=sv)


def _rng_state(rng: random.Random) -> dict:
    state = {"python": rng.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(rng: random.Random, state: dict) -> None:
    rng.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_finite(value: float, what: str, epoch: int) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        raise TrainingFailed(f"{what} is {value} in epoch {epoch} (diverged or bad data)")


def finetune(rows: list[dict], gpt: Text2SemanticDecoder, sovits: SynthesizerTrn, recipe: Recipe,
             device: str = "cpu", discriminator_state: dict | None = None, log=print,
             checkpoint: Checkpointer | None = None, hook: Hook | None = None) -> FineTuneResult:
    """rows: dataset rows with phones, semantic, audio (32 kHz), optional per-phone bert, and for a v2Pro /
    v2ProPlus `sovits` each utterance's speaker embedding `sv_emb` (unit.speaker_embeddings).

    Trains `gpt` and `sovits` in place (callers pass freshly loaded base models). With
    `checkpoint`, resumes from its saved state and saves one after every epoch. `hook` is called
    at each epoch's start and end and after each checkpoint (progress, tests).
    """
    rows = [r for r in rows if len(r["audio"]) / sovits.cfg.sampling_rate <= recipe.max_utterance_s]
    if not rows:
        raise TrainingFailed(f"no utterance is shorter than {recipe.max_utterance_s:g} s")
    hook = hook or (lambda event, epoch: None)
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    lora = recipe.lora()
    if lora is not None:
        add_lora(gpt, lora.gpt_targets, lora)
        add_lora(sovits, lora.sovits_targets, lora)
    if recipe.gradient_checkpointing:
        enable_gradient_checkpointing(gpt)
    disc = MultiPeriodDiscriminator(sovits.cfg.disc_channels_div, periods=sovits.cfg.disc_periods)
    if discriminator_state is not None:
        disc.load_state_dict(discriminator_state)
    s_trainer = SoVITSTrainer(sovits, disc, device, recipe.precision, lr=recipe.learning_rate("sovits"))
    g_trainer = GPTTrainer(gpt, device, recipe.precision, **gpt_schedule(recipe, len(rows)))
    metrics: dict = {"items": len(rows), "seconds": sum(len(r["audio"]) for r in rows) / sovits.cfg.sampling_rate,
                     "sovits_mel": [], "gpt_loss": [], "trainable_params": {
                         "gpt": sum(p.numel() for p in g_trainer.params),
                         "sovits": sum(p.numel() for g in s_trainer.optim_g.param_groups for p in g["params"])}}
    epoch_log: list[dict] = []  # one entry per finished epoch: what ran where
    first = 1
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        s_trainer.load_state_dict(saved["sovits"])
        g_trainer.load_state_dict(saved["gpt"])
        _set_rng_state(rng, saved["rng"])
        metrics, epoch_log = saved["metrics"], saved["log"]
        first = saved["epoch"] + 1
        metrics.setdefault("resumed_from", []).append(saved["epoch"])
        log(f"resuming after epoch {saved['epoch']}/{recipe.epochs}")

    for epoch in range(first, recipe.epochs + 1):
        hook("epoch_start", epoch)
        e0 = time.perf_counter()
        if epoch <= recipe.sovits_epochs:  # ---- stage 1: SoVITS (GAN + mel + KL), quantizer frozen
            losses = [s_trainer.step(sovits_batch(b, sovits.cfg.hop_length)) for b in _epoch_items(rows, recipe, rng)]
            value = sum(x["mel"] for x in losses) / len(losses)
            _check_finite(value, "SoVITS mel loss", epoch)
            s_trainer.end_epoch()
            stage, key = "sovits", "sovits_mel"
        else:  # ---- stage 2: GPT (cross-entropy on semantic tokens)
            losses = [g_trainer.step(gpt_batch(b, gpt.cfg.bert_dim)) for b in _epoch_items(rows, recipe, rng)]
            value = sum(x["loss"] for x in losses) / len(losses)
            _check_finite(value, "GPT loss", epoch)
            g_trainer.end_epoch()
            stage, key = "gpt", "gpt_loss"
        metrics[key].append(round(value, 4))
        epoch_log.append({"epoch": epoch, "stage": stage, "loss": round(value, 4), "pid": os.getpid(),
                          "seconds": round(time.perf_counter() - e0, 3)})
        log(f"epoch {epoch}/{recipe.epochs} ({stage}): loss {value:.3f}")
        hook("epoch_end", epoch)
        if checkpoint is not None:
            checkpoint.save({"epoch": epoch, "sovits": s_trainer.state_dict(), "gpt": g_trainer.state_dict(),
                             "rng": _rng_state(rng), "metrics": metrics, "log": epoch_log})
            hook("checkpoint", epoch)

    metrics["train_s"] = round(sum(e["seconds"] for e in epoch_log), 2)  # every epoch, across resumes
    metrics["epoch_log"] = epoch_log
    gpt_out, sovits_out = g_trainer.gpt.eval().cpu(), s_trainer.net_g.eval().cpu()
    deltas = None
    if lora is not None:
        deltas = {"gpt": lora_state(gpt_out), "sovits": lora_state(sovits_out), "config": lora.to_dict()}
        gpt_out, sovits_out = merged_in_place(gpt_out), merged_in_place(sovits_out)
    return FineTuneResult(gpt_out, sovits_out, metrics, deltas)
