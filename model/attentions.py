"""Attention blocks of SoVITS: the VITS relative-position transformer encoder and MRTE.

All tensors are (B, C, T) with float masks (B, 1, T). `MultiHeadAttention` with a `window_size`
adds learned relative-position embeddings for keys and values (shared across heads), as in VITS;
without one it is plain (cross-)attention, which MRTE uses to let the SSL content attend to text.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .modules import LayerNorm


class MultiHeadAttention(nn.Module):
    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0,
                 window_size: int | None = None):
        super().__init__()
        assert channels % n_heads == 0
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            std = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x, c, attn_mask=None):
        # x: queries (B, C, Tq); c: keys/values (B, C, Tk); attn_mask (B, 1, Tq, Tk), 0 = blocked
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        B, C, Tk = k.shape
        Tq = q.shape[2]
        q = q.view(B, self.n_heads, self.k_channels, Tq).transpose(2, 3) / math.sqrt(self.k_channels)
        k = k.view(B, self.n_heads, self.k_channels, Tk).transpose(2, 3)
        v = v.view(B, self.n_heads, self.k_channels, Tk).transpose(2, 3)
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
        if self.window_size is not None:
            rel_k = self.relative_embeddings(self.emb_rel_k, Tk)
            scores = scores + self.rel_to_abs(q @ rel_k.unsqueeze(0).transpose(-2, -1))
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = self.drop(F.softmax(scores, dim=-1))
        out = p @ v
        if self.window_size is not None:
            rel_v = self.relative_embeddings(self.emb_rel_v, Tk)
            out = out + self.abs_to_rel(p) @ rel_v.unsqueeze(0)
        return self.conv_o(out.transpose(2, 3).reshape(B, C, Tq))

    def relative_embeddings(self, emb: torch.Tensor, length: int) -> torch.Tensor:
        """The 2*length-1 relative offsets -(length-1)..(length-1), zero beyond the window."""
        w = self.window_size
        pad = max(length - (w + 1), 0)
        start = max((w + 1) - length, 0)
        if pad > 0:
            emb = F.pad(emb, (0, 0, pad, pad))
        return emb[:, start: start + 2 * length - 1]

    @staticmethod
    def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, 2L-1) indexed by relative offset -> (B, H, L, L) indexed by key position."""
        B, H, L, _ = x.shape
        x = F.pad(x, (0, 1)).view(B, H, L * 2 * L)
        x = F.pad(x, (0, L - 1)).view(B, H, L + 1, 2 * L - 1)
        return x[:, :, :L, L - 1:]

    @staticmethod
    def abs_to_rel(x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, L) indexed by key position -> (B, H, L, 2L-1) indexed by relative offset."""
        B, H, L, _ = x.shape
        x = F.pad(x, (0, L - 1)).view(B, H, L * L + L * (L - 1))
        x = F.pad(x, (L, 0)).view(B, H, L, 2 * L)
        return x[:, :, :, 1:]


class FFN(nn.Module):
    """Two same-padded convolutions with ReLU, masked."""

    def __init__(self, in_ch: int, out_ch: int, filter_ch: int, kernel_size: int, p_dropout: float = 0.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(in_ch, filter_ch, kernel_size)
        self.conv_2 = nn.Conv1d(filter_ch, out_ch, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def pad(self, x):
        k = self.kernel_size
        return x if k == 1 else F.pad(x, ((k - 1) // 2, k // 2))

    def forward(self, x, x_mask):
        x = self.drop(torch.relu(self.conv_1(self.pad(x * x_mask))))
        return self.conv_2(self.pad(x * x_mask)) * x_mask


class Encoder(nn.Module):
    """Post-norm transformer encoder with windowed relative self-attention and conv FFNs."""

    def __init__(self, hidden: int, filter_ch: int, n_heads: int, n_layers: int, kernel_size: int = 1,
                 p_dropout: float = 0.0, window_size: int = 4):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(hidden, hidden, n_heads, p_dropout, window_size) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FFN(hidden, hidden, filter_ch, kernel_size, p_dropout) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))

    def forward(self, x, x_mask):
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + self.drop(attn(x, x, attn_mask)))
            x = n2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class MRTE(nn.Module):
    """Multi-reference timbre encoder: SSL content cross-attends to text, plus the style vector."""

    def __init__(self, content_channels: int = 192, hidden: int = 512, out_channels: int = 192, n_heads: int = 4):
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden, hidden, n_heads)
        self.c_pre = nn.Conv1d(content_channels, hidden, 1)
        self.text_pre = nn.Conv1d(content_channels, hidden, 1)
        self.c_post = nn.Conv1d(hidden, out_channels, 1)

    def forward(self, ssl_enc, ssl_mask, text, text_mask, ge):
        # ssl_enc (B, C, Ts), text (B, C, Tt), ge (B, hidden, 1)
        attn_mask = text_mask.unsqueeze(2) * ssl_mask.unsqueeze(-1)  # (B, 1, Ts, Tt)
        ssl_enc = self.c_pre(ssl_enc * ssl_mask)
        text_enc = self.text_pre(text * text_mask)
        x = self.cross_attention(ssl_enc * ssl_mask, text_enc * text_mask, attn_mask) + ssl_enc + ge
        return self.c_post(x * ssl_mask)
