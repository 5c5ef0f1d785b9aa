"""Voice activity detection: Silero VAD (ONNX, shipped in the `silero-vad` wheel) on onnxruntime.

`speech_probs(wav16k)` gives one speech probability per 32 ms frame (512 samples at 16 kHz);
`speech_segments` turns them into (start, end) sample ranges with Silero's own hysteresis rules
(onset 0.5, offset 0.35, short gaps bridged, short blips dropped). No torch, no hub download: the
model file is read from the installed package.

Shapes: audio in is (T,) float32 mono at 16 kHz; probabilities are (T // 512,) float32; segments
are half-open sample ranges at 16 kHz.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

VAD_RATE = 16000
FRAME = 512  # samples per decision at 16 kHz (32 ms)
_CONTEXT = 64  # samples of the previous frame the model sees


@dataclass(frozen=True)
class VADConfig:
    onset: float = 0.5  # a frame is speech above this probability ...
    offset: float = 0.35  # ... and speech continues until it drops below this
    min_speech_s: float = 0.25  # shorter bursts are not speech
    min_gap_s: float = 0.10  # shorter pauses do not end a segment
    pad_s: float = 0.03  # kept around each segment


@lru_cache(maxsize=1)
def _session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    path = resources.files("silero_vad").joinpath("data/silero_vad.onnx")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def speech_probs(wav16k: np.ndarray) -> np.ndarray:
    """(T,) float32 at 16 kHz -> (T // 512,) speech probability per 32 ms frame."""
    sess = _session()
    x = np.asarray(wav16k, dtype=np.float32)
    n = len(x) // FRAME
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, _CONTEXT), np.float32)
    sr = np.array(VAD_RATE, dtype=np.int64)
    out = np.empty(n, np.float32)
    for i in range(n):
        frame = np.concatenate([context, x[None, i * FRAME:(i + 1) * FRAME]], axis=1)
        prob, state = sess.run(None, {"input": frame, "state": state, "sr": sr})
        out[i] = prob.reshape(-1)[0]
        context = frame[:, -_CONTEXT:]
    return out


def speech_segments(probs: np.ndarray, cfg: VADConfig = VADConfig()) -> list[tuple[int, int]]:
    """Frame probabilities -> [(start, end)] sample ranges at 16 kHz, sorted, non-overlapping."""
    segs: list[list[int]] = []
    start = None
    for i, p in enumerate(probs):
        if start is None and p >= cfg.onset:
            start = i
        elif start is not None and p < cfg.offset:
            segs.append([start, i])
            start = None
    if start is not None:
        segs.append([start, len(probs)])
    gap = int(round(cfg.min_gap_s * VAD_RATE / FRAME))
    merged: list[list[int]] = []
    for s in segs:
        if merged and s[0] - merged[-1][1] <= gap:
            merged[-1][1] = s[1]
        else:
            merged.append(s)
    shortest = cfg.min_speech_s * VAD_RATE / FRAME
    pad = int(cfg.pad_s * VAD_RATE)
    total = len(probs) * FRAME
    return [(max(0, s * FRAME - pad), min(total, e * FRAME + pad)) for s, e in merged if e - s >= shortest]


def speech_mask(segments: list[tuple[int, int]], n_samples: int) -> np.ndarray:
    """(n_samples,) bool: True inside a speech segment."""
    mask = np.zeros(n_samples, bool)
    for s, e in segments:
        mask[s:e] = True
    return mask


def detect(wav16k: np.ndarray, cfg: VADConfig = VADConfig()) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """(T,) at 16 kHz -> (frame probabilities, speech segments, (T,) bool speech mask)."""
    probs = speech_probs(wav16k)
    segments = speech_segments(probs, cfg)
    return probs, segments, speech_mask(segments, len(wav16k))
