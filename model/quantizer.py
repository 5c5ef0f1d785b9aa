"""Residual vector quantizer that turns projected SSL features into 25 Hz semantic tokens.

GPT-SoVITS v2 uses one codebook of 1024 entries over the 768-d `ssl_proj` output. The codebook is
an EMA-updated buffer (`embed`, `embed_avg`, `cluster_size`, `inited`), frozen during v2 fine-tuning;
the EMA update is kept for training from scratch. Codes are laid out (n_q, B, T).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EuclideanCodebook(nn.Module):
    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.decay, self.eps, self.codebook_size = decay, eps, codebook_size
        embed = nn.init.kaiming_uniform_(torch.empty(codebook_size, dim))
        self.register_buffer("inited", torch.tensor([1.0]))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., D) -> nearest code index (...): argmax of the negated squared distance
        flat = x.reshape(-1, x.shape[-1])
        e = self.embed.t()
        neg_dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e + e.pow(2).sum(0, keepdim=True))
        return neg_dist.max(dim=-1).indices.view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        flat, codes = x.reshape(-1, x.shape[-1]), codes.reshape(-1)
        onehot = F.one_hot(codes, self.codebook_size).type(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_avg / size[:, None])


class VectorQuantization(nn.Module):
    def __init__(self, dim: int, codebook_size: int, update: bool = True):
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size)
        self.update = update

    def encode(self, x):  # (B, D, T) -> (B, T)
        return self._codebook.encode(x.transpose(1, 2))

    def decode(self, codes):  # (B, T) -> (B, D, T)
        return self._codebook.decode(codes).transpose(1, 2)

    def forward(self, x):
        codes = self.encode(x)
        q = self.decode(codes)
        loss = x.new_zeros(())
        if self.training:
            if self.update:
                self._codebook.ema_update(x.transpose(1, 2), codes)
            loss = F.mse_loss(q.detach(), x)
            q = x + (q - x).detach()  # straight-through
        return q, codes, loss


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, codebook_size: int, n_q: int):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, codebook_size) for _ in range(n_q))


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dimension: int = 768, n_q: int = 1, bins: int = 1024):
        super().__init__()
        self.vq = ResidualVQ(dimension, bins, n_q)

    def forward(self, x: torch.Tensor):
        """x (B, D, T) -> quantized (B, D, T), codes (n_q, B, T), mean commitment loss."""
        residual, out, codes, losses = x, 0.0, [], []
        for layer in self.vq.layers:
            q, c, loss = layer(residual)
            residual = residual - q
            out = out + q
            codes.append(c)
            losses.append(loss)
        return out, torch.stack(codes), torch.stack(losses).mean()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        residual, codes = x, []
        for layer in self.vq.layers:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n_q, B, T) -> (B, D, T)."""
        return sum(self.vq.layers[i].decode(c) for i, c in enumerate(codes))
