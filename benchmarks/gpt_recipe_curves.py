"""The GPT fine-tune recipe against the reference's, side by side: `benchmarks/finetune.py --part curves`.

GPT fine-tune loss per epoch on the same small data (a tiny GPT pretrained on a synthetic
phone->token table, fine-tuned on a speaker whose table differs in 30 % of the phones), fixed seed,
CPU: the reference's ScaledAdam + its scheduler and s1longer-v2 settings, imported from a
GPT-SoVITS checkout (`--reference`) at benchmark time only, driving its own s1 loop (a step at
batch indices 4, 8, ... of each epoch), against our `GPTTrainer` as `finetune` builds it from
`Recipe()` and against the old constant AdamW 2e-4; then final loss per LoRA rank-8 GPT rate.
`--part sovits-lora`: the SoVITS LoRA rate sweep (mel loss per epoch).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from finetune import load_info


def curve_data(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A small learnable GPT task, as (base rows, speaker rows): each phone says 2 tokens of its own
    (a fixed random table); the speaker's table differs from the base's in 30 % of the phones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base_table = rng.integers(0, 1024, (732, 2))
    speaker_table = base_table.copy()
    changed = rng.random(732) < 0.3
    speaker_table[changed] = rng.integers(0, 1024, (int(changed.sum()), 2))

    def rows(n: int, table) -> list[dict]:
        out = []
        for _ in range(n):
            phones = rng.integers(1, 700, int(rng.integers(8, 20)))
            out.append({"phones": phones.tolist(), "semantic": [int(t) for ph in phones for t in table[ph]]})
        return out

    return rows(256, base_table), rows(24, speaker_table)


def pretrained_tiny(rows: list[dict], steps: int):
    """A tiny GPT trained on the base rows (AdamW 3e-3, batch 16): the base a fine-tune starts from."""
    import random

    import torch

    from voicefleet.model.config import GPTConfig
    from voicefleet.model.gpt import Text2SemanticDecoder
    from voicefleet.tasks.train.finetune import gpt_batch

    torch.manual_seed(0)
    gpt, rng = Text2SemanticDecoder(GPTConfig.tiny()), random.Random(0)
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    for _ in range(steps):
        b = gpt_batch(rng.sample(rows, 16), gpt.cfg.bert_dim)
        _, loss = gpt(b.phones, b.phone_lengths, b.bert, b.semantic, b.semantic_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gpt, float(loss.detach())


def reference_s1(path: Path):
    """ScaledAdam, WarmupCosineLRSchedule and the s1longer-v2 optimiser settings from a reference checkout."""
    import types

    import yaml

    for name in ("matplotlib", "matplotlib.pyplot"):  # lr_schedulers imports pyplot for its __main__ demo only
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(path / "GPT_SoVITS"))
    from AR.modules.lr_schedulers import WarmupCosineLRSchedule
    from AR.modules.optim import ScaledAdam

    cfg = yaml.safe_load((path / "GPT_SoVITS" / "configs" / "s1longer-v2.yaml").read_text())
    return ScaledAdam, WarmupCosineLRSchedule, cfg["optimizer"]


def train_curve(gpt, rows: list[dict], recipe, epochs: int, make_step) -> list[float]:
    """Mean GPT loss per epoch; `make_step(batch_idx, GPTBatch) -> loss` does one batch."""
    import random

    from voicefleet.tasks.train.finetune import _epoch_items, gpt_batch

    rng, curve = random.Random(recipe.seed), []
    for _ in range(epochs):
        losses = [make_step(i, gpt_batch(b, gpt.cfg.bert_dim)) for i, b in enumerate(_epoch_items(rows, recipe, rng))]
        curve.append(sum(losses) / len(losses))
    return curve


def reference_curve(base, rows, recipe, epochs: int, path: Path) -> list[float]:
    """The reference's s1 loop on our GPT: backward every batch, ScaledAdam + its scheduler stepping
    at batch indices 4, 8, ... of each epoch (t2s_lightning_module.training_step)."""
    import copy

    import torch

    ScaledAdam, Schedule, o = reference_s1(path)
    torch.manual_seed(recipe.seed)  # every arm starts from the same random state
    gpt = copy.deepcopy(base).train()
    opt = ScaledAdam(gpt.parameters(), lr=o["lr"], betas=(0.9, 0.95), clipping_scale=2.0,
                     parameters_names=[[n for n, _ in gpt.named_parameters()]], show_dominant_parameters=False,
                     clipping_update_period=1000)
    sched = Schedule(opt, init_lr=o["lr_init"], peak_lr=o["lr"], end_lr=o["lr_end"], warmup_steps=o["warmup_steps"],
                     total_steps=o["decay_steps"])

    def step(i, b):
        _, loss = gpt(b.phones, b.phone_lengths, b.bert, b.semantic, b.semantic_lengths)
        loss.backward()
        if i > 0 and i % 4 == 0:
            opt.step()
            opt.zero_grad()
            sched.step()
        return float(loss.detach())

    return train_curve(gpt, rows, recipe, epochs, step)


def our_curve(base, rows, recipe, epochs: int, lora_rank: int = 0) -> list[float]:
    """Our GPTTrainer as `finetune` builds it from `recipe` (LoRA adapters when `lora_rank`)."""
    import copy
    import random

    from voicefleet.model.lora import LoRAConfig, add_lora
    from voicefleet.model.train import GPTTrainer
    from voicefleet.tasks.train.finetune import _epoch_items, gpt_schedule

    import torch

    torch.manual_seed(recipe.seed)  # every arm starts from the same random state (LoRA's A factors)
    gpt = copy.deepcopy(base)
    if lora_rank:
        cfg = LoRAConfig(rank=lora_rank, alpha=recipe.lora_alpha)
        add_lora(gpt, cfg.gpt_targets, cfg)
    trainer = GPTTrainer(gpt, "cpu", "fp32", **gpt_schedule(recipe, len(rows)))

    def step(i, b):
        loss = trainer.step(b)["loss"]
        if i == last:
            trainer.end_epoch()
        return loss

    last = len(_epoch_items(rows, recipe, random.Random(0))) - 1
    return train_curve(gpt, rows, recipe, epochs, step)


def part_curves(args) -> None:
    import torch

    from voicefleet.tasks.train.finetune import Recipe

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base_rows, rows = curve_data()
    base, base_loss = pretrained_tiny(base_rows, args.pretrain_steps)
    recipe = Recipe()
    epochs = recipe.gpt_epochs
    print(f"\n## GPT fine-tune loss per epoch, tiny GPT ({sum(p.numel() for p in base.parameters()) / 1e6:.2f} M params) "
          f"pretrained {args.pretrain_steps} steps on {len(base_rows)} synthetic utterances (each phone says 2 tokens of "
          f"its own; loss {base_loss:.3f}), fine-tuned on {len(rows)} of a speaker whose table differs in 30 % of the "
          f"phones; batch {recipe.batch_size}, >= {recipe.min_items_per_epoch} items per epoch, {epochs} epochs, "
          f"seed {recipe.seed}, CPU fp32")
    curves = {}
    if args.reference:
        curves["reference ScaledAdam"] = reference_curve(base, rows, recipe, epochs, Path(args.reference))
    for name, r in (("ours (Recipe default)", recipe),
                    ("ours, no decay", recipe.model_copy(update=dict(gpt_decay=False))),
                    ("old: AdamW 2e-4 constant", recipe.model_copy(update=dict(
                        gpt_lr=2e-4, gpt_rms_scaled=False, gpt_warmup_steps=0, gpt_decay=False, gpt_accumulate=1)))):
        curves[name] = our_curve(base, rows, r, epochs)
    for name, c in curves.items():
        print(f"{name:<26} " + " ".join(f"{x:.3f}" for x in c))
    ref = curves.get("reference ScaledAdam")
    if ref:
        for name, c in curves.items():
            if name != "reference ScaledAdam":
                worst = max(abs(a / b - 1) for a, b in zip(c[1:], ref[1:]))
                print(f"{name}: final loss / reference {c[-1] / ref[-1]:.3f}; largest gap per epoch after the first "
                      f"{100 * worst:.1f} %")
    else:
        print("(no --reference checkout: the reference's curve is not shown)")
    print(f"[{time.perf_counter() - t0:.0f} s, {load_info()}]")

    print(f"\n## LoRA rank 8 GPT learning rate sweep, same data and epochs (plain AdamW, {recipe.gpt_warmup_steps} "
          f"warm-up steps, cosine decay)")
    for lr in args.lora_lrs:
        r = recipe.model_copy(update={"lora_rank": 8, "gpt_lr": lr})
        c = our_curve(base, rows, r, epochs, lora_rank=8)
        print(f"lr {lr:<7g} final loss {c[-1]:.3f}   (" + " ".join(f"{x:.2f}" for x in c) + ")")


def part_sovits_lora(args) -> None:
    """SoVITS LoRA rank 8: mean mel loss (x45, as trained) per epoch at each rate, the tiny base on
    the demo speaker's speech (6 utterances, 12 items an epoch, batch 4), GAN included."""
    import torch

    from voicefleet.flows.demo.enrollment import EN_ENROLL
    from voicefleet.flows.demo.training_rows import demo_rows
    from voicefleet.model.lora import clone
    from voicefleet.tasks.enroll.prepare import make_frontend
    from voicefleet.tasks.train.finetune import Recipe, finetune
    from voicefleet.tasks.voices.base_model import tiny_base

    torch.set_num_threads(args.threads)
    base = tiny_base()
    rows = demo_rows("joe", list(EN_ENROLL[:6]), base, make_frontend())
    print(f"\n## SoVITS LoRA rank 8 learning rate sweep, tiny base, {len(rows)} demo utterances (real TTS speech), "
          f"{args.sovits_epochs} epochs of 12 items, batch 4, CPU fp32: mean mel loss per epoch")
    for lr in args.sovits_lora_lrs:
        torch.manual_seed(0)
        recipe = Recipe(sovits_epochs=args.sovits_epochs, gpt_epochs=0, batch_size=4, min_items_per_epoch=12,
                        lora_rank=8, sovits_lr=lr)
        t0 = time.perf_counter()
        res = finetune(rows, clone(base.gpt), clone(base.sovits), recipe, log=lambda *_: None)
        mel = res.metrics["sovits_mel"]
        print(f"lr {lr:<7g} final mel {mel[-1]:.1f}   (" + " ".join(f"{x:.1f}" for x in mel) + f")  "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
