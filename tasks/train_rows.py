"""Training rows for `finetune`: from a voice's stored dataset, or spoken by a demo TTS voice.

A row is {"text", "language", "phones": list[int], "semantic": list[int] (25 Hz tokens),
"audio": float32 (T,) at 32 kHz, "bert": (1024, len(phones)) float32}.
"""
from __future__ import annotations

import numpy as np

from .audio import resample
from .base_model import BaseModel
from .features import read_dataset, semantic_tokens
from .ingest import SR


def dataset_rows(parquet: bytes, frontend) -> list[dict]:
    """Rows of a stored dataset.parquet (tasks/features.py) with BERT features recomputed."""
    rows = read_dataset(parquet)
    for r in rows:
        r["bert"] = frontend.features(r["text"], r["language"]).bert
    return rows


def demo_rows(voice_key: str, sentences: list[str], base: BaseModel, frontend) -> list[dict]:
    """Rows spoken in English by one of tasks/demo_data.py's pip-shipped voices (tests, benchmarks)."""
    import torch

    from .demo_data import DEMO_VOICES, _engine

    voice = next(v for v in DEMO_VOICES if v.key == voice_key)
    engine = _engine(voice.engine)
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
