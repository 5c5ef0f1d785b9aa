"""Training rows spoken by a demo TTS voice, for tests and benchmarks that fine-tune without an upload.

A row has the shape of tasks/train/rows.py's (`dataset_rows`): {"text", "language", "phones",
"semantic" (25 Hz tokens), "audio" float32 (T,) at 32 kHz, "bert"}.
"""
from __future__ import annotations

import numpy as np

from voicefleet.tasks.enroll.features import semantic_tokens
from voicefleet.tasks.enroll.ingest import SR
from voicefleet.tasks.measure.audio import resample
from voicefleet.tasks.voices.base_model import BaseModel

from .voices import DEMO_VOICES, load_engine


def demo_rows(voice_key: str, sentences: list[str], base: BaseModel, frontend) -> list[dict]:
    """Rows spoken in English by one of the demo's pip-shipped voices (flows/demo/voices.py)."""
    import torch

    voice = next(v for v in DEMO_VOICES if v.key == voice_key)
    engine = load_engine(voice.engine)
    rows = []
    for text in sentences:
        wav = np.asarray(engine.speak(voice, text, None, "en", 1.0), dtype=np.float32)
        audio = resample(wav, engine.sample_rate, SR).astype(np.float32)
        audio = audio / max(1.0, float(np.abs(audio).max()) / 0.95)
        feats = frontend.features(text, "en")
        with torch.no_grad():
            sem = semantic_tokens(base, audio)
        rows.append({"text": text, "language": "en", "phones": feats.ids.tolist(), "semantic": sem.tolist(),
                     "audio": audio, "bert": feats.bert, "file": f"{voice_key}-{len(rows)}"})
    return rows
