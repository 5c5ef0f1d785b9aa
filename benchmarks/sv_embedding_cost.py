#!/usr/bin/env python
"""What a v2Pro / v2ProPlus enrollment adds per utterance: the speaker embedding (32 kHz clip -> 16 kHz ->
Kaldi fbank -> ERes2NetV2 w24s4ep4, official size, random weights: the cost does not depend on them), set
against the HuBERT features every enrollment already computes for the same clip (chinese-hubert-base's
size). Prints seconds per clip for each, their ratio, and the sv model's parameters.

    python benchmarks/sv_embedding_cost.py [--seconds 5] [--threads 1] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, the resampler's kernel)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    from transformers import HubertConfig, HubertModel

    from voicefleet.model.ssl import SSLExtractor
    from voicefleet.model.sv import ERes2NetV2, SpeakerEncoder, resample_to_16k

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    wav32 = (0.1 * torch.randn(1, int(32000 * a.seconds))).to(dev)
    sv = SpeakerEncoder(ERes2NetV2().eval().to(dev))
    hubert = SSLExtractor(HubertModel(HubertConfig()).to(dev))  # HubertConfig() is the base size: 768 x 12
    wav16 = resample_to_16k(wav32)
    sv_s = timed(lambda: sv(wav32, 32000), a.repeats)
    hubert_s = timed(lambda: hubert(wav16), a.repeats)
    params = sum(p.numel() for p in sv.net.parameters()) / 1e6
    print(f"clip {a.seconds:g} s, device {a.device}, {a.threads} thread(s), median of {a.repeats}")
    print(f"sv embedding (ERes2NetV2 w24s4ep4, {params:.1f} M params): {sv_s:.3f} s per clip")
    print(f"HuBERT features (base size, already computed by every enrollment): {hubert_s:.3f} s per clip")
    print(f"sv / HuBERT: {sv_s / hubert_s:.2f}x")


if __name__ == "__main__":
    main()
