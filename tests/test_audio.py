"""tasks/measure/audio.py: decode every format, downmix, resample, measure, encode, and fail with the file's name."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicefleet.tasks.measure.audio import (
    AudioDecodeError,
    duration_s,
    encode_flac,
    encode_wav,
    load_audio,
    peak_dbfs,
    probe_audio,
    read_audio,
    resample,
    rms_dbfs,
    to_mono,
    write_audio,
)

SR = 22_050
TONE_HZ = 440.0


def tone(seconds: float = 1.0, sr: int = SR, hz: float = TONE_HZ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


@pytest.fixture
def stereo_files(tmp_path: Path) -> dict[str, Path]:
    """One second of a 440 Hz tone at 22.05 kHz, left channel only, in every format."""
    left = tone()
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    paths = {}
    for ext, (fmt, subtype) in FORMATS.items():
        path = tmp_path / f"take.{ext}"
        sf.write(path, stereo, SR, format=fmt, subtype=subtype)
        paths[ext] = path
    return paths


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_each_format_decodes_to_float32_mono_at_target_rate(stereo_files: dict[str, Path], ext: str) -> None:
    audio = load_audio(stereo_files[ext], 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16_000) <= 16  # codecs may pad or trim a few samples
    assert abs(dominant_hz(audio, 16_000) - TONE_HZ) < 3
    # left-only stereo averages to half amplitude: 0.25 peak -> about -12 dBFS
    assert peak_dbfs(audio) == pytest.approx(-12.04, abs=1.0)


def test_downmix_averages_channels() -> None:
    left, right = tone(amp=0.6), tone(amp=0.2, hz=880)
    stereo = np.stack([left, right], axis=1)
    np.testing.assert_allclose(to_mono(stereo), (left + right) / 2, atol=1e-6)
    decoded = load_audio(encode_wav(stereo, SR, subtype="FLOAT"), SR)
    np.testing.assert_allclose(decoded, (left + right) / 2, atol=1e-6)


def test_mono_file_keeps_native_rate_in_read_audio() -> None:
    audio, sr = read_audio(encode_flac(tone(0.5), SR))
    assert sr == SR and audio.shape == (SR // 2,)


@pytest.mark.parametrize("sr_in,sr_out", [(16_000, 32_000), (22_050, 32_000), (48_000, 16_000)])
def test_resample_keeps_length_and_pitch(sr_in: int, sr_out: int) -> None:
    out = resample(tone(2.0, sr=sr_in), sr_in, sr_out)
    assert out.dtype == np.float32
    assert len(out) == pytest.approx(2 * sr_out, abs=1)
    assert abs(dominant_hz(out, sr_out) - TONE_HZ) < 1
    inner = out[sr_out // 10 : -sr_out // 10]  # away from the filter's edge ringing
    assert peak_dbfs(inner) == pytest.approx(20 * math.log10(0.5), abs=0.05)


def test_path_bytes_and_file_object_decode_alike(stereo_files: dict[str, Path]) -> None:
    path = stereo_files["flac"]
    from_path = load_audio(path, SR)
    from_bytes = load_audio(path.read_bytes(), SR)
    with open(path, "rb") as f:
        from_file = load_audio(f, SR)

    class Stream(io.RawIOBase):  # a non-seekable network stream
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            chunk = self._data.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    from_stream = load_audio(Stream(path.read_bytes()), SR)
    for other in (from_bytes, from_file, from_stream):
        np.testing.assert_array_equal(from_path, other)


def test_probe_reads_the_header_only(stereo_files: dict[str, Path]) -> None:
    info = probe_audio(stereo_files["flac"])
    assert (info.sample_rate, info.channels, info.frames, info.format, info.subtype) == (SR, 2, SR, "FLAC", "PCM_16")
    assert info.duration_s == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# failures: one exception type, naming the file and the problem


def test_zero_byte_file_is_rejected_by_name(tmp_path: Path) -> None:
    empty = tmp_path / "take3.wav"
    empty.touch()
    with pytest.raises(AudioDecodeError, match=r"take3\.wav: empty file \(0 bytes\)") as err:
        load_audio(empty, 16_000)
    assert isinstance(err.value, ValueError) and err.value.source == str(empty)


def test_text_file_named_wav_is_not_audio(tmp_path: Path) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("these are my notes, not a recording\n" * 20)
    with pytest.raises(AudioDecodeError, match=r"notes\.wav: not a recognised audio format"):
        load_audio(fake, 16_000)


def test_truncated_flac_is_rejected(tmp_path: Path) -> None:
    whole = encode_flac(tone(2.0), SR)
    cut = tmp_path / "take7.flac"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(AudioDecodeError, match=r"take7\.flac: .*truncated"):
        load_audio(cut, 16_000)


def test_truncated_wav_is_rejected_although_libsndfile_would_read_it(tmp_path: Path) -> None:
    whole = encode_wav(tone(2.0), SR)
    cut = tmp_path / "take8.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    assert len(sf.read(cut)[0]) > 0  # libsndfile alone decodes the remainder silently
    with pytest.raises(AudioDecodeError, match=r"take8\.wav: truncated: data chunk declares \d+ bytes but only \d+"):
        load_audio(cut, 16_000)


def test_bytes_use_the_given_name_in_errors() -> None:
    with pytest.raises(AudioDecodeError, match=r"^s3://bucket/enroll/spk/take1\.mp3: empty file"):
        load_audio(b"", 16_000, name="s3://bucket/enroll/spk/take1.mp3")


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match=r"absent\.flac: file not found"):
        load_audio(tmp_path / "absent.flac", 16_000)


def test_header_without_samples_is_rejected() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, np.float32), SR, format="WAV", subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match=r"silent\.wav: contains no audio samples"):
        load_audio(buf.getvalue(), 16_000, name="silent.wav")


def test_non_finite_float_wav_is_rejected() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.array([0.0, np.nan, 0.1], np.float32), SR, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="nan.wav: contains NaN"):
        load_audio(buf.getvalue(), SR, name="nan.wav")


# ---------------------------------------------------------------------------------------------
# levels and encoding


def test_levels_in_dbfs() -> None:
    full_sine = tone(1.0, amp=1.0)
    assert peak_dbfs(full_sine) == pytest.approx(0.0, abs=0.01)
    assert rms_dbfs(full_sine) == pytest.approx(-3.01, abs=0.01)
    assert peak_dbfs(tone(amp=0.5)) == pytest.approx(-6.02, abs=0.01)
    assert peak_dbfs(np.zeros(100)) == -math.inf and rms_dbfs(np.zeros(100)) == -math.inf
    assert duration_s(np.zeros((SR * 3, 2)), SR) == 3.0
    with pytest.raises(ValueError, match="empty"):
        rms_dbfs(np.zeros(0))


def test_encode_flac_is_16_bit_and_round_trips() -> None:
    audio = tone(0.5)
    data = encode_flac(audio, SR)
    info = probe_audio(data)
    assert (info.format, info.subtype, info.sample_rate) == ("FLAC", "PCM_16", SR)
    np.testing.assert_allclose(load_audio(data, SR), audio, atol=1.5 / 32768)


def test_encoders_clip_instead_of_wrapping() -> None:
    loud = np.array([1.5, -1.5, 0.25], np.float32)
    for data in (encode_flac(loud, SR), encode_wav(loud, SR)):
        decoded = load_audio(data, SR)
        assert decoded[0] > 0.99 and decoded[1] < -0.99
        assert decoded[2] == pytest.approx(0.25, abs=1e-4)


def test_encoders_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        encode_flac(np.array([np.nan], np.float32), SR)
    with pytest.raises(ValueError, match="non-empty"):
        encode_wav(np.zeros(0, np.float32), SR)
    with pytest.raises(ValueError, match="bit depth"):
        encode_flac(tone(), SR, bits=8)


def test_write_audio_picks_the_format_from_the_suffix(tmp_path: Path) -> None:
    assert probe_audio(write_audio(tmp_path / "a.flac", tone(), SR)).format == "FLAC"
    assert probe_audio(write_audio(tmp_path / "a.wav", tone(), SR)).format == "WAV"
    with pytest.raises(ValueError, match=r"\.mp3"):
        write_audio(tmp_path / "a.mp3", tone(), SR)
