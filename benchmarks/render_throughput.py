"""Render throughput: the Ray Data pipeline against a naive loop over the Synthesizer, same script, same run.

    (a) naive: one process, the Synthesizer called one line at a time (voices loaded once)
    (b) pipeline: plan -> work list -> Ray Data actor pool (1 and 2 actors) -> shards + index ->
        compaction; timed from the plan to the compacted index, actor start-up (model load) included,
        Ray start-up excluded
    (c) the driver's peak memory planning 1e5 and 1e6 lines (plan + work list, no rendering), each in
        a fresh process: peak RSS above the interpreter's baseline, and seconds

Prints lines/s, audio s/s and the ratio (b)/(a). Models: the tiny config with random weights
(`--config tiny`, default; the GPT rarely stops on its own, so every line runs to the length guard,
`--max-tokens-per-phone`) or v2 sizes (`--config v2`).

    python benchmarks/render_throughput.py                       # 24 lines, 3 voices, actors 1,2, plan 1e5,1e6
    python benchmarks/render_throughput.py --lines 8 --plan-sizes 100000 --actors 1
    python benchmarks/render_throughput.py --lines 0 --plan-sizes 100000,1000000   # (c) only: no Ray, no model
    python benchmarks/render_throughput.py --lines 432 --actors 2 --overlap 0,1 --plan-sizes ''   # overlap off / on
    python benchmarks/render_throughput.py --device cuda --num-gpus 0.5   # on a GPU
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

TEXTS = ["Hi there.", "The storm rolled in before dawn.",
         "Nobody on the pier had seen it coming, and by noon the harbour was quiet again.",
         "Please hold the line.", "We will be back after the break. Stay with us."]


def script_rows(n: int, voices: list[str]) -> list[dict]:
    return [{"line_id": f"l{i:06d}", "voice_id": voices[i % len(voices)], "text": TEXTS[i % len(TEXTS)],
             "language": "en"} for i in range(n)]


def naive(store, rows, args) -> tuple[float, float, float]:
    """Seconds and audio seconds for the Synthesizer called line by line, and the seconds that
    post-processing and the watermark took on its lines (timed apart)."""
    import torch

    from voicefleet.model.synthesizer import LineRequest, Synthesizer
    from voicefleet.model.text.frontend import TextFrontend
    from voicefleet.tasks.render.line_qc import QCConfig
    from voicefleet.tasks.render.plan import VoiceAuthorizer, line_seed
    from voicefleet.tasks.render.postprocess import postprocess
    from voicefleet.tasks.render.render_actor import SynthesizeLines, mark_line
    from voicefleet.tasks.render.settings import RenderSettings, line_settings

    torch.set_num_threads(args.threads)
    auth = VoiceAuthorizer(store, "user:bench")
    settings = RenderSettings(max_tokens_per_phone=args.max_tokens_per_phone, qc=QCConfig(mode=args.qc))
    loader = SynthesizeLines.__new__(SynthesizeLines)  # reuse the actor's voice loading, no Ray
    loader.store, loader.settings, loader.model_lock = store, settings, threading.Lock()
    loader.records = {v: auth(v).record for v in {r["voice_id"] for r in rows}}
    loader.synth = Synthesizer(TextFrontend(), device=args.device, max_batch=1)
    voices = {v: loader._load(v, str(loader.records[v].version)) for v in loader.records}
    t0, audio, post_s = time.perf_counter(), 0.0, 0.0
    for r in rows:
        plan_row = {"seed": line_seed(r["line_id"], r["text"]), "speed": None, "top_k": None, "temperature": None,
                    "noise_scale": None}
        out = loader.synth.synthesize(voices[r["voice_id"]], [LineRequest(r["text"], "en", line_settings(plan_row, settings))])[0]
        audio += len(out.wav) / out.sample_rate
        t1 = time.perf_counter()  # the per-line work the pipeline adds: post-processing and the watermark
        done = postprocess(out.wav, out.sample_rate, settings.post)
        mark_line(done.wav, done.sample_rate, settings.post)
        post_s += time.perf_counter() - t1
    return time.perf_counter() - t0 - post_s, audio, post_s


def pipeline(store, script, actors, overlap, args) -> tuple[float, float, int]:
    from voicefleet.tasks.cluster.runtime import Resources
    from voicefleet.tasks.render.job_index import compact, job_totals
    from voicefleet.tasks.render.line_qc import QCConfig
    from voicefleet.tasks.render.pipeline import render_lines
    from voicefleet.tasks.render.plan import plan_script, write_todo
    from voicefleet.tasks.render.settings import RenderSettings

    job = f"bench-{actors}-{overlap}-{int(time.time())}"
    settings = RenderSettings(actors=actors, batch_size=args.batch_size, max_tokens_per_phone=args.max_tokens_per_phone,
                              resources=Resources(num_cpus=args.threads, num_gpus=args.num_gpus),
                              qc=QCConfig(mode=args.qc), post_overlap=overlap)
    t0 = time.perf_counter()
    plan = plan_script(script, store, "user:bench")
    todo = write_todo(plan, store, job, 1, actors=actors, batch_size=args.batch_size)
    counts = render_lines(store, job, todo.keys, plan.decisions, settings, 1)
    compact(store, job)
    seconds = time.perf_counter() - t0
    plan.cleanup()
    assert job_totals(store, job).ok == plan.lines, "every line should render"
    return seconds, counts.audio_s, counts.ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=24, help="lines rendered by (a) and (b); 0 skips them")
    ap.add_argument("--voices", type=int, default=3)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (naive) = CPUs per actor (pipeline)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    ap.add_argument("--max-tokens-per-phone", type=float, default=2.5)
    ap.add_argument("--qc", default="off", help="per-line QC in the pipeline: off (default: the naive loop has none), "
                    "auto, report or enforce")
    ap.add_argument("--overlap", default="1", help="post_overlap values to run the pipeline with (0: each batch "
                    "checked and encoded before the next is synthesised; 1: the default, one batch finished on the "
                    "actor's finishing thread while the next synthesises)")
    ap.add_argument("--plan-sizes", default="100000,1000000", help="lines to plan for the memory figure ('' skips)")
    args = ap.parse_args()
    os.environ.setdefault("VOICEFLEET_DASHBOARD", "0")

    from render_voices import register_tiny_voices

    from voicefleet.tasks.cluster.runtime import ensure_ray
    from voicefleet.tasks.store.storage import Store

    tmp = tempfile.mkdtemp(prefix="vf-bench-")
    if args.lines == 0:
        plan_figures(args, tmp)
        return
    store = Store(os.path.join(tmp, "store"))
    voices = [f"v{i}" for i in range(args.voices)]
    register_tiny_voices(store, voices, "user:bench")
    rows = script_rows(args.lines, voices)
    script = os.path.join(tmp, "script.csv")
    with open(script, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"script: {args.lines} lines, {args.voices} voices, tiny models, device {args.device}, "
          f"{args.threads} thread(s) per worker, batch {args.batch_size}, max {args.max_tokens_per_phone} tokens/phone; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    a_s, a_audio, post_s = naive(store, rows, args)
    print(f"(a) naive loop      {args.lines / a_s:7.2f} lines/s  {a_audio / a_s:7.2f} audio s/s  ({a_s:.1f} s, "
          f"{a_audio:.1f} s audio)")
    ap_s = a_s + post_s
    print(f"(a+) naive + post-processing + watermark  {args.lines / ap_s:7.2f} lines/s  {a_audio / ap_s:7.2f} audio s/s  "
          f"({ap_s:.1f} s)")
    ensure_ray(num_cpus=args.threads * max(int(x) for x in args.actors.split(",")) + 1)
    for actors in [int(x) for x in args.actors.split(",")]:
        for overlap in [int(x) for x in args.overlap.split(",")]:
            b_s, b_audio, ok = pipeline(store, script, actors, overlap, args)
            print(f"(b) pipeline x{actors} overlap {overlap}  {ok / b_s:7.2f} lines/s  {b_audio / b_s:7.2f} audio s/s  "
                  f"({b_s:.1f} s)  ratio (b)/(a) lines/s {(ok / b_s) / (args.lines / a_s):.2f}, "
                  f"(b)/(a+) {(ok / b_s) / (args.lines / ap_s):.2f}")
    plan_figures(args, tmp)


def plan_figures(args, tmp: str) -> None:
    from plan_memory import plan_memory

    for n in [int(x) for x in args.plan_sizes.split(",") if x]:
        peak, base, seconds = plan_memory(n, tmp)
        print(f"(c) plan {n:>9,} lines: driver peak RSS +{peak:.0f} MiB over a {base:.0f} MiB interpreter, {seconds:.1f} s")


if __name__ == "__main__":
    main()
