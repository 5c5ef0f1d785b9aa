"""Fine-tuning many voices: throughput, memory per training unit, artifact size, LoRA vs full.

Parts (all by default):

- `throughput`: voices per hour with the tiny config on a local Ray cluster, the same voices
  trained by 1 and then 2 trainer actors (tasks/train/scheduler.py), evaluation + gate included
  (`--gate off` to leave them out); also the final GPT loss of full vs LoRA fine-tuning of the
  same voices (quality at equal epochs).
- `memory`: peak RSS of one training unit at v2 size on CPU (random weights; a few SoVITS and
  GPT steps on short clips), full fine-tune, LoRA, and full with GPT gradient checkpointing; each
  in a fresh subprocess, with the RSS of the process before training as the baseline.
- `size`: bytes a voice adds to the store at v2 size: full fine-tune (GPT .ckpt + SoVITS .pth,
  fp16) vs LoRA delta (safetensors, fp16) at ranks 4, 8, 16.
- `curves`: GPT fine-tune loss per epoch on the same small data (a tiny GPT pretrained on a
  synthetic phone->token table, fine-tuned on a speaker whose table differs in 30 % of the phones),
  fixed seed, CPU: the reference's ScaledAdam + its scheduler and settings (imported from
  `--reference`, a GPT-SoVITS checkout, at benchmark time only) against our recipe and the old
  constant AdamW 2e-4, with final-loss ratios; then final loss per LoRA rank-8 GPT learning rate.
- `sovits-lora`: mel loss per epoch of a SoVITS LoRA rank-8 fine-tune at each learning rate (tiny
  base, the demo speaker's speech).

    python benchmarks/finetune.py                       # everything (~15-25 min on 2 busy cores)
    python benchmarks/finetune.py --part size
    python benchmarks/finetune.py --part memory --steps 2 --clip-s 3
    python benchmarks/finetune.py --part throughput --voices 4
    python benchmarks/finetune.py --part curves --reference /path/GPT-SoVITS     (~5-8 min on 2 busy cores)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load_info() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} on {os.cpu_count()} CPUs"


# ---------------------------------------------------------------- size
def part_size() -> None:
    import torch

    from voicefleet.model.checkpoint import save_gpt, save_sovits
    from voicefleet.model.config import GPTConfig, SoVITSConfig
    from voicefleet.model.gpt import Text2SemanticDecoder
    from voicefleet.model.lora import LoRAConfig, add_lora, lora_state
    from voicefleet.model.sovits import SynthesizerTrn
    from voicefleet.tasks.store.storage import Store
    from voicefleet.tasks.voices.artifacts import save_lora
    from voicefleet.tasks.voices.base_store import BaseRef

    print("\n## artifact size per voice, v2 sizes")
    torch.manual_seed(0)
    gpt, sovits = Text2SemanticDecoder(GPTConfig.v2()), SynthesizerTrn(SoVITSConfig.v2())
    g, s = io.BytesIO(), io.BytesIO()
    save_gpt(gpt, g)
    save_sovits(sovits, s)
    full = g.tell() + s.tell()
    print(f"full fine-tune: GPT {g.tell() / 1e6:.1f} MB + SoVITS {s.tell() / 1e6:.1f} MB = {full / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        for rank in (4, 8, 16):
            cfg = LoRAConfig(rank=rank, alpha=2.0 * rank)
            gl, sl = Text2SemanticDecoder(GPTConfig.v2()), SynthesizerTrn(SoVITSConfig.v2())
            add_lora(gl, cfg.gpt_targets, cfg)
            add_lora(sl, cfg.sovits_targets, cfg)
            deltas = {"gpt": lora_state(gl), "sovits": lora_state(sl), "config": cfg.to_dict()}
            files = save_lora(store, f"r{rank}", deltas, BaseRef(name="v2", untrained=True, prefix="bases/v2"))
            size = len(store.read_bytes(files["lora"]))
            n_g, n_s = (sum(t.numel() for t in deltas[p].values()) for p in ("gpt", "sovits"))
            print(f"LoRA rank {rank:>2}: {size / 1e6:.2f} MB ({n_g / 1e6:.2f} M GPT + {n_s / 1e6:.2f} M SoVITS params), "
                  f"{full / size:.0f}x smaller; 1,000 voices: {1000 * size / 1e9:.2f} GB vs {1000 * full / 1e9:.0f} GB")


# ---------------------------------------------------------------- memory (one subprocess per config)
def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(kind: str, steps: int, clip_s: float, batch: int, threads: int) -> dict:
    import numpy as np
    import torch

    from voicefleet.model.config import GPTConfig, SoVITSConfig
    from voicefleet.model.gpt import Text2SemanticDecoder
    from voicefleet.model.sovits import SynthesizerTrn
    from voicefleet.tasks.train.finetune import Recipe, finetune

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gpt, sovits = Text2SemanticDecoder(GPTConfig.v2()), SynthesizerTrn(SoVITSConfig.v2())
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(batch):
        n_sem = int(clip_s * 25)
        rows.append({"phones": rng.integers(1, 700, int(clip_s * 12)).tolist(), "semantic": rng.integers(0, 1024, n_sem).tolist(),
                     "audio": (0.1 * rng.standard_normal(n_sem * 2 * 640)).astype(np.float32)})
    recipe = Recipe(sovits_epochs=1, gpt_epochs=1, batch_size=batch, min_items_per_epoch=batch * steps,
                    lora_rank=8 if kind == "lora" else 0, gradient_checkpointing=kind == "full+ckpt", precision="fp32")
    before = rss_mib()
    t0 = time.perf_counter()
    result = finetune(rows, gpt, sovits, recipe, log=lambda *_: None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "rss_before_mib": round(before), "peak_rss_mib": round(peak),
            "train_peak_minus_before_mib": round(peak - before), "seconds": round(time.perf_counter() - t0, 1),
            "trainable_params": result.metrics["trainable_params"], "steps_per_stage": steps,
            "clip_s": clip_s, "batch": batch}


def part_memory(args) -> None:
    print(f"\n## peak memory per training unit, v2 sizes, CPU fp32, {args.threads} threads "
          f"({args.steps} SoVITS + {args.steps} GPT steps, batch {args.batch}, {args.clip_s:g} s clips)")
    print("a GPU run (bf16/fp16 autocast, CUDA allocator peak) was not possible here: no GPU was lent to this task")
    for kind in ("full", "lora", "full+ckpt"):
        cmd = [sys.executable, __file__, "--memory-child", kind, "--steps", str(args.steps), "--clip-s", str(args.clip_s),
               "--batch", str(args.batch), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{kind}: failed: {out.stderr[-800:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{kind:<10} peak RSS {r['peak_rss_mib']:>6} MiB (models built: {r['rss_before_mib']} MiB; training adds "
              f"{r['train_peak_minus_before_mib']} MiB), trainable GPT {r['trainable_params']['gpt'] / 1e6:.2f} M / "
              f"SoVITS {r['trainable_params']['sovits'] / 1e6:.2f} M, {r['seconds']} s   [{load_info()}]")


# ---------------------------------------------------------------- throughput (local Ray)
def part_throughput(args) -> None:
    import ray

    from voicefleet.flows.demo.enrollment import build_demo_enrollment
    from voicefleet.tasks.cluster.runtime import Resources, ensure_ray
    from voicefleet.tasks.enroll.prepare import prepare_speaker, run_on_ray
    from voicefleet.tasks.store.storage import Store
    from voicefleet.tasks.train.finetune import Recipe
    from voicefleet.tasks.train.scheduler import train_voices
    from voicefleet.tasks.voices.base_store import publish_base

    os.environ.setdefault("VOICEFLEET_DASHBOARD", "0")
    ensure_ray(num_cpus=os.cpu_count())
    recipe = Recipe.demo().model_dump()
    gate = {"mode": args.gate}
    print(f"\n## voices per hour, tiny config, Recipe.demo() ({recipe['sovits_epochs']} SoVITS + {recipe['gpt_epochs']} GPT "
          f"epochs), gate {args.gate}, {args.voices} voices, 1 CPU per trainer actor")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "enroll"
        n_speakers = min(args.voices, 3)
        build_demo_enrollment(root, n_speakers=n_speakers, clips_per_speaker=6)
        store = Store(str(Path(tmp) / "store"))
        for f in sorted(root.rglob("*")):
            if f.is_file():
                store.put_file(f, f"incoming/{f.relative_to(root).as_posix()}")
        speakers = sorted(p.name for p in root.iterdir() if p.is_dir())
        prepared = run_on_ray(prepare_speaker, [(s, (store.url("incoming"), store.uri, s, "tiny", "prep", None, None))
                                                for s in speakers], Resources())
        prepared = [p for p in prepared if p.status == "prepared"]
        base = publish_base(store, "tiny")

        def copies(tag: str) -> list:
            out = []
            for i in range(args.voices):
                p = prepared[i % len(prepared)]
                prefix = f"voices/{p.speaker_id}/runs/{tag}-{i}"
                for name in ("dataset.parquet", "ref.wav"):
                    store.write_bytes(f"{prefix}/{name}", store.read_bytes(f"{p.run_prefix}/{name}"))
                out.append(p.model_copy(update={"run_prefix": prefix, "speaker_id": f"{p.speaker_id}-{i}"}))
            return out

        results = {}
        for workers in (1, 2):
            voices = copies(f"w{workers}")
            t0 = time.perf_counter()
            res = train_voices(store.uri, voices, base, recipe, gate, Resources(num_cpus=1), workers=workers)
            wall = time.perf_counter() - t0
            ok = [r for r in res if r.status == "trained"]
            results[workers] = (wall, ok)
            print(f"{workers} worker(s): {len(ok)}/{len(voices)} voices in {wall:.0f} s = "
                  f"{3600 * len(ok) / wall:.0f} voices/hour; mean train {sum(r.metrics['train_s'] for r in ok) / max(1, len(ok)):.1f} s "
                  f"per voice   [{load_info()}]")
        if results[1][0] and results[2][0]:
            print(f"2 workers vs 1: {results[1][0] / results[2][0]:.2f}x voices per hour")
        full = results[1][1]
        voices = copies("lora")
        lora = train_voices(store.uri, voices, base, dict(recipe, lora_rank=8, gpt_lr=1e-2), gate, Resources(num_cpus=1),
                            workers=2)
        print("\n## LoRA (rank 8, GPT lr 1e-2) vs full fine-tune (GPT lr 2e-3), tiny config, same voices and epochs")
        for name, rs in (("full", full), ("lora", [r for r in lora if r.status == "trained"])):
            if not rs:
                print(f"{name}: no voice trained")
                continue
            gl = [r.metrics["gpt_loss"] for r in rs]
            sim = [r.evaluation.get("similarity") for r in rs if r.evaluation.get("similarity") is not None]
            print(f"{name:<5} GPT loss {sum(g[0] for g in gl) / len(gl):.3f} -> {sum(g[-1] for g in gl) / len(gl):.3f}, "
                  f"SoVITS mel {sum(r.metrics['sovits_mel'][-1] for r in rs) / len(rs):.1f}, "
                  f"artifact {sum(r.metrics['artifact_bytes'] for r in rs) / len(rs) / 1e3:.0f} kB/voice"
                  + (f", eval similarity {sum(sim) / len(sim):.3f} (random base: not speech)" if sim else ""))
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "size", "memory", "throughput", "curves", "sovits-lora"], default="all")
    ap.add_argument("--reference", help="a GPT-SoVITS checkout: its ScaledAdam + scheduler train the same GPT (curves)")
    ap.add_argument("--pretrain-steps", type=int, default=250, help="curves: steps that make the tiny base")
    ap.add_argument("--sovits-lora-lrs", type=lambda s: [float(x) for x in s.split(",")], default=[1e-4, 1e-3, 1e-2, 3e-2])
    ap.add_argument("--sovits-epochs", type=int, default=4, help="sovits-lora: epochs per rate")
    ap.add_argument("--lora-lrs", type=lambda s: [float(x) for x in s.split(",")], default=[1e-2, 2e-2, 3e-2, 5e-2, 1e-1])
    ap.add_argument("--voices", type=int, default=4)
    ap.add_argument("--gate", choices=["enforce", "report", "off"], default="report")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--clip-s", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.steps, args.clip_s, args.batch, args.threads)))
        return
    print(f"benchmarks/finetune.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load_info()}")
    if args.part in ("all", "size"):
        part_size()
    if args.part in ("all", "memory"):
        part_memory(args)
    if args.part in ("all", "throughput"):
        part_throughput(args)
    if args.part in ("all", "curves"):
        from gpt_recipe_curves import part_curves  # benchmarks/ is on the path of a script run from it

        part_curves(args)
    if args.part in ("all", "sovits-lora"):
        from gpt_recipe_curves import part_sovits_lora

        part_sovits_lora(args)


if __name__ == "__main__":
    main()
