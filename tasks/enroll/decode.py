"""Decode an uploaded file by its content, whatever its name says.

libsndfile (tasks/measure/audio.py `read_audio`) reads WAV/FLAC/MP3/OGG Vorbis/Opus/AIFF by sniffing the
bytes, so a `.mp3` that is really a WAV decodes as a WAV. What it does not know (MP4/M4A/AAC,
WMA, WebM, ...) goes to FFmpeg through PyAV. A file neither can read is reported with the reason
a person can act on: empty, truncated, plain text, or an unknown format.

Out: float32 mono (T,) at the file's own rate, plus what the header said (rate, channels,
container), which the checks need (a source rate below 16 kHz is a telephone recording).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from voicefleet.tasks.measure.audio import AudioDecodeError, read_audio, to_mono

# counted per process so tests and benchmarks can prove that work was (not) done
DECODE_CALLS = {"files": 0}


@dataclass(frozen=True)
class Decoded:
    audio: np.ndarray  # (T,) float32 mono at `sample_rate`
    sample_rate: int
    channels: int
    container: str  # "WAV", "FLAC", "MP3", "OGG", or PyAV's name ("mov,mp4,m4a,3gp,3g2,mj2")

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def _looks_like_text(data: bytes) -> str | None:
    head = data[:256]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if sum(ch.isprintable() or ch.isspace() for ch in text) < 0.95 * max(len(text), 1):
        return None
    snippet = " ".join(text.split())[:40]
    return f"looks like text: {snippet!r}"


def _decode_pyav(data: bytes, name: str) -> Decoded:
    import av

    try:
        with av.open(io.BytesIO(data), "r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(name, f"no audio stream ({container.format.name})")
            stream = container.streams.audio[0]
            chunks, rate, channels = [], stream.rate or stream.codec_context.sample_rate, stream.channels
            for frame in container.decode(stream):
                # planar (C, n) or packed (1, n*C); as float32 (C, n)
                arr = frame.to_ndarray()
                if arr.dtype.kind in "iu":
                    arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
                if frame.format.is_planar:
                    chunks.append(arr.astype(np.float32).T)
                else:
                    chunks.append(arr.reshape(-1, len(frame.layout.channels)).astype(np.float32))
                rate = frame.sample_rate
            fmt = container.format.name
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, EOFError) as e:
        raise AudioDecodeError(name, f"corrupt or truncated audio ({type(e).__name__}: {e})") from None
    if not chunks:
        raise AudioDecodeError(name, f"contains no audio samples ({fmt})")
    audio = np.concatenate(chunks)  # (T, C)
    if not np.isfinite(audio).all():
        raise AudioDecodeError(name, "contains NaN or infinite sample values")
    return Decoded(to_mono(audio), int(rate), int(channels or audio.shape[1]), fmt)


def decode_upload(data: bytes, name: str) -> Decoded:
    """Decode one uploaded file's bytes by content.

    Raises:
        AudioDecodeError: empty, truncated, text, or not audio either library can read; the
            message names the file.
    """
    DECODE_CALLS["files"] += 1
    try:
        audio, sr = read_audio(data, name=name)
        import soundfile as sf

        info = sf.info(io.BytesIO(data))
        return Decoded(to_mono(audio), sr, int(info.channels), info.format)
    except AudioDecodeError as e:
        if "not a recognised audio format" not in e.reason:
            raise
        sndfile_error = e
    text = _looks_like_text(data)
    if text:
        raise AudioDecodeError(name, f"not a recognised audio format ({text})")
    try:
        return _decode_pyav(data, name)
    except AudioDecodeError as e:
        known_container = data[4:8] == b"ftyp" or data[:4] in (b"\x1aE\xdf\xa3", b"0&\xb2u")  # MP4, WebM, ASF
        if not known_container and ("Invalid data" in e.reason or "no audio stream" in e.reason):
            raise sndfile_error from None
        raise
