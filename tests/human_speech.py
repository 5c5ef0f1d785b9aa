"""Real human speech for the safety checks (watermark false positives, consent calibration).

* CMU ARCTIC ``arctic_a0007.wav`` (one male speaker, 4 s, 16 kHz, studio): shipped in pysptk's
  sdist, copied into tests/data/human/ with its licence (arctic_COPYING: free for any use, notice
  kept). pysptk itself has no wheel (its sdist compiles SPTK), so the file is vendored (125 KB)
  rather than made a test dependency.
* pyannote-audio's ``sample.wav`` (30 s, 16 kHz, a telephone call between two women, "Diane" and
  "Sheila", with a reference diarization in ``sample.rttm``): not vendored (its recording's
  provenance is not stated) and not a dependency (pyannote-audio pulls lightning, matplotlib,
  opentelemetry, torchcodec...). The benchmarks read it straight out of the wheel when the wheel
  has been downloaded once, at install time::

      pip download --no-deps pyannote-audio==4.0.7 -d DIR     # then: --human DIR

  Tests use it only when VOICEFLEET_PYANNOTE_WHEEL_DIR names that folder (skipped otherwise; never fetched).

Audio is returned as ((T,) float32 mono in [-1, 1], sample rate).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

DATA = Path(__file__).resolve().parent / "data" / "human"
ARCTIC = DATA / "arctic_a0007.wav"
Clip = tuple[np.ndarray, int]


def arctic() -> Clip:
    audio, sr = sf.read(ARCTIC, dtype="float32")
    return audio, sr


def _pyannote_wheel(folder: str | Path) -> Path:
    wheels = sorted(Path(folder).glob("pyannote_audio-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no pyannote_audio-*.whl in {folder} "
                                "(pip download --no-deps pyannote-audio==4.0.7 -d DIR)")
    return wheels[-1]


def pyannote_sample(folder: str | Path) -> tuple[Clip, list[tuple[str, float, float]]]:
    """The 30 s two-speaker sample and its reference turns [(speaker, start_s, end_s)], from the wheel."""
    with zipfile.ZipFile(_pyannote_wheel(folder)) as whl:
        audio, sr = sf.read(io.BytesIO(whl.read("pyannote/audio/sample/sample.wav")), dtype="float32")
        rttm = whl.read("pyannote/audio/sample/sample.rttm").decode()
    names = {"speaker90": "Diane", "speaker91": "Sheila"}  # from the transcript, sample.stm
    turns = []
    for line in rttm.splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append((names.get(f[7], f[7]), float(f[3]), float(f[3]) + float(f[4])))
    return (audio, sr), turns


def solo_turns(turns: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The turns with every stretch where another speaker talks at the same time cut out."""
    out = []
    for spk, start, end in turns:
        pieces = [(start, end)]
        for other, s, e in turns:
            if other == spk:
                continue
            pieces = [p for a, b in pieces for p in ((a, min(b, s)), (max(a, e), b)) if p[1] - p[0] > 1e-3]
        out += [(spk, a, b) for a, b in pieces]
    return sorted(out, key=lambda t: t[1])


def speaker_turns(folder: str | Path, min_s: float = 0.0) -> tuple[int, dict[str, list[np.ndarray]]]:
    """Each pyannote speaker's solo turns (overlaps removed) of at least `min_s` seconds."""
    (audio, sr), turns = pyannote_sample(folder)
    out: dict[str, list[np.ndarray]] = {}
    for spk, a, b in solo_turns(turns):
        if b - a >= min_s:
            out.setdefault(spk, []).append(audio[int(a * sr): int(b * sr)])
    return sr, out


def human_clips(folder: str | Path | None) -> dict[str, Clip]:
    """Every human recording available: arctic always; the whole pyannote sample when `folder`
    holds the wheel."""
    clips = {"arctic_a0007 (1 man, studio)": arctic()}
    if folder is not None:
        clips["pyannote sample (2 women, phone)"] = pyannote_sample(folder)[0]
    return clips
