"""Training rows for `finetune`, from a voice's stored dataset, checked before any step runs.

A row is {"text", "language", "phones": list[int], "semantic": list[int] (25 Hz tokens),
"audio": float32 (T,) at 32 kHz, "bert": (1024, len(phones)) float32}. (Rows spoken by a demo TTS
voice, for tests and benchmarks, are flows/demo/training_rows.py's: production never imports a TTS
engine.)

`check_rows` refuses what would index past an embedding table: on a CPU that is an IndexError in
the voice's own unit, on CUDA a device-side assert that leaves the whole trainer process unusable
(tasks/train/scheduler.py replaces such a trainer, but the voice is better refused up front).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.tasks.enroll.features import read_dataset

LENGTH_SLACK = 0.1  # semantic tokens vs audio: HuBERT's edges and the 2:1 projection lose a token or two


class BadTrainingData(ValueError):
    """A dataset row (or the reference prompt) that the models cannot take; the message names the row."""


def dataset_rows(parquet: bytes, frontend) -> list[dict]:
    """Rows of a stored dataset.parquet (tasks/enroll/features.py) with BERT features recomputed."""
    rows = read_dataset(parquet)
    for r in rows:
        r["bert"] = frontend.features(r["text"], r["language"]).bert
    return rows


def check_rows(rows: list[dict], gpt: GPTConfig, sovits: SoVITSConfig, prompt_tokens: Sequence[int] = ()) -> None:
    """Raise `BadTrainingData` for the first row whose ids or lengths the models cannot take.

    Phone ids must index both phone embeddings, semantic tokens the codebook (and never be the GPT's
    EOS); a row needs phones, tokens and finite audio, about one token per 1/25 s of audio, and a
    BERT matrix of the GPT's width with one column per phone.
    """
    phones_n = min(gpt.phoneme_vocab_size, sovits.n_symbols)
    tokens_n = min(sovits.codebook_size, gpt.eos)
    per_token = sovits.sampling_rate / gpt.hz
    if not rows:
        raise BadTrainingData("the dataset has no rows")
    _ids_in_range(np.asarray(prompt_tokens, dtype=np.int64), tokens_n, "reference prompt", "semantic token",
                  "the codebook")
    for i, r in enumerate(rows):
        where = f"row {i} ({r.get('file') or r.get('text', '')[:40]!r})"
        phones = np.asarray(r["phones"], dtype=np.int64)
        semantic = np.asarray(r["semantic"], dtype=np.int64)
        audio = np.asarray(r["audio"])
        if phones.size == 0 or semantic.size == 0 or audio.size == 0:
            raise BadTrainingData(f"{where}: {phones.size} phones, {semantic.size} semantic tokens, "
                                  f"{audio.size} samples (each needs at least one)")
        _ids_in_range(phones, phones_n, where, "phone id", "the phone embeddings")
        _ids_in_range(semantic, tokens_n, where, "semantic token", "the codebook")
        if not np.isfinite(audio).all():
            raise BadTrainingData(f"{where}: the audio has {int((~np.isfinite(audio)).sum())} NaN or infinite samples")
        expected = audio.size / per_token
        if abs(semantic.size - expected) > max(2.0, LENGTH_SLACK * expected):
            raise BadTrainingData(f"{where}: {semantic.size} semantic tokens for {audio.size / sovits.sampling_rate:.2f} s"
                                  f" of audio; {gpt.hz} Hz gives about {expected:.0f} (tokens of another clip?)")
        bert = r.get("bert")
        if bert is not None and tuple(bert.shape) != (gpt.bert_dim, phones.size):
            raise BadTrainingData(f"{where}: BERT features of shape {tuple(bert.shape)} for {phones.size} phones; the "
                                  f"GPT takes ({gpt.bert_dim}, phones) (the text frontend changed since the dataset "
                                  "was made?)")


def _ids_in_range(ids: np.ndarray, n: int, where: str, what: str, table: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = int(ids.max()) if ids.max() >= n else int(ids.min())
        raise BadTrainingData(f"{where}: {what} {bad} is out of range: {table} indexes 0..{n - 1}")
