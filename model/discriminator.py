"""HiFi-GAN multi-period + scale discriminator used to fine-tune SoVITS (not part of a voice file).

Widths follow the reference (16..1024 channels); `channels_div` shrinks every width for tiny
configs. Each sub-discriminator returns (score, feature maps) for the adversarial and
feature-matching losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import weight_norm

from .modules import LRELU_SLOPE, get_padding


def run_stack(convs, conv_post, x):
    """Convs with leaky ReLU, then the output conv: (flattened scores, every feature map)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


def _w(c: int, div: int) -> int:
    return max(c // div, 1)


class DiscriminatorP(nn.Module):
    """Reshapes the waveform to (T / period, period) and applies 2-D convs along time."""

    def __init__(self, period: int, div: int = 1, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        chans = [1, _w(32, div), _w(128, div), _w(512, div), _w(1024, div), _w(1024, div)]
        pad = (get_padding(kernel_size, 1), 0)
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (stride if i < 4 else 1, 1), padding=pad))
            for i in range(5))
        self.conv_post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x):
        b, c, t = x.shape
        if t % self.period:
            n = self.period - t % self.period
            x = F.pad(x, (0, n), "reflect")
            t += n
        return run_stack(self.convs, self.conv_post, x.view(b, c, t // self.period, self.period))


class DiscriminatorS(nn.Module):
    """Grouped strided 1-D convs over the raw waveform."""

    def __init__(self, div: int = 1):
        super().__init__()
        spec = [(1, 16, 15, 1, 1, 7), (16, 64, 41, 4, 4, 20), (64, 256, 41, 4, 16, 20),
                (256, 1024, 41, 4, 64, 20), (1024, 1024, 41, 4, 256, 20), (1024, 1024, 5, 1, 1, 2)]
        layers = []
        for cin, cout, k, s, g, p in spec:
            cin2, cout2 = (1 if cin == 1 else _w(cin, div)), _w(cout, div)
            g2 = max(1, min(g, cin2, cout2))
            while cin2 % g2 or cout2 % g2:
                g2 -= 1
            layers.append(weight_norm(nn.Conv1d(cin2, cout2, k, s, groups=g2, padding=p)))
        self.convs = nn.ModuleList(layers)
        self.conv_post = weight_norm(nn.Conv1d(_w(1024, div), 1, 3, 1, padding=1))

    def forward(self, x):
        return run_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, div: int = 1, periods=(2, 3, 5, 7, 11)):
        super().__init__()
        self.discriminators = nn.ModuleList([DiscriminatorS(div)] + [DiscriminatorP(p, div) for p in periods])

    def forward(self, y, y_hat):
        real, fake, fmap_r, fmap_g = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            real.append(r)
            fake.append(g)
            fmap_r.append(fr)
            fmap_g.append(fg)
        return real, fake, fmap_r, fmap_g
