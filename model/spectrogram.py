"""Linear and mel spectrograms exactly as SoVITS computes them (32 kHz, n_fft 2048, hop 640).

The signal is reflect-padded by (n_fft - hop) / 2 on each side and framed without centring, so
T samples give T // hop frames; magnitude is sqrt(re^2 + im^2 + 1e-8). Mel filters are Slaney-style
(librosa's default), built with torchaudio.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchaudio


@functools.lru_cache(maxsize=8)
def _window(win: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.hann_window(win, dtype=dtype, device=device)


def spectrogram(wav: torch.Tensor, n_fft: int = 2048, hop: int = 640, win: int = 2048) -> torch.Tensor:
    """wav (B, T) in [-1, 1] -> linear magnitude (B, n_fft // 2 + 1, frames)."""
    pad = (n_fft - hop) // 2
    x = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=_window(win, x.dtype, str(x.device)),
                      center=False, normalized=False, onesided=True, return_complex=True)
    return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-8)


@functools.lru_cache(maxsize=8)
def _mel_basis(n_fft: int, n_mels: int, sr: int, fmin: float, fmax: float | None, device: str) -> torch.Tensor:
    fb = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, f_min=fmin, f_max=fmax if fmax is not None else sr / 2, n_mels=n_mels,
        sample_rate=sr, norm="slaney", mel_scale="slaney")
    return fb.t().to(device)  # (n_mels, bins)


def spec_to_mel(spec: torch.Tensor, n_fft: int, n_mels: int, sr: int, fmin: float = 0.0,
                fmax: float | None = None) -> torch.Tensor:
    """Linear magnitude (B, bins, T) -> log mel (B, n_mels, T), log(clamp(x, 1e-5))."""
    mel = _mel_basis(n_fft, n_mels, sr, fmin, fmax, str(spec.device)).to(spec.dtype) @ spec
    return torch.log(torch.clamp(mel, min=1e-5))


def mel_spectrogram(wav: torch.Tensor, n_fft: int, n_mels: int, sr: int, hop: int, win: int,
                    fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    return spec_to_mel(spectrogram(wav, n_fft, hop, win), n_fft, n_mels, sr, fmin, fmax)
