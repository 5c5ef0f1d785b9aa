"""What the decode engine takes and gives back: one job per line (sentence), one output per job.

A job's `limit` is its runaway guard (`token_limit`: tokens per phone), and its params'
`max_new_tokens` (54 s at 25 Hz) caps it on every path; `adapter` names the LoRA voice its row
decodes with when the engine binds many (model/multi_lora.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .sampler import SamplingParams


def token_limit(params: SamplingParams, n_phones: int) -> int:
    """A line's most new tokens: `max_new_tokens` (54 s), and `max_tokens_per_phone` x its phones."""
    n = params.max_new_tokens
    if params.max_tokens_per_phone is not None:
        n = min(n, max(params.min_new_tokens + 1, math.ceil(n_phones * params.max_tokens_per_phone)))
    return n


@dataclass
class DecodeJob:
    phones: torch.Tensor  # (Lx,) phone ids
    bert: torch.Tensor  # (bert_dim, Lx)
    prompt: torch.Tensor  # (Ly,) semantic tokens of the reference clip; may be empty
    params: SamplingParams
    seed: int
    limit: int  # most new tokens this line may get (runaway guard); params.max_new_tokens caps it too
    key: Any = None  # the caller's handle, returned with the output
    adapter: Any = None  # id of a LoRA adapter bound with `DecodeEngine.bind_adapters`; None: the base

    def cap(self) -> int:
        if self.params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.params.max_new_tokens}")
        return max(1, min(self.limit, self.params.max_new_tokens))


@dataclass
class DecodeOutput:
    key: Any
    tokens: torch.Tensor  # (n,) long on the CPU: new tokens, no prompt, no EOS
    finished: bool  # True: ended with EOS; False: stopped by its limit
