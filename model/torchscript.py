"""The CPU decode path's functions compiled with TorchScript, once per process.

At batch 1 on a CPU an op costs about as much to call from Python as to compute, and fbgemm's int8
linear ~52 us to enter from Python against ~4 us from TorchScript (`benchmarks/op_call_cost.py`).
On CUDA the same functions run as plain Python: the engine replays them as CUDA graphs, which have
no per-op host cost to save, and TorchScript's profiling executor would re-specialise the code
between warm-up and capture.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch


@functools.cache
def _script(fn: Callable) -> Callable:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice: see above
        return torch.jit.script(fn)


def for_device(fn: Callable, device: torch.device) -> Callable:
    """`fn` scripted on the CPU, `fn` itself elsewhere."""
    return _script(fn) if device.type == "cpu" else fn
