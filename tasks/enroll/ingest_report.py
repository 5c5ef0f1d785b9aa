"""The enrollment report: one row per speaker folder, and the memory of rejected uploads.

Rows (Parquet at `reports/enroll/<run_id>.parquet`, the flow's table artifact, the CLI table):
`speaker` (voice id), `display_name` (the folder's name), `status`, `version`, `minutes` of clean
speech, `utterances`, `reasons` / `warnings` (every one, as lists in Parquet), `files_decoded`
(work this run did for the speaker: 0 for an upload seen before).

A rejected upload is remembered by its fingerprint (tasks/enroll/upload_fingerprint.py) under
`ingest/rejections/<voice_id>.json`, so rerunning a batch does not decode it again; any change to
its files, the base model, the recipe or the QC config makes a new fingerprint and a new look.
"""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.tasks.store.storage import Store

REPORT_SCHEMA = pa.schema([
    ("speaker", pa.string()), ("display_name", pa.string()), ("status", pa.string()), ("version", pa.int64()),
    ("minutes", pa.float64()), ("seconds", pa.float64()), ("utterances", pa.int64()),
    ("reasons", pa.list_(pa.string())), ("warnings", pa.list_(pa.string())), ("files_decoded", pa.int64()),
])


def _rejection_key(voice_id: str) -> str:
    return f"ingest/rejections/{voice_id}.json"


def remember_rejection(store: Store, voice_id: str, fingerprint: str, reasons: list[str]) -> None:
    store.write_json(_rejection_key(voice_id), {"fingerprint": fingerprint, "reasons": reasons})


def cached_rejection(store: Store, voice_id: str, fingerprint: str) -> list[str] | None:
    """The reasons an identical upload was rejected for, or None."""
    key = _rejection_key(voice_id)
    if not store.exists(key):
        return None
    rec = store.read_json(key)
    return list(rec["reasons"]) if rec.get("fingerprint") == fingerprint else None


def report_row(r) -> dict:
    """A SpeakerResult (tasks/enroll/prepare.py) -> one report row (REPORT_SCHEMA)."""
    return {"speaker": r.speaker_id, "display_name": r.display_name or r.speaker_id, "status": r.status,
            "version": r.voice_version, "minutes": round(r.seconds / 60, 2), "seconds": r.seconds,
            "utterances": r.utterances, "reasons": list(r.reasons), "warnings": list(r.warnings),
            "files_decoded": r.files_decoded}


def write_report(store: Store, key: str, rows: list[dict]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=REPORT_SCHEMA), buf)
    store.write_bytes(key, buf.getvalue())


def artifact_rows(rows: list[dict]) -> list[dict]:
    """Report rows flattened for a Prefect table artifact (strings, one cell per field)."""
    return [{**r, "reasons": "; ".join(r["reasons"]), "warnings": "; ".join(r["warnings"])} for r in rows]
