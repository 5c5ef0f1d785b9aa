"""VITS building blocks used by SoVITS: channel LayerNorm, WaveNet (WN) stack, HiFi-GAN residual
blocks, the mean-only affine coupling layer, and the mel-style reference encoder.

Shapes are (B, C, T) with a float mask (B, 1, T) unless noted. Weight-normed convolutions use
`torch.nn.utils.weight_norm`, whose parameters are the official checkpoints' `weight_g`/`weight_v`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import weight_norm

LRELU_SLOPE = 0.1


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def init_weights(m: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    if "Conv" in m.__class__.__name__:
        m.weight.data.normal_(mean, std)


def sequence_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B, T) bool, True inside each sequence."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


def gated_tanh(x: torch.Tensor, n: int) -> torch.Tensor:
    """WaveNet gate: tanh of the first n channels times sigmoid of the rest."""
    return torch.tanh(x[:, :n]) * torch.sigmoid(x[:, n:])


class LayerNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T) tensor (parameters `gamma`, `beta`)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (x.shape[1],), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class WN(nn.Module):
    """Non-causal WaveNet: dilated gated convs with residual and skip paths, optional global cond."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0):
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1))
        for i in range(n_layers):
            d = dilation_rate**i
            self.in_layers.append(weight_norm(
                nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=d, padding=get_padding(kernel_size, d))))
            out = 2 * hidden if i < n_layers - 1 else hidden  # the last layer has no residual output
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden, out, 1)))

    def forward(self, x, x_mask, g=None):
        out = torch.zeros_like(x)
        if g is not None:
            g = self.cond_layer(g)
        for i in range(self.n_layers):
            h = self.in_layers[i](x)
            if g is not None:
                h = h + g[:, i * 2 * self.hidden: (i + 1) * 2 * self.hidden]
            acts = self.drop(gated_tanh(h, self.hidden))
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, : self.hidden]) * x_mask
                out = out + rs[:, self.hidden:]
            else:
                out = out + rs
        return out * x_mask


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type 1: pairs of (dilated conv, conv), each pair residual."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation=(1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size)))
            for _ in dilation)
        self.convs1.apply(init_weights)
        self.convs2.apply(init_weights)

    def forward(self, x, x_mask=None):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            xt = F.leaky_relu(c1(xt), LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = c2(xt) + x
        return x if x_mask is None else x * x_mask


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2: single dilated convs, each residual."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation=(1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation)
        self.convs.apply(init_weights)

    def forward(self, x, x_mask=None):
        for c in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = c(xt) + x
        return x if x_mask is None else x * x_mask


class Flip(nn.Module):
    def forward(self, x, *args, reverse: bool = False, **kwargs):
        x = torch.flip(x, [1])
        return x if reverse else (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half of channels shifted by a WN of the first half."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = WN(hidden, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden, self.half, 1)
        self.post.weight.data.zero_()
        self.post.bias.data.zero_()

    def forward(self, x, x_mask, g=None, reverse: bool = False):
        x0, x1 = x[:, : self.half], x[:, self.half:]
        h = self.enc(self.pre(x0) * x_mask, x_mask, g=g)
        m = self.post(h) * x_mask
        if not reverse:
            return torch.cat([x0, m + x1 * x_mask], 1), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.cat([x0, (x1 - m) * x_mask], 1)


# ---------------------------------------------------------------- reference (style) encoder
class LinearNorm(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias)

    def forward(self, x):
        return self.fc(x)


class Mish(nn.Module):
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


class ConvNorm(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x):
        return self.conv(x)


class Conv1dGLU(nn.Module):
    """Conv -> gated linear unit, with a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dropout: float):
        super().__init__()
        self.out_ch = out_ch
        self.conv1 = ConvNorm(in_ch, 2 * out_ch, kernel_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        a, b = self.conv1(x).split(self.out_ch, dim=1)
        return x + self.dropout(a * torch.sigmoid(b))


class StyleAttention(nn.Module):
    """Multi-head self-attention of the style encoder (scores scaled by sqrt(d_model))."""

    def __init__(self, n_head: int, d_model: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.temperature = d_model**0.5

    def forward(self, x, pad=None):
        # x (B, T, C); pad (B, T) bool, True on padding
        B, T, C = x.shape
        q, k, v = (w(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for w in (self.w_qs, self.w_ks, self.w_vs))
        scores = q @ k.transpose(-1, -2) / self.temperature
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        y = self.dropout(torch.softmax(scores, dim=-1)) @ v
        return self.dropout(self.fc(y.transpose(1, 2).reshape(B, T, C))) + x


class MelStyleEncoder(nn.Module):
    """Spectrogram frames -> one style vector (B, out_dim, 1) by masked temporal average pooling."""

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 256, kernel_size: int = 5,
                 n_head: int = 2, dropout: float = 0.1):
        super().__init__()
        self.spectral = nn.Sequential(
            LinearNorm(in_dim, hidden), Mish(), nn.Dropout(dropout),
            LinearNorm(hidden, hidden), Mish(), nn.Dropout(dropout))
        self.temporal = nn.Sequential(
            Conv1dGLU(hidden, hidden, kernel_size, dropout), Conv1dGLU(hidden, hidden, kernel_size, dropout))
        self.slf_attn = StyleAttention(n_head, hidden, dropout)
        self.fc = LinearNorm(hidden, out_dim)

    def forward(self, x, mask=None):
        # x (B, in_dim, T); mask (B, 1, T) float, 1 on frames
        x = x.transpose(1, 2)
        pad = None if mask is None else mask[:, 0] == 0
        x = self.spectral(x)
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0)
        x = self.fc(self.slf_attn(x, pad))
        if pad is None:
            return x.mean(dim=1)[..., None]
        n = (~pad).sum(dim=1, keepdim=True)
        x = x.masked_fill(pad[..., None], 0)
        return (x / n[:, None]).sum(dim=1)[..., None]
