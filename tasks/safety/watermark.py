"""The inaudible mark on every rendered line, and its detector (presence only).

The mark is resemble-perth's neural watermark (`PerthImplicitWatermarker`, weights in the wheel):
an encoder reshapes the magnitude spectrum below 2 kHz at 32 kHz, the rate voicefleet renders at,
so no resampling is needed on the way in. Its decoder scores a whole clip in [0, 1]; we score
overlapping windows (`WINDOW_S`, hop `HOP_S`) and call the mark present when the best window
reaches `THRESHOLD`, so a marked line spliced into longer audio, or trimmed, is still found.

The mark carries no payload: which job / voice version / line a marked file came from is found by
its fingerprint in the store's indexes (tasks/safety/fingerprint.py). Measured robustness, false positives
and quality: benchmarks/watermark_robustness.py (pip TTS voices), benchmarks/watermark_real_speech.py
(human speech, espeak-ng/flite) and the README.

Shapes: audio is (T,) float32 mono in [-1, 1] at `sample_rate`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from voicefleet.tasks.measure.audio import resample

__all__ = ["MARK_RATE", "THRESHOLD", "Presence", "SyntheticAudio", "detect", "mark", "refuse_marked", "window_scores"]

MARK_RATE = 32000  # perth's model rate
WINDOW_S = 2.0
HOP_S = 1.0
MIN_SECONDS = 0.5  # shorter audio is returned unmarked (nothing perceptible to protect)
# Measured per 2 s window (benchmarks/watermark_real_speech.py, watermark_robustness.py): clean human
# speech <= 0.27 (a phone call at -12 dB; a studio voice < 1e-4), clean third-party TTS <= 0.22;
# marked human speech >= 0.99 in every speech window after each tested transformation.
THRESHOLD = 0.5


@lru_cache(maxsize=1)
def _watermarker():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation inside perth
        import perth

    if perth.PerthImplicitWatermarker is None:
        raise RuntimeError("resemble-perth could not load its model (it needs setuptools<81 for pkg_resources)")
    import torch

    # a render actor that asked Ray for a GPU sees one; the others mark on the CPU
    return perth.PerthImplicitWatermarker(device="cuda" if torch.cuda.is_available() else "cpu")


def mark(audio: np.ndarray, sample_rate: int, **_: object) -> np.ndarray:
    """The audio with the mark applied, same length, rate and dtype; peak kept within [-1, 1]."""
    wav = np.asarray(audio, dtype=np.float32)
    if len(wav) < MIN_SECONDS * sample_rate:
        return wav
    x = resample(wav, sample_rate, MARK_RATE) if sample_rate != MARK_RATE else wav
    out = np.asarray(_watermarker().apply_watermark(x, MARK_RATE), dtype=np.float32)
    if sample_rate != MARK_RATE:
        out = resample(out, MARK_RATE, sample_rate)
    out = np.pad(out, (0, max(0, len(wav) - len(out))))[: len(wav)]
    peak = float(np.abs(out).max(initial=0.0))
    return out / peak * 0.999 if peak > 0.999 else out


def window_scores(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Perth's score per window ((W,) in [0, 1]); one window when the audio is shorter than `WINDOW_S`."""
    x = np.asarray(audio, dtype=np.float32)
    x = resample(x, sample_rate, MARK_RATE) if sample_rate != MARK_RATE else x
    win, hop = int(WINDOW_S * MARK_RATE), int(HOP_S * MARK_RATE)
    starts = range(0, max(1, len(x) - win + hop), hop) if len(x) > win else [0]
    model = _watermarker()
    return np.array([float(model.get_watermark(x[s:s + win], MARK_RATE, round=False)) for s in starts])


@dataclass(frozen=True)
class Presence:
    present: bool
    score: float  # best window
    windows: int
    marked_windows: int


def detect(audio: np.ndarray, sample_rate: int) -> Presence:
    """Is voicefleet's mark in this audio? (best window score >= `THRESHOLD`)."""
    scores = window_scores(audio, sample_rate)
    best = float(scores.max(initial=0.0))
    return Presence(best >= THRESHOLD, best, len(scores), int((scores >= THRESHOLD).sum()))


class SyntheticAudio(ValueError):
    """Enrollment audio carries voicefleet's own mark: a clone of a clone is refused."""


def refuse_marked(files: list[tuple[str, np.ndarray]], sample_rate: int) -> None:
    """Raise `SyntheticAudio` naming every file whose audio carries the mark (with its score)."""
    found = []
    for name, audio in files:
        presence = detect(audio, sample_rate)
        if presence.present:
            found.append(f"{name} (mark score {presence.score:.2f} >= {THRESHOLD:.2f})")
    if found:
        raise SyntheticAudio(f"synthetic voicefleet audio in {', '.join(found)}: voices are enrolled from "
                             "recordings of the person, not from rendered lines")
