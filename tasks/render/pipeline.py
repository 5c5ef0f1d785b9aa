"""Bulk rendering on Ray Data: this run's work list -> synthesis actor pool -> shards + Parquet index.

    todo parts (tasks/render/plan.py: checked lines sorted by voice and length bucket, Parquet; each
                part one voice's lines, sized so that each actor gets about four parts)
      -> SynthesizeLines actor pool (tasks/render/render_actor.py): an actor takes a part whole
                         (voice affinity: a voice is loaded by few actors, ~voices loads in all
                         rather than voices x actors), keeps `voice_cache` loaded voices, renders
                         `batch_size` lines per call of the model's batched GPT + SoVITS, checks and
                         encodes a batch on its finishing thread while it synthesises the next, and
                         yields each batch as it is done; a failing batch is split down to single
                         lines (tasks/render/fault_isolation.py); part reads, voice loads and shard
                         writes are retried with backoff when transient
      -> write_shard_batch  one WebDataset shard + its index part per batch of finished lines,
                         named after its content, so a retried write replaces itself
      -> the driver iterates the small summary rows for progress and counts

Rows follow the one index schema (tasks/render/index_schema.py). A line whose sentence hit the runaway-
length guard stays `ok` (its audio exists) with `truncated` true, `qc_passed` false and the reason
in `qc_reasons`, so quality control can retry it and reports can show it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from voicefleet.tasks.safety.fingerprint import index_rendered
from voicefleet.tasks.store.storage import Store

from .fault_isolation import with_backoff
from .index_schema import SUMMARY_SCHEMA
from .job_fence import check_fence
from .job_lease import JobLease, JobLeaseLost
from .plan import VoiceDecision
from .render_actor import SynthesizeLines, mark_line  # noqa: F401 — mark_line: tests/test_watermark.py imports it here
from .settings import RenderSettings
from .shards import content_name, write_shard


# ---------------------------------------------------------------- shards
def write_shard_batch(batch: pa.Table, store_uri: str, job_id: str, retries: int = 3, backoff_s: float = 0.5,
                      generation: int | None = None) -> pa.Table:
    """One shard + index part per batch, named after its content; returns summary rows (no audio).

    `generation`: the run's job lease generation (its fencing token). The part is named with it, and
    the fence is checked in the store right before the part is written: a run that lost its lease
    stops here with `JobLeaseLost` within one batch (tasks/render/job_fence.py).
    """
    rows = batch.to_pylist()
    if not rows:
        return SUMMARY_SCHEMA.empty_table()
    items = [(r, r.pop("flac")) for r in rows]
    store = Store(store_uri)
    name = content_name(items)
    fence = None if generation is None else (lambda: check_fence(store, job_id, generation))
    try:
        # voice safety: fingerprints before the index part
        with_backoff(lambda: index_rendered(store, job_id, name, items), retries, backoff_s)
        written = with_backoff(lambda: write_shard(store, job_id, name, items, replace=True, generation=generation,
                                                   fence=fence), retries, backoff_s)
    except JobLeaseLost:
        raise  # this run must stop: another run owns the job now
    except Exception as e:  # noqa: BLE001 — the store failed past its retries: the lines stay unrendered
        error = f"not written: {type(e).__name__}: {str(e).strip()[:300]} (a rerun renders these lines)"
        return pa.Table.from_pylist([{"line_id": r["line_id"], "voice_id": r.get("voice_id"), "status": "unwritten",
                                      "error": error} for r, _ in items], schema=SUMMARY_SCHEMA)
    return pa.Table.from_pylist([{c: w[c] for c in SUMMARY_SCHEMA.names} for w in written], schema=SUMMARY_SCHEMA)


# ---------------------------------------------------------------- the run
@dataclass
class RenderCounts:
    ok: int = 0
    failed: int = 0
    refused: int = 0
    truncated: int = 0
    skipped: int = 0  # already finished in an earlier run
    unwritten: int = 0  # rendered, but its shard could not be written: no row, a rerun renders it
    audio_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (line_id, error) of failed lines, first few
    refusals: list[tuple[str, str]] = field(default_factory=list)  # (line_id, reason) of refused lines, first few

    def add(self, r: dict) -> None:
        """Count one summary row (SUMMARY_SCHEMA; status "unwritten" for a shard write that failed)."""
        setattr(self, r["status"], getattr(self, r["status"]) + 1)
        if r["status"] == "ok":
            self.audio_s += r["duration_s"] or 0.0
            self.truncated += bool(r["truncated"])
            return
        listed = {"refused": self.refusals}.get(r["status"], self.failures)
        if len(listed) < 20:
            listed.append((r["line_id"], r["error"]))


def render_lines(store: Store, job_id: str, todo_keys: list[str], voices: dict[str, VoiceDecision],
                 settings: RenderSettings, run: int, bert_dir: str | None = None, skipped: int = 0,
                 on_progress: Callable[[RenderCounts], None] | None = None, lease: JobLease | None = None) -> RenderCounts:
    """Run the Ray Data pipeline over this run's todo parts; returns the counts of this run.

    `lease`: the job lease this run holds. Its generation fences every index part the workers write,
    and the loop stops with `JobLeaseLost` at the first batch after the lease is lost.
    """
    counts = RenderCounts(skipped=skipped)
    if lease is not None:
        lease.check()
    if not todo_keys:
        return counts
    # The unit of work is a todo part: one voice's lines (plan.write_todo, voice affinity). An actor takes
    # a part whole and reads it itself, so a voice is loaded by few actors (Ray Data's Parquet reader
    # would merge small parts into one block); it yields each synthesis batch as it is done, so finished
    # lines flow on to the shard writer (progress, little work lost to a crash) within a part
    ds = ray.data.from_items([{"part": k} for k in todo_keys], override_num_blocks=len(todo_keys))
    ds = ds.map_batches(SynthesizeLines, batch_format="pyarrow", batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=settings.actors),
                        fn_constructor_kwargs={"store_uri": store.uri, "settings": settings, "voices": voices,
                                               "run": run, "bert_dir": bert_dir},
                        **settings.resources.options())
    ds = ds.map_batches(write_shard_batch, batch_format="pyarrow", batch_size=settings.lines_per_shard,
                        fn_kwargs={"store_uri": store.uri, "job_id": job_id, "retries": settings.retries,
                                   "backoff_s": settings.backoff_s,
                                   "generation": None if lease is None else lease.generation}, num_cpus=0.1)
    return count_batches(_batches_or_placement_error(ds, settings), counts, lease, on_progress)


def count_batches(batches: Iterable[pa.Table], counts: RenderCounts, lease: JobLease | None = None,
                  on_progress: Callable[[RenderCounts], None] | None = None) -> RenderCounts:
    """The driver loop: add each output batch's summary rows to `counts`; raise `JobLeaseLost` at the
    first batch after `lease` is lost (leaving the loop closes the pipeline)."""
    for batch in batches:
        for r in batch.to_pylist():
            counts.add(r)
        if on_progress:
            on_progress(counts)
        if lease is not None:
            lease.check()
    return counts


class ActorsNotPlaced(RuntimeError):
    """The synthesis actors did not start within `actor_start_timeout_s` (resources taken, or a node lost)."""


def _batches_or_placement_error(ds, settings: RenderSettings):
    """`ds`'s output batches; actors that cannot start in time end the run with the reason, not a hang."""
    ctx = ray.data.DataContext.get_current()
    ctx.wait_for_min_actors_s = settings.actor_start_timeout_s
    try:
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)
    except Exception as e:  # only the start-up timeout is translated
        if "Timed out while starting actors" not in f"{e} {e.__cause__}":
            raise
        free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        raise ActorsNotPlaced(
            f"the {settings.actors} synthesis actor(s) ({settings.resources.num_cpus:g} CPU, "
            f"{settings.resources.num_gpus:g} GPU each) did not start within {settings.actor_start_timeout_s} s; "
            f"the cluster has {free} free now: other work holds the resources, or a node went away") from e
