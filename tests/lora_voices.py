"""LoRA voices for tests and benchmarks: peft adapters on a GPT with random, nonzero factors (a trained
delta's shape; peft starts B at zero, which would leave every voice equal to the base)."""
from __future__ import annotations

import torch

from voicefleet.model.lora import LoRAConfig, add_lora, clone, lora_state


def random_lora_state(base, cfg: LoRAConfig, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """`lora_state` of `base` adapted with `cfg`, its factors drawn N(0, scale^2) from `seed`."""
    m = clone(base)
    add_lora(m, cfg.gpt_targets, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return lora_state(m)
