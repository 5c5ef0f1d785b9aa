#!/usr/bin/env python
"""voicefleet's GPT-SoVITS v2 inference engine against the reference implementation, side by side.

Both models get the same weights (`../shared/reference/ref_weights.py`, official checkpoint
format, seed 0) and the same workload, in one process: per line 40 phones (BERT features zero),
30 prompt tokens and 100 new tokens, top_k 15. The EOS row of the output layer is zeroed in both
copies (identical edit), so random weights do not end lines early and every line yields ~100
tokens; tokens/s counts the tokens actually produced.

GPT: reference `infer_panel` at batch 1 and `infer_panel_batch_infer` at batch > 1 (and, at batch 1
on CUDA, its CUDA-graph runner `t2s_model_cudagraph.py` in the same precision), against our
`DecodeEngine` (static KV cache, device-side sampling, continuous batching; CUDA graphs on CUDA),
in each requested precision. `--int8` adds our int8-weight GPT (CPU) with its token agreement
against float32: teacher-forced top-1 agreement on the float32 greedy continuation, and the
length of the identical greedy prefix. SoVITS: reference `decode` against ours, batched, same
precision. Peak memory: the CUDA allocator's peak per phase on a GPU, process peak RSS on CPU.

The reference is never a dependency: pass a local checkout (`--reference PATH`, e.g. fetched
RVC-Boss/GPT-SoVITS; it needs `torchmetrics` importable, and its v3-only `f5_tts` import is
stubbed here). Without `--reference` only our figures are printed.

    python benchmarks/vs_reference.py --reference /path/GPT-SoVITS --batches 1,8,32 --int8
    python benchmarks/vs_reference.py --reference /path/GPT-SoVITS --device cuda --batches 1,32,128,256 \\
        --precisions fp32,fp16,bf16
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import importlib.util
import json
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference's decode loops draw progress bars (read at import)

import torch  # noqa: E402

from voicefleet.model.checkpoint import load_gpt, load_sovits  # noqa: E402
from voicefleet.model.engine import DecodeEngine  # noqa: E402
from voicefleet.model.gpt import SamplingParams  # noqa: E402
from voicefleet.model.quantize import quantize_gpt_int8  # noqa: E402
from voicefleet.model.spectrogram import spectrogram  # noqa: E402

SHARED = Path(os.environ.get("VOICEFLEET_REFERENCE_FACTS")  # see tests/reference_case.py
              or Path(__file__).resolve().parents[2] / "shared" / "reference")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ref_weights():
    spec = importlib.util.spec_from_file_location("ref_weights", SHARED / "ref_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def import_reference(path: Path):
    """The reference's GPT and SoVITS classes from a local checkout."""
    root = path / "GPT_SoVITS"
    sys.path.insert(0, str(root))
    if "f5_tts" not in sys.modules:  # imported by the v3 branch of module.models only
        f5 = types.ModuleType("f5_tts")
        f5.model = types.ModuleType("f5_tts.model")
        f5.model.DiT = object
        sys.modules["f5_tts"], sys.modules["f5_tts.model"] = f5, f5.model
    from AR.models.t2s_model import Text2SemanticDecoder as RefGPT
    from module.models import SynthesizerTrn as RefSoVITS
    return RefGPT, RefSoVITS


def ref_cudagraph_fn(path: Path, ckpt: Path, x, y, bert, dt, dev, n: int):
    """The reference's CUDA-graph runner (`AR/models/t2s_model_cudagraph.py`, batch 1, SDPA) on one
    line, same weights with the same EOS edit; returns a callable giving the new token count."""
    import_reference(path)
    from AR.models.structs_cudagraph import T2SRequest
    from AR.models.t2s_model_cudagraph import CUDAGraphRunner

    with contextlib.redirect_stdout(io.StringIO()):
        decoder = CUDAGraphRunner.load_decoder(str(ckpt), max_batch_size=1)
    with torch.no_grad():
        decoder.ar_predict_layer.weight[decoder.EOS] = 0
    runner = CUDAGraphRunner(decoder, dev, dt)
    request = T2SRequest(x=[x[0]], x_lens=torch.tensor([x.shape[1]], device=dev), prompts=y[:1],
                         bert_feature=[bert[0].to(dt)], valid_length=1, top_k=15, early_stop_num=n - 1,
                         use_cuda_graph=dev.type == "cuda")

    def fn():
        quiet = io.StringIO()  # its progress bar and speed lines
        with torch.no_grad(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            result = runner.generate(request)
        if result.status != "Success":
            raise RuntimeError(result.traceback)
        return len(result.result[0])
    return fn


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, dev, repeats: int):
    fn()  # warm-up (and CUDA graph capture)
    best = float("inf")
    out = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        out = fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, out


def inputs(B, dev, phones=40, prompt=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 732, (B, phones), generator=g)
    y = torch.randint(0, 1024, (B, prompt), generator=g)
    return x.to(dev), y.to(dev), torch.zeros(B, 1024, phones, device=dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, help="local checkout of RVC-Boss/GPT-SoVITS")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="also our int8-weight GPT (CPU)")
    ap.add_argument("--no-sovits", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    batches = [int(b) for b in a.batches.split(",")]
    rw = ref_weights()
    tmp = Path(tempfile.mkdtemp())
    for kind, name in (("s1", "gpt.ckpt"), ("s2", "sovits.pth")):
        manifest = json.loads((SHARED / f"gpt_sovits_v2_{kind}_state_dict.json").read_text())
        rw.write_official_checkpoint(manifest, 0, tmp / name)
    ours32 = load_gpt(tmp / "gpt.ckpt").model.float().eval()
    with torch.no_grad():
        ours32.ar_predict_layer.weight[ours32.cfg.eos] = 0  # same edit in both copies: no early EOS
    ref = None
    if a.reference:
        ckpt = torch.load(tmp / "gpt.ckpt", map_location="cpu", weights_only=True)
        RefGPT, _ = import_reference(a.reference)
        ref = RefGPT(ours32.cfg.to_official(), top_k=15)
        ref.load_state_dict({k[len("model."):]: v.float() for k, v in ckpt["weight"].items()})
        with torch.no_grad():
            ref.ar_predict_layer.weight[ref.EOS] = 0
        ref = ref.to(dev).eval()
    n = a.tokens
    params = SamplingParams(top_k=15, min_new_tokens=n, max_new_tokens=n, max_tokens_per_phone=None)
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else f'{a.threads} threads'}), "
          f"torch {torch.__version__}, {n} new tokens/line, best of {a.repeats}")
    print(f"{'GPT':<34}{'batch':>6}{'tok/s':>10}{'ref tok/s':>11}{'ours/ref':>10}{'peak MB':>9}")

    ref_speed: dict[tuple[int, str], float] = {}
    for prec in a.precisions.split(","):
        dt = DTYPES[prec]
        model = ours32 if dt == torch.float32 else copy.deepcopy(ours32).to(dt)
        model = model.to(dev)
        rmodel = None
        if ref is not None:
            rmodel = ref if dt == torch.float32 else copy.deepcopy(ref).to(dt)
        for B in batches:
            x, y, bert = inputs(B, dev)
            engine = DecodeEngine(model, max_batch=B)
            phones, berts, prompts = list(x), [b.to(dt) for b in bert], list(y)

            def ours_fn():
                r = model.generate(phones, berts, prompts, params, list(range(B)), engine=engine)
                return sum(len(t) for t in r.tokens)

            t, toks = timed(ours_fn, dev, a.repeats)
            mem = peak_mb(dev)
            rs = None
            if rmodel is not None:
                def ref_fn():
                    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # its per-call prints
                        if B == 1:
                            _, idx = rmodel.infer_panel(x, torch.tensor([x.shape[1]], device=dev), y, bert.to(dt),
                                                        top_k=15, early_stop_num=n - 1)
                            return int(idx)
                        ys, _ = rmodel.infer_panel_batch_infer(list(x), torch.full((B,), x.shape[1], device=dev), y,
                                                               list(bert.to(dt)), top_k=15, early_stop_num=n - 1)
                        return sum(len(t) - y.shape[1] for t in ys)
                try:
                    rt, rtoks = timed(ref_fn, dev, a.repeats)
                    rs = rtoks / rt
                except Exception as e:  # noqa: BLE001 — print why the reference could not run this case
                    print(f"  reference failed at batch {B} {prec}: {type(e).__name__}: {e}")
            ref_speed[(B, prec)] = rs or 0.0
            ratio = f"{toks / t / rs:.2f}x" if rs else "-"
            print(f"{'ours ' + prec:<34}{B:>6}{toks / t:>10.1f}{(f'{rs:.1f}' if rs else '-'):>11}{ratio:>10}{mem:>9.0f}")
            if a.reference and B == 1 and dev.type == "cuda":  # the runner's own code calls .cuda()
                try:
                    gt, gtoks = timed(ref_cudagraph_fn(a.reference, tmp / "gpt.ckpt", x, y, bert, dt, dev, n), dev,
                                      a.repeats)
                    gs = gtoks / gt
                    print(f"{'  vs ref CUDA-graph runner ' + prec:<34}{B:>6}{toks / t:>10.1f}{gs:>11.1f}"
                          f"{toks / t / gs:>9.2f}x{peak_mb(dev):>9.0f}")
                except Exception as e:  # noqa: BLE001 — print why the reference could not run this case
                    print(f"  reference CUDA-graph runner failed at {prec}: {type(e).__name__}: {e}")

    if a.int8:
        q = quantize_gpt_int8(ours32)
        for B in batches:
            x, y, bert = inputs(B, torch.device("cpu"))

            def q_fn():
                r = q.generate(list(x), list(bert), list(y), params, list(range(B)))
                return sum(len(t) for t in r.tokens)
            t, toks = timed(q_fn, torch.device("cpu"), a.repeats)
            rs = ref_speed.get((B, "fp32"))
            print(f"{'ours int8 (CPU)':<34}{B:>6}{toks / t:>10.1f}{(f'{rs:.1f}' if rs else '-'):>11}"
                  f"{(f'{toks / t / rs:.2f}x' if rs else '-'):>10}{peak_mb(torch.device('cpu')):>9.0f}")
        agreement(ours32, q, "int8", n)
    for prec in a.precisions.split(","):
        if prec != "fp32":
            agreement(ours32.to(dev), copy.deepcopy(ours32).to(dev, DTYPES[prec]), prec, n)

    if not a.no_sovits:
        sovits_bench(tmp / "sovits.pth", a, dev, batches, n)


@torch.no_grad()
def agreement(base, other, name: str, n: int) -> None:
    """Greedy continuation of `base`; `other`'s top-1 agreement on it, teacher-forced, and the
    identical greedy prefix length. 8 random lines."""
    dev = base.ar_predict_layer.weight.device
    x, y, bert = inputs(8, dev, seed=1)
    greedy = SamplingParams(top_k=1, min_new_tokens=n, max_new_tokens=n, max_tokens_per_phone=None)
    a = base.generate(list(x), list(bert), list(y), greedy, [0] * 8)
    dt = other.ar_predict_layer.weight.dtype  # the output layer stays float32 in the int8 model
    b = other.generate(list(x), list(bert.to(dt)), list(y), greedy, [0] * 8)
    prefix = [next((i for i, (p, q) in enumerate(zip(s.tolist(), t.tolist())) if p != q), len(s))
              for s, t in zip(a.tokens, b.tokens)]
    sem = torch.stack([torch.cat([y[i], a.tokens[i].to(dev)]) for i in range(8)])
    lens = torch.full((8,), x.shape[1], device=dev)
    ylens = torch.full((8,), sem.shape[1], device=dev)
    la, _ = base(x, lens, bert, sem, ylens)
    lb, _ = other(x, lens, bert.to(dt), sem, ylens)
    sl = slice(y.shape[1], y.shape[1] + n)
    agree = (la[:, sl].argmax(-1) == lb[:, sl].argmax(-1)).float().mean().item()
    print(f"token agreement {name} vs fp32: teacher-forced top-1 {agree:.3f}; identical greedy prefix "
          f"{sum(prefix) / len(prefix):.1f} of {n} tokens (min {min(prefix)})")


@torch.no_grad()
def sovits_bench(path: Path, a, dev, batches, n) -> None:
    loaded = load_sovits(path)
    ours = loaded.model.to(dev).eval()
    print(f"{'SoVITS decode':<34}{'batch':>6}{'audio s/s':>10}{'ref':>11}{'ours/ref':>10}{'peak MB':>9}")
    rmodel = None
    if a.reference:
        _, RefSoVITS = import_reference(a.reference)
        hp = ours.cfg.to_official()
        rmodel = RefSoVITS(hp["data"]["filter_length"] // 2 + 1, hp["train"]["segment_size"] // hp["data"]["hop_length"],
                           n_speakers=hp["data"]["n_speakers"], **hp["model"])
        missing, unexpected = rmodel.load_state_dict(ours.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("enc_q.") for k in missing), (missing, unexpected)
        rmodel = rmodel.to(dev).eval()
    g = torch.Generator().manual_seed(0)
    refer = spectrogram(torch.randn(1, 32000 * 4, generator=g) * 0.1).to(dev)
    for prec in a.precisions.split(","):
        half = None if prec == "fp32" else DTYPES[prec]
        for B in batches:
            codes = torch.randint(0, 1024, (1, B, n), generator=g).to(dev)
            text = torch.randint(1, 732, (B, 40), generator=g).to(dev)
            audio_s = B * n * 2 * 640 / 32000
            t, _ = timed(lambda: ours.decode(codes, text, refer, noise_scale=0.5, precision=half), dev, a.repeats)
            mem = peak_mb(dev)
            rs = None
            if rmodel is not None:
                def ref_fn():
                    ctx = torch.autocast(dev.type, dtype=half) if half else torch.autocast(dev.type, enabled=False)
                    with ctx:
                        return rmodel.decode(codes, text, refer, noise_scale=0.5)
                try:
                    rt, _ = timed(ref_fn, dev, a.repeats)
                    rs = audio_s / rt
                except Exception as e:  # noqa: BLE001
                    print(f"  reference failed at batch {B} {prec}: {type(e).__name__}: {e}")
            print(f"{'ours ' + prec:<34}{B:>6}{audio_s / t:>10.1f}{(f'{rs:.1f}' if rs else '-'):>11}"
                  f"{(f'{audio_s / t / rs:.2f}x' if rs else '-'):>10}{mem:>9.0f}")


if __name__ == "__main__":
    main()
