"""Enrollment ingest on real uploads: voices from pip-shipped TTS (tests/ingest_audio.py), damaged the
way people's uploads are. A clean speaker is accepted without transcripts (ASR); every bad upload is
rejected with the check that failed, its measured value and the file."""
from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from ingest_audio import RATE, SENTENCES, add_noise, encode, join, music_bed, pause, speak, write_speaker

from voicefleet.tasks.enroll.decode import DECODE_CALLS, decode_upload
from voicefleet.tasks.enroll.ingest import (
    QCConfig,
    RejectedSpeaker,
    Utterance,
    choose_reference,
    discover_speakers,
    ingest_speaker,
)
from voicefleet.tasks.enroll.speech_checks import snr_db
from voicefleet.tasks.enroll.vad import VAD_RATE, speech_probs, speech_segments
from voicefleet.tasks.enroll.voice_ids import assign_voice_ids, voice_id_for
from voicefleet.tasks.measure.asr import wer
from voicefleet.tasks.measure.audio import AudioDecodeError, resample
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import Store

QC = QCConfig(min_speech_s=4.0, recommended_speech_s=4.0)  # short test uploads; the default (30 s) is tested below


@pytest.fixture(scope="session")
def voices(request):
    """joe (piper) speaking six sentences, alpha (Kokoro) two; cached across runs in pytest's cache dir."""
    folder = request.config.cache.mkdir("voicefleet-ingest-voices")
    out = {}
    for key, n in (("joe", 6), ("alpha", 2)):
        clips = []
        for i, text in enumerate(SENTENCES[:n]):
            f = folder / f"{key}-{i}.npy"
            if not f.exists():
                np.save(f, speak(key, text))
            clips.append(np.load(f))
        out[key] = clips
    return out


@pytest.fixture(scope="session")
def clean_take(voices):
    return join(voices["joe"][:3])  # ~10 s: three sentences with pauses


def test_voice_ids_come_from_real_names():
    assert voice_id_for("José García-Ñúñez") == "jose-garcia-nunez"
    assert voice_id_for("  Zoë  O'Brien ") == "zoe-o-brien"
    assert voice_id_for("demo-joe") == "demo-joe"  # already safe: unchanged
    for bad in ("..", "../etc", "a/b", "c:\\x", "--"):
        with pytest.raises(InvalidId):
            voice_id_for(bad)
    ids, problems = assign_voice_ids(["José García", "jose garcia", "Ana"])
    assert ids == {"Ana": "Ana"}  # a safe name is kept as it is
    assert set(problems) == {"José García", "jose garcia"}
    assert "all map to voice id 'jose-garcia'" in problems["jose garcia"]


def test_files_decode_by_content_and_bad_ones_are_named(clean_take):
    wav = encode(clean_take, RATE, "WAV")
    assert decode_upload(wav, "really-a-wav.mp3").container == "WAV"  # mislabelled, still audio
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:  # m4a/AAC: decoded through PyAV
        s = c.add_stream("aac", rate=RATE)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(clean_take[None], format="flt", layout="mono")
        frame.sample_rate = RATE
        for f in (frame, None):
            for p in s.encode(f):
                c.mux(p)
    m4a = decode_upload(buf.getvalue(), "take.m4a")
    assert m4a.sample_rate == RATE and abs(m4a.seconds - len(clean_take) / RATE) < 0.1
    flac = encode(clean_take, RATE, "FLAC")
    for data, name, reason in ((b"", "empty.wav", r"empty file \(0 bytes\)"),
                               (b"this is a text file, not audio", "notes.wav", "looks like text"),
                               (flac[: len(flac) // 2], "cut.flac", "truncated"),
                               (np.random.default_rng(0).bytes(4000), "noise.ogg", "not a recognised audio format")):
        with pytest.raises(AudioDecodeError, match=reason) as e:
            decode_upload(data, name)
        assert name in str(e.value)


def test_snr_ignores_digital_silence_and_needs_no_pauses(voices, clean_take):
    def measure(x):
        x16 = resample(x, RATE, VAD_RATE)
        mask = np.zeros(len(x16), bool)
        for s, e in speech_segments(speech_probs(x16)):
            mask[s:e] = True
        return snr_db(x16, mask)

    zeros = np.zeros(2 * RATE, np.float32)
    noisy_padded, method = measure(np.concatenate([zeros, add_noise(clean_take, 10), zeros]))
    assert 7 < noisy_padded < 13, (noisy_padded, method)
    clean, method = measure(np.concatenate(voices["joe"][:3]))  # sentences back to back: no pauses
    assert method == "wada" and clean > 25


@pytest.fixture(scope="module")
def clean_speaker(voices, tmp_path_factory):
    """A non-ASCII folder name, no transcripts, a ~40 s WAV at 44.1 kHz and an MP3 at 16 kHz."""
    root = tmp_path_factory.mktemp("clean")
    joe = voices["joe"]
    long = resample(join(joe + joe, gap_s=0.7), RATE, 44100)
    short = resample(join(joe[:2]), RATE, 16000)
    write_speaker(root, "José García-Ñúñez", {"long take.wav": encode(long, 44100, "WAV"),
                                              "kitchen.mp3": encode(short, 16000, "MP3")})
    return Store(str(root)), ingest_speaker(Store(str(root)), "José García-Ñúñez")  # default QC: 30 s minimum


def test_clean_speaker_without_transcripts_is_accepted_with_asr(clean_speaker):
    store, up = clean_speaker
    assert discover_speakers(store) == ["José García-Ñúñez"]
    assert up.speaker_id == "jose-garcia-nunez" and up.display_name == "José García-Ñúñez"
    assert up.speech_s >= QCConfig().min_speech_s and up.asr_calls == len(up.utterances)
    assert all(3.0 <= u.seconds <= 10.0 for u in up.utterances), [round(u.seconds, 1) for u in up.utterances]
    assert all(m.snr_db > 30 and m.music_fraction < 0.1 for m in up.measures)
    heard = " ".join(u.text for u in up.utterances if u.file.startswith("long take.wav"))
    assert wer(" ".join(SENTENCES + SENTENCES), heard) < 0.25, heard
    assert 3.0 <= up.reference.seconds <= 10.0


def test_long_files_are_cut_in_pauses(clean_speaker):
    _, up = clean_speaker
    cuts = [u for u in up.utterances if u.file.startswith("long take.wav@")]
    assert len(cuts) >= 4  # ~40 s of audio -> several 3-10 s utterances
    for u in cuts:  # every cut lands in a pause: the utterance starts and ends quietly
        edge = int(0.05 * 32000)
        assert np.sqrt(np.mean(u.audio[:edge] ** 2)) < 0.01 and np.sqrt(np.mean(u.audio[-edge:] ** 2)) < 0.01


def bad_uploads(voices) -> dict:
    joe, alpha = voices["joe"], voices["alpha"]
    clean = join(joe[:3])
    zeros = np.zeros(2 * RATE, np.float32)
    wav = lambda x, rate=RATE: {"take1.wav": encode(x, rate, "WAV")}  # noqa: E731
    return {
        "too-short": (wav(join(joe[:1])), r"only [\d.]+ s of clean speech \(< 4 s\)"),
        "noisy": (wav(np.concatenate([zeros, add_noise(clean, 10), zeros])), r"SNR \d+\.\d dB < 20 dB in take1\.wav"),
        "clipped": (wav(np.clip(clean * 30, -1, 1)), r"clipped: [\d.]+% of samples at full scale \(> 0\.10%\) in take1\.wav"),
        "two-voices": (wav(join([joe[0], alpha[0], joe[1], alpha[1]])), r"2 speakers detected: \d+% of speech .* in take1\.wav"),
        "music-bed": (wav(clean + 0.25 * music_bed(len(clean))), r"music or heavy background under speech: \d+% .* in take1\.wav"),
        "mostly-silence": (wav(np.concatenate([pause(12), joe[0], pause(12)])),
                           r"mostly silence: \d+% speech \(< 25%\), longest silence [\d.]+ s .* in take1\.wav"),
        "telephone": (wav(resample(clean, RATE, 8000), 8000), r"sample rate 8000 Hz < 16000 Hz in take1\.wav"),
        "telephone-upsampled": (wav(resample(resample(clean, RATE, 8000), 8000, 16000), 16000),
                                r"telephone-band audio: speech energy above 4 kHz -\d+ dB < -50 dB in take1\.wav"),
        "not-audio": ({"take1.wav": b"just text", "take2.flac": b""}, r"no decodable audio among 2 file\(s\)"),
    }


@pytest.fixture(scope="module")
def bad_store(voices, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    for name, (files, _) in bad_uploads(voices).items():
        write_speaker(root, name, files)
    good = {"take1.wav": encode(join(joe := voices["joe"][:3]), RATE, "WAV")}
    write_speaker(root, "no-consent", good, consent=None)
    write_speaker(root, "bad-consent", good, consent="malformed")
    return Store(str(root))


@pytest.mark.parametrize("name", ["too-short", "noisy", "clipped", "two-voices", "music-bed", "mostly-silence",
                                  "telephone", "telephone-upsampled", "not-audio"])
def test_bad_upload_is_rejected_with_the_measured_reason(voices, bad_store, name):
    _, pattern = bad_uploads(voices)[name]
    with pytest.raises(RejectedSpeaker) as e:
        ingest_speaker(bad_store, name, QC)
    assert any(re.search(pattern, r) for r in e.value.reasons), e.value.reasons


def test_missing_or_malformed_consent_is_rejected(bad_store):
    with pytest.raises(RejectedSpeaker, match="consent.json missing"):
        ingest_speaker(bad_store, "no-consent", QC)
    with pytest.raises(RejectedSpeaker, match="not valid JSON"):
        ingest_speaker(bad_store, "bad-consent", QC)


def test_broken_files_are_reported_and_the_rest_goes_on(voices, tmp_path):
    flac = encode(join(voices["joe"][:2]), RATE, "FLAC")  # < 10 s: one utterance, its given transcript
    write_speaker(tmp_path, "mixed", {"good.flac": flac, "zero.wav": b"", "readme.wav": b"hello, not audio",
                                      "cut.flac": flac[: len(flac) // 3]},
                  transcripts=[{"file": "good.flac", "text": " ".join(SENTENCES[:2]), "language": "en"}])
    up = ingest_speaker(Store(str(tmp_path)), "mixed", QC)
    problems = " | ".join(up.file_problems)
    for name, why in (("zero.wav", "empty file"), ("readme.wav", "looks like text"), ("cut.flac", "truncated")):
        assert re.search(rf"{re.escape(name)}: [^|]*{why}", problems), problems
    assert [u.file for u in up.utterances] == ["good.flac"] and up.asr_calls == 0  # transcript given: no ASR


def test_language_without_asr_model_or_transcript_is_rejected(clean_take, tmp_path):
    write_speaker(tmp_path, "mandarin", {"take1.wav": encode(clean_take, RATE, "WAV")},
                  transcripts=[{"file": "take1.wav", "language": "zh"}])
    with pytest.raises(RejectedSpeaker, match=r"no transcript for take1\.wav(@[\d.-]+s)? and no speech recognition model "
                                              r"for language 'zh'"):
        ingest_speaker(Store(str(tmp_path)), "mandarin", QC)


def test_reference_clip_is_joined_from_short_utterances():
    utts = [Utterance(f"t{i}.wav", f"text {i}", "en", np.zeros(int(32000 * 1.8), np.float32)) for i in range(3)]
    ref = choose_reference(utts, QCConfig())
    assert ref.file == "t0.wav+t1.wav" and 3.0 <= ref.seconds <= 10.0


def test_unchanged_upload_is_one_listing_and_one_hash(voices, clean_take, tmp_path):
    """prepare_speaker on the same bytes decodes nothing; a new base model or recipe is a new fingerprint."""
    from voicefleet.tasks.enroll.prepare import prepare_speaker
    from voicefleet.tasks.enroll.upload_fingerprint import model_identity

    src = tmp_path / "src"
    write_speaker(src, "Ana María", {"take1.wav": encode(join(voices["joe"][:2]), RATE, "WAV")},
                  transcripts=[{"file": "take1.wav", "text": " ".join(SENTENCES[:2]), "language": "en"}])
    write_speaker(src, "noisy", {"take1.wav": encode(add_noise(clean_take, 10), RATE, "WAV")})
    store, qc = str(tmp_path / "store"), QC.model_dump()
    identity = model_identity("tiny", {"epochs": 1}, qc)
    first = prepare_speaker(str(src), store, "Ana María", "tiny", "run1", qc, None, identity)
    assert first.status == "prepared" and first.speaker_id == "ana-maria" and first.files_decoded == 1
    before = DECODE_CALLS["files"]
    again = prepare_speaker(str(src), store, "Ana María", "tiny", "run2", qc, {first.source_hash: 1}, identity)
    assert again.status == "unchanged" and again.files_decoded == 0 and DECODE_CALLS["files"] == before
    other_recipe = model_identity("tiny", {"epochs": 2}, qc)
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "s1.ckpt").write_bytes(b"weights")
    other_base = model_identity(f"pretrained:{pretrained}", {"epochs": 1}, qc)
    from voicefleet.tasks.enroll.upload_fingerprint import upload_fingerprint

    prints = {upload_fingerprint(Store(str(src)), "Ana María", i)[0] for i in (identity, other_recipe, other_base)}
    assert len(prints) == 3 and first.source_hash in prints
    # a rejected upload is looked at once, too
    rejected = prepare_speaker(str(src), store, "noisy", "tiny", "run1", qc, None, identity)
    assert rejected.status == "rejected" and rejected.files_decoded == 1
    before = DECODE_CALLS["files"]
    again = prepare_speaker(str(src), store, "noisy", "tiny", "run2", qc, None, identity)
    assert again.status == "rejected" and again.reasons == rejected.reasons and DECODE_CALLS["files"] == before
    shutil.rmtree(src / "noisy")
