"""What a marked line may go through after it leaves voicefleet: resampling, lossy codecs, gain, trims
(`TRANSFORMS`), and changes of tempo, pitch or speed (`RETIMING`).

Each transform takes and returns ((T,) float32 mono, sample rate). Codecs run through PyAV
(libmp3lame, libopus) at an explicit bit rate, in memory. Shared by tests/test_watermark.py and
benchmarks/watermark_robustness.py.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np

from voicefleet.tasks.measure.audio import load_audio, resample

Transform = Callable[[np.ndarray, int], tuple[np.ndarray, int]]


def encode(audio: np.ndarray, sr: int, codec: str, container: str, bit_rate: int, rate: int) -> bytes:
    """Encode mono float audio with PyAV at `bit_rate` b/s (resampled to `rate` first)."""
    x = resample(audio, sr, rate) if sr != rate else audio
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.bit_rate = bit_rate
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.clip(x, -1, 1).astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def via_codec(codec: str, container: str, rate: int, bit_rate: int = 64000) -> Transform:
    def run(audio: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
        data = encode(audio, sr, codec, container, bit_rate, rate)
        return load_audio(data, rate, name=f"x.{container}"), rate
    return run


def resample_to(rate: int) -> Transform:
    return lambda audio, sr: (resample(audio, sr, rate).astype(np.float32), rate)


def gain(db: float) -> Transform:
    return lambda audio, sr: ((audio * 10 ** (db / 20)).astype(np.float32), sr)


def trim(seconds: float, start_s: float = 0.5) -> Transform:
    return lambda audio, sr: (audio[int(start_s * sr): int((start_s + seconds) * sr)], sr)


TRANSFORMS: dict[str, Transform] = {
    "none": lambda audio, sr: (audio, sr),
    "resample 16 kHz": resample_to(16000),
    "MP3 64 kbps": via_codec("libmp3lame", "mp3", 32000),
    "Opus 64 kbps": via_codec("libopus", "ogg", 48000),
    "gain -12 dB": gain(-12.0),
    "gain +6 dB (clipped)": lambda audio, sr: (np.clip(audio * 2.0, -1, 1).astype(np.float32), sr),
    "trim to 3 s": trim(3.0),
}


def tempo(percent: float) -> Transform:
    """Faster (or slower, negative) by `percent`, pitch kept (librosa's phase vocoder)."""
    import librosa

    return lambda audio, sr: (librosa.effects.time_stretch(audio, rate=1 + percent / 100).astype(np.float32), sr)


def pitch(semitones: float) -> Transform:
    """Higher (or lower) by `semitones`, tempo kept (librosa: time stretch, then resample)."""
    import librosa

    return lambda audio, sr: (librosa.effects.pitch_shift(audio, sr=sr, n_steps=semitones).astype(np.float32), sr)


def speed(percent: float) -> Transform:
    """Played `percent` faster: tempo and pitch together (+5 %: +0.84 semitone), as a tape or a varispeed."""
    return lambda audio, sr: (resample(audio, sr, round(sr / (1 + percent / 100))).astype(np.float32), sr)


RETIMING: dict[str, Transform] = {
    **{f"tempo {p:+d} %": tempo(p) for p in (-10, -5, 5, 10)},
    **{f"pitch {s:+d} st": pitch(s) for s in (-2, -1, 1, 2)},
    **{f"speed {p:+d} %": speed(p) for p in (-10, -5, 5, 10)},
}
