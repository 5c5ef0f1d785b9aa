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


def embed_many(wavs: list[np.ndarray], sample_rate: int, device: str = "cpu") -> list[np.ndarray | SpeakerEmbeddingError]:
    """`embed` of several clips with one forward pass of the encoder over all their partial windows
    (resemblyzer's own slicing and averaging, per clip); a clip that cannot be embedded gets its
    SpeakerEmbeddingError in its place."""
    import torch
    from resemblyzer import audio as rz_audio
    from resemblyzer import preprocess_wav

    encoder = _encoder(device)
    out: list[np.ndarray | SpeakerEmbeddingError | None] = [None] * len(wavs)
    windows, owners = [], []
    for i, wav in enumerate(wavs):
        clip = preprocess_wav(resample(np.asarray(wav, dtype=np.float32), sample_rate, SPEAKER_RATE),
                              source_sr=SPEAKER_RATE)
        if len(clip) < MIN_SECONDS * SPEAKER_RATE:
            out[i] = SpeakerEmbeddingError(f"only {len(clip) / SPEAKER_RATE:.2f} s of voiced audio; "
                                           f"at least {MIN_SECONDS:g} s is needed")
            continue
        wav_slices, mel_slices = encoder.compute_partial_slices(len(clip), 1.3, 0.75)  # embed_utterance's
        clip = np.pad(clip, (0, max(0, wav_slices[-1].stop - len(clip))))
        mel = rz_audio.wav_to_mel_spectrogram(clip)
        windows += [mel[s] for s in mel_slices]
        owners += [i] * len(mel_slices)
    if windows:
        with torch.no_grad():
            partials = encoder(torch.from_numpy(np.array(windows)).to(encoder.device)).cpu().numpy()
        owners_arr = np.asarray(owners)
        for i in set(owners):
            raw = partials[owners_arr == i].mean(axis=0)
            out[i] = (raw / np.linalg.norm(raw, 2)).astype(np.float32)
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def mean_embedding(embeddings: list[np.ndarray]) -> np.ndarray:
    """The speaker's centroid: mean of clip embeddings, renormalised."""
    m = np.mean(np.stack(embeddings), axis=0)
    return m / (np.linalg.norm(m) + 1e-12)
