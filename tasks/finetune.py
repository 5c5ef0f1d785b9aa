"""Fine-tune one voice: SoVITS, then GPT, from the base model on the speaker's dataset.

Read it top to bottom like a recipe: config (`Recipe`), batches, the SoVITS loop, the GPT loop,
the result. Defaults follow the reference (SoVITS AdamW 1e-4 for ~8 epochs, GPT ~15 epochs, small
datasets repeated to >= 100 items per epoch); `Recipe.demo()` is a short run for the tiny model.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel

from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.spectrogram import spectrogram
from voicefleet.model.train import GPTBatch, GPTTrainer, SoVITSBatch, SoVITSTrainer


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

    @classmethod
    def demo(cls) -> "Recipe":
        return cls(sovits_epochs=1, gpt_epochs=6, batch_size=4, sovits_lr=5e-4, gpt_lr=2e-3, min_items_per_epoch=12)


class TrainingFailed(RuntimeError):
    """Fine-tuning diverged or had nothing to learn from; the message says which."""


@dataclass
class FineTuneResult:
    gpt: Text2SemanticDecoder
    sovits: SynthesizerTrn
    metrics: dict = field(default_factory=dict)


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
    return SoVITSBatch(None, spec, spec_lens, wav, text, text_lens, codes=codes[None])


def finetune(rows: list[dict], gpt: Text2SemanticDecoder, sovits: SynthesizerTrn, recipe: Recipe,
             device: str = "cpu", discriminator_state: dict | None = None, log=print) -> FineTuneResult:
    """rows: dataset rows with phones, semantic, audio (32 kHz) and optional per-phone bert.

    Trains `gpt` and `sovits` in place (callers pass freshly loaded base models).
    """
    rows = [r for r in rows if len(r["audio"]) / sovits.cfg.sampling_rate <= recipe.max_utterance_s]
    if not rows:
        raise TrainingFailed(f"no utterance is shorter than {recipe.max_utterance_s:g} s")
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    metrics: dict = {"items": len(rows), "seconds": sum(len(r["audio"]) for r in rows) / sovits.cfg.sampling_rate}
    t0 = time.perf_counter()

    # ---- stage 1: SoVITS (GAN + mel + KL), quantizer frozen
    disc = MultiPeriodDiscriminator(sovits.cfg.disc_channels_div)
    if discriminator_state is not None:
        disc.load_state_dict(discriminator_state)
    s_trainer = SoVITSTrainer(sovits, disc, device, recipe.precision, lr=recipe.sovits_lr)
    for epoch in range(recipe.sovits_epochs):
        losses = [s_trainer.step(sovits_batch(b, sovits.cfg.hop_length)) for b in _epoch_items(rows, recipe, rng)]
        mel = sum(x["mel"] for x in losses) / len(losses)
        if mel != mel:  # NaN
            raise TrainingFailed(f"SoVITS loss is NaN in epoch {epoch + 1}")
        metrics.setdefault("sovits_mel", []).append(round(mel, 4))
        log(f"sovits epoch {epoch + 1}/{recipe.sovits_epochs}: mel {mel:.3f}")

    # ---- stage 2: GPT (cross-entropy on semantic tokens)
    g_trainer = GPTTrainer(gpt, device, recipe.precision, lr=recipe.gpt_lr)
    for epoch in range(recipe.gpt_epochs):
        losses = [g_trainer.step(gpt_batch(b, gpt.cfg.bert_dim)) for b in _epoch_items(rows, recipe, rng)]
        loss = sum(x["loss"] for x in losses) / len(losses)
        if loss != loss:
            raise TrainingFailed(f"GPT loss is NaN in epoch {epoch + 1}")
        metrics.setdefault("gpt_loss", []).append(round(loss, 4))
        log(f"gpt epoch {epoch + 1}/{recipe.gpt_epochs}: loss {loss:.3f}")

    metrics["train_s"] = round(time.perf_counter() - t0, 2)
    return FineTuneResult(g_trainer.gpt.eval().cpu(), s_trainer.net_g.eval().cpu(), metrics)
