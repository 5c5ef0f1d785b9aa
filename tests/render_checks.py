"""Checks of the render output contract, for any test that produced a render job.

    from render_checks import assert_render_complete
    table = assert_render_complete(store, job_id, script_line_ids)
"""

from __future__ import annotations

import tarfile
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

from voicefleet.tasks.measure.audio import read_audio
from voicefleet.tasks.render.index_read import fetch_audio, read_index
from voicefleet.tasks.render.index_schema import STATUSES
from voicefleet.tasks.render.job_paths import job_prefix
from voicefleet.tasks.render.shards import sha256_hex
from voicefleet.tasks.store.storage import Store


def assert_render_complete(
    store: Store, job_id: str, line_ids: Iterable[str], check_shards: bool = True
) -> pa.Table:
    """Assert the contract for a finished job and return its index.

    - exactly one row per expected line id, and no row for any other line;
    - statuses are known; failed/refused rows carry an error and no shard;
    - every ok row's bytes, fetched by one ranged read, match its size and sha256 and decode
      as FLAC with the recorded sample rate and num_samples;
    - with `check_shards`: each referenced tar, read start to end, holds `<line_id>.flac` then
      `<line_id>.json` for exactly its ok rows, at the recorded offsets.
    """
    expected = list(line_ids)
    table = read_index(store, job_id)
    rows = table.to_pylist()

    counts = Counter(r["line_id"] for r in rows)
    twice = sorted(k for k, n in counts.items() if n > 1)
    assert not twice, f"lines with more than one index row: {twice[:10]}"
    missing = sorted(set(expected) - set(counts))
    assert not missing, f"{len(missing)} lines have no index row: {missing[:10]}"
    extra = sorted(set(counts) - set(expected))
    assert not extra, f"index rows for lines not in the script: {extra[:10]}"

    for row in rows:
        line = row["line_id"]
        assert row["status"] in STATUSES, f"line {line}: unknown status {row['status']!r}"
        if row["status"] != "ok":
            assert row["error"], f"line {line}: status {row['status']} without an error"
            assert row["shard"] is None, f"line {line}: status {row['status']} points at a shard"
            continue
        data = fetch_audio(store, job_id, row)   # checks size and sha256
        assert sha256_hex(data) == row["sha256"]
        audio, sample_rate = read_audio(data, name=f"line {line}")
        assert sample_rate == row["sample_rate"], f"line {line}: {sample_rate} Hz != {row['sample_rate']}"
        assert audio.shape == (row["num_samples"],), (
            f"line {line}: decoded {audio.shape} samples, index says {row['num_samples']}")

    if check_shards:
        _assert_shards_match_index(store, job_id, [r for r in rows if r["status"] == "ok"])
    return table


def _assert_shards_match_index(store: Store, job_id: str, ok_rows: list[dict]) -> None:
    by_shard: dict[str, dict[str, dict]] = {}
    for row in ok_rows:
        by_shard.setdefault(row["shard"], {})[row["line_id"]] = row
    for shard, expected in by_shard.items():
        members: list[tuple[str, int, int]] = []
        with store.open(f"{job_prefix(job_id)}/{shard}") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            members = [(m.name, m.offset_data, m.size) for m in tar]
        names = [name for name, _, _ in members]
        want = [n for line in expected for n in (f"{line}.flac", f"{line}.json")]
        assert sorted(names) == sorted(want), f"{shard}: members {names[:6]}... != index lines"
        for i in range(0, len(names), 2):
            assert names[i].endswith(".flac") and names[i + 1] == names[i][:-5] + ".json", (
                f"{shard}: member {names[i]!r} is not followed by its .json")
        for name, offset, size in members:
            if name.endswith(".flac"):
                row = expected[name[:-5]]
                assert (offset, size) == (row["offset"], row["size"]), (
                    f"{shard}:{name} is at {offset}+{size}, index says {row['offset']}+{row['size']}")
