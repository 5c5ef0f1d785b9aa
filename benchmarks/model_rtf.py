#!/usr/bin/env python
"""Speed of voicefleet's GPT-SoVITS v2 models: GPT tokens/s, GPT / SoVITS / end-to-end RTF, peak memory.

Workload (the one behind the reference figures in design.md, "Speed reference points"): per line
40 text phones (BERT features all zeros, 1024-d), 30 prompt tokens, exactly 100 new semantic tokens
(EOS is masked for all 100 steps, so no line stops early) = 4 s of audio at 25 Hz; top_k 15. Models
are v2 size with random weights from a fixed seed, float32. Each repeat runs the pipeline once:
GPT `generate` on B identical lines, then SoVITS `decode` of the B x 100 generated tokens with the
40 phones and one fixed style vector; the medians over `--repeats` (after `--warmup` untimed runs)
are reported. RTF = seconds of compute per second of audio produced (lower is faster).

Baselines measured in the same run: batch 1 of this code (every ratio column is batch N / batch 1)
and GPT without the KV cache (`use_cache=False`) at batch 1, next to the cached GPT on the same
token count. The reference project's figures are printed as static context only.

    python benchmarks/model_rtf.py --quick              # tiny configs, batches 1,4, 20 tokens (< 60 s)
    python benchmarks/model_rtf.py                      # v2 sizes, batches 1,8,32, 2 threads, CPU
    python benchmarks/model_rtf.py --device cuda --threads 8 --json out.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.gpt import SamplingParams, Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn

# design.md, "Speed reference points": measured on this project's 2-core machine with the reference
# code (v2 sizes, random weights, 2 threads, same workload), and the reference project's own claims.
REFERENCE = {
    "source": "design.md 'Speed reference points' -- NOT measured in this run",
    "reference_code_2core_cpu_2_threads": {
        "gpt_tokens_per_s": {"1": "50-56", "8": "154", "32": "234"},
        "gpt_rtf": {"1": "0.47", "32": "0.107"},
        "sovits_decode_rtf": {"1": "0.30-0.35"},
        "end_to_end_rtf": {"1": "0.75-0.85"},
    },
    "published_by_reference_project_rtf": {"RTX 4090": 0.014, "RTX 4060 Ti": 0.028, "Apple M4 CPU": 0.526},
}


@dataclass
class Workload:
    phones: int = 40
    prompt: int = 30
    new_tokens: int = 100
    top_k: int = 15
    hz: int = 25  # semantic tokens per second of audio

    @property
    def audio_s(self) -> float:
        return self.new_tokens / self.hz


class Memory:
    """Peak resident memory of this process per phase, plus the CUDA allocator's peak on a GPU.

    On Linux, writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS mark (VmHWM), so each
    phase reports its own peak; elsewhere the figure is getrusage's peak since the process began.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = self._try_reset()

    @staticmethod
    def _try_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._try_reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> dict:
        out = {"peak_rss_mib": None, "peak_rss_scope": "phase" if self.resettable else "process"}
        if self.resettable:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out["peak_rss_mib"] = int(line.split()[1]) / 1024
        if out["peak_rss_mib"] is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            out["peak_rss_mib"] = kb / (1024 * 1024 if sys.platform == "darwin" else 1024)
        if self.device.type == "cuda":
            out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


class CpuShare:
    """How busy the machine's CPUs were with work other than this process, over a phase.

    Other processes on a small machine distort these figures badly (with 2 threads on 2 cores,
    one busy neighbour can slow a decode step several-fold), so each phase reports the average
    number of CPUs that others kept busy: (all busy time in /proc/stat - this process's CPU time) / wall.
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    def _busy(self) -> tuple[float, float] | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
        steal = v[7] if len(v) > 7 else 0
        return busy / self.tick, steal / self.tick

    @staticmethod
    def _self_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def start(self) -> None:
        self.t0, self.b0, self.s0 = time.perf_counter(), self._busy(), self._self_cpu()

    def stop(self) -> dict:
        wall, b1, s1 = time.perf_counter() - self.t0, self._busy(), self._self_cpu()
        if self.b0 is None or b1 is None or wall <= 0:
            return {"self_cpus": (s1 - self.s0) / max(wall, 1e-9), "others_cpus": None, "steal_cpus": None}
        return {"self_cpus": round((s1 - self.s0) / wall, 2),
                "others_cpus": round(max(0.0, (b1[0] - self.b0[0]) - (s1 - self.s0)) / wall, 2),
                "steal_cpus": round((b1[1] - self.b0[1]) / wall, 2)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Bench:
    def __init__(self, gpt: Text2SemanticDecoder, sovits: SynthesizerTrn, work: Workload, device: torch.device,
                 seed: int):
        self.gpt, self.sovits, self.work, self.device = gpt, sovits, work, device
        g = torch.Generator().manual_seed(seed)
        n_sym = min(gpt.cfg.phoneme_vocab_size, sovits.cfg.n_symbols)
        self.phones = torch.randint(0, n_sym, (work.phones,), generator=g)  # (Lx,)
        self.bert = torch.zeros(gpt.cfg.bert_dim, work.phones)  # (bert_dim, Lx)
        self.prompt = torch.randint(0, gpt.cfg.vocab_size - 1, (work.prompt,), generator=g)  # (Lp,) no EOS
        # one fixed style vector, from a random "reference spectrogram" of 3 s (not timed)
        refer = torch.rand(1, sovits.cfg.spec_channels, 150, generator=g).to(device)
        with torch.no_grad():
            self.ge = sovits.style(refer)  # (1, gin, 1)
        self.seed = seed

    def params(self, n_new: int) -> SamplingParams:
        # EOS is masked while step < min_new_tokens and every line stops at its limit: exactly n_new tokens
        return SamplingParams(top_k=self.work.top_k, min_new_tokens=n_new, max_new_tokens=n_new,
                              max_tokens_per_phone=None)

    def gpt_run(self, B: int, n_new: int, use_cache: bool = True) -> tuple[float, list[torch.Tensor]]:
        sync(self.device)
        t0 = time.perf_counter()
        res = self.gpt.generate([self.phones] * B, [self.bert] * B, [self.prompt] * B, self.params(n_new),
                                seeds=[self.seed + i for i in range(B)], use_cache=use_cache, limits=[n_new] * B)
        sync(self.device)
        dt_s = time.perf_counter() - t0
        lens = sorted({len(t) for t in res.tokens})
        if lens != [n_new]:
            raise RuntimeError(f"expected exactly {n_new} tokens per line, got lengths {lens}")
        return dt_s, res.tokens

    def sovits_run(self, tokens: list[torch.Tensor]) -> tuple[float, float]:
        """Decode B lines of tokens; returns (seconds, seconds of audio produced)."""
        dev, B, T = self.device, len(tokens), len(tokens[0])
        sync(dev)
        t0 = time.perf_counter()
        codes = torch.stack(tokens)[None].to(dev)  # (1, B, T)
        text = self.phones[None].expand(B, -1).to(dev)  # (B, Tt)
        gens = [torch.Generator().manual_seed(self.seed + 1 + i) for i in range(B)]
        wav, n = self.sovits.decode(codes, text, ge=self.ge, noise_scale=0.5, speed=1.0,
                                    code_lengths=torch.full((B,), T, device=dev),
                                    text_lengths=torch.full((B,), text.shape[1], device=dev), generator=gens)
        sync(dev)
        dt_s = time.perf_counter() - t0
        return dt_s, float(n.sum()) / self.sovits.cfg.sampling_rate

    def pipeline(self, B: int, n_new: int | None = None) -> dict:
        g_s, tokens = self.gpt_run(B, n_new or self.work.new_tokens)
        s_s, audio_s = self.sovits_run(tokens)
        return {"gpt_s": g_s, "sovits_s": s_s, "e2e_s": g_s + s_s, "audio_s": audio_s}


def measure_batch(bench: Bench, mem: Memory, B: int, warmup: int, warmup_tokens: int, repeats: int, log) -> dict:
    w = bench.work
    mem.reset()
    t_start = time.perf_counter()
    for _ in range(warmup):
        bench.pipeline(B, warmup_tokens)
    share = CpuShare()
    runs = [bench.pipeline(B) for _ in range(repeats)]
    cpu = share.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in ("gpt_s", "sovits_s", "e2e_s")}
    gpt_audio = B * w.audio_s  # audio the GPT's tokens stand for (100 tokens = 4 s)
    audio_s = runs[0]["audio_s"]  # audio SoVITS actually produced
    out = {
        "batch": B,
        "repeats": repeats, "warmup_runs": warmup, "warmup_tokens": warmup_tokens,
        "gpt_s": med["gpt_s"], "sovits_s": med["sovits_s"], "e2e_s": med["e2e_s"],
        "gpt_s_all": [r["gpt_s"] for r in runs], "sovits_s_all": [r["sovits_s"] for r in runs],
        "gpt_tokens_per_s": B * w.new_tokens / med["gpt_s"],
        "gpt_rtf": med["gpt_s"] / gpt_audio,
        "sovits_rtf": med["sovits_s"] / audio_s,
        "e2e_rtf": med["e2e_s"] / audio_s,
        "audio_s": audio_s,
        "wall_s": time.perf_counter() - t_start,
        "loadavg": loadavg(), **cpu,
        **mem.peak(),
    }
    log(f"  batch {B:>3}: GPT {out['gpt_tokens_per_s']:.1f} tok/s (RTF {out['gpt_rtf']:.3f}), "
        f"SoVITS RTF {out['sovits_rtf']:.3f}, e2e RTF {out['e2e_rtf']:.3f}, "
        f"peak RSS {out['peak_rss_mib']:.0f} MiB; CPUs busy: this {out['self_cpus']}, others {out['others_cpus']}"
        f"  [{out['wall_s']:.0f} s]")
    return out


def measure_nocache(bench: Bench, mem: Memory, n_new: int, warmup: int, repeats: int, log) -> dict:
    """GPT at batch 1 without the KV cache (every step re-runs the whole sequence) vs with it."""
    mem.reset()
    for _ in range(warmup):
        bench.gpt_run(1, min(n_new, 5), use_cache=False)
        bench.gpt_run(1, n_new, use_cache=True)
    share = CpuShare()
    no = statistics.median(bench.gpt_run(1, n_new, use_cache=False)[0] for _ in range(repeats))
    yes = statistics.median(bench.gpt_run(1, n_new, use_cache=True)[0] for _ in range(repeats))
    cpu = share.stop()
    out = {
        "batch": 1, "new_tokens": n_new, "repeats": repeats,
        "nocache_s": no, "cache_s": yes,
        "nocache_tokens_per_s": n_new / no, "cache_tokens_per_s": n_new / yes,
        "nocache_gpt_rtf": no / (n_new / bench.work.hz), "cache_gpt_rtf": yes / (n_new / bench.work.hz),
        "speedup_from_cache": no / yes,
        "loadavg": loadavg(), **cpu,
        **mem.peak(),
    }
    log(f"  no KV cache, batch 1, {n_new} tokens: {out['nocache_tokens_per_s']:.1f} tok/s vs "
        f"{out['cache_tokens_per_s']:.1f} with the cache (x{out['speedup_from_cache']:.1f})")
    return out


def fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def report(meta: dict, batches: list[dict], nocache: dict | None) -> str:
    lines = []
    w = meta["workload"]
    lines.append(f"voicefleet model speed -- {meta['date']} -- {meta['machine']}")
    lines.append(f"  configs: {meta['configs']}  device: {meta['device']}  threads: {meta['threads']}  "
                 f"dtype: float32  torch {meta['torch']}")
    lines.append(f"  workload per line: {w['phones']} phones (BERT zeros), {w['prompt']} prompt tokens, "
                 f"{w['new_tokens']} new tokens = {w['new_tokens'] / w['hz']:g} s audio, top_k {w['top_k']}; "
                 f"median of {meta['repeats']} after {meta['warmup']} warm-up run(s) per batch "
                 "(" + ", ".join(f"b{r['batch']}: {r['warmup_tokens']} tok" for r in batches) + ")")
    lines.append(f"  load average (1/5/15 min): start {meta['loadavg_start']}, end {meta['loadavg_end']}")
    lines.append("")
    base = batches[0] if batches and batches[0]["batch"] == 1 else None
    hdr = (f"{'batch':>5} {'GPT tok/s':>10} {'x b1':>6} {'GPT RTF':>8} {'SoVITS RTF':>11} {'x b1':>6} "
           f"{'e2e RTF':>8} {'x b1':>6} {'GPT s':>7} {'SoVITS s':>9} {'peak RSS MiB':>13} {'others CPUs':>12}")
    if meta["device"].startswith("cuda"):
        hdr += f" {'CUDA peak MiB':>14}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in batches:
        tok_x = r["gpt_tokens_per_s"] / base["gpt_tokens_per_s"] if base else None
        sov_x = base["sovits_rtf"] / r["sovits_rtf"] if base else None
        e2e_x = base["e2e_rtf"] / r["e2e_rtf"] if base else None
        row = (f"{r['batch']:>5} {r['gpt_tokens_per_s']:>10.1f} {fmt(tok_x, '.2f'):>6} {r['gpt_rtf']:>8.3f} "
               f"{r['sovits_rtf']:>11.3f} {fmt(sov_x, '.2f'):>6} {r['e2e_rtf']:>8.3f} {fmt(e2e_x, '.2f'):>6} "
               f"{r['gpt_s']:>7.2f} {r['sovits_s']:>9.2f} {r['peak_rss_mib']:>13.0f} {fmt(r['others_cpus'], '.2f'):>12}")
        if meta["device"].startswith("cuda"):
            row += f" {r.get('cuda_max_allocated_mib', 0):>14.0f}"
        lines.append(row)
    lines.append("  'x b1' = throughput relative to batch 1 of this run (batch-1 RTF / batch-N RTF).")
    lines.append("  'others CPUs' = CPUs kept busy by other processes during the timed runs (from /proc/stat);"
                 f" this machine has {os.cpu_count()}.")
    lines.append(f"  peak RSS is per batch size ({batches[0]['peak_rss_scope'] if batches else '-'} scope), "
                 "models included.")
    if nocache:
        lines.append("")
        n = nocache["new_tokens"]
        note = "" if n == w["new_tokens"] else f" (limited to {n} tokens instead of {w['new_tokens']}: too slow)"
        lines.append(f"GPT without KV cache, batch 1, {n} new tokens{note}:")
        lines.append(f"  use_cache=False: {nocache['nocache_tokens_per_s']:.1f} tok/s (RTF {nocache['nocache_gpt_rtf']:.3f})"
                     f"   use_cache=True: {nocache['cache_tokens_per_s']:.1f} tok/s (RTF {nocache['cache_gpt_rtf']:.3f})"
                     f"   -> the cache is x{nocache['speedup_from_cache']:.1f} faster"
                     f"   (others CPUs {fmt(nocache['others_cpus'], '.2f')})")
    lines.append("")
    lines.append("Reference figures -- NOT measured in this run (design.md, 'Speed reference points'):")
    ref = REFERENCE["reference_code_2core_cpu_2_threads"]
    lines.append("  reference code on this project's 2-core CPU, 2 threads, v2 sizes, same workload:")
    lines.append(f"    GPT tok/s: batch 1 {ref['gpt_tokens_per_s']['1']}, batch 8 {ref['gpt_tokens_per_s']['8']}, "
                 f"batch 32 {ref['gpt_tokens_per_s']['32']};  GPT RTF: batch 1 {ref['gpt_rtf']['1']}, "
                 f"batch 32 {ref['gpt_rtf']['32']}")
    lines.append(f"    SoVITS decode RTF batch 1 {ref['sovits_decode_rtf']['1']};  end-to-end RTF batch 1 "
                 f"{ref['end_to_end_rtf']['1']}")
    pub = REFERENCE["published_by_reference_project_rtf"]
    lines.append("  published by the reference project (newest v2 variant, its own hardware): RTF "
                 + ", ".join(f"{v} ({k})" for k, v in pub.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; quick: 1,4)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per batch size, median reported "
                    "(default 3; quick: 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed pipeline runs per batch size first (default 1)")
    ap.add_argument("--warmup-tokens", type=int, default=None,
                    help="new tokens per warm-up run (default: the full count where batch x tokens <= 800, "
                         "else 10: a short run at that batch size, so batch 32 is not run a whole extra time)")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per line (default 100; quick: 20)")
    ap.add_argument("--nocache-tokens", type=int, default=None,
                    help="new tokens for the no-KV-cache baseline (default 50, as re-running the whole "
                         "sequence every step is slow; quick: 20; 0 skips it)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny configs, batches 1,4, 20 tokens: checks the script runs")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    quick = args.quick
    batches = [int(b) for b in (args.batches or ("1,4" if quick else "1,8,32")).split(",") if b.strip()]
    repeats = args.repeats or (1 if quick else 3)
    n_new = args.tokens or (20 if quick else 100)
    n_nocache = min(20 if quick else 50, n_new) if args.nocache_tokens is None else args.nocache_tokens
    work = Workload(new_tokens=n_new)

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731 — progress on stderr, table on stdout
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {cpu_name()}, {os.cpu_count()} CPUs"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", no GPU used"),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "configs": "tiny" if quick else "v2",
        "workload": asdict(work), "warmup": args.warmup, "repeats": repeats, "seed": args.seed,
        "loadavg_start": loadavg(),
    }
    log(f"building {'tiny' if quick else 'v2'} models (seed {args.seed}) on {device}, {meta['threads']} threads; "
        f"load average {meta['loadavg_start']}")
    gcfg, scfg = (GPTConfig.tiny(), SoVITSConfig.tiny()) if quick else (GPTConfig.v2(), SoVITSConfig.v2())
    torch.manual_seed(args.seed)
    gpt = Text2SemanticDecoder(gcfg).to(device).eval()
    torch.manual_seed(args.seed + 1)
    sovits = SynthesizerTrn(scfg, with_posterior=False).to(device).eval()
    meta["params_m"] = {"gpt": sum(p.numel() for p in gpt.parameters()) / 1e6,
                        "sovits": sum(p.numel() for p in sovits.parameters()) / 1e6}
    mem = Memory(device)
    bench = Bench(gpt, sovits, work, device, args.seed)

    def warm_tokens(B: int) -> int:
        return args.warmup_tokens or (n_new if B * n_new <= 800 else min(10, n_new))

    results = [measure_batch(bench, mem, B, args.warmup, warm_tokens(B), repeats, log) for B in batches]
    nocache = measure_nocache(bench, mem, n_nocache, min(args.warmup, 1), 1, log) if n_nocache > 0 else None
    meta["loadavg_end"] = loadavg()

    print(report(meta, results, nocache))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "batches": results, "nocache": nocache, "reference": REFERENCE}, f, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
