"""The one schema of a render index row, and the shapes derived from it.

An index row describes one script line of a job (design.md, "Render output"). Three groups of
columns, filled by three parties:

- the renderer (tasks/render/pipeline.py): identity, status, settings and synthesis facts;
- the shard writer (tasks/render/shards.py): where the FLAC bytes are and what they are (WRITER_FIELDS);
- quality control and post-processing (tasks/render/line_qc.py, tasks/render/postprocess.py): loudness, WER,
  speaker similarity, QC verdict, per-attempt log, duration target.

`RESULT_SCHEMA` is what the synthesis actor hands to the shard writer: every caller column plus the
FLAC bytes. `SUMMARY_SCHEMA` is what the writer hands back to the driver (no audio, no text).
Parts written before a column existed read as nulls in it (`read_index` passes this schema).
"""
from __future__ import annotations

import pyarrow as pa

STATUSES = ("ok", "failed", "refused")

INDEX_SCHEMA = pa.schema([
    pa.field("line_id", pa.string(), nullable=False),
    pa.field("voice_id", pa.string()),
    pa.field("voice_version", pa.string()),
    pa.field("status", pa.string(), nullable=False),   # "ok" | "failed" | "refused"
    pa.field("error", pa.string()),                     # why a line failed or was refused
    pa.field("shard", pa.string()),                     # "shards/<name>.tar", relative to the job
    pa.field("offset", pa.int64()),                     # first byte of the FLAC data in the tar
    pa.field("size", pa.int64()),                       # FLAC byte count
    pa.field("sample_rate", pa.int32()),
    pa.field("num_samples", pa.int64()),
    pa.field("duration_s", pa.float64()),
    pa.field("sha256", pa.string()),                    # of the FLAC bytes
    pa.field("text", pa.string()),
    pa.field("language", pa.string()),
    # quality, filled by whoever measured it; null when not measured or not ok
    pa.field("peak_dbfs", pa.float64()),
    pa.field("rms_dbfs", pa.float64()),
    pa.field("loudness_lufs", pa.float64()),
    pa.field("rtf", pa.float64()),
    pa.field("attempts", pa.int32()),                   # synthesis calls that included this line
    # -- added by issue 13 ---------------------------------------------------------------------
    pa.field("run", pa.int32()),                        # job run that wrote the row; the latest wins
    pa.field("seed", pa.int64()),                       # seed of the attempt whose audio is kept
    pa.field("truncated", pa.bool_()),                  # a sentence hit the runaway-length guard
    pa.field("target_seconds", pa.float64()),           # from the script (dubbing)
    pa.field("duration_deviation_s", pa.float64()),     # duration_s - target_seconds
    pa.field("true_peak_dbtp", pa.float64()),
    pa.field("wer", pa.float64()),
    pa.field("asr_text", pa.string()),
    pa.field("speaker_similarity", pa.float64()),
    pa.field("qc_passed", pa.bool_()),
    pa.field("qc_reasons", pa.string()),                # "; "-joined reasons a line failed QC
    pa.field("attempt_log", pa.string()),               # JSON list, one object per attempt
    # -- added by issue 21 ---------------------------------------------------------------------
    pa.field("line_hash", pa.string()),                 # what made the row (tasks/render/plan.py); a
                                                        # resume re-renders a line whose hash changed
])

# Columns the writer derives from the FLAC bytes and where it put them; callers never set these.
WRITER_FIELDS = frozenset({"shard", "offset", "size", "sample_rate", "num_samples", "duration_s", "sha256"})
CALLER_FIELDS = frozenset(INDEX_SCHEMA.names) - WRITER_FIELDS

RESULT_SCHEMA = pa.schema([f for f in INDEX_SCHEMA if f.name in CALLER_FIELDS] + [pa.field("flac", pa.binary())])
SUMMARY_SCHEMA = pa.schema([INDEX_SCHEMA.field(c) for c in ("line_id", "voice_id", "status", "error", "duration_s",
                                                              "truncated", "attempts")])


def index_fields(*names: str) -> pa.Schema:
    """A sub-schema of INDEX_SCHEMA, in the order given."""
    return pa.schema([INDEX_SCHEMA.field(n) for n in names])
