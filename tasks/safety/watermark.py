"""The inaudible mark on every rendered line, and its detector (presence only).

The mark is resemble-perth's neural watermark (`PerthImplicitWatermarker`, weights in the wheel):
an encoder reshapes the magnitude spectrum below 2 kHz at 32 kHz, the rate voicefleet renders at,
so no resampling is needed on the way in. Its decoder scores a whole clip in [0, 1]; we score
overlapping windows (`WINDOW_S`, hop `HOP_S`) and call the mark present when half the windows with
signal reach `THRESHOLD` or one reaches `LONE_WINDOW`, so a marked line spliced into longer audio, or
trimmed, is still found.

A change of tempo alone (pitch kept) leaves the mark readable as it is; a pitch shift or a speed change
(tempo and pitch together) erases it for the decoder, which reads it back only within ~0.2 semitone of
the marked pitch. So `detect` also scores copies played back at a grid of speeds (`SEMITONE_GRID`,
-2..+2 semitones in 0.4 steps: each undoes a shift to within 0.2 semitone, and the tempo it changes
does not matter), and takes the best; what the grid adds to the false-positive rate on clean speech is
measured by the benchmarks below.

The mark carries no payload: which job / voice version / line a marked file came from is found by
its fingerprint in the store's indexes (tasks/safety/fingerprint.py). Measured robustness, false positives
and quality: benchmarks/watermark_robustness.py (pip TTS voices), benchmarks/watermark_real_speech.py
(human speech, espeak-ng/flite) and the README.

Shapes: audio is (T,) float32 mono in [-1, 1] at `sample_rate`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from voicefleet.tasks.measure.audio import resample

__all__ = ["MARK_RATE", "MIN_SECONDS", "SEMITONE_GRID", "THRESHOLD", "Presence", "SyntheticAudio", "detect", "mark",
           "refuse_marked", "window_scores"]

MARK_RATE = 32000  # perth's model rate
WINDOW_S = 2.0
HOP_S = 1.0
# Shorter audio is returned unmarked. Measured on 0.2-0.5 s cuts of the ARCTIC voice: marked 0.3 s reads
# 0.99 (0.96 a semitone up; tests/test_watermark.py), marked 0.2 s reads 0.001: the floor is 0.3 s.
MIN_SECONDS = 0.3
# Measured per 2 s window (benchmarks/watermark_real_speech.py, watermark_robustness.py): clean human
# speech <= 0.27 (a phone call at -12 dB; a studio voice < 1e-4), clean third-party TTS <= 0.22;
# marked human speech >= 0.99 in every speech window after each tested transformation.
THRESHOLD = 0.5
# A window whose peak is below this (-80 dBFS, above 16-bit dither) holds no signal to score: perth's
# score of digital silence is NaN, so such windows are left out and all-silent audio reads "no signal".
SILENCE_PEAK = 1e-4
# Semitones by which a copy is shifted back before scoring (0: the audio as it is). Measured on a marked
# ARCTIC clip played back off by x semitones: |x| <= 0.2 scores >= 0.93, 0.3 scores 0.29-0.95, 0.4 < 0.33;
# so steps of 0.4 read a shift anywhere in -2.2..+2.2 (speed +-10 % is -1.8 / +1.7). Wider was measured and
# refused: on the clean 30 s phone call (benchmarks/watermark_real_speech.py) steps within +-2 score <= 0.28
# (as it is: 0.22), but -3.2, +2.4 and +2.8 score 0.61, 0.66 and 0.51, false positives at enrollment.
SEMITONE_GRID = tuple(float(x) + 0.0 for x in np.round(np.arange(-2.0, 2.01, 0.4), 1))
# A copy is marked where at least this share of its windows with signal reach `THRESHOLD`, or, as it is, where
# one window reaches `LONE_WINDOW` (a marked line spliced into a longer clean recording: marked windows read
# >= 0.99 after every change measured). Clean speech that went through a phase vocoder (librosa's time stretch
# and pitch shift) gets lone windows over 0.5: the clean phone call pitched up a semitone read 0.66 as it is
# (1 window of 26), slowed 5 % read 0.87 at -0.4 on the grid (6 of its 343 windows over the grid >= 0.5); a
# marked copy read at its step has (nearly) all its windows >= 0.5.
MARKED_SHARE = 0.5
LONE_WINDOW = 0.9


@lru_cache(maxsize=1)
def _watermarker():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation inside perth
        import perth

    if perth.PerthImplicitWatermarker is None:
        raise RuntimeError("resemble-perth could not load its model (it needs setuptools<81 for pkg_resources)")
    import torch

    # a render actor that asked Ray for a GPU sees one; the others mark on the CPU
    return perth.PerthImplicitWatermarker(device="cuda" if torch.cuda.is_available() else "cpu")


def mark(audio: np.ndarray, sample_rate: int, **_: object) -> np.ndarray:
    """The audio with the mark applied, same length, rate and dtype; peak kept within [-1, 1]."""
    wav = np.asarray(audio, dtype=np.float32)
    if len(wav) < MIN_SECONDS * sample_rate:
        return wav
    x = resample(wav, sample_rate, MARK_RATE) if sample_rate != MARK_RATE else wav
    out = np.asarray(_watermarker().apply_watermark(x, MARK_RATE), dtype=np.float32)
    if sample_rate != MARK_RATE:
        out = resample(out, MARK_RATE, sample_rate)
    out = np.pad(out, (0, max(0, len(wav) - len(out))))[: len(wav)]
    peak = float(np.abs(out).max(initial=0.0))
    return out / peak * 0.999 if peak > 0.999 else out


def _score_batch(windows: list[np.ndarray]) -> np.ndarray:
    """Perth's score of each window ((N,) in [0, 1]); windows of one length at `MARK_RATE`, scored together."""
    import torch

    model = _watermarker().perth_net
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(windows)).to(model.device)  # (N, T)
        mag, _ = model.ap.signal_to_magphase(x)  # (N, F, frames)
        return model.decoder(mag).clip(0.0, 1.0).float().cpu().numpy()


def _window_scores_at_mark_rate(x: np.ndarray) -> np.ndarray:
    win, hop = int(WINDOW_S * MARK_RATE), int(HOP_S * MARK_RATE)
    starts = range(0, max(1, len(x) - win + hop), hop) if len(x) > win else [0]
    windows = [x[s:s + win] for s in starts]
    scores = np.full(len(windows), np.nan)
    signal = [i for i, w in enumerate(windows) if np.abs(w).max(initial=0.0) >= SILENCE_PEAK]
    by_length: dict[int, list[int]] = {}
    for i in signal:
        by_length.setdefault(len(windows[i]), []).append(i)
    for idx in by_length.values():
        for k in range(0, len(idx), 64):  # bounded memory for long files
            part = idx[k:k + 64]
            scores[part] = _score_batch([windows[i] for i in part])
    return scores


def _shifted_back(x: np.ndarray, semitones: float) -> np.ndarray:
    """`x` (at `MARK_RATE`) played back so that what was `semitones` up is at its marked pitch again (and
    slower by the same factor; the mark does not mind the tempo)."""
    if semitones == 0:
        return x
    return resample(x, MARK_RATE, round(MARK_RATE * 2 ** (semitones / 12)))


def window_scores(audio: np.ndarray, sample_rate: int, semitones: float = 0.0) -> np.ndarray:
    """Perth's score per window ((W,) in [0, 1], NaN for a window without signal: peak < `SILENCE_PEAK`);
    one window when the audio is shorter than `WINDOW_S`. `semitones`: score the audio shifted back by
    that much first (its windows then lie on the shifted-back copy's time axis)."""
    x = np.asarray(audio, dtype=np.float32)
    x = resample(x, sample_rate, MARK_RATE) if sample_rate != MARK_RATE else x
    return _window_scores_at_mark_rate(_shifted_back(x, semitones))


@dataclass(frozen=True)
class Presence:
    present: bool
    score: float  # best window (0.0 when no window holds signal)
    windows: int
    marked_windows: int
    scored_windows: int = 0  # windows with signal; 0: silent audio, nothing could be detected
    semitones: float = 0.0  # the shift the best score was read at: the audio sits this much above the mark

    @property
    def signal(self) -> bool:
        return self.scored_windows > 0


def _presence(scores: np.ndarray, semitones: float) -> Presence:
    """The verdict on one copy's window scores: at least `MARKED_SHARE` of the windows with signal reach
    `THRESHOLD`, or, as it is (not shifted back), one window reaches `LONE_WINDOW`."""
    scored = scores[np.isfinite(scores)]
    best = float(scored.max(initial=0.0))
    marked = int((scored >= THRESHOLD).sum())
    present = (marked > 0 and marked >= MARKED_SHARE * len(scored)) or (semitones == 0 and best >= LONE_WINDOW)
    return Presence(present, best, len(scores), marked, len(scored), semitones)


def detect(audio: np.ndarray, sample_rate: int, *, grid: tuple[float, ...] = SEMITONE_GRID) -> Presence:
    """Is voicefleet's mark in this audio? (`_presence`'s rule per copy; silent windows not scored).

    The audio as it is first; when that reads unmarked, every copy shifted back by a step of
    `grid` (a pitch shift or a speed change undone), and the best copy's Presence. A copy is marked when
    `MARKED_SHARE` of its windows are, or, as it is, one window reaches `LONE_WINDOW`: so a retimed mark is
    found in a file it mostly covers, not spliced into a longer clean recording. Every step is read, not
    the first that reaches the threshold: a marked copy read at the wrong step can score up to 0.9 (a demo
    voice 2 semitones down, read 0.8 up), so only the best step says how far the pitch moved.
    `grid=(0.0,)`: as it is only. Cost: clean audio (what enrollment mostly sees) is scored len(grid) = 11
    times, each copy 0.9-1.1 times as long as the audio: measured 0.27 s per second of audio on one CPU
    thread, against 0.026 s as it is.
    """
    x = np.asarray(audio, dtype=np.float32)
    x = resample(x, sample_rate, MARK_RATE) if sample_rate != MARK_RATE else x
    best = _presence(_window_scores_at_mark_rate(x), 0.0)
    if best.present or not best.signal:
        return best
    for semitones in sorted((g for g in grid if g != 0), key=abs):  # nearest shifts first: they win a tie
        found = _presence(_window_scores_at_mark_rate(_shifted_back(x, semitones)), semitones)
        if (found.present, found.score) > (best.present, best.score):
            best = found
    return best


class SyntheticAudio(ValueError):
    """Enrollment audio carries voicefleet's own mark: a clone of a clone is refused."""


def refuse_marked(files: list[tuple[str, np.ndarray]], sample_rate: int) -> None:
    """Raise `SyntheticAudio` naming every file whose audio carries the mark (with its score, and the pitch change
    it was found under: a speed change or a pitch shift undone by `detect`'s grid)."""
    found = []
    for name, audio in files:
        presence = detect(audio, sample_rate)
        if presence.present:
            moved = f", pitch changed by {presence.semitones:+.1f} semitones" if presence.semitones else ""
            found.append(f"{name} (mark score {presence.score:.2f} >= {THRESHOLD:.2f}{moved})")
    if found:
        raise SyntheticAudio(f"synthetic voicefleet audio in {', '.join(found)}: voices are enrolled from "
                             "recordings of the person, not from rendered lines")
