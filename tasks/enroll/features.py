"""Features of a voice's training set: phones, 25 Hz semantic tokens, audio — one Parquet file.

Semantic tokens come from the base model's SSL extractor + SoVITS `ssl_proj` and codebook, exactly
as inference prompts are made; spectrograms and BERT features are cheap to recompute from the
audio and text, so the dataset stores only what needs the SSL model. The reference clip's own
tokens (the GPT prompt) are computed here too. Each training clip is first brought to the
reference's level (`normalise_level`); the reference clip keeps its own.
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.model.synthesizer import prompt_tokens
from voicefleet.tasks.measure.audio import encode_flac, load_audio, resample
from voicefleet.tasks.voices.base_model import BaseModel

from .ingest import SR, SpeakerUpload

DATASET_SCHEMA = pa.schema([
    ("file", pa.string()), ("text", pa.string()), ("language", pa.string()),
    ("phones", pa.list_(pa.int32())), ("semantic", pa.list_(pa.int32())),
    ("duration_s", pa.float64()), ("audio_flac", pa.binary()),
])


# The reference's level rule for training clips (prepare_datasets/2-get-hubert-wav32k.py): half the
# clip scaled to a 0.95 peak, half as it is, so quiet clips come up and loud ones keep their dynamics.
TARGET_PEAK = 0.95
PEAK_MIX = 0.5


def normalise_level(audio: np.ndarray, peak: float = TARGET_PEAK, mix: float = PEAK_MIX) -> np.ndarray:
    """`mix` x the clip scaled to `peak` + (1 - `mix`) x the clip; a silent clip is returned as is."""
    top = float(np.abs(audio).max()) if len(audio) else 0.0
    if top == 0.0:
        return audio
    if top > 1.0:  # as the reference's slicer: a clip over full scale is brought to it first
        audio, top = audio / top, 1.0
    return (audio * (mix * peak / top + (1.0 - mix))).astype(np.float32)


class FeatureError(ValueError):
    """An utterance whose text or audio gives no usable features."""


def semantic_tokens(base: BaseModel, audio_32k: np.ndarray) -> np.ndarray:
    import torch

    wav16 = torch.as_tensor(resample(audio_32k, SR, 16000), dtype=torch.float32)[None]
    with torch.no_grad():
        return base.sovits.extract_latent(base.ssl(wav16))[0, 0].numpy().astype(np.int32)


def build_dataset(upload: SpeakerUpload, base: BaseModel, frontend) -> tuple[bytes, list[str]]:
    """-> (Parquet bytes of DATASET_SCHEMA, problems with utterances that were left out)."""
    rows, problems = [], []
    for u in upload.utterances:
        try:
            ids = frontend.phonemize(u.text, u.language).ids
        except ValueError as e:  # EmptyText, UnsupportedLanguage
            problems.append(f"{u.file}: {e}")
            continue
        audio = normalise_level(u.audio)
        rows.append({"file": u.file, "text": u.text, "language": u.language, "phones": list(ids),
                     "semantic": semantic_tokens(base, audio).tolist(), "duration_s": u.seconds,
                     "audio_flac": encode_flac(audio, SR)})
    if not rows:
        raise FeatureError(f"{upload.speaker_id}: no utterance gave features ({'; '.join(problems)})")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=DATASET_SCHEMA), buf)
    return buf.getvalue(), problems


def read_dataset(data: bytes) -> list[dict]:
    """Parquet bytes -> rows with `audio` (float32, 32 kHz) decoded from FLAC."""
    rows = pq.read_table(io.BytesIO(data)).to_pylist()
    for r in rows:
        r["audio"] = load_audio(r.pop("audio_flac"), SR, name=r["file"])
    return rows


def reference_prompt(upload: SpeakerUpload, base: BaseModel) -> np.ndarray:
    return prompt_tokens(base.ssl, base.sovits, resample(upload.reference.audio, SR, 16000))
