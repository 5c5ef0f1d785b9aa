"""Every rendered line's mark survives what listeners do to audio; clean speech is not flagged; the
fingerprint index names the line; marked audio cannot be enrolled."""
from __future__ import annotations

import json

import numpy as np
import pytest
from audio_transforms import TRANSFORMS, via_codec
from human_speech import arctic
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_NOT_FOUND
from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine
from voicefleet.tasks.enroll.ingest import QCConfig, RejectedSpeaker, ingest_speaker
from voicefleet.tasks.measure.audio import resample, write_audio
from voicefleet.tasks.safety import fingerprint, watermark
from voicefleet.tasks.store.storage import Store

SR = 32000
LINE = "The museum has a new exhibit about ancient maps, and the children loved it."


def speak(voice, text: str) -> np.ndarray:
    engine = load_engine(voice.engine)
    return (resample(engine.speak(voice, text, None, "en", 1.0), engine.sample_rate, SR) * 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    clean = speak(DEMO_VOICES[0], LINE)
    return {"clean": clean, "marked": watermark.mark(clean, SR),
            "other": speak(DEMO_VOICES[2], "Please put the green folder on the top shelf, next to the old maps.")}


@pytest.fixture(scope="module")
def index(clips, tmp_path_factory) -> Store:
    store = Store(str(tmp_path_factory.mktemp("store")))
    fingerprint.index_lines(store, "job-1", "part-a", [
        ({"line_id": "line-7", "voice_id": "demo-joe", "voice_version": "3"}, clips["marked"], SR),
        ({"line_id": "line-8", "voice_id": "demo-kumo", "voice_version": "1"}, watermark.mark(clips["other"], SR), SR)])
    return store


def test_the_mark_is_inaudible_enough_and_keeps_length(clips) -> None:
    clean, marked = clips["clean"], clips["marked"]
    assert marked.shape == clean.shape and marked.dtype == np.float32 and np.abs(marked).max() < 1.0
    snr = 10 * np.log10(np.sum(clean ** 2) / np.sum((clean - marked) ** 2))
    assert snr > 10.0, f"mark SNR {snr:.1f} dB"


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_the_mark_and_the_line_are_found_after(name, clips, index) -> None:
    audio, sr = TRANSFORMS[name](clips["marked"], SR)
    presence = watermark.detect(audio, sr)
    assert presence.present and presence.score >= watermark.THRESHOLD, presence
    match = fingerprint.lookup(index, audio, sr)
    assert match is not None and (match.job_id, match.line_id, match.voice_id, match.voice_version) == (
        "job-1", "line-7", "demo-joe", "3")
    assert match.bit_error_rate < fingerprint.MAX_BER


@pytest.mark.parametrize("which", ["clean", "other"])
def test_clean_speech_carries_no_mark_and_matches_no_line(which, clips, index) -> None:
    for audio, sr in (TRANSFORMS["none"](clips[which], SR), via_codec("libopus", "ogg", 48000)(clips[which], SR)):
        presence = watermark.detect(audio, sr)
        assert not presence.present and presence.score < watermark.THRESHOLD, presence
    if which == "clean":
        assert fingerprint.lookup(index, clips["other"], SR).line_id == "line-8"  # its own marked render
    else:
        assert fingerprint.lookup(index, clips["clean"], SR).line_id == "line-7"
    assert fingerprint.lookup(index, speak(DEMO_VOICES[3], "Nobody expected the quiet student to win."), SR) is None


@pytest.fixture(scope="module")
def human() -> dict[str, np.ndarray]:
    """CMU ARCTIC a0007: a real man's voice, studio recording (tests/data/human)."""
    audio, sr = arctic()
    clean = resample(audio, sr, SR).astype(np.float32)
    return {"clean": clean, "marked": watermark.mark(clean, SR)}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_real_human_speech_is_not_flagged_and_is_found_once_marked(name, human) -> None:
    # measured (benchmarks/watermark_real_speech.py): clean windows score < 1e-4, marked ones 1.000
    for which, present in (("clean", False), ("marked", True)):
        audio, sr = TRANSFORMS[name](human[which], SR)
        scores = watermark.window_scores(audio, sr)
        presence = watermark.detect(audio, sr)
        assert presence.present is present, (which, presence)
        if present:
            assert scores.min() >= 0.9, (which, scores)  # every window, not just the best one
        else:
            assert scores.max() <= 0.1, (which, scores)


def test_watermark_detect_command_names_the_line(clips, index, tmp_path) -> None:
    data, _ = via_codec("libmp3lame", "mp3", 32000)(clips["marked"], SR)
    marked = tmp_path / "leaked.wav"
    write_audio(marked, data, SR)
    r = CliRunner().invoke(app, ["watermark", "detect", str(marked), "--store", index.uri])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["watermark"] is True and out["source"]["line"] == "line-7" and out["source"]["job"] == "job-1"
    clean = tmp_path / "clean.wav"
    write_audio(clean, clips["other"], SR)
    r = CliRunner().invoke(app, ["watermark", "detect", str(clean)])
    assert r.exit_code == EXIT_NOT_FOUND and json.loads(r.output)["watermark"] is False


def test_marked_audio_is_refused_at_enrollment_unless_switched_off(clips, tmp_path) -> None:
    folder = tmp_path / "spk-joe"
    folder.mkdir()
    write_audio(folder / "take1.wav", clips["clean"], SR)
    write_audio(folder / "take2.wav", clips["marked"], SR)
    (folder / "transcripts.jsonl").write_text("\n".join(
        json.dumps({"file": f, "text": LINE, "language": "en"}) for f in ("take1.wav", "take2.wav")))
    write_audio(folder / "consent.wav", clips["clean"], SR)
    (folder / "consent.json").write_text(json.dumps({
        "speaker_id": "spk-joe", "full_name": "Joe Carter", "owner": "user:joe@example.com",
        "scope": {"training": True}, "granted_at": "2025-01-01T00:00:00Z", "consent_clip": "consent.wav",
        "consent_phrase": LINE}))
    store = Store(str(tmp_path))
    with pytest.raises(RejectedSpeaker, match=r"synthetic voicefleet audio in take2\.wav \(mark score 1\.00"):
        ingest_speaker(store, "spk-joe", QCConfig(min_speech_s=3, recommended_speech_s=3))
    upload = ingest_speaker(store, "spk-joe", QCConfig(min_speech_s=3, recommended_speech_s=3, allow_synthetic=True))
    assert [u.file for u in upload.utterances] == ["take1.wav", "take2.wav"]
    assert upload.consent_check["verdict"] == "verified"


def test_a_marked_line_is_delivered_at_its_loudness_and_under_the_true_peak_ceiling(human) -> None:
    from voicefleet.tasks.render.pipeline import mark_line
    from voicefleet.tasks.render.postprocess import PostConfig, loudness_lufs, normalize_loudness, true_peak_dbtp

    post = PostConfig(loudness_lufs=-16.0, true_peak_dbtp=-1.0)
    line, _, _ = normalize_loudness(human["clean"], SR, post.loudness_lufs, post.true_peak_dbtp)
    assert true_peak_dbtp(watermark.mark(line, SR)) > -0.5  # measured 0.0 dBTP: the mark alone breaks the ceiling
    out, lufs, tp = mark_line(line, SR, post)
    assert tp <= -1.0 and true_peak_dbtp(out) == pytest.approx(tp)
    assert abs(lufs - (-16.0)) < 0.2 and loudness_lufs(out, SR) == pytest.approx(lufs)
    assert watermark.detect(out, SR).present

