"""The watermark on real human speech and on third-party TTS: false positives, detection after each
transformation, and what marking does to quality (SNR, DNSMOS).

Clips (tests/human_speech.py): CMU ARCTIC a0007 (1 man, studio, 4 s; vendored in tests/data) and,
with ``--human DIR`` (``pip download --no-deps pyannote-audio==4.0.7 -d DIR``), pyannote's 30 s
two-woman phone call read out of the wheel; third-party TTS: Debian's espeak-ng and flite when on
PATH (``apt-get install espeak-ng flite``), two voices each. The pip TTS voices (piper, kokoro)
are covered by benchmarks/watermark_robustness.py.

Every clip is brought to 32 kHz (the rate voicefleet renders and marks at). Per transformation
(tests/audio_transforms.py: codecs, gain, trim; tempo +-5 / +-10 %, pitch +-1 / +-2 semitones, speed
+-5 / +-10 %) it prints, for the clean clips and for the same clips once marked: windows scored
(2 s, hop 1 s), windows at or above the threshold, the clip's verdict as it is and the best / lowest
window score; then over watermark.py's grid (every window of every copy shifted back by a step of
`SEMITONE_GRID`, as `detect` reads a clip that is not marked as it is; one that is is not read
further): windows flagged / windows scored over all steps, the best score and the step it was read
at, and the verdict `detect` gives (a copy is marked where `MARKED_SHARE` of its windows are, or, as
it is, where one window reaches `LONE_WINDOW`). "trim to 3 s" is done at every 3 s offset of each
clip, and those excerpts are counted instead of windows. Windows quieter than 30 dB under the clip's
loudest window are counted apart ("quiet"): perth's mark rides on the speech, so silence carries none.
Then per clip: SNR of the mark (marked - original) and DNSMOS SIG / BAK / OVRL / P.808 of the
original and the marked audio (speechmos, 16 kHz; ``--no-dnsmos`` skips it).

    python benchmarks/watermark_real_speech.py [--human DIR] [--no-dnsmos]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import human_speech  # noqa: E402
from audio_transforms import RETIMING, TRANSFORMS, trim  # noqa: E402

from voicefleet.tasks.measure.audio import load_audio, resample  # noqa: E402
from voicefleet.tasks.safety import watermark  # noqa: E402

SR = 32000
QUIET_DB = 30.0
ROWS = {**TRANSFORMS, **RETIMING}
SENTENCES = ["The museum has a new exhibit about ancient maps, and the children loved it.",
             "Please put the green folder on the top shelf, next to the old maps."]


def third_party() -> dict[str, tuple[np.ndarray, int]]:
    """espeak-ng and flite speech (both sentences, one clip per voice), if the programs are installed."""
    voices = {"espeak-ng en-us": ["espeak-ng", "-v", "en-us", "-w", "{out}", "{text}"],
              "espeak-ng en+f3": ["espeak-ng", "-v", "en+f3", "-w", "{out}", "{text}"],
              "flite slt": ["flite", "-voice", "slt", "-t", "{text}", "-o", "{out}"],
              "flite rms": ["flite", "-voice", "rms", "-t", "{text}", "-o", "{out}"]}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in voices.items():
            if shutil.which(cmd[0]) is None:
                continue
            path = Path(tmp) / "x.wav"
            subprocess.run([a.format(out=path, text=" ".join(SENTENCES)) for a in cmd], check=True,
                           capture_output=True)
            out[f"{name} (TTS)"] = (load_audio(path.read_bytes(), SR, name="x.wav"), SR)
    return out


def quiet(audio: np.ndarray, sr: int) -> np.ndarray:
    """Per scoring window (same layout as watermark.window_scores): is it 30 dB under the loudest?"""
    win, hop = int(watermark.WINDOW_S * sr), int(watermark.HOP_S * sr)
    starts = range(0, max(1, len(audio) - win + hop), hop) if len(audio) > win else [0]
    rms = np.array([np.sqrt(np.mean(audio[s:s + win] ** 2) + 1e-20) for s in starts])
    return 20 * np.log10(rms / rms.max()) < -QUIET_DB


def excerpts(audio: np.ndarray, sr: int, seconds: float = 3.0) -> list[np.ndarray]:
    n = int(seconds * sr)
    return [trim(seconds, start / sr)(audio, sr)[0] for start in range(0, max(1, len(audio) - n + 1), n)]


def score(audio: np.ndarray, transform: str, semitones: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, quiet flags) per window, or per 3 s excerpt for the trim, read `semitones` shifted back."""
    if transform.startswith("trim"):
        parts = excerpts(audio, SR)
        loud = max(float(np.sqrt(np.mean(p ** 2))) for p in parts)
        return (np.array([np.nanmax(watermark.window_scores(p, SR, semitones), initial=0.0) for p in parts]),
                np.array([20 * np.log10(np.sqrt(np.mean(p ** 2)) / loud + 1e-10) < -QUIET_DB for p in parts]))
    x, r = ROWS[transform](audio, SR)
    x = resample(x, r, SR) if r != SR else x
    back = watermark._shifted_back(x, semitones)
    return watermark.window_scores(back, SR), quiet(back, SR)


def table(title: str, clips: dict[str, np.ndarray]) -> None:
    th = watermark.THRESHOLD
    print(f"\n{title}\n{'clip':36} {'transformation':22} {'verdict':>8} {'flagged/units':>14} "
          f"{'quiet flagged':>14} {'best':>8} {'lowest loud':>12} | {'grid flagged':>13} {'grid best':>9} "
          f"{'at st':>6} {'detect':>7}")
    for name, audio in clips.items():
        for transform in ROWS:
            by_step = {0.0: score(audio, transform)}
            as_is = watermark._presence(by_step[0.0][0], 0.0).present
            if not as_is:  # as detect: the grid is read only when the audio as it is reads clean
                by_step.update({g: score(audio, transform, g) for g in watermark.SEMITONE_GRID if g != 0})
            s, q = by_step[0.0]
            loud = s[~q] if (~q).any() else s
            flagged = sum(int((np.nan_to_num(v) >= th).sum()) for v, _ in by_step.values())
            units = sum(int(np.isfinite(v).sum()) for v, _ in by_step.values())
            at, best = max(((g, np.nanmax(v)) for g, (v, _) in by_step.items()), key=lambda t: (t[1], -abs(t[0])))
            verdict = "MARKED" if any(watermark._presence(v, g).present for g, (v, _) in by_step.items()) else "clean"
            print(f"{name:36} {transform:22} {'MARKED' if as_is else 'clean':>8} "
                  f"{int((s[~q] >= th).sum()):>6}/{int((~q).sum()):<7} {int((s[q] >= th).sum()):>6}/{int(q.sum()):<7} "
                  f"{s.max():8.3g} {loud.min():12.3g} | {flagged:>5}/{units:<7} {best:9.3g} {at:+6.1f} {verdict:>7}",
                  flush=True)


def dnsmos(audio: np.ndarray) -> dict[str, float]:
    from speechmos import dnsmos as model

    r = model.run(np.clip(resample(audio, SR, 16000), -1, 1).astype(np.float32), 16000)
    return {k: float(r[f"{k}_mos"]) for k in ("sig", "bak", "ovrl", "p808")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--human", help="folder with the pyannote-audio wheel (adds its 30 s two-speaker call)")
    ap.add_argument("--no-dnsmos", action="store_true")
    ap.add_argument("--no-third-party", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    human = {n: resample(a, sr, SR).astype(np.float32) for n, (a, sr) in human_speech.human_clips(args.human).items()}
    others = {} if args.no_third_party else {n: a for n, (a, _) in third_party().items()}
    clean = {**human, **others}
    print("clips: " + "; ".join(f"{n} {len(a) / SR:.1f} s" for n, a in clean.items()))
    print(f"threshold {watermark.THRESHOLD}; units = 2 s windows (hop 1 s), or 3 s excerpts for the trim; "
          f"quiet = more than {QUIET_DB:g} dB under the loudest unit")
    marked = {n: watermark.mark(a, SR) for n, a in human.items()}
    table("CLEAN speech (false positives)", clean)
    table("MARKED human speech (detection)", marked)
    print(f"\nquality of the mark on human speech (32 kHz){'' if args.no_dnsmos else '; DNSMOS at 16 kHz'}:")
    for name, a in human.items():
        m = marked[name]
        snr = 10 * np.log10(np.sum(a ** 2) / np.sum((a - m) ** 2))
        line = f"  {name:36} SNR {snr:5.1f} dB"
        if not args.no_dnsmos:
            before, after = dnsmos(a), dnsmos(m)
            line += "  DNSMOS original -> marked: " + ", ".join(
                f"{k.upper()} {before[k]:.2f} -> {after[k]:.2f} ({after[k] - before[k]:+.2f})" for k in before)
        print(line, flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
