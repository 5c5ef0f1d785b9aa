"""Watermark robustness, false positives and cost, on speech from the six pip-shipped voices.

Per transformation (tests/audio_transforms.py: resample to 16 kHz, MP3 and Opus at 64 kbps, gain,
trim to 3 s; tempo +-5 / +-10 % with pitch kept, pitch +-1 / +-2 semitones with tempo kept, speed
+-5 / +-10 % (both); and pitch +-3 semitones, past the grid) it prints
  * detection rate: marked clips whose mark is found (best 2 s window score >= threshold, over
    watermark.py's grid of pitch shifts undone), and the steps it was read at;
  * identification rate: marked clips whose fingerprint lookup names the right line;
  * false positives: clean clips (other sentences, never marked or indexed) flagged as marked,
    and clean clips matched to some indexed line;
plus the mark's SNR, optional DNSMOS (speechmos) before/after, the cost of marking next to the
cost of the FLAC encode it precedes, the cost of detection (as it is, and over the grid: what a clean
upload costs enrollment), per second of audio, and the cost of a lookup in a store of many lines
(`--store-lines`: the indexed lines' fingerprints copied with random band shifts and stretches, in
parts of 1000 rows, the true line among them; seconds per lookup and whether it named the line).

    python benchmarks/watermark_robustness.py [--root DIR] [--per-voice 1] [--dnsmos] [--store-lines 1000,10000]

`--root` reuses a demo enrollment set (e.g. the one benchmarks/consent_calibration.py keeps): its
takes are the clips, alternately marked (rendered lines) and left clean (third-party speech).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audio_transforms import RETIMING, TRANSFORMS, pitch  # noqa: E402

from voicefleet.flows.demo.enrollment import build_demo_enrollment  # noqa: E402
from voicefleet.flows.demo.voices import DEMO_VOICES  # noqa: E402
from voicefleet.tasks.measure.audio import encode_flac, load_audio  # noqa: E402
from voicefleet.tasks.safety import fingerprint, watermark  # noqa: E402
from voicefleet.tasks.store.storage import Store  # noqa: E402

SR = 32000
ROWS = {**TRANSFORMS, **RETIMING, "pitch -3 st (past the grid)": pitch(-3), "pitch +3 st (past the grid)": pitch(3)}


def clips_from(root: Path) -> list[tuple[str, np.ndarray]]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for row in (json.loads(line) for line in (folder / "transcripts.jsonl").read_text().splitlines()):
            out.append((f"{folder.name}/{row['file']}", load_audio((folder / row["file"]).read_bytes(), SR)))
    return out


def nearest_ber(store: Store, audio: np.ndarray, sr: int) -> float:
    """The lowest bit error rate of any indexed line against this (clean, never indexed) audio, over the grid."""
    query = fingerprint.fingerprint(audio, sr)
    _, lines = fingerprint.indexed_lines(store)
    return min((fingerprint.closest(query, line).bit_error_rate for line in lines), default=1.0)


def lookup_cost(root: Path, n: int, marked: list[tuple[str, np.ndarray]], clean: list[tuple[str, np.ndarray]],
                seed: int = 0) -> None:
    """Seconds per lookup in a store of `n` lines: the marked clips' fingerprints, and excerpts (100-400 frames)
    of the clean clips' with a random band shift (-3..3) and stretch (0.8-1.25) until there are `n` (the same
    voices saying other sentences, many times over: keys repeat far more than in a real store, so votes are
    many); queries: each marked clip, pitch +1 st. Prints the mean / max seconds and how many named their line."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    others = [fingerprint.fingerprint(a, SR) for _, a in clean]
    store = Store(str(root))
    rows = [{"job_id": "bench", "line_id": name, "voice_id": "v", "voice_version": "1",
             "fp": fingerprint.fingerprint(a, SR).tobytes()} for name, a in marked]
    while len(rows) < n:
        fp = others[rng.integers(len(others))]
        size = int(rng.integers(100, min(400, len(fp)) + 1))
        start = int(rng.integers(0, len(fp) - size + 1))
        stretch, shift = rng.uniform(0.8, 1.25), int(rng.integers(-3, 4))
        part = fp[start:start + size]
        frames = part[np.minimum(size - 1, np.round(np.arange(0, size * stretch) / stretch).astype(int))]
        frames = frames >> np.uint32(shift) if shift >= 0 else frames << np.uint32(-shift)
        rows.append({"job_id": "bench", "line_id": f"other-{len(rows)}", "voice_id": "v", "voice_version": "1",
                     "fp": frames.astype(np.uint32).tobytes()})
    for part in range(0, n, 1000):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows[part:part + 1000], schema=fingerprint.SCHEMA), buf)
        store.write_bytes(f"{fingerprint.PREFIX}/bench/part-{part // 1000:05d}.parquet", buf.getvalue())
    frames = sum(len(r["fp"]) // 4 for r in rows)
    times, named = [], 0
    for name, audio in marked:
        x, r = pitch(1)(audio, SR)
        t = time.perf_counter()
        m = fingerprint.lookup(store, x, r)
        times.append(time.perf_counter() - t)
        named += m is not None and m.line_id == name
    print(f"lookup in a store of {n} lines ({frames} frames): {np.mean(times):.2f} s mean, {max(times):.2f} s max; "
          f"named the line {named}/{len(marked)} (queries: the marked clips, pitch +1 st)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", help="a demo enrollment set to take clips from (built with TTS if missing)")
    ap.add_argument("--per-voice", type=int, default=2, help="takes per voice to use (half marked, half clean)")
    ap.add_argument("--dnsmos", action="store_true", help="also score DNSMOS before/after (speechmos; slow first call)")
    ap.add_argument("--store-lines", default="1000,10000", help="store sizes to time the lookup in ('' skips)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        if not any(root.glob("*/transcripts.jsonl")):
            build_demo_enrollment(root, n_speakers=len(DEMO_VOICES), clips_per_speaker=max(2, args.per_voice))
        clips = clips_from(root)
        by_voice: dict[str, list] = {}
        for name, audio in clips:
            by_voice.setdefault(name.split("/")[0], []).append((name, audio))
        chosen = [c for v in by_voice.values() for c in v[: args.per_voice]]
        marked_src = chosen[0::2]
        clean = chosen[1::2]

        t = time.perf_counter()
        marked = [(n, watermark.mark(a, SR)) for n, a in marked_src]
        mark_s = time.perf_counter() - t
        t = time.perf_counter()
        for _, a in marked_src:
            encode_flac(a, SR)
        flac_s = time.perf_counter() - t
        audio_s = sum(len(a) for _, a in marked_src) / SR
        snr = [10 * np.log10(np.sum(a ** 2) / np.sum((a - m) ** 2)) for (_, a), (_, m) in zip(marked_src, marked)]

        store = Store(str(Path(tmp) / "store"))
        fingerprint.index_lines(store, "bench", "part-0", [({"line_id": n, "voice_id": n.split("/")[0],
                                                              "voice_version": "1"}, a, SR) for n, a in marked])
        print(f"{len(marked)} marked clips, {len(clean)} clean clips ({audio_s:.1f} s marked audio), "
              f"voices: {', '.join(sorted(by_voice))}")
        print(f"mark cost: {mark_s / audio_s:.3f} s per audio second (FLAC encode, same clips: "
              f"{flac_s / audio_s:.4f} s); SNR of the mark: mean {np.mean(snr):.1f} dB, min {np.min(snr):.1f} dB")
        t = time.perf_counter()
        for _, a in clean:
            watermark.detect(a, SR, grid=(0.0,))
        as_is_s = time.perf_counter() - t
        t = time.perf_counter()
        for _, a in clean:
            watermark.detect(a, SR)
        grid_s = time.perf_counter() - t
        clean_s = sum(len(a) for _, a in clean) / SR
        print(f"detect cost on the clean clips: {as_is_s / clean_s:.3f} s per audio second as it is, "
              f"{grid_s / clean_s:.3f} s over the grid ({len(watermark.SEMITONE_GRID)} steps)")
        print(f"\n{'transformation':28} {'detected':>9} {'identified':>11} {'FP mark':>8} {'FP line':>8} "
              f"{'marked score min':>17} {'clean score max':>16} {'BER max':>8} {'FP BER min':>10}  read at (st)")
        for name, transform in ROWS.items():
            det = ident = fp_mark = fp_line = 0
            mscores, cscores, bers, fp_bers, steps = [], [], [], [], set()
            for line, audio in marked:
                x, r = transform(audio, SR)
                p = watermark.detect(x, r)
                det += p.present
                mscores.append(p.score)
                steps.add(p.semitones) if p.present else None
                m = fingerprint.lookup(store, x, r)
                ident += m is not None and m.line_id == line
                bers.append(m.bit_error_rate if m else 1.0)
            for _, audio in clean:
                x, r = transform(audio, SR)
                p = watermark.detect(x, r)
                fp_mark += p.present
                cscores.append(p.score)
                fp_line += fingerprint.lookup(store, x, r) is not None
                fp_bers.append(nearest_ber(store, x, r))
            print(f"{name:28} {det:>4}/{len(marked):<4} {ident:>5}/{len(marked):<5} {fp_mark:>3}/{len(clean):<4}"
                  f"{fp_line:>3}/{len(clean):<4} {min(mscores):>17.3f} {max(cscores):>16.3f} {max(bers):>8.3f} "
                  f"{min(fp_bers):>10.3f}  {' '.join(f'{s:+.1f}' for s in sorted(steps))}", flush=True)
        for n in (int(v) for v in args.store_lines.split(",") if v):
            lookup_cost(Path(tmp) / f"store-{n}", n, marked, clean)
        if args.dnsmos:
            from speechmos import dnsmos

            from voicefleet.tasks.measure.audio import resample

            def mos(a: np.ndarray) -> dict[str, float]:
                r = dnsmos.run(np.clip(resample(a, SR, 16000), -1, 1).astype(np.float32), 16000)
                return {k: float(r[f"{k}_mos"]) for k in ("sig", "bak", "ovrl", "p808")}

            before = [mos(a) for _, a in marked_src]
            after = [mos(m) for _, m in marked]
            print("\nDNSMOS (mean over the marked clips) clean -> marked: " + ", ".join(
                f"{k.upper()} {np.mean([b[k] for b in before]):.2f} -> {np.mean([a[k] for a in after]):.2f} "
                f"(mean difference {np.mean([a[k] - b[k] for a, b in zip(after, before)]):+.2f}, "
                f"worst {min(a[k] - b[k] for a, b in zip(after, before)):+.2f})" for k in before[0]))

if __name__ == "__main__":
    main()
