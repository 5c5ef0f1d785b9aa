#!/usr/bin/env python
"""Enrollment ingest throughput: minutes of enrollment audio processed per minute of wall time.

Workload: `--speakers` upload folders of real speech (piper's joe voice from its pip wheel, six
sentences with pauses over a -70 dBFS noise floor), each one ~40 s WAV at 44.1 kHz and one ~10 s
MP3 at 16 kHz, no transcripts (so every utterance goes through ASR), consent as the contract wants.

1. Per stage, in this process, one speaker after another (models loaded once, before timing):
   decode (libsndfile/PyAV), VAD (Silero ONNX + resampling to 16 kHz), checks (SNR, clipping,
   YAMNet music share, speaker clustering), ASR (Whisper tiny.en int8), features (phones +
   semantic tokens with the tiny base model: the official HuBERT costs more).
   Figure per stage: audio minutes / stage wall minutes.
2. The whole prepare step (`tasks/enroll/prepare.py: prepare_speaker`, fingerprint -> ingest -> features)
   as Ray tasks on a local cluster with 1 and then 2 CPUs (one task per speaker, num_cpus=1),
   cold workers included: that is what an enrollment run pays. Baseline: the 1-worker run.
3. A rerun of the same uploads (fingerprint only): audio minutes per minute when nothing changed.

    python benchmarks/ingest_throughput.py                 # 3 speakers (~2.5 min of audio)
    python benchmarks/ingest_throughput.py --speakers 2 --workers 1
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(root: Path, n: int) -> float:
    from ingest_audio import CONSENT_PHRASE, RATE, SENTENCES, encode, join, speak, write_speaker

    from voicefleet.tasks.measure.audio import resample

    joe = [speak("joe", s) for s in SENTENCES]
    long = resample(join(joe + joe, gap_s=0.7), RATE, 44100)
    short = resample(join(joe[:2]), RATE, 16000)
    consent = speak("joe", CONSENT_PHRASE)
    for i in range(n):
        write_speaker(root, f"speaker-{i}", {"long.wav": encode(long, 44100, "WAV"),
                                             "short.mp3": encode(short, 16000, "MP3")}, consent_voice=consent)
    return n * (len(long) / 44100 + len(short) / 16000) / 60


def stages(root: Path, n: int, audio_min: float) -> None:
    from voicefleet.tasks.enroll.decode import decode_upload
    from voicefleet.tasks.enroll.features import build_dataset
    from voicefleet.tasks.enroll.ingest import ingest_speaker
    from voicefleet.tasks.enroll.prepare import make_frontend
    from voicefleet.tasks.enroll.slicing import slice_points
    from voicefleet.tasks.enroll.one_speaker import count_speakers, file_speech
    from voicefleet.tasks.enroll.speech_checks import QCConfig, measure_file
    from voicefleet.tasks.enroll.transcribe import Transcriber
    from voicefleet.tasks.enroll.vad import VAD_RATE, detect
    from voicefleet.tasks.measure.audio import resample
    from voicefleet.tasks.store.storage import Store
    from voicefleet.tasks.voices.base_model import load_base

    qc, src = QCConfig(), Store(str(root))
    base = load_base("tiny")
    frontend = make_frontend()
    asr = Transcriber()
    ingest_speaker(src, "speaker-0", qc, transcriber=asr)  # warm every model once, untimed
    t = dict.fromkeys(("decode", "VAD", "checks", "ASR", "features"), 0.0)
    for i in range(n):
        folder = f"speaker-{i}"
        pieces, slices = [], []
        for key in sorted(k for k in src.list(folder) if k.endswith((".wav", ".mp3")) and "consent" not in k):
            data = src.read_bytes(key)
            t0 = time.perf_counter()
            dec = decode_upload(data, key)
            t1 = time.perf_counter()
            x16 = resample(dec.audio, dec.sample_rate, VAD_RATE)
            probs, segs, mask = detect(x16)
            t2 = time.perf_counter()
            measure_file(key, x16, dec.sample_rate, dec.audio, mask, qc)
            pieces.append((key, file_speech(x16, segs)))
            t3 = time.perf_counter()
            slices += [x16[s:e] for s, e in slice_points(segs, probs, len(x16))]
            t["decode"] += t1 - t0
            t["VAD"] += t2 - t1
            t["checks"] += t3 - t2
        t0 = time.perf_counter()
        count_speakers(pieces, qc)
        t["checks"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for x in slices:
            asr.recognise(x, "en", "slice")
        t["ASR"] += time.perf_counter() - t0
        upload = ingest_speaker(src, folder, qc, transcriber=asr)  # untimed: gives the utterances
        t0 = time.perf_counter()
        build_dataset(upload, base, frontend)
        t["features"] += time.perf_counter() - t0
    print(f"\n1. per stage, one process ({n} speakers, {audio_min:.2f} min of audio, models warm)")
    print(f"{'stage':<10}{'wall s':>9}{'audio min / wall min':>24}")
    for k, v in t.items():
        print(f"{k:<10}{v:>9.1f}{audio_min / (v / 60):>24.1f}")
    total = sum(t.values())
    print(f"{'all':<10}{total:>9.1f}{audio_min / (total / 60):>24.1f}")


def on_ray(root: Path, n: int, audio_min: float, workers: list[int]) -> None:
    import ray

    from voicefleet.tasks.cluster.runtime import Resources
    from voicefleet.tasks.enroll.prepare import prepare_speaker, run_on_ray
    from voicefleet.tasks.enroll.upload_fingerprint import model_identity

    identity = model_identity("tiny", {}, {})
    print(f"\n2. prepare_speaker as Ray tasks (fingerprint + ingest + features), {n} speakers, cold workers")
    print(f"{'CPUs':<6}{'wall s':>9}{'audio min / wall min':>24}{'x 1 CPU':>10}{'rerun s':>10}{'rerun audio min/min':>22}")
    base_rate = None
    for w in workers:
        ray.init(num_cpus=w, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        with tempfile.TemporaryDirectory() as store:
            calls = [(f"speaker-{i}", (str(root), store, f"speaker-{i}", "tiny", "bench", None, None, identity))
                     for i in range(n)]
            t0 = time.perf_counter()
            res = run_on_ray(prepare_speaker, calls, Resources(num_cpus=1))
            wall = time.perf_counter() - t0
            bad = [r for r in res if r.status != "prepared"]
            assert not bad, [(r.speaker_id, r.status, r.reasons) for r in bad]
            again = [(name, (a[0], a[1], a[2], a[3], "bench2", a[5], r.source_hash, a[7]))
                     for (name, a), r in zip(calls, sorted(res, key=lambda r: r.speaker_id))]
            t0 = time.perf_counter()
            res2 = run_on_ray(prepare_speaker, again, Resources(num_cpus=1))
            rerun = time.perf_counter() - t0
            assert all(r.status == "unchanged" and r.files_decoded == 0 for r in res2)
        ray.shutdown()
        rate = audio_min / (wall / 60)
        base_rate = base_rate or rate
        print(f"{w:<6}{wall:>9.1f}{rate:>24.1f}{rate / base_rate:>10.2f}{rerun:>10.1f}{audio_min / (rerun / 60):>22.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speakers", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="Ray CPU counts to run the prepare step with")
    ap.add_argument("--skip-stages", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"ingest throughput, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average {open('/proc/loadavg').read().split()[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "enroll"
        audio_min = build(root, args.speakers)
        if not args.skip_stages:
            stages(root, args.speakers, audio_min)
        on_ray(root, args.speakers, audio_min, [int(w) for w in args.workers.split(",")])
    print(f"\nload average after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
