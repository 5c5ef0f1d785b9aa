"""Calibrate the consent-clip checks on the six distinct pip-shipped voices (flows/demo/).

Prints, for every (consent clip of voice A, enrollment takes of voice B) pair, the GE2E cosine
similarity of the clip to B's centroid (tasks/measure/speaker.py) -- the diagonal is "same speaker", the
rest "another speaker" -- and, per consent clip, the Whisper tiny.en transcript and its word error
rate against the consent phrase, next to the WER of an enrollment take (a wrong phrase by the
right speaker). The thresholds in tasks/safety/consent_verify.py come from these figures.

With ``--human DIR`` (a folder holding the pyannote-audio wheel: ``pip download --no-deps
pyannote-audio==4.0.7 -d DIR``) it first scores real voices (tests/human_speech.py): each pyannote
speaker's solo speech cut into consent-sized clips, every clip against the rest of the same
speaker's solo speech (same speaker) and against all of the other speaker's (another speaker), and
CMU ARCTIC's male speaker (whole clip, and each half against the other) against both.

    python benchmarks/consent_calibration.py [--clips 3] [--root DIR] [--human DIR [--human-only]]
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
import human_speech  # noqa: E402

from voicefleet.flows.demo.enrollment import build_demo_enrollment
from voicefleet.flows.demo.voices import DEMO_VOICES
from voicefleet.tasks.measure.asr import ASR, wer
from voicefleet.tasks.measure.audio import load_audio
from voicefleet.tasks.measure.speaker import embed, mean_embedding, similarity
from voicefleet.tasks.safety.consent_verify import MAX_PHRASE_CER, MIN_SPEAKER_SIMILARITY, phrase_match

SR = 16000


def human_voices(folder: str, chunk_seconds: list[float]) -> None:
    """Same-speaker and other-speaker similarity on real recordings (see the module docstring)."""
    sr, turns = human_speech.speaker_turns(folder)
    solo = {spk: np.concatenate(parts) for spk, parts in turns.items()}
    arctic, asr = human_speech.arctic()
    e_arctic = embed(arctic, asr)
    half = len(arctic) // 2
    print("real voices: pyannote sample (Diane, Sheila: two women, one phone call; solo speech "
          + ", ".join(f"{s} {len(a) / sr:.1f} s" for s, a in solo.items()) + "), CMU ARCTIC a0007 (one man, 4 s)")
    print(f"ARCTIC first half vs second half (2 s each): {similarity(embed(arctic[:half], asr), embed(arctic[half:], asr)):.3f}")
    whole = {s: embed(a, sr) for s, a in solo.items()}
    for length in chunk_seconds:
        n = int(length * sr)
        same, other = [], []
        for s, a in solo.items():
            for i in range(0, len(a) - n + 1, n):  # the clip vs the rest of that speaker's speech
                e = embed(a[i:i + n], sr)
                same.append(similarity(e, embed(np.concatenate([a[:i], a[i + n:]]), sr)))
                other += [similarity(e, whole[t]) for t in solo if t != s]
        men = [similarity(e_arctic, w) for w in whole.values()]
        print(f"{length:g} s clips: same speaker {' '.join(f'{v:.3f}' for v in same)} (min {min(same):.3f}); "
              f"other woman {' '.join(f'{v:.3f}' for v in other)} (max {max(other):.3f}); "
              f"ARCTIC man vs each woman {' '.join(f'{v:.3f}' for v in men)}")
        print(f"  threshold {MIN_SPEAKER_SIMILARITY:.2f}: genuine chunks rejected {sum(v < MIN_SPEAKER_SIMILARITY for v in same)}"
              f"/{len(same)}, other speaker accepted {sum(v >= MIN_SPEAKER_SIMILARITY for v in other + men)}"
              f"/{len(other) + len(men)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=3, help="enrollment takes per voice")
    ap.add_argument("--root", help="keep (and reuse) the built enrollment set here")
    ap.add_argument("--human", help="folder with the pyannote-audio wheel: score real voices too")
    ap.add_argument("--chunks", default="2.5,3,4", help="consent-clip lengths (s) for the real voices")
    ap.add_argument("--human-only", action="store_true", help="skip the TTS voices")
    args = ap.parse_args()
    if args.human:
        human_voices(args.human, [float(c) for c in args.chunks.split(",")])
        if args.human_only:
            return
        print()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        ids = [v.speaker_id for v in DEMO_VOICES]
        if not all((root / sid / "consent.json").exists() for sid in ids):
            ids = build_demo_enrollment(root, n_speakers=len(DEMO_VOICES), clips_per_speaker=args.clips,
                                        overwrite=True)
        takes, consent, phrase, texts = {}, {}, {}, {}
        for sid in ids:
            folder = root / sid
            rows = [json.loads(line) for line in (folder / "transcripts.jsonl").read_text().splitlines()]
            takes[sid] = [load_audio((folder / r["file"]).read_bytes(), SR, name=r["file"]) for r in rows]
            texts[sid] = rows[0]["text"]
            consent[sid] = load_audio((folder / "consent.wav").read_bytes(), SR, name="consent.wav")
            phrase[sid] = json.loads((folder / "consent.json").read_text())["consent_phrase"]
    print(f"built {len(ids)} voices x {args.clips} takes + consent clip in {time.perf_counter() - t0:.0f} s")

    centroid = {sid: mean_embedding([embed(a, SR) for a in takes[sid]]) for sid in ids}
    clip_emb = {sid: embed(consent[sid], SR) for sid in ids}
    print("\nspeaker similarity: consent clip (rows) vs enrollment centroid (columns)")
    print(" " * 18 + "".join(f"{s[5:]:>12}" for s in ids))
    same, other = [], []
    for a in ids:
        row = [similarity(clip_emb[a], centroid[b]) for b in ids]
        print(f"{a:>18}" + "".join(f"{v:12.3f}" for v in row))
        for b, v in zip(ids, row):
            (same if a == b else other).append(v)
    print(f"same speaker: min {min(same):.3f}  mean {np.mean(same):.3f}")
    print(f"other speaker: max {max(other):.3f}  mean {np.mean(other):.3f}")
    print(f"threshold {MIN_SPEAKER_SIMILARITY:.2f}: margin below same-speaker min {min(same) - MIN_SPEAKER_SIMILARITY:+.3f}, "
          f"above other-speaker max {MIN_SPEAKER_SIMILARITY - max(other):+.3f}")

    asr = ASR()
    print("\nconsent phrase (Whisper tiny.en): character error rate of the consent clip | of a take (wrong phrase)")
    right, wrong = [], []
    for sid in ids:
        heard = asr.transcribe(consent[sid], SR, "en").text
        heard_wrong = asr.transcribe(takes[sid][0], SR, "en").text
        right.append(1 - phrase_match(phrase[sid], heard))
        wrong.append(1 - phrase_match(phrase[sid], heard_wrong))
        print(f"{sid:>18}  {right[-1]:.2f} (raw WER {wer(phrase[sid], heard):.2f}) {heard!r}")
        print(f"{'':>18}  {wrong[-1]:.2f} for {texts[sid]!r}")
    print(f"right phrase: max CER {max(right):.2f}; wrong phrase: min CER {min(wrong):.2f}; "
          f"threshold {MAX_PHRASE_CER:.2f}")


if __name__ == "__main__":
    main()
