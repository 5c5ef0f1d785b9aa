"""The GPT fine-tune's learning rate: linear warm-up, cosine decay, per-tensor RMS scaling.

Facts of the reference's s1 (GPT) training that this follows (GPT-SoVITS `configs/s1longer-v2.yaml`,
`AR/modules/lr_schedulers.py`, `AR/modules/optim.py`, `AR/models/t2s_lightning_module.py`):

- its configured schedule: linear from `lr_init` 1e-5 to the peak 0.01 over 2,000 optimiser steps,
  then a cosine to `lr_end` 1e-4 at 40,000 steps;
- but its scheduler overwrites every step's value with a fixed 0.002 (the first optimiser step runs at
  the optimiser's initial 0.01), so a fine-tune of a few hundred steps trains at a constant 0.002;
- its optimiser, ScaledAdam, is Adam whose update of each tensor is scaled by that tensor's RMS
  (floored at 1e-5), with scalars at 0.1x the rate, no first-moment bias correction, no weight decay,
  and no clipping during its first 1,000 steps; it steps once per 4 batches (gradients summed).

`rms_scaled_groups` carries the RMS scaling over to AdamW (one parameter group per tensor, its rate
the peak times the tensor's RMS when training starts), so a base rate means what the reference's
0.002 means; `warmup_cosine` is the schedule shape, as a factor of the peak.
"""
from __future__ import annotations

import math

import torch

MIN_RMS = 1e-5  # ScaledAdam's param_min_rms
SCALAR_SCALE = 0.1  # ScaledAdam's scalar_lr_scale


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, init_ratio: float, end_ratio: float) -> float:
    """Factor of the peak rate for optimiser step `step` (0-based).

    Linear from `init_ratio` to 1 over `warmup_steps`, cosine from 1 to `end_ratio` until step
    `decay_steps`, `end_ratio` after it; `decay_steps` <= `warmup_steps` means no decay (the peak
    is held).
    """
    if step < warmup_steps:
        return init_ratio + (1.0 - init_ratio) * step / warmup_steps
    if decay_steps <= warmup_steps:
        return 1.0
    if step >= decay_steps:
        return end_ratio
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return end_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - end_ratio)


def rms_scaled_groups(params: list[torch.nn.Parameter], lr: float) -> list[dict]:
    """One AdamW parameter group per tensor at `lr` x the tensor's RMS now (scalars: `lr` x 0.1)."""
    groups = []
    for p in params:
        if p.numel() == 1:
            scale = SCALAR_SCALE
        else:
            scale = max(float(p.detach().float().pow(2).mean().sqrt()), MIN_RMS)
        groups.append({"params": [p], "lr": lr * scale})
    return groups
