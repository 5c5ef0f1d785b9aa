"""Training checkpoints in the object store: one per training, replaced after every epoch.

    voices/<voice_id>/runs/<training key>/train/state.pt

holds a `finetune` TrainingState (trainable weights, optimisers, schedulers, grad scaler, RNG
states, epoch, per-epoch log), written with `torch.save` and read back with `weights_only=True`
(no arbitrary unpickling). The store makes each write atomic (tasks/store/storage.py), so a worker killed
mid-write leaves the previous epoch's state, never a torn file. Any worker that can reach the
store resumes the training, and so does a later flow run: the training key is derived from what is
trained (tasks/enroll/prepare.py, `training_key`), not from the flow run.
"""
from __future__ import annotations

import io

import torch

from voicefleet.tasks.store.storage import Store


class CorruptCheckpoint(ValueError):
    """A saved training state that cannot be read back (the message names its key)."""


def state_key(run_prefix: str) -> str:
    return f"{run_prefix}/train/state.pt"


class StoreCheckpointer:
    """`finetune`'s Checkpointer over a Store key; `saved_bytes` is the size of the last write."""

    def __init__(self, store: Store, run_prefix: str):
        self.store, self.key = store, state_key(run_prefix)
        self.saved_bytes = 0

    def load(self) -> dict | None:
        if not self.store.exists(self.key):
            return None
        data = self.store.read_bytes(self.key)
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — unreadable state: say which, never guess
            raise CorruptCheckpoint(f"training state {self.store.url(self.key)} ({len(data)} bytes) cannot be read: "
                                    f"{str(e).splitlines()[0]}") from e

    def save(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.store.write_bytes(self.key, buf.getvalue())
        self.saved_bytes = buf.tell()

    def clear(self) -> None:
        """Drop the state once the run's result is stored (it is only needed to resume)."""
        if self.store.exists(self.key):
            self.store.delete(self.key)
