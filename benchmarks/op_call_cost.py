#!/usr/bin/env python
"""What an op costs to *call* on this CPU, from Python and from TorchScript: why the decode step is scripted.

Tiny operands (8x8 weights, one row), so the arithmetic is negligible and the time per call is the
cost of entering the op: an add, `F.linear`, and fbgemm's dynamic int8 linear (the kernel of
`model/quantize.py`), each called N times in a Python loop and N times in a TorchScript loop.

    python benchmarks/op_call_cost.py [--calls 20000] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic


def add_loop(x: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        x = x + x
    return x


def linear_loop(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        x = F.linear(x, w, b)
    return x


def int8_loop(x: torch.Tensor, p: torch.classes.quantized.LinearPackedParamsBase, n: int) -> torch.Tensor:
    for _ in range(n):
        x = torch.ops.quantized.linear_dynamic(x, p, True)
    return x


def per_call_us(fn, args, n: int) -> float:
    fn(*args, 10)
    t = time.perf_counter()
    fn(*args, n)
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's and TorchScript's deprecation notices
        lin = torch.nn.Sequential(torch.nn.Linear(8, 8))
        packed = quantize_dynamic(lin, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]
        scripted = [torch.jit.script(f) for f in (add_loop, linear_loop, int8_loop)]
    x = torch.randn(1, 8) * 1e-3
    cases = [("add", add_loop, (x,)), ("F.linear 8x8", linear_loop, (x, lin[0].weight, lin[0].bias)),
             ("int8 linear_dynamic 8x8", int8_loop, (x, packed._packed_params._packed_params))]
    print(f"torch {torch.__version__}, {a.threads} thread(s), {a.calls} calls each")
    print(f"{'op':<26}{'Python us/call':>16}{'TorchScript us/call':>21}{'ratio':>8}")
    with torch.no_grad():
        for (name, fn, args), sfn in zip(cases, scripted):
            py, ts = per_call_us(fn, args, a.calls), per_call_us(sfn, args, a.calls)
            print(f"{name:<26}{py:>16.1f}{ts:>21.1f}{py / ts:>7.1f}x")


if __name__ == "__main__":
    main()
