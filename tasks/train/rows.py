"""Training rows for `finetune`, from a voice's stored dataset.

A row is {"text", "language", "phones": list[int], "semantic": list[int] (25 Hz tokens),
"audio": float32 (T,) at 32 kHz, "bert": (1024, len(phones)) float32}. (Rows spoken by a demo TTS
voice, for tests and benchmarks, are flows/demo/training_rows.py's: production never imports a TTS
engine.)
"""
from __future__ import annotations

from voicefleet.tasks.enroll.features import read_dataset


def dataset_rows(parquet: bytes, frontend) -> list[dict]:
    """Rows of a stored dataset.parquet (tasks/enroll/features.py) with BERT features recomputed."""
    rows = read_dataset(parquet)
    for r in rows:
        r["bert"] = frontend.features(r["text"], r["language"]).bert
    return rows
