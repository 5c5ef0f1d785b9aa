"""Audio I/O for every stage: decode anything libsndfile reads, measure levels, encode for storage.

One decode path for the whole pipeline (enrollment ingest, consent clips, reference clips, QC):
``load_audio`` turns a path, raw bytes or a binary file object into float32 mono samples at the
rate the caller asks for. Every way a file can fail to decode -- empty, not audio, truncated, no
samples, NaN samples -- raises one exception type, :class:`AudioDecodeError`, whose message names
the file and what was wrong, so an enrollment rejection can quote it as it is.

Samples are float32 in [-1, 1] (full scale = 1.0). Arrays at this module's boundary are
``(T,)`` for mono and ``(T, C)`` for multi-channel, the layout soundfile uses.

Formats are whatever the bundled libsndfile decodes (1.2.x: WAV/RF64/W64, FLAC, OGG Vorbis and
Opus, MP3, AIFF, CAF, ...). torchaudio's ``load``/``save`` are not used: they need torchcodec and
FFmpeg, which this stack does not ship.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioDecodeError",
    "AudioInfo",
    "AudioSource",
    "duration_s",
    "encode_flac",
    "encode_wav",
    "load_audio",
    "peak_dbfs",
    "probe_audio",
    "read_audio",
    "resample",
    "rms_dbfs",
    "to_mono",
    "write_audio",
]

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]
"""A file path, the file's bytes, or a binary file object positioned at the start of the audio."""

# Lossy containers only know their length approximately (an MP3 without a Xing header estimates
# it from the bitrate), so a short read there counts as truncation only past this fraction.
_LOSSY_FORMATS = frozenset({"MP3", "OGG"})
_LOSSY_SHORTFALL_TOLERANCE = 0.02
# How much of a WAV file's start we read to find its data chunk header.
_WAV_HEAD_BYTES = 64 * 1024


class AudioDecodeError(ValueError):
    """An audio file could not be decoded; the message names the file and the problem.

    Attributes:
        source: a printable name of the file (its path, or the name given for bytes).
        reason: what was wrong, without the file name ("empty file (0 bytes)").
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, read without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int
    format: str  # libsndfile major format, e.g. "WAV", "FLAC", "MP3"
    subtype: str  # e.g. "PCM_16", "VORBIS"

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


# --------------------------------------------------------------------------------------------
# decoding


@dataclass
class _Opened:
    """A source made ready for soundfile: something it can open, a name, and the byte size."""

    target: str | io.BytesIO
    name: str
    size: int
    head: bytes  # the first bytes of the file, for container checks


def _open(source: AudioSource, name: str | None) -> _Opened:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or str(path)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(_WAV_HEAD_BYTES)
        except FileNotFoundError:
            raise AudioDecodeError(label, "file not found") from None
        except IsADirectoryError:
            raise AudioDecodeError(label, "is a directory, not an audio file") from None
        except OSError as e:
            raise AudioDecodeError(label, f"cannot be read ({e.strerror or e})") from None
        return _Opened(path, label, size, head)

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "<bytes>"
    elif hasattr(source, "read"):
        # Read from the current position: a stream from an object store need not be seekable,
        # and soundfile needs seek/tell. Enrollment clips are small enough to hold in memory.
        label = name or str(getattr(source, "name", "<file object>"))
        try:
            data = source.read()
        except OSError as e:
            raise AudioDecodeError(label, f"cannot be read ({e})") from None
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{label}: file object must be opened in binary mode")
        data = bytes(data)
    else:
        raise TypeError(
            f"audio source must be a path, bytes or a binary file object, not {type(source).__name__}"
        )
    return _Opened(io.BytesIO(data), label, len(data), data[:_WAV_HEAD_BYTES])


def _libsndfile_reason(err: Exception) -> str:
    """libsndfile's own words, without the '<_io.BytesIO object at 0x...>' noise."""
    text = getattr(err, "error_string", None) or str(err)
    return text.strip().rstrip(".")


def _wav_truncation(head: bytes, size: int) -> str | None:
    """Describe a RIFF/WAVE file whose data chunk claims more bytes than the file holds.

    libsndfile silently decodes what is there in that case, so a cut-off upload would pass as a
    shorter clip. Returns None when the file is whole or is not a plain RIFF/WAVE file.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (chunk_size,) = struct.unpack("<I", head[pos + 4 : pos + 8])
        if chunk_id == b"data":
            if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave a placeholder
                return None
            available = size - (pos + 8)
            if available < chunk_size:
                return f"truncated: data chunk declares {chunk_size} bytes but only {available} are present"
            return None
        pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
    return None


def _open_checked(source: AudioSource, name: str | None) -> _Opened:
    """Open a source and refuse what is visible before decoding: empty files, truncated WAVs."""
    opened = _open(source, name)
    if opened.size == 0:
        raise AudioDecodeError(opened.name, "empty file (0 bytes)")
    truncated = _wav_truncation(opened.head, opened.size)
    if truncated:
        raise AudioDecodeError(opened.name, truncated)
    return opened


def read_audio(source: AudioSource, *, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole file to float32 samples at its native rate.

    Args:
        source: a path, the file's bytes, or a binary file object (read from its current position).
        name: how to call the file in error messages; defaults to the path or the object's name.

    Returns:
        ``(samples, sample_rate)``; samples are ``(T,)`` for mono files and ``(T, C)`` otherwise.

    Raises:
        AudioDecodeError: the file is missing, empty, not audio, truncated, has no samples, or
            decodes to non-finite values.
    """
    opened = _open_checked(source, name)

    try:
        with sf.SoundFile(opened.target) as f:
            declared, fmt, sr = f.frames, f.format, f.samplerate
            audio = f.read(dtype="float32", always_2d=True)  # (T, C)
    except sf.LibsndfileError as e:
        reason = _libsndfile_reason(e)
        if "not recognised" in reason.lower():
            raise AudioDecodeError(opened.name, f"not a recognised audio format ({reason})") from None
        raise AudioDecodeError(opened.name, f"corrupt or truncated audio ({reason})") from None
    except (RuntimeError, ValueError, EOFError) as e:  # soundfile's wrappers around odd headers
        raise AudioDecodeError(opened.name, f"cannot be decoded ({e})") from None

    got = audio.shape[0]
    if got == 0:
        raise AudioDecodeError(opened.name, f"contains no audio samples ({fmt})")
    if got < declared:
        tolerance = _LOSSY_SHORTFALL_TOLERANCE * declared if fmt in _LOSSY_FORMATS else 0
        if declared - got > tolerance:
            raise AudioDecodeError(
                opened.name, f"truncated: decoded {got} of {declared} frames ({fmt})"
            )
    if not np.isfinite(audio).all():
        raise AudioDecodeError(opened.name, "contains NaN or infinite sample values")
    if audio.shape[1] == 1:
        audio = audio[:, 0]
    return np.ascontiguousarray(audio), int(sr)


def probe_audio(source: AudioSource, *, name: str | None = None) -> AudioInfo:
    """Read a file's header (rate, channels, length, format) without decoding its samples.

    Raises:
        AudioDecodeError: the file is missing, empty or not audio. A truncated body is only
            detected here for WAV; :func:`read_audio` catches the rest.
    """
    opened = _open_checked(source, name)
    try:
        info = sf.info(opened.target)
    except sf.LibsndfileError as e:
        raise AudioDecodeError(opened.name, f"not a recognised audio format ({_libsndfile_reason(e)})") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels: ``(T, C) -> (T,)``; a ``(T,)`` array is returned as it is."""
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"audio must be (T,) or (T, C), got shape {audio.shape}")
    return audio.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample ``(T,)`` or ``(T, C)`` float audio with soxr's high-quality filter.

    Returns float32; the input is returned (as float32) when the rates are equal.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return audio
    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def load_audio(source: AudioSource, target_sr: int, *, name: str | None = None) -> np.ndarray:
    """Decode ``source`` to float32 mono at ``target_sr`` Hz: ``(T,)``.

    Multi-channel audio is averaged to mono before resampling (soxr HQ).

    Raises:
        AudioDecodeError: as :func:`read_audio`.
    """
    audio, sr = read_audio(source, name=name)
    return resample(to_mono(audio), sr, target_sr)


# --------------------------------------------------------------------------------------------
# measurements


def duration_s(audio: np.ndarray, sample_rate: int) -> float:
    """Length in seconds of ``(T,)`` or ``(T, C)`` samples at ``sample_rate``."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return audio.shape[0] / sample_rate


def _as_samples(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.size == 0:
        raise ValueError("cannot measure the level of empty audio")
    return audio.astype(np.float64, copy=False)


def peak_dbfs(audio: np.ndarray) -> float:
    """Sample peak in dB relative to full scale (1.0 -> 0 dBFS); ``-inf`` for digital silence."""
    peak = float(np.max(np.abs(_as_samples(audio))))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale over all samples and channels.

    Referenced to a full-scale square wave (0 dBFS), so a full-scale sine reads -3.01 dBFS.
    ``-inf`` for digital silence.
    """
    x = _as_samples(audio)
    rms = math.sqrt(float(np.mean(x * x)))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


# --------------------------------------------------------------------------------------------
# encoding

_PCM_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}


def _encode(audio: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> bytes:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2) or audio.shape[0] == 0:
        raise ValueError(f"audio must be non-empty (T,) or (T, C), got shape {audio.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    # libsndfile wraps out-of-range floats around when writing integers; clip instead.
    audio = np.clip(audio, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_flac(audio: np.ndarray, sample_rate: int, *, bits: int = 16) -> bytes:
    """Encode float samples in [-1, 1] (``(T,)`` or ``(T, C)``) as FLAC bytes, 16-bit by default.

    Samples beyond full scale are clipped, not wrapped.
    """
    if bits not in _PCM_SUBTYPES:
        raise ValueError(f"FLAC bit depth must be one of {sorted(_PCM_SUBTYPES)}, got {bits}")
    return _encode(audio, sample_rate, "FLAC", _PCM_SUBTYPES[bits])


def encode_wav(audio: np.ndarray, sample_rate: int, *, subtype: str = "PCM_16") -> bytes:
    """Encode float samples in [-1, 1] as WAV bytes (``PCM_16``, ``PCM_24`` or ``FLOAT``)."""
    if subtype not in ("PCM_16", "PCM_24", "FLOAT"):
        raise ValueError(f"WAV subtype must be PCM_16, PCM_24 or FLOAT, got {subtype!r}")
    return _encode(audio, sample_rate, "WAV", subtype)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write a ``.wav`` (16-bit) or ``.flac`` (16-bit) file, chosen by the path's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".flac":
        data = encode_flac(audio, sample_rate)
    elif suffix == ".wav":
        data = encode_wav(audio, sample_rate)
    else:
        raise ValueError(f"{path}: write_audio writes .wav or .flac, not {suffix or 'no suffix'!r}")
    path.write_bytes(data)
    return path
