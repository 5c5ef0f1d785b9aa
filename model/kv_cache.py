"""The GPT's key/value cache: per-layer buffers that grow in chunks as tokens are added.

Used by `Text2SemanticDecoder.prefill`/`forward` (model/gpt.py) and by the decode engine's
admission step (model/engine.py), which packs each row's prefilled keys and values into its slot.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers (B, H, capacity, D) that grow in chunks as tokens are added."""

    def __init__(self, n_layer: int, chunk: int = 256):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0  # filled positions, the same for every layer after a full forward
        self.chunk = chunk

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        buf_k, buf_v = self.k[layer], self.v[layer]
        if buf_k is None or buf_k.shape[2] < end:
            cap = end + self.chunk
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if buf_k is not None:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = new_k, new_v
            self.k[layer], self.v[layer] = buf_k, buf_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def keep(self, rows: torch.Tensor) -> None:
        """Drop batch rows that finished decoding."""
        self.k = [None if t is None else t[rows] for t in self.k]
        self.v = [None if t is None else t[rows] for t in self.v]
