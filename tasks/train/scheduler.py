"""Scheduling training units on Ray: a pool of long-lived trainer actors, one voice at a time each.

    voices (queue) --> VoiceTrainer actors ("voice-trainer-<i>", each `Resources` of CPU / GPU
                       fractions) --> results as they finish
                       ^ a worker that died: its voice goes back to the front of the queue and
                         resumes from its last epoch checkpoint on whichever actor is free next

- Every actor keeps the base model it read from the store (tasks/voices/base_store.py), so the base is
  read once per worker process, not once per voice.
- The pool has as many actors as the cluster fits (or `workers`), never more than voices; a new
  voice starts on an actor as soon as it is free (bounded in-flight `ray.wait`), so no worker
  idles while voices are queued.
- Names for the Ray dashboard: actors `voice-trainer-<i>`, each call `train:<voice id>`, and the
  actor's repr names the voice it trains (Ray prefixes its log lines with it).
- Retries are bounded: a voice whose worker died `max_attempts` times is failed with that reason.
  Failures of the voice itself (NaN loss, out of memory, bad data) are not retried: the unit
  returns them as a failed result. Actors restart after a crash (`max_restarts=-1`) and go on
  with other voices.
- A unit that hit a CUDA error (`SpeakerResult.device_fault`: a device-side assert poisons the
  process's CUDA context) fails its voice, and its actor is replaced, never reused: killed, restarted
  as a fresh process, and handed the next voice only once a process other than the poisoned one
  answers. The voice is not retried here (a data fault would poison the next trainer too); the next
  enrollment run tries it again.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import deque
from typing import Callable

import ray

from voicefleet.tasks.cluster.runtime import Resources
from voicefleet.tasks.enroll.prepare import SpeakerResult
from voicefleet.tasks.voices.base_store import BaseRef, base_reads

from .unit import TrainHook, train_unit

MAX_RESTART_PINGS = 600  # x RESTART_PING_S: how long to wait for a crashed actor to come back
RESTART_PING_S = 0.5


class VoiceTrainer:
    """A Ray actor that trains voices one after another on its share of a worker."""

    def __init__(self, store_uri: str, resources: Resources):
        import torch

        torch.set_num_threads(max(1, int(resources.num_cpus)))
        self.store_uri, self.device = store_uri, resources.device
        self.current = "idle"

    def train(self, prepared: SpeakerResult, base: BaseRef, recipe: dict, gate: dict | None,
              hook: TrainHook | None = None) -> SpeakerResult:
        self.current = prepared.speaker_id
        try:
            out = train_unit(self.store_uri, prepared, base, recipe, gate, self.device, hook)
        finally:
            self.current = "idle"
        return out.model_copy(update={"metrics": {**out.metrics, "trained_on": self.where(),
                                                  "base_reads_in_worker": base_reads()}})

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id()[:12], "pid": os.getpid(), "actor": ctx.get_actor_name()}

    def __repr__(self) -> str:
        return f"VoiceTrainer({self.current})"


def pool_size(resources: Resources, voices: int, workers: int | None = None) -> int:
    """Actors to start: `workers`, or as many as the cluster's CPUs / GPUs fit; at most one per voice."""
    if workers is None:
        total = ray.cluster_resources()
        fits = [int(total.get("CPU", 1) // resources.num_cpus) if resources.num_cpus > 0 else voices]
        if resources.num_gpus > 0:
            fits.append(int(total.get("GPU", 0) // resources.num_gpus))
        workers = max(1, min(fits))
    return max(1, min(workers, voices))


def train_voices(store_uri: str, prepared: list[SpeakerResult], base: BaseRef, recipe: dict, gate: dict | None,
                 resources: Resources, workers: int | None = None, max_attempts: int = 3,
                 on_done: Callable[[SpeakerResult], None] | None = None,
                 hook: TrainHook | None = None) -> list[SpeakerResult]:
    """Train every prepared voice on a pool of VoiceTrainer actors; results in finishing order."""
    if not prepared:
        return []
    run = uuid.uuid4().hex[:6]
    actor_cls = ray.remote(VoiceTrainer)
    actors = [actor_cls.options(name=f"voice-trainer-{i}-{run}", max_restarts=-1, max_task_retries=0,
                                **resources.options()).remote(store_uri, resources)
              for i in range(pool_size(resources, len(prepared), workers))]
    queue, idle = deque(prepared), list(actors)
    attempts: dict[str, int] = {}
    errors: dict[str, list[str]] = {}
    in_flight: dict = {}  # train call -> (actor, voice)
    recovering: dict = {}  # ping of a restarting actor -> (actor, pings so far, pid it must not answer from)
    results: list[SpeakerResult] = []
    try:
        while queue or in_flight:
            while queue and idle:
                actor, p = idle.pop(), queue.popleft()
                attempts[p.speaker_id] = attempts.get(p.speaker_id, 0) + 1
                ref = actor.train.options(name=f"train:{p.speaker_id}").remote(p, base, recipe, gate, hook)
                in_flight[ref] = (actor, p)
            if not in_flight and not recovering:
                break
            [done], _ = ray.wait([*in_flight, *recovering], num_returns=1)
            if done in recovering:
                actor, pings, stale_pid = recovering.pop(done)
                try:
                    fresh = ray.get(done)["pid"] != stale_pid
                except ray.exceptions.RayActorError:
                    fresh = False
                if fresh:
                    idle.append(actor)  # restarted: it takes the next voice
                elif pings < MAX_RESTART_PINGS:
                    time.sleep(RESTART_PING_S)
                    recovering[actor.where.remote()] = (actor, pings + 1, stale_pid)
                continue
            actor, p = in_flight.pop(done)
            try:
                res = ray.get(done)
                if res.device_fault:  # its CUDA context is unusable: a fresh process, not this one, goes on
                    ray.kill(actor, no_restart=False)
                    recovering[actor.where.remote()] = (actor, 0, res.metrics.get("trained_on", {}).get("pid"))
                else:
                    idle.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.OutOfMemoryError) as e:
                recovering[actor.where.remote()] = (actor, 0, None)  # back in the pool once it answers again
                errors.setdefault(p.speaker_id, []).append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
                if attempts[p.speaker_id] < max_attempts:
                    queue.appendleft(p)  # resumes from its last checkpoint
                    continue
                res = p.model_copy(update={"status": "failed", "reasons": [
                    f"training worker died {attempts[p.speaker_id]} times (max {max_attempts}); last: "
                    f"{errors[p.speaker_id][-1]}"]})
            except ray.exceptions.RayTaskError as e:  # a bug outside the unit's own error handling
                idle.append(actor)
                res = p.model_copy(update={"status": "failed", "reasons": [f"training task error: {str(e)[:500]}"]})
            if attempts[p.speaker_id] > 1:
                res = res.model_copy(update={"metrics": {**res.metrics, "attempts": attempts[p.speaker_id],
                                                         "worker_errors": errors.get(p.speaker_id, [])}})
            results.append(res)
            if on_done:
                on_done(res)
        for p in queue:  # every actor stayed unreachable after its restart
            results.append(p.model_copy(update={"status": "failed", "reasons": [
                "no training worker could be reached (every actor failed to restart)"]}))
    finally:
        for a in actors:
            ray.kill(a)
    return results
