"""Fine-tune one voice: SoVITS, then GPT, from the base model on the speaker's dataset.

Read it top to bottom like a recipe: config (`Recipe`), batches, the epoch loop (SoVITS epochs,
then GPT epochs), the result. Defaults follow the reference (SoVITS AdamW 1e-4 for ~8 epochs, GPT
~15 epochs, small datasets repeated to >= 100 items per epoch); `Recipe.demo()` is a short run
for the tiny model.

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


class Recipe(BaseModel):
    sovits_epochs: int = 8
    gpt_epochs: int = 15
    batch_size: int = 8
    sovits_lr: float = 1e-4
    gpt_lr: float = 2e-4
    min_items_per_epoch: int = 100
    precision: str = "fp16"  # on CUDA; CPU always trains in fp32
    max_utterance_s: float = 12.0
    seed: int = 1234
    gpt_warmup_steps: int = 0
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank over the frozen base; 0: every weight
    lora_alpha: float = 16.0
    gradient_checkpointing: bool = False  # recompute GPT layer activations in backward (saves memory)

    @property
    def epochs(self) -> int:
        return self.sovits_epochs + self.gpt_epochs

    def lora(self) -> LoRAConfig | None:
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha) if self.lora_rank > 0 else None

    @classmethod
    def demo(cls) -> "Recipe":
        return cls(sovits_epochs=1, gpt_epochs=6, batch_size=4, sovits_lr=5e-4, gpt_lr=2e-3, min_items_per_epoch=12)


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


def _epoch_items(rows: list[dict], recipe: Recipe, rng: random.Random) -> list[list[dict]]:
    items = list(rows)
    while len(items) < recipe.min_items_per_epoch:
        items += rows
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
    s_trainer = SoVITSTrainer(sovits, disc, device, recipe.precision, lr=recipe.sovits_lr)
    g_trainer = GPTTrainer(gpt, device, recipe.precision, lr=recipe.gpt_lr, warmup_steps=recipe.gpt_warmup_steps)
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
