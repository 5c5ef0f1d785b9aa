"""Speaker-verification embedding of GPT-SoVITS v2Pro / v2ProPlus: Kaldi fbank + ERes2NetV2.

The SoVITS v2Pro models condition on a 20480-wide speaker embedding of the reference clip:

    32 kHz clip -> 16 kHz (windowed-sinc resampler) -> 80-bin Kaldi fbank (dither 0)
      -> ERes2NetV2 (baseWidth 24, scale 4, expansion 4) up to the stage-3/4 fusion
      -> mean over time of the (2048 channels x 10 frequencies) map.

`ERes2NetV2` mirrors the official module layout so that the official state dict
(`sv/pretrained_eres2netv2w24s4ep4.ckpt`, a bare state dict) loads strictly: attribute names are its
key prefixes. The pooling head (`seg_1`) exists only because the file carries it; the embedding
used by SoVITS never reaches it. Loading lives in `checkpoint.load_sv`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torchaudio.compliance import kaldi

SV_SAMPLE_RATE = 16000
SV_EMB_DIM = 20480  # 2048 channels x 10 frequency rows


def resample_to_16k(wav: torch.Tensor, sr: int = 32000) -> torch.Tensor:
    """(B, N) at `sr` -> (B, N') at 16 kHz with torchaudio's default windowed-sinc resampler (as the
    official inference and dataset preparation do)."""
    if sr == SV_SAMPLE_RATE:
        return wav
    return _resampler(sr, wav.device.type)(wav)


@functools.lru_cache(maxsize=4)
def _resampler(sr: int, device: str) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(sr, SV_SAMPLE_RATE).to(device)


def fbank(wav16: torch.Tensor) -> torch.Tensor:
    """(B, N) 16 kHz waveform in [-1, 1] -> (B, T, 80) log-mel fbank, T = 1 + (N - 400) // 160.

    torchaudio's Kaldi-compatible fbank is the very code the reference ships (eres2net/kaldi.py):
    25 ms Povey frames every 10 ms, mean removed, pre-emphasis 0.97, 512-point power spectrum,
    80 mel triangles 20 Hz..8 kHz, log floored at float epsilon, no dither.
    """
    if wav16.dim() == 1:
        wav16 = wav16.unsqueeze(0)
    return torch.stack([kaldi.fbank(w.unsqueeze(0), num_mel_bins=80, sample_frequency=SV_SAMPLE_RATE, dither=0.0)
                        for w in wav16])


def _act(x: torch.Tensor) -> torch.Tensor:
    """The blocks' activation: ReLU capped at 20 (a Hardtanh(0, 20))."""
    return torch.clamp(x, 0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion: x*a + y*(2 - a), a = 1 + tanh(attention over [x; y])."""

    def __init__(self, channels: int, r: int = 4):
        super().__init__()
        inner = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels * 2, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * a + y * (2.0 - a)


class Block(nn.Module):
    """ERes2NetV2 bottleneck: split into `scale` groups, hierarchical 3x3 convs, with the previous
    group's output added (stages 1-2) or AFF-fused (stages 3-4) into the next group's input."""

    def __init__(self, in_planes: int, planes: int, stride: int, base_width: int, scale: int, expansion: int,
                 fuse: bool):
        super().__init__()
        width = planes * base_width // 64
        self.width = width
        self.conv1 = nn.Conv2d(in_planes, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(width, r=4) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, planes * expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        if stride != 1 or in_planes != planes * expansion:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes * expansion, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes * expansion))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(_act(self.bn1(self.conv1(x))), self.width, dim=1)
        outs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i == 0:
                h = groups[0]
            elif hasattr(self, "fuse_models"):
                h = self.fuse_models[i - 1](h, groups[i])
            else:
                h = h + groups[i]
            h = _act(bn(conv(h)))
            outs.append(h)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return _act(out + self.shortcut(x))


class ERes2NetV2(nn.Module):
    """ERes2NetV2 speaker encoder; defaults are the v2Pro sv model (w24 s4 e4, 53.6 M params)."""

    def __init__(self, num_blocks: tuple[int, ...] = (3, 4, 6, 3), m_channels: int = 64, feat_dim: int = 80,
                 embedding_size: int = 192, base_width: int = 24, scale: int = 4, expansion: int = 4):
        super().__init__()
        self.feat_dim = feat_dim
        self.conv1 = nn.Conv2d(1, m_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_planes = m_channels
        for i, n in enumerate(num_blocks):
            planes = m_channels * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Block(in_planes, planes, 2 if (i > 0 and j == 0) else 1, base_width, scale, expansion,
                                    fuse=i >= 2))
                in_planes = planes * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        c3, c4 = m_channels * 4 * expansion, m_channels * 8 * expansion
        self.layer3_ds = nn.Conv2d(c3, c4, 3, stride=2, padding=1, bias=False)
        self.fuse34 = AFF(c4, r=4)
        stats_dim = (feat_dim // 8) * m_channels * 8 * expansion
        self.seg_1 = nn.Linear(stats_dim * 2, embedding_size)  # TSTP head: unused by `embed`

    @classmethod
    def tiny(cls) -> ERes2NetV2:
        """Same architecture, one block per stage and 8 stem channels: a 1280-wide embedding."""
        return cls(num_blocks=(1, 1, 1, 1), m_channels=8, expansion=2)

    @property
    def embedding_dim(self) -> int:
        return self.fuse34.local_att[4].num_features * (self.feat_dim // 8)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """fbank (B, T, feat_dim) -> (B, 2048 * feat_dim / 8): the fused stage-3/4 map averaged over time,
        flattened channel-major (index = channel * 10 + frequency). The official `forward3`."""
        x = F.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))
        x = self.layer2(self.layer1(x))
        out3 = self.layer3(x)
        fused = self.fuse34(self.layer4(out3), self.layer3_ds(out3))
        return fused.flatten(1, 2).mean(-1)

    forward = embed


class SpeakerEncoder(nn.Module):
    """Waveform -> v2Pro speaker embedding: resampling, fbank and ERes2NetV2 together."""

    def __init__(self, net: ERes2NetV2 | None = None):
        super().__init__()
        self.net = net if net is not None else ERes2NetV2()

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, sr: int = 32000) -> torch.Tensor:
        """wav (B, N) or (N,) at `sr` (official inputs: the 32 kHz reference clip) -> (B, 20480)."""
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        p = next(self.net.parameters())
        feats = fbank(resample_to_16k(wav.float().to(p.device), sr))
        return self.net.embed(feats.to(p.dtype)).float()
