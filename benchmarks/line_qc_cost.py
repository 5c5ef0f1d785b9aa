"""What post-processing and per-line QC cost per rendered line, on this machine, in one run.

Lines are real speech from piper's joe voice (what a trained voice sounds like to the ASR and the
speaker model; the untrained demo model's output is not speech). Per line, medians over the lines:

    synthesis   piper producing the line (context: a fast CPU TTS, not voicefleet's model)
    postprocess DC removal, silence trim, loudness + true-peak limiter (tasks/render/postprocess.py)
    asr         Whisper tiny.en int8 transcript + WER (tasks/measure/asr.py)
    speaker     GE2E embedding + similarity to the reference (tasks/measure/speaker.py)
    qc total    LineQC.check (asr + speaker + signal checks), one line at a time
    qc batched  LineQC.check_many over all the lines at once, per line: what the render actor does with
                a batch (one GE2E forward; Whisper batched on a GPU only, line by line on a CPU)
    asr batched ASR.transcribe_many over all the lines (one encoder pass and decode), per line: the
                GPU path's ASR, measured here against `asr` to show why a CPU does not take it

plus the load average, because on a shared 2-core machine a busy neighbour changes the figures.

    python benchmarks/line_qc_cost.py [--lines 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

TEXTS = ["The morning bus was late again, so I walked to work.", "Please put the green folder on the top shelf.",
         "We planted tomatoes and beans behind the old garage.", "Could you tell me where the nearest pharmacy is?",
         "The children laughed when the puppy chased its own tail.", "A cold wind blew across the harbour all night.",
         "She finished the crossword before her coffee got cold.", "My grandfather still repairs clocks in his small workshop."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine
    from voicefleet.tasks.measure.asr import ASR, wer
    from voicefleet.tasks.measure.speaker import embed, similarity
    from voicefleet.tasks.render.line_qc import LineQC, QCConfig, QCLine
    from voicefleet.tasks.render.postprocess import PostConfig, postprocess

    engine, voice = load_engine("piper"), DEMO_VOICES[0]
    sr = engine.sample_rate
    qc = LineQC(QCConfig(mode="report"), threads=args.threads)
    asr = ASR(threads=args.threads)
    ref = engine.speak(voice, "Fresh bread smells wonderful on a rainy afternoon.", None, "en", 1.0)
    qc.add_reference("joe", ref, sr)
    ref_emb = embed(ref, sr)
    # warm-up: model loads are per actor, not per line
    w = engine.speak(voice, TEXTS[0], None, "en", 1.0)
    qc.check("joe", TEXTS[0], "en", w, sr, False, postprocess(w, sr, PostConfig()))

    t: dict[str, list[float]] = {k: [] for k in ("synthesis", "postprocess", "asr", "speaker", "qc total")}
    audio_s, lines = [], []
    for i in range(args.lines):
        text = TEXTS[i % len(TEXTS)]
        t0 = time.perf_counter()
        w = engine.speak(voice, text, None, "en", 1.0)
        t1 = time.perf_counter()
        p = postprocess(w, sr, PostConfig())
        t2 = time.perf_counter()
        wer(text, asr.transcribe(p.wav, sr, "en").text)
        t3 = time.perf_counter()
        similarity(embed(p.wav, sr), ref_emb)
        t4 = time.perf_counter()
        qc.check("joe", text, "en", w, sr, False, p)
        t5 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[k].append(v)
        audio_s.append(p.duration_s)
        lines.append(QCLine("joe", text, "en", w, sr, False, p))
    t0 = time.perf_counter()
    qc.check_many(lines)
    batched = (time.perf_counter() - t0) / len(lines)
    t0 = time.perf_counter()
    asr.transcribe_many([q.processed.wav for q in lines], sr, "en")
    asr_batched = (time.perf_counter() - t0) / len(lines)
    line_s = statistics.median(audio_s)
    print(f"lines {args.lines}, median line {line_s:.2f} s of audio, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'stage':<12} {'s/line':>8} {'x realtime':>10}")
    for k, v in t.items():
        m = statistics.median(v)
        print(f"{k:<12} {m:8.3f} {m / line_s:10.3f}")
    print(f"{'qc batched':<12} {batched:8.3f} {batched / line_s:10.3f}   "
          f"(qc total / qc batched: {statistics.median(t['qc total']) / batched:.2f}x)")
    print(f"{'asr batched':<12} {asr_batched:8.3f} {asr_batched / line_s:10.3f}   "
          f"(asr / asr batched: {statistics.median(t['asr']) / asr_batched:.2f}x)")


if __name__ == "__main__":
    main()
