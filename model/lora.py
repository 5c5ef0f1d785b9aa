"""Per-voice LoRA deltas (peft) over a shared GPT-SoVITS base.

A LoRA voice stores only low-rank factors A (r x in), B (out x r) for chosen layers; its weights
are W = W_base + (alpha / r) * B @ A. Training: `add_lora` freezes the base and injects trainable
adapters; `lora_state` extracts the factors. Rendering: `apply_lora` loads the factors into a copy
of the base and merges them, giving a plain model with the official key names and no adapter
overhead at inference.

Targets (peft supports nn.Linear and nn.Conv1d):
- GPT: each transformer layer's FFN (`linear1`, `linear2`) and attention output (`out_proj`).
  The packed q/k/v projection is a bare parameter and stays frozen.
- SoVITS: every Conv1d and Linear of the text encoder (`enc_p`), the flow and the decoder's
  residual blocks; the upsampling ConvTranspose1d layers and dilated convolutions (peft has no
  adapter for the first and ignores dilation in the second), the reference encoder, the posterior
  encoder (training only) and the frozen quantizer stay as in the base.

The base's weight-normed convolutions are folded (`remove_weight_norm`) before adapters are
injected, in training and at inference alike: with the base frozen the fold does not change the
function, and it lets a merge write straight into `weight`.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

GPT_TARGETS = r".*\.(linear1|linear2|out_proj)$"
SOVITS_TARGETS = r"^(enc_p|flow|dec\.resblocks|dec\.conv_pre|dec\.conv_post)\..*"


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    gpt_targets: str = GPT_TARGETS
    sovits_targets: str = SOVITS_TARGETS

    def to_dict(self) -> dict:
        return asdict(self)


def _target_names(model: nn.Module, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    # peft's Conv1d adapter ignores dilation, so dilated convolutions (decoder residual blocks) stay frozen
    return [n for n, m in model.named_modules() if rx.match(n) and (
        type(m) is nn.Linear or (type(m) is nn.Conv1d and m.dilation == (1,) and m.groups == 1))]


def _fold_weight_norm(model: nn.Module, names: list[str]) -> None:
    modules = dict(model.named_modules())
    for n in names:
        m = modules[n]
        if hasattr(m, "weight_g"):
            torch.nn.utils.remove_weight_norm(m)


def add_lora(model: nn.Module, pattern: str, cfg: LoRAConfig) -> list[str]:
    """Freeze `model` and inject LoRA adapters into the layers whose names match `pattern` (in place).

    Returns the adapted layer names. Only the adapters' A/B factors require grad afterwards.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = _target_names(model, pattern)
    if not names:
        raise ValueError(f"no Linear/Conv1d layer matches the LoRA target pattern {pattern!r}")
    _fold_weight_norm(model, names)
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                       target_modules=names, bias="none"), model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return names


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' factors: {"<layer>.lora_A.weight": (r, in[, k]), "<layer>.lora_B.weight": (out, r[, 1])}."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def clone(model: nn.Module) -> nn.Module:
    """A fresh copy of a GPT or SoVITS model (deepcopy fails on weight-normed layers after a forward)."""
    kwargs = {"with_posterior": model.has_posterior} if hasattr(model, "has_posterior") else {}
    new = type(model)(model.cfg, **kwargs)
    new.load_state_dict(model.state_dict())
    return new.to(next(model.parameters()).device).train(model.training)


def apply_lora(base: nn.Module, state: dict[str, torch.Tensor], pattern: str, cfg: LoRAConfig) -> nn.Module:
    """A copy of `base` with the delta `state` merged in (the base itself is left untouched)."""
    from peft import set_peft_model_state_dict

    model = clone(base)
    add_lora(model, pattern, cfg)
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"LoRA delta does not match the base: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return _merge_and_unload(model)


def merged_in_place(model: nn.Module) -> nn.Module:
    """Merge an adapted model's adapters into its weights and drop them (for rendering)."""
    return _merge_and_unload(model)


def _merge_and_unload(model: nn.Module) -> nn.Module:
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    model.requires_grad_(False)
    return model


def delta_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())
