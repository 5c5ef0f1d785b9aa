"""Enrollment ingest: a clean speaker is accepted; each broken one is rejected with a reason that
names the file and the measured value. Audio comes from a pip-shipped voice (piper joe)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from voicefleet.tasks.demo_data import build_demo_enrollment
from voicefleet.tasks.ingest import QCConfig, RejectedSpeaker, choose_reference, discover_speakers, ingest_speaker, snr_db
from voicefleet.tasks.storage import Store


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("enroll")
    (speaker,) = build_demo_enrollment(root, n_speakers=1, clips_per_speaker=6)
    return root, speaker


def variant(clean, tmp_path, name, fn):
    root, speaker = clean
    dst = tmp_path / name
    shutil.copytree(root / speaker, dst)
    consent = json.loads((dst / "consent.json").read_text())
    (dst / "consent.json").write_text(json.dumps({**consent, "speaker_id": name}))
    fn(dst)
    return Store(str(tmp_path)), name


def first_take(folder):
    return sorted(folder.glob("take*"))[0]


def test_clean_speaker_is_accepted(clean):
    root, speaker = clean
    store = Store(str(root))
    assert discover_speakers(store) == [speaker]
    up = ingest_speaker(store, speaker)
    assert len(up.utterances) == 6 and up.seconds >= 15
    assert 3.0 <= up.reference.seconds <= 10.0
    assert all(u.audio.dtype == np.float32 for u in up.utterances)


def test_noise_at_10db_snr_is_rejected_with_the_measured_value(clean, tmp_path):
    def add_noise(d):
        for f in d.glob("take*"):
            x, sr = sf.read(f, dtype="float32")
            noise = np.random.default_rng(0).standard_normal(len(x)).astype(np.float32)
            noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2)) / (10 ** (10 / 20))
            sf.write(f, x + noise, sr)
    store, name = variant(clean, tmp_path, "noisy", add_noise)
    with pytest.raises(RejectedSpeaker) as e:
        ingest_speaker(store, name)
    msg = str(e.value)
    assert "SNR" in msg and "< 20 dB in take01" in msg


def test_clipped_audio_is_rejected(clean, tmp_path):
    def clip(d):
        for f in d.glob("take*"):
            x, sr = sf.read(f, dtype="float32")
            sf.write(f, np.clip(x * 30, -1, 1), sr)
    store, name = variant(clean, tmp_path, "clipped", clip)
    with pytest.raises(RejectedSpeaker, match=r"take01\.\w+ is clipped: [\d.]+% of samples at full scale"):
        ingest_speaker(store, name)


def test_too_little_speech_is_rejected(clean, tmp_path):
    def keep_two(d):
        for f in sorted(d.glob("take*"))[2:]:
            f.unlink()
    store, name = variant(clean, tmp_path, "short", keep_two)
    with pytest.raises(RejectedSpeaker, match=r"only [\d.]+ s of accepted speech \(< 15 s\)"):
        ingest_speaker(store, name)


def test_zero_byte_and_missing_transcript_are_reported_per_file(clean, tmp_path):
    def damage(d):
        first_take(d).write_bytes(b"")
        sf.write(d / "extra.wav", np.zeros(32000, np.float32), 32000)
    store, name = variant(clean, tmp_path, "damaged", damage)
    up = ingest_speaker(store, name, QCConfig(min_total_s=5))
    problems = " | ".join(up.file_problems)
    assert "empty file (0 bytes)" in problems and "no transcript for extra.wav" in problems


def test_missing_or_malformed_consent(clean, tmp_path):
    store, name = variant(clean, tmp_path, "noconsent", lambda d: (d / "consent.json").unlink())
    with pytest.raises(RejectedSpeaker, match="consent.json missing"):
        ingest_speaker(store, name)
    store, name = variant(clean, tmp_path, "badconsent", lambda d: (d / "consent.json").write_text("{oops"))
    with pytest.raises(RejectedSpeaker, match="not valid JSON"):
        ingest_speaker(store, name)


def test_snr_estimate_tracks_added_noise():
    rng = np.random.default_rng(1)
    t = np.arange(32000 * 3) / 32000
    speechlike = (np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)).astype(np.float32) * 0.5
    assert snr_db(speechlike + 0.0005 * rng.standard_normal(len(t))) > 40
    assert snr_db(speechlike + 0.1 * rng.standard_normal(len(t))) < 20


def test_reference_clip_is_joined_from_short_utterances():
    from voicefleet.tasks.ingest import Utterance
    utts = [Utterance(f"t{i}.wav", f"text {i}", "en", np.zeros(int(32000 * 1.8), np.float32)) for i in range(3)]
    ref = choose_reference(utts, QCConfig())
    assert ref.file == "t0.wav+t1.wav" and 3.0 <= ref.seconds <= 10.0
