"""Post-processing of one rendered line: silence trimmed to a pad, length fitted, loudness normalised.

    raw (T,) float32 at sr
      -> remove_dc         20 Hz high-pass (a DC offset would eat the headroom the gain needs)
      -> trim_silence      leading/trailing silence cut to exactly `pad_s` on each side
      -> fit_duration      (only with a target) bounded phase-vocoder time-stretch of the speech
      -> normalize_loudness  gain to `loudness_lufs` (ITU-R BS.1770 / EBU R128 via pyloudnorm),
                           then a look-ahead peak limiter so the true peak (4x oversampled) stays
                           at or below `true_peak_dbtp`
      -> Processed         the audio plus what was measured (recorded in the index)

A target length is met by the model's speed first (`speed_for_target`, the caller re-synthesises
with it: the GPT-SoVITS speed factor is bounded to 0.6–1.65, the reference web UI's range), then by
a time-stretch of at most `max_stretch` (default ±15 % of the duration). What is left after both
is recorded as `duration_deviation_s`, never hidden.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPEED_RANGE = (0.6, 1.65)  # GPT-SoVITS speed factors the model renders sanely (reference web UI)
_BLOCK_S = 0.4  # BS.1770 gating block
_FADE_S = 0.005


class PostConfigError(ValueError):
    """A post-processing setting is out of range."""


@dataclass(frozen=True)
class PostConfig:
    """Knobs of post-processing (defaults: EBU R128 broadcast delivery, 0.1 s pads)."""

    loudness_lufs: float | None = -23.0  # None: loudness measured but not changed
    true_peak_dbtp: float = -1.0
    pad_s: float = 0.1  # silence kept before and after the speech
    trim_top_db: float = 40.0  # below the loudest frame by this much counts as silence
    max_stretch: float = 0.15  # time-stretch changes the duration by at most this fraction
    duration_tolerance_s: float = 0.05  # |achieved - target| within this is "met"

    def __post_init__(self) -> None:
        if self.loudness_lufs is not None and not -70.0 <= self.loudness_lufs <= 0.0:
            raise PostConfigError(f"loudness target {self.loudness_lufs} LUFS is outside -70..0")
        if not -20.0 <= self.true_peak_dbtp <= 0.0:
            raise PostConfigError(f"true-peak ceiling {self.true_peak_dbtp} dBTP is outside -20..0")
        if not 0.0 <= self.pad_s <= 2.0:
            raise PostConfigError(f"silence pad {self.pad_s} s is outside 0..2 s")
        if not 0.0 <= self.max_stretch <= 0.5:
            raise PostConfigError(f"time-stretch bound {self.max_stretch} is outside 0..0.5")
        if not 0.0 < self.duration_tolerance_s <= 1.0:
            raise PostConfigError(f"duration tolerance {self.duration_tolerance_s} s is outside 0..1 s")


@dataclass
class Processed:
    wav: np.ndarray  # (T,) float32
    sample_rate: int
    loudness_lufs: float | None  # integrated loudness after processing; None for silence
    true_peak_dbtp: float | None
    duration_s: float
    target_seconds: float | None
    duration_deviation_s: float | None  # achieved - target
    stretch: float  # duration factor applied by the time-stretch (1.0: none)


# ---------------------------------------------------------------- measurements
def loudness_lufs(wav: np.ndarray, sr: int) -> float:
    """Integrated loudness (LUFS, BS.1770-4); a clip shorter than one 0.4 s block is one block.

    -inf for silence.
    """
    import pyloudnorm

    x = np.asarray(wav, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    block = min(_BLOCK_S, x.size / sr)
    return float(pyloudnorm.Meter(sr, block_size=block).integrated_loudness(x))


def _oversampled_abs(wav: np.ndarray) -> np.ndarray:
    """|x| at 4x the rate, folded back to (T,): the largest of the 4 sub-samples per sample."""
    from scipy.signal import resample_poly

    x = np.asarray(wav, dtype=np.float64)
    return np.abs(resample_poly(x, 4, 1)).reshape(-1, 4).max(axis=1)


def true_peak_dbtp(wav: np.ndarray, sr: int | None = None) -> float:
    """True peak in dBTP by 4x polyphase oversampling (BS.1770 Annex 2); -inf for silence."""
    if np.asarray(wav).size == 0:
        return -math.inf
    peak = float(_oversampled_abs(wav).max())
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


# ---------------------------------------------------------------- silence
def speech_bounds(wav: np.ndarray, top_db: float) -> tuple[int, int]:
    """[start, end) samples of the non-silent part; (0, 0) when it is all silence."""
    import librosa

    x = np.asarray(wav, dtype=np.float32)
    if x.size == 0 or not np.any(x):
        return 0, 0
    _, (start, end) = librosa.effects.trim(x, top_db=top_db, frame_length=1024, hop_length=256)
    return int(start), int(end)


def _with_pads(speech: np.ndarray, sr: int, pad_s: float) -> np.ndarray:
    pad = np.zeros(int(round(pad_s * sr)), np.float32)
    out = np.concatenate([pad, speech.astype(np.float32), pad])
    n = min(int(_FADE_S * sr), len(speech) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        out[len(pad):len(pad) + n] *= ramp
        out[len(out) - len(pad) - n:len(out) - len(pad)] *= ramp[::-1]
    return out


def trim_silence(wav: np.ndarray, sr: int, pad_s: float = 0.1, top_db: float = 40.0) -> np.ndarray:
    """Leading and trailing silence replaced by exactly `pad_s` of silence; silence is left as is."""
    start, end = speech_bounds(wav, top_db)
    if end <= start:
        return np.asarray(wav, dtype=np.float32)
    return _with_pads(np.asarray(wav[start:end]), sr, pad_s)


# ---------------------------------------------------------------- length
def speed_for_target(duration_s: float, target_s: float, speed: float = 1.0,
                     speed_range: tuple[float, float] = SPEED_RANGE) -> float:
    """The model speed expected to turn `duration_s` (rendered at `speed`) into `target_s`."""
    if duration_s <= 0 or target_s <= 0:
        raise ValueError(f"durations must be positive, got {duration_s} s -> {target_s} s")
    lo, hi = speed_range
    return float(min(hi, max(lo, speed * duration_s / target_s)))


def fit_duration(wav: np.ndarray, sr: int, target_s: float, pad_s: float, max_stretch: float,
                 top_db: float = 40.0) -> tuple[np.ndarray, float]:
    """Time-stretch the speech between the pads towards `target_s` (pads included).

    The duration factor is bounded to [1 - max_stretch, 1 + max_stretch]; when that reaches the
    target, the result has exactly round(target_s * sr) samples. Returns (audio, factor applied).
    """
    import librosa

    start, end = speech_bounds(wav, top_db)
    if end <= start:
        return np.asarray(wav, dtype=np.float32), 1.0
    speech = np.asarray(wav[start:end], dtype=np.float32)
    pad_n = int(round(pad_s * sr))
    want = int(round(target_s * sr)) - 2 * pad_n
    if want <= 0:
        return _with_pads(speech, sr, pad_s), 1.0
    factor = min(1.0 + max_stretch, max(1.0 - max_stretch, want / len(speech)))
    if abs(factor - 1.0) > 1e-4:
        speech = librosa.effects.time_stretch(speech, rate=1.0 / factor).astype(np.float32)
    n = int(round(factor * (end - start)))
    speech = np.pad(speech, (0, max(0, n - len(speech))))[:n]  # the vocoder rounds to its hop
    return _with_pads(speech, sr, pad_s), float(factor)


# ---------------------------------------------------------------- loudness
def limit_peaks(wav: np.ndarray, sr: int, ceiling_dbtp: float, lookahead_s: float = 0.005) -> np.ndarray:
    """Look-ahead peak limiter on the 4x-oversampled envelope: gain never above what each peak needs.

    The needed gain is min-filtered over ±lookahead and then averaged over half that window, so the
    smoothed gain at every peak is at most the gain that peak needs.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    env = _oversampled_abs(wav)
    need = np.minimum(1.0, ceiling / np.maximum(env, 1e-12))
    if need.min() >= 1.0:
        return np.asarray(wav, dtype=np.float32)
    w = max(1, int(lookahead_s * sr))
    gain = uniform_filter1d(minimum_filter1d(need, size=2 * w + 1, mode="nearest"), size=w + 1, mode="nearest")
    return (np.asarray(wav, dtype=np.float64) * gain).astype(np.float32)


def remove_dc(wav: np.ndarray, sr: int, cutoff_hz: float = 20.0) -> np.ndarray:
    """Zero-phase 2nd-order high-pass below the speech band: no offset or rumble for the gain to amplify."""
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(wav, dtype=np.float64)
    if x.size < 64:
        return (x - x.mean()).astype(np.float32)
    sos = butter(2, cutoff_hz, btype="highpass", fs=sr, output="sos")
    return sosfiltfilt(sos, x, padlen=min(x.size - 1, 3 * 2 * len(sos))).astype(np.float32)


def normalize_loudness(wav: np.ndarray, sr: int, target_lufs: float | None, ceiling_dbtp: float
                       ) -> tuple[np.ndarray, float | None, float | None]:
    """Gain to `target_lufs`, peaks limited to `ceiling_dbtp`. Returns (audio, LUFS, dBTP) after.

    Silence is returned unchanged with loudness None. With `target_lufs` None only the ceiling
    is enforced.
    """
    y = np.asarray(wav, dtype=np.float32)
    lufs = loudness_lufs(y, sr)
    if not math.isfinite(lufs):
        tp = true_peak_dbtp(y)
        return y, None, tp if math.isfinite(tp) else None
    margin = 0.2  # the limiter's gain ripple and the final re-measure stay under the ceiling
    for _ in range(8):  # each round: gain up by the shortfall, limit; converges in 1-3 rounds on speech
        if target_lufs is not None:
            y = (y * 10.0 ** ((target_lufs - lufs) / 20.0)).astype(np.float32)
        y = limit_peaks(y, sr, ceiling_dbtp - margin)
        lufs = loudness_lufs(y, sr)
        if target_lufs is None or abs(lufs - target_lufs) < 0.1:
            break
    tp = true_peak_dbtp(y)
    if tp > ceiling_dbtp:  # last resort: plain gain, so the ceiling always holds
        y = (y * 10.0 ** ((ceiling_dbtp - margin - tp) / 20.0)).astype(np.float32)
        lufs, tp = loudness_lufs(y, sr), true_peak_dbtp(y)
    return y, float(lufs), float(tp)


# ---------------------------------------------------------------- the whole chain
def postprocess(wav: np.ndarray, sr: int, cfg: PostConfig, target_seconds: float | None = None) -> Processed:
    """(T,) float32 at sr -> trimmed, length-fitted, loudness-normalised audio and its measurements."""
    y = trim_silence(remove_dc(wav, sr), sr, cfg.pad_s, cfg.trim_top_db)
    stretch = 1.0
    if target_seconds is not None and abs(len(y) / sr - target_seconds) > cfg.duration_tolerance_s:
        y, stretch = fit_duration(y, sr, target_seconds, cfg.pad_s, cfg.max_stretch, cfg.trim_top_db)
    y, lufs, tp = normalize_loudness(y, sr, cfg.loudness_lufs, cfg.true_peak_dbtp)
    duration = len(y) / sr
    return Processed(y, sr, lufs, tp, duration, target_seconds,
                     None if target_seconds is None else duration - target_seconds, stretch)
