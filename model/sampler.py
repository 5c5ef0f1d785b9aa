"""Sampling for the GPT's semantic tokens, entirely on the device.

Every row of a batch carries its own knobs (top-k, top-p, temperature, repetition penalty, EOS
floor, length limit) as tensors, so rows with different settings share one decode step, and the
random draw needs no generator object: a counter-based hash of (line seed, token index, vocab
index) gives each row its own reproducible stream. A line therefore samples the same tokens alone
or inside any batch, on any device, and a CUDA graph can replay the step (no host round trip, no
RNG state outside the graph).

Order per step, as the reference does it: EOS masked below the floor, repetition penalty on every
token seen (prompt and generated), top-p, temperature, top-k, then one draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .torchscript import for_device

# 0xFFFFFFFF below: a 32-bit mask, written out because TorchScript cannot read module globals


@dataclass
class SamplingParams:
    top_k: int = 15  # <= 0: no top-k cut
    top_p: float = 1.0
    temperature: float = 1.0  # 0: greedy
    repetition_penalty: float = 1.35
    min_new_tokens: int = 11  # EOS is masked for the first 11 steps (0.44 s), as the reference does
    max_new_tokens: int = 1350  # hard cap per line: 54 s at 25 Hz
    max_tokens_per_phone: float | None = 6.0  # runaway guard: ~3x the typical 2 tokens (80 ms) per phone


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def counter_uniform(seed: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, vocab) float32 uniforms in (0, 1), a pure function of (seed[b], counter[b], v)."""
    s = seed.long()
    key = _mix32((s & 0xFFFFFFFF) ^ _mix32(((s >> 32) & 0xFFFFFFFF) ^ _mix32(counter.long() & 0xFFFFFFFF)))
    v = torch.arange(vocab, device=seed.device, dtype=torch.long)
    h = _mix32((key[:, None] ^ _mix32(v * 0x9E3779B1 & 0xFFFFFFFF)[None]) & 0xFFFFFFFF)
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


@dataclass
class RowParams:
    """Per-row sampling knobs as (B,) tensors on the decode device."""

    top_k: torch.Tensor  # long; values <= 0 mean "no cut"
    top_p: torch.Tensor  # float32
    temperature: torch.Tensor  # float32
    penalty: torch.Tensor  # float32
    min_new: torch.Tensor  # long
    seed: torch.Tensor  # long

    @classmethod
    def build(cls, params: list[SamplingParams], seeds: list[int], device) -> "RowParams":
        def t(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)
        return cls(top_k=t([p.top_k for p in params], torch.long),
                   top_p=t([p.top_p for p in params], torch.float32),
                   temperature=t([p.temperature for p in params], torch.float32),
                   penalty=t([p.repetition_penalty for p in params], torch.float32),
                   min_new=t([p.min_new_tokens for p in params], torch.long),
                   seed=t([int(s) % (1 << 63) for s in seeds], torch.long))

    def fields(self) -> tuple[str, ...]:
        return ("top_k", "top_p", "temperature", "penalty", "min_new", "seed")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Scale down the logits of tokens already seen (prompt or generated): once per token."""
    pen = penalty.to(logits.dtype)[:, None]
    scaled = torch.where(logits < 0, logits * pen, logits / pen)
    return torch.where(seen, scaled, logits)


def sample(logits: torch.Tensor, seen: torch.Tensor, rp: RowParams, count: torch.Tensor, eos: int,
           use_top_p: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row. logits (B, V) any float dtype; seen (B, V) bool; count (B,) long = tokens
    this row has generated so far (the EOS floor and the random counter). Returns (token, greedy),
    both (B,) long, where greedy is the argmax after the penalty (the reference stops on it too).

    `use_top_p=False` skips the top-p sort (a static choice, so a CUDA graph holds one variant).
    On the CPU this runs as TorchScript (~25 small ops, each cheaper to call from there; see
    model/torchscript.py); on CUDA as plain Python, captured in the engine's graphs.
    """
    return for_device(sample_rows, logits.device)(logits, seen, rp.top_k, rp.top_p, rp.temperature, rp.penalty,
                                                  rp.min_new, rp.seed, count, eos, use_top_p)


def sample_rows(logits: torch.Tensor, seen: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                temperature: torch.Tensor, penalty: torch.Tensor, min_new: torch.Tensor, seed: torch.Tensor,
                count: torch.Tensor, eos: int, use_top_p: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """`sample` with the row knobs as tensors (what TorchScript can take)."""
    logits = logits.float()
    V = logits.shape[-1]
    is_eos = torch.arange(V, device=logits.device)[None] == eos  # (no one_hot: it syncs on CUDA)
    logits = logits.masked_fill(is_eos & (count < min_new)[:, None], float("-inf"))
    logits = apply_repetition_penalty(logits, seen, penalty)
    greedy = logits.argmax(-1)
    if use_top_p:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cum > top_p[:, None]
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    logits = logits / temperature.clamp(min=1e-5)[:, None]
    k = torch.where(top_k > 0, top_k.clamp(max=V), torch.full_like(top_k, V))
    ordered = torch.sort(logits, dim=-1, descending=True)[0]
    kth = ordered.gather(1, (k - 1)[:, None])
    logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # exponential race: argmax(p / q), q ~ Exp(1), is a draw from p; q from the row's own counter stream
    q = -torch.log(counter_uniform(seed, count, V))
    tok = (probs / q).argmax(-1)
    greedy_rows = temperature <= 0  # temperature 0 means greedy decoding
    return torch.where(greedy_rows, greedy, tok), greedy

