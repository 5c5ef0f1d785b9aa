"""Training steps for fine-tuning a voice: SoVITS (GAN + mel + KL) and GPT (cross-entropy).

These are the units a fine-tune recipe calls in its loop; they own the optimisers, the learning
rate schedules and mixed precision (fp16 with a grad scaler, or bf16, on CUDA; fp32 on CPU) and
return plain floats. Hyperparameters follow the reference s2.json (AdamW lr 1e-4, betas
(0.8, 0.99), mel x45, KL x1, text-side modules at 0.4x lr, lr x0.999875 per epoch); the GPT uses
AdamW with per-tensor RMS-scaled rates, a linear warm-up and a cosine decay (model/lr_schedule.py)
in place of the reference's ScaledAdam.

Only parameters with `requires_grad` are optimised, so a model with frozen base weights and
LoRA adapters (model/lora.py) trains its adapters only. `state_dict()` holds everything a resumed
run needs (trainable weights, optimisers, schedulers, grad scaler); frozen weights are left out,
as a resumed run rebuilds them from the same base.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import SoVITSConfig
from .discriminator import MultiPeriodDiscriminator
from .gpt import Text2SemanticDecoder
from .losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from .lr_schedule import rms_scaled_groups, warmup_cosine
from .sovits import SynthesizerTrn
from .spectrogram import mel_spectrogram, spec_to_mel


@dataclass
class SoVITSBatch:
    ssl: torch.Tensor | None  # (B, ssl_dim, T50) SSL features, or None when `codes` are given
    spec: torch.Tensor  # (B, bins, T) linear spectrogram, T ~ T50
    spec_lengths: torch.Tensor  # (B,)
    wav: torch.Tensor  # (B, 1, T * hop) 32 kHz audio
    text: torch.Tensor  # (B, Tt) phone ids
    text_lengths: torch.Tensor  # (B,)
    codes: torch.Tensor | None = None  # (1, B, T25) semantic tokens (frozen quantizer only)
    sv_emb: torch.Tensor | None = None  # (B, sv_dim) v2Pro/v2ProPlus: each utterance's speaker embedding

    def to(self, device) -> SoVITSBatch:
        return SoVITSBatch(*(None if t is None else t.to(device) for t in (
            self.ssl, self.spec, self.spec_lengths, self.wav, self.text, self.text_lengths, self.codes, self.sv_emb)))


@dataclass
class GPTBatch:
    phones: torch.Tensor  # (B, Lx)
    phone_lengths: torch.Tensor
    bert: torch.Tensor  # (B, bert_dim, Lx)
    semantic: torch.Tensor  # (B, Ly)
    semantic_lengths: torch.Tensor

    def to(self, device) -> GPTBatch:
        return GPTBatch(*(t.to(device) for t in (self.phones, self.phone_lengths, self.bert, self.semantic,
                                                   self.semantic_lengths)))


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (frozen base weights are rebuilt from the base)."""
    return {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    missing = sorted(k for k, p in params.items() if p.requires_grad and k not in state)
    unknown = sorted(set(state) - set(params))
    if missing or unknown:
        raise ValueError(f"training state does not match the model: missing {missing[:3]}, unknown {unknown[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def enable_gradient_checkpointing(gpt: Text2SemanticDecoder) -> None:
    """Recompute each GPT layer's activations in the backward pass instead of keeping them.

    Trades ~1 extra forward per step for activation memory that no longer grows with the layer
    count (24 layers at v2 size). Inference (a KV cache, or no grad) is unchanged.
    """
    from torch.utils.checkpoint import checkpoint

    for layer in gpt.h.layers:
        plain = layer.forward

        def forward(x, allowed, cache=None, index=0, _plain=plain):
            if cache is None and torch.is_grad_enabled():
                return checkpoint(_plain, x, allowed, None, index, use_reentrant=False)
            return _plain(x, allowed, cache, index)

        layer.forward = forward


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


class SoVITSTrainer:
    def __init__(self, net_g: SynthesizerTrn, net_d: MultiPeriodDiscriminator | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", lr: float | None = None):
        if not net_g.has_posterior:
            raise ValueError("SoVITS fine-tuning needs the posterior encoder enc_q (use the pretrained base, not a voice file)")
        self.cfg: SoVITSConfig = net_g.cfg
        self.device = torch.device(device)
        self.precision = precision
        self.net_g = net_g.to(self.device).train()
        self.net_d = (net_d or MultiPeriodDiscriminator(self.cfg.disc_channels_div, periods=self.cfg.disc_periods)
                      ).to(self.device).train()
        lr = lr or self.cfg.learning_rate
        slow = [self.net_g.enc_p.text_embedding, self.net_g.enc_p.encoder_text, self.net_g.enc_p.mrte]
        slow_ids = {id(p) for m in slow for p in m.parameters()}
        frozen = set()
        if self.cfg.freeze_quantizer:
            frozen = {id(p) for m in (self.net_g.ssl_proj, self.net_g.quantizer) for p in m.parameters()}
            for m in (self.net_g.ssl_proj, self.net_g.quantizer):
                m.requires_grad_(False)
        base = [p for p in self.net_g.parameters() if id(p) not in slow_ids and id(p) not in frozen and p.requires_grad]
        groups = [{"params": base, "lr": lr}] + [
            {"params": [p for p in m.parameters() if p.requires_grad], "lr": lr * self.cfg.text_low_lr_rate} for m in slow]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError("SoVITS has no trainable parameters")
        opt = dict(betas=self.cfg.betas, eps=self.cfg.eps)
        self.optim_g = torch.optim.AdamW(groups, lr=lr, **opt)
        self.optim_d = torch.optim.AdamW(self.net_d.parameters(), lr=lr, **opt)
        # the reference decays both learning rates by lr_decay once per epoch
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.optim_g, gamma=self.cfg.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.optim_d, gamma=self.cfg.lr_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and precision == "fp16")

    def step(self, batch: SoVITSBatch) -> dict[str, float]:
        b, c = batch.to(self.device), self.cfg
        seg_frames = c.segment_size // c.hop_length
        with _autocast(self.device, self.precision):
            y_hat, ids, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), commit = self.net_g(
                b.ssl, b.spec, b.spec_lengths, b.text, b.text_lengths, codes=b.codes, sv_emb=b.sv_emb)
            mel = spec_to_mel(b.spec.float(), c.filter_length, c.n_mel_channels, c.sampling_rate, c.mel_fmin, c.mel_fmax)
            y_mel = slice_frames(mel, ids, seg_frames)
            y_hat_mel = mel_spectrogram(y_hat.squeeze(1).float(), c.filter_length, c.n_mel_channels, c.sampling_rate,
                                        c.hop_length, c.win_length, c.mel_fmin, c.mel_fmax)
            y = slice_frames(b.wav, ids * c.hop_length, c.segment_size)
            real, fake, _, _ = self.net_d(y, y_hat.detach())
            loss_d = discriminator_loss(real, fake)
        self.optim_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.optim_d)

        with _autocast(self.device, self.precision):
            _, fake, fmap_r, fmap_g = self.net_d(y, y_hat)
            loss_mel = F.l1_loss(y_mel, y_hat_mel) * c.c_mel
            loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * c.c_kl
            loss_fm = feature_loss(fmap_r, fmap_g)
            loss_gen = generator_loss(fake)
            loss_g = loss_gen + loss_fm + loss_mel + commit + loss_kl
        self.optim_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.optim_g)
        self.scaler.update()
        out = {"loss_d": loss_d, "loss_g": loss_g, "mel": loss_mel, "kl": loss_kl, "fm": loss_fm, "gen": loss_gen}
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()

    def state_dict(self) -> dict:
        return {"net_g": trainable_state(self.net_g), "net_d": self.net_d.state_dict(),
                "optim_g": self.optim_g.state_dict(), "optim_d": self.optim_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        load_trainable_state(self.net_g, state["net_g"])
        self.net_d.load_state_dict(state["net_d"])
        self.optim_g.load_state_dict(state["optim_g"])
        self.optim_d.load_state_dict(state["optim_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])


class GPTTrainer:
    def __init__(self, gpt: Text2SemanticDecoder, device: str | torch.device = "cpu", precision: str = "fp32",
                 lr: float = 2e-4, weight_decay: float = 0.01, grad_clip: float = 1.0, warmup_steps: int = 0,
                 decay_steps: int = 0, lr_init: float = 0.0, lr_end: float = 0.0, rms_scaled: bool = False,
                 accumulate: int = 1):
        """`lr` is the peak rate: reached after `warmup_steps` (linear from `lr_init`), then a cosine
        to `lr_end` at `decay_steps` (model/lr_schedule.py). `rms_scaled`: each tensor's rate is `lr`
        x its RMS, as the reference's ScaledAdam scales its updates (not for LoRA: its B factors
        start at zero). `accumulate`: batches whose gradients are summed into one optimiser step (the
        reference steps once per 4); the schedule counts optimiser steps."""
        self.device = torch.device(device)
        self.precision = precision
        self.gpt = gpt.to(self.device).train()
        self.grad_clip = grad_clip
        self.accumulate, self.pending = accumulate, 0
        self.params = [p for p in self.gpt.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("GPT has no trainable parameters")
        groups = rms_scaled_groups(self.params, lr) if rms_scaled else [{"params": self.params, "lr": lr}]
        self.optim = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, functools.partial(
            warmup_cosine, warmup_steps=warmup_steps, decay_steps=decay_steps, init_ratio=lr_init / lr, end_ratio=lr_end / lr))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and precision == "fp16")

    def step(self, batch: GPTBatch) -> dict[str, float]:
        b = batch.to(self.device)
        with _autocast(self.device, self.precision):
            logits, loss = self.gpt(b.phones, b.phone_lengths, b.bert, b.semantic, b.semantic_lengths)
        self.scaler.scale(loss / self.accumulate).backward()
        self.pending += 1
        if self.pending == self.accumulate:
            self._apply()
        with torch.no_grad():
            keep = torch.arange(logits.shape[1], device=self.device)[None] <= b.semantic_lengths[:, None]
            target = F.pad(b.semantic, (0, 1), value=self.gpt.cfg.eos)
            target = torch.where(torch.arange(target.shape[1], device=self.device)[None] < b.semantic_lengths[:, None],
                                 target, self.gpt.cfg.eos)
            acc = (logits.argmax(-1) == target)[keep].float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc)}

    def _apply(self) -> None:
        """One optimiser step on the gradients of the batches since the last one."""
        self.scaler.unscale_(self.optim)
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optim)
        self.scaler.update()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        self.pending = 0

    def end_epoch(self) -> None:
        if self.pending:  # an epoch's last batches step too: a checkpoint never holds half-summed gradients
            self._apply()

    def state_dict(self) -> dict:
        return {"gpt": trainable_state(self.gpt), "optim": self.optim.state_dict(), "sched": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        load_trainable_state(self.gpt, state["gpt"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state["scaler"])


def slice_frames(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-row window x[i, :, starts[i]:starts[i]+size], zero-padded past the end."""
    if x.shape[-1] < int(starts.max()) + size:
        x = F.pad(x, (0, int(starts.max()) + size - x.shape[-1]))
    return torch.stack([x[i, :, int(s): int(s) + size] for i, s in enumerate(starts)])
