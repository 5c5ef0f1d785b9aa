"""Speaker embeddings and similarity: one speaker model for every stage that compares voices.

Used by enrollment (more than one speaker in an upload, consent clip by the enrolled speaker),
fine-tune evaluation and render QC (similarity of a rendered line to the voice's reference clip).
The model is resemblyzer's GE2E encoder (256-d, L2-normalised), whose weights ship in its wheel.
Cosine similarity of two embeddings: ~0.95 for the same voice; distinct voices measured 0.71–0.91
on TTS voices (design.md), so thresholds are calibrated per use on real data.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .audio import resample

SPEAKER_RATE = 16000
MIN_SECONDS = 0.5  # shorter clips give no stable embedding


class SpeakerEmbeddingError(ValueError):
    """A clip is too short or silent to embed."""


@lru_cache(maxsize=2)
def _encoder(device: str):
    from resemblyzer import VoiceEncoder

    return VoiceEncoder(device=device, verbose=False)


def embed(wav: np.ndarray, sample_rate: int, device: str = "cpu") -> np.ndarray:
    """(256,) unit-norm embedding of one clip (T,) float32 mono at `sample_rate`."""
    from resemblyzer import preprocess_wav

    audio = resample(np.asarray(wav, dtype=np.float32), sample_rate, SPEAKER_RATE)
    audio = preprocess_wav(audio, source_sr=SPEAKER_RATE)  # level normalisation + silence trim
    if len(audio) < MIN_SECONDS * SPEAKER_RATE:
        raise SpeakerEmbeddingError(
            f"only {len(audio) / SPEAKER_RATE:.2f} s of voiced audio; at least {MIN_SECONDS:g} s is needed")
    return np.asarray(_encoder(device).embed_utterance(audio), dtype=np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def mean_embedding(embeddings: list[np.ndarray]) -> np.ndarray:
    """The speaker's centroid: mean of clip embeddings, renormalised."""
    m = np.mean(np.stack(embeddings), axis=0)
    return m / (np.linalg.norm(m) + 1e-12)
