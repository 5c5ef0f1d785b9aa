"""The one-speaker check on real and TTS voices: a take where two voices alternate every 3 s is two speakers,
and the rejection says so instead of blaming the consent clip; one voice is one speaker.

The pyannote two-women call is used only when its wheel has been downloaded and named by
VOICEFLEET_PYANNOTE_WHEEL_DIR (``pip download --no-deps pyannote-audio==4.0.7 -d DIR``): never fetched here."""
from __future__ import annotations

import os

import numpy as np
import pytest
from human_speech import arctic, pyannote_sample, speaker_turns
from ingest_audio import RATE, SENTENCES, add_noise, encode, pause, speak, write_speaker

from voicefleet.tasks.enroll.ingest import QCConfig, RejectedSpeaker, ingest_speaker
from voicefleet.tasks.enroll.one_speaker import count_speakers, file_speech
from voicefleet.tasks.enroll.vad import VAD_RATE, detect
from voicefleet.tasks.measure.audio import load_audio, resample
from voicefleet.tasks.safety.consent import Consent
from voicefleet.tasks.safety.consent_verify import check_consent_clip
from voicefleet.tasks.store.storage import Store

QC = QCConfig(min_speech_s=4.0, recommended_speech_s=4.0)
WHEEL_DIR = os.environ.get("VOICEFLEET_PYANNOTE_WHEEL_DIR")


@pytest.fixture(scope="module")
def voices(request):
    """joe (piper) and alpha (Kokoro), four sentences each, at 24 kHz; cached across runs."""
    folder = request.config.cache.mkdir("voicefleet-one-speaker-voices")
    out = {}
    for key in ("joe", "alpha"):
        clips = []
        for i, text in enumerate(SENTENCES[:4]):
            f = folder / f"{key}-{i}.npy"
            if not f.exists():
                np.save(f, speak(key, text))
            clips.append(np.load(f))
        out[key] = np.concatenate(clips)
    return out


def speech16(x: np.ndarray, rate: int) -> np.ndarray:
    x16 = resample(x, rate, VAD_RATE)
    return file_speech(x16, detect(x16)[1])


def alternate(a: np.ndarray, b: np.ndarray, rate: int, turn_s: float = 3.0, turns: int = 6) -> np.ndarray:
    """`turns` turns of `turn_s` each, a and b in turn, no pause at a change of speaker (a quick exchange)."""
    n = int(turn_s * rate)
    return np.concatenate([(a, b)[i % 2][(i // 2) * n % (len((a, b)[i % 2]) - n):][:n] for i in range(turns)])


def test_alternating_take_is_rejected_for_two_speakers_not_for_consent(voices, tmp_path):
    joe, alpha = voices["joe"], voices["alpha"]
    take = np.concatenate([pause(0.4), alternate(joe, alpha, RATE), pause(0.4)])
    noisy = add_noise(np.concatenate([pause(0.4), joe[: 4 * RATE], pause(0.4)]), 10)  # a file left out on the way
    write_speaker(tmp_path, "two-in-turn", {"take1.wav": encode(take, RATE, "WAV"),
                                            "take2.wav": encode(noisy, RATE, "WAV")})  # consent clip: joe
    store = Store(str(tmp_path))
    # both defects are there: the consent check alone refuses joe's clip against the mixed takes ...
    consent = Consent.model_validate_json((tmp_path / "two-in-turn" / "consent.json").read_text())
    clip = load_audio((tmp_path / "two-in-turn" / "consent.wav").read_bytes(), RATE, name="consent.wav")
    alone = check_consent_clip(consent, clip, [take], RATE)
    assert not alone.verified and "does not match the enrolled speaker" in alone.detail, alone.detail
    # ... and enrollment names the second speaker, not the consent clip
    with pytest.raises(RejectedSpeaker) as e:
        ingest_speaker(store, "two-in-turn", QC)
    first, *rest = e.value.reasons
    assert first.startswith("2 speakers detected") and "take1.wav" in first, e.value.reasons  # the defect, first
    assert any(r.startswith("SNR") and "take2.wav" in r for r in rest), e.value.reasons  # then what was left out
    assert not any("consent" in r for r in e.value.reasons), e.value.reasons


def test_real_man_alternating_with_a_tts_voice_is_two_speakers(voices):
    man, sr = arctic()
    x = speech16(alternate(resample(man, sr, RATE), voices["alpha"], RATE, turns=8), RATE)
    c = count_speakers([("take.wav", x)], QC)
    assert c.clusters == 2 and c.separation > QC.two_speaker_separation, c


def test_one_voice_is_one_speaker(voices):
    for key in ("joe", "alpha"):
        x = speech16(voices[key], RATE)
        c = count_speakers([("a.wav", x[: len(x) // 2]), ("b.wav", x[len(x) // 2:])], QC)
        assert c.windows >= QC.min_speaker_windows and c.clusters == 1, (key, c)


def test_too_little_speech_is_not_judged(voices):
    c = count_speakers([("a.wav", speech16(alternate(voices["joe"], voices["alpha"], RATE, turns=2), RATE))], QC)
    assert c.windows < QC.min_speaker_windows and c.clusters == 1


@pytest.mark.skipif(not WHEEL_DIR, reason="VOICEFLEET_PYANNOTE_WHEEL_DIR not set (the pyannote call is not vendored)")
def test_pyannote_call_holds_two_speakers_and_each_woman_one():
    (audio, sr), _ = pyannote_sample(WHEEL_DIR)
    assert count_speakers([("call.wav", speech16(audio, sr))], QC).clusters == 2
    sr, turns = speaker_turns(WHEEL_DIR)
    for woman, parts in turns.items():
        c = count_speakers([(f"{woman}.wav", speech16(np.concatenate(parts), sr))], QC)
        assert c.clusters == 1, (woman, c)


def test_short_takes_of_two_voices_are_two_speakers(voices):
    """Takes shorter than a window are joined, so an upload of 2.5 s clips is still checked."""
    joe, alpha = speech16(voices["joe"], RATE), speech16(voices["alpha"], RATE)
    n = int(2.5 * VAD_RATE)
    pieces = [(f"{key}{i}.wav", x[i * n:(i + 1) * n]) for i in range(4) for key, x in (("joe", joe), ("alpha", alpha))]
    c = count_speakers(pieces, QC)
    assert c.clusters == 2, c
    # the second voice's files are named (a window across two files may add one of the other voice)
    assert max(sum(f.startswith(v) for f in c.files) for v in ("joe", "alpha")) >= len(c.files) - 1 >= 2, c.files


def test_the_demos_small_one_voice_uploads_are_one_speaker(tmp_path):
    """Four takes of 2-6 s, each its own sentence, speed and level (8-10 windows): under the separation threshold
    of 24+ windows, seed 2 of the demo set read alpha, gongitsune and tebukuro as two speakers (0.057-0.062)."""
    from voicefleet.flows.demo.enrollment import build_demo_enrollment
    from voicefleet.flows.demo.voices import DEMO_VOICES

    build_demo_enrollment(tmp_path, n_speakers=len(DEMO_VOICES), clips_per_speaker=4, seed=2)
    for spk in sorted(tmp_path.iterdir()):
        pieces = []
        for f in sorted(spk.glob("take*")):
            x = load_audio(f.read_bytes(), VAD_RATE, name=f.name)
            pieces.append((f.name, file_speech(x, detect(x)[1])))
        c = count_speakers(pieces, QC)
        assert c.windows >= QC.min_speaker_windows and c.clusters == 1, (spk.name, c)
