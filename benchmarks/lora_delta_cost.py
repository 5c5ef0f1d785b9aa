"""What a per-row LoRA delta costs over the adapted linear: added after, or accumulated in place.

Each row of a mixed batch adds its own voice's delta (x @ A) @ B to the base linear's output
(model/multi_lora.py). Written as `y + bmm(bmm(x, A), B)`, the (n, T, out) delta is written and
read back before the sum is written: three passes over an output that a prefill makes large.
`add_lora_delta` accumulates into y instead (`baddbmm_`): one pass. Times, process CPU seconds,
of v2's FFN linears (512 -> 2048, 2048 -> 512) at a prefill's shape (64 rows x 200 positions) and a
decode step's (64 rows x 1), rank 8, each as a ratio to the base linear alone.

Measured on the shared 2-core EPYC, 1 thread, load 5.9 (other engineers' jobs; the ratios are
from the same run): prefill 512 -> 2048: base 203 ms, separate delta 1.51x, in place 1.09x;
2048 -> 512: 1.32x, 1.10x. A decode step's 64 x 1 rows: 1.36x / 1.25x and 1.53x / 1.39x (there
the cost is reading 64 rows' factors, as large as the base weight at rank 8: memory, not passes).

    python benchmarks/lora_delta_cost.py
    python benchmarks/lora_delta_cost.py --threads 2 --rows 64 --positions 200
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from voicefleet.model.multi_lora import add_lora_delta


def seconds(fn, reps: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--positions", type=int, default=200, help="a prefill's positions per row")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    for T in (a.positions, 1):
        for fin, fout in ((512, 2048), (2048, 512)):
            x = torch.randn(a.rows, T, fin, generator=g)
            w, bias = torch.randn(fout, fin, generator=g) * 0.02, torch.randn(fout, generator=g)
            A = torch.randn(a.rows, fin, a.rank, generator=g) * 0.02
            B = torch.randn(a.rows, a.rank, fout, generator=g) * 0.02

            def separate():
                return F.linear(x, w, bias) + torch.bmm(torch.bmm(x, A), B)

            def in_place():
                return add_lora_delta(F.linear(x, w, bias), x, A, B)

            torch.testing.assert_close(in_place(), separate(), rtol=1e-5, atol=1e-5)
            base = seconds(lambda: F.linear(x, w, bias), a.reps)
            sep, inp = seconds(separate, a.reps), seconds(in_place, a.reps)
            print(f"{a.rows} x {T:3d} rows, {fin:4d} -> {fout:4d}: base {base * 1e3:7.2f} ms, "
                  f"separate delta {sep / base:.2f}x, in place {inp / base:.2f}x")


if __name__ == "__main__":
    main()
