"""The work list cut into store parts, the unit a synthesis actor takes whole (voice affinity).

    sorted todo rows (voice, version, length bucket) -> parts of one voice's lines, or of several LoRA
    voices' over one base with the same QC mode (their GPT rows decode in shared batches), at most
    `affinity_chunk(...)` lines each: about four parts per actor, at least one synthesis batch.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.records import decode_group


def affinity_chunk(lines: int, actors: int, batch_size: int, rows_per_part: int) -> int:
    """Lines per work-list part: about four parts per actor (so the last parts balance the actors),
    at least one synthesis batch, at most `rows_per_part`. A voice with fewer lines is one part: a
    script of many small voices loads each voice on one actor, not on every actor."""
    target = -(-max(lines, 1) // (max(actors, 1) * 4))
    return max(1, min(rows_per_part, max(batch_size, target)))


def part_groups(decisions: dict[str, Any]) -> Callable[[str], str]:
    """`decisions`: the plan's VoiceDecision per voice. A todo row's voice key ("id\x01version") -> the group a work-list part may hold several voices
    of: LoRA voices over one base (their lines decode in shared batches, tasks/render/render_actor.py)
    with the same QC mode; any other voice is a group of its own."""
    groups = {}
    for voice_id, d in decisions.items():
        if d.allowed and d.record is not None:
            groups[f"{voice_id}\x01{d.version}"] = f"{decode_group(d.record.files)}\x01{bool(d.record.untrained)}"
    return lambda key: groups.get(key, key)


class VoiceParts:
    """Cuts the sorted work list into store parts of one voice (id and version) each, or of several
    voices of one `group`, `chunk` lines at most."""

    def __init__(self, store: Store, prefix: str, chunk: int, schema: pa.Schema,
                 group: Callable[[str], str] = lambda key: key):
        self.store, self.prefix, self.chunk, self.schema, self.group = store, prefix, chunk, schema, group
        self.keys: list[str] = []
        self.lines = 0
        self._pending: list[pa.Table] = []
        self._rows, self._group = 0, None

    def add(self, table: pa.Table) -> None:
        table = table.cast(self.schema)  # one schema for every part (DuckDB marks columns NOT NULL per file)
        voices = pc.binary_join_element_wise(pc.fill_null(table.column("voice_id"), ""),
                                             pc.fill_null(table.column("voice_version").cast(pa.string()), ""),
                                             "\x01").to_pylist()
        start = 0
        for j in range(1, len(voices) + 1):
            if j == len(voices) or voices[j] != voices[start]:
                self._take(table.slice(start, j - start), voices[start])
                start = j

    def _take(self, run: pa.Table, voice: str) -> None:
        if self.group(voice) != self._group:
            self.flush()
            self._group = self.group(voice)
        while run.num_rows:
            piece = run.slice(0, self.chunk - self._rows)
            self._pending.append(piece)
            self._rows += piece.num_rows
            run = run.slice(piece.num_rows)
            if self._rows == self.chunk:
                self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        buf = io.BytesIO()
        pq.write_table(pa.concat_tables(self._pending), buf)
        key = f"{self.prefix}/todo-{len(self.keys):06d}.parquet"
        self.store.write_bytes(key, buf.getvalue())
        self.keys.append(key)
        self.lines += self._rows
        self._pending, self._rows = [], 0
