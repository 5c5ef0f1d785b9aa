"""Every rendered line's mark survives what listeners do to audio (codecs, gain, trims, and a change of tempo,
pitch or speed); clean speech is not flagged; the fingerprint index names the line; marked audio cannot be
enrolled."""
from __future__ import annotations

import json

import numpy as np
import pytest
from audio_transforms import RETIMING, TRANSFORMS, pitch, via_codec
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


@pytest.mark.parametrize("name", list(RETIMING))
def test_a_line_played_at_another_tempo_pitch_or_speed_is_still_found(name, clips, index) -> None:
    audio, sr = RETIMING[name](clips["marked"], SR)
    presence = watermark.detect(audio, sr)
    assert presence.present and presence.score >= watermark.THRESHOLD, presence
    if name.startswith("tempo"):
        assert presence.semitones == 0.0  # the mark does not mind the tempo: read as it is
    else:  # read on the copy shifted back to within 0.2 semitone of the pitch it was marked at
        shift = float(name.split()[1]) if name.startswith("pitch") else 12 * np.log2(1 + float(name.split()[1]) / 100)
        assert abs(presence.semitones - shift) <= 0.3, presence  # the first step read: within 0.3 (measured)
    with pytest.raises(watermark.SyntheticAudio, match=r"take\.wav \(mark score"):  # what enrollment runs
        watermark.refuse_marked([("take.wav", audio)], sr)
    match = fingerprint.lookup(index, audio, sr)
    assert match is not None and (match.job_id, match.line_id) == ("job-1", "line-7"), match
    assert match.bit_error_rate < fingerprint.MAX_BER


def test_clean_speech_is_not_flagged_at_any_step_of_the_grid(clips, human) -> None:
    # detect reads every step of the grid on clean audio (its score is then the best over all of them): its
    # false positives are the cost of the retiming defence. Measured: ARCTIC <= 0.011 at every step.
    for name, audio in (("human", human["clean"]), ("tts", clips["other"]),
                        ("human, 2 semitones up", pitch(2)(human["clean"], SR)[0])):
        presence = watermark.detect(audio, SR)
        assert not presence.present and presence.score < watermark.THRESHOLD, (name, presence)


def test_a_lone_window_marks_only_a_clip_as_it_is_and_only_when_strong() -> None:
    # measured false positives of phase-vocoded clean speech (the phone call): one window of 26 at 0.66 as it
    # is (pitch +1 st), lone windows up to 0.87 on the grid (tempo -5 %); marked windows read >= 0.99
    verdict = watermark._presence
    call = np.r_[0.66, np.full(25, 0.1)]
    assert not verdict(call, 0.0).present and not verdict(np.r_[0.87, np.full(30, 0.2)], -0.4).present
    spliced = np.r_[np.full(20, 0.01), 0.99, 1.0, np.full(20, 0.01), np.nan]  # a marked line inside a long file
    assert verdict(spliced, 0.0).present and not verdict(spliced, 0.8).present
    retimed = np.r_[np.full(5, 0.97), 0.3, 0.4]  # a marked file read at its step
    assert verdict(retimed, 1.2).present and verdict(np.array([0.6]), 0.4).present


def test_a_short_line_is_marked_down_to_its_floor_and_found_after_a_pitch_shift(human) -> None:
    word = human["clean"][SR: SR + int(watermark.MIN_SECONDS * SR)]  # 0.3 s of a word
    marked = watermark.mark(word, SR)
    assert not np.array_equal(marked, word) and watermark.detect(marked, SR, grid=(0.0,)).present
    assert watermark.detect(pitch(1)(marked, SR)[0], SR).present
    assert not watermark.detect(word, SR).present
    shorter = word[: int(0.25 * SR)]
    assert np.array_equal(watermark.mark(shorter, SR), shorter)  # below the floor: returned as it is


def test_the_candidate_index_finds_a_retimed_line_among_many(clips, human) -> None:
    # lines like the query (the same voices, other takes retimed, excerpts of a real voice) and the line itself
    sources = [clips["other"], clips["clean"][::-1].copy(), human["clean"]]
    lines = [fingerprint.fingerprint(t(a, SR)[0], SR) for a in sources for t in RETIMING.values()]
    lines.insert(17, fingerprint.fingerprint(clips["marked"], SR))
    assert len(lines) > fingerprint.CANDIDATES
    for name in ("pitch -2 st", "speed +10 %", "tempo -10 %"):
        audio, sr = RETIMING[name](clips["marked"], SR)
        queries = [q for _, q in fingerprint.query_fingerprints(audio[SR // 2: SR // 2 + 3 * SR], sr)]  # 3 s
        assert 17 in fingerprint.candidates(queries, lines)[:3], name  # measured: first, 14-63 votes to <= 7
        assert min(fingerprint.closest(q, lines[17]).bit_error_rate for q in queries) < fingerprint.MAX_BER


def test_an_excerpt_names_its_line_down_to_the_lookup_floor(clips, index) -> None:
    # a query needs MIN_OVERLAP frames (0.41 s + 64 x 11.6 ms ~ 1.15 s at the speed it is played)
    excerpt = clips["marked"][SR: SR + int(1.3 * SR)]
    audio, sr = RETIMING["pitch +1 st"](excerpt, SR)
    match = fingerprint.lookup(index, audio, sr)
    assert match is not None and match.line_id == "line-7" and abs(match.band_shift - 1) <= 0.5, match
    assert abs(match.offset_s - 1.0) < 0.1, match
    short = clips["marked"][SR: SR + int(1.0 * SR)]
    assert len(fingerprint.fingerprint(short, SR)) < fingerprint.MIN_OVERLAP
    assert fingerprint.lookup(index, short, SR) is None  # below the floor: nothing can be said


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


# (a pitch-shifted take fails enrollment's SNR check before the mark is read: phase-vocoder artefacts, measured
# 16.8 dB < 20 dB for pitch +2 st; refuse_marked itself is checked on every change above)
@pytest.mark.parametrize("changed", ["as rendered", "speed -5 %", "speed +10 %"])
def test_marked_audio_is_refused_at_enrollment_unless_switched_off(changed, clips, tmp_path) -> None:
    take2 = clips["marked"] if changed == "as rendered" else RETIMING[changed](clips["marked"], SR)[0]
    folder = tmp_path / "spk-joe"
    folder.mkdir()
    write_audio(folder / "take1.wav", clips["clean"], SR)
    write_audio(folder / "take2.wav", take2, SR)
    (folder / "transcripts.jsonl").write_text("\n".join(
        json.dumps({"file": f, "text": LINE, "language": "en"}) for f in ("take1.wav", "take2.wav")))
    write_audio(folder / "consent.wav", clips["clean"], SR)
    (folder / "consent.json").write_text(json.dumps({
        "speaker_id": "spk-joe", "full_name": "Joe Carter", "owner": "user:joe@example.com",
        "scope": {"training": True}, "granted_at": "2025-01-01T00:00:00Z", "consent_clip": "consent.wav",
        "consent_phrase": LINE}))
    store = Store(str(tmp_path))
    read = {"as rendered": r"\)", "speed -5 %": r", pitch changed by -0\.8 semitones\)",
            "speed +10 %": r", pitch changed by \+1\.6 semitones\)"}
    refused = r"synthetic voicefleet audio in take2\.wav \(mark score (0\.9\d|1\.00) >= 0\.50" + read[changed]
    with pytest.raises(RejectedSpeaker, match=refused):
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



def test_silence_reads_no_signal_not_a_nan_score(clips, tmp_path) -> None:
    silent = tmp_path / "silence.wav"
    write_audio(silent, np.zeros(3 * SR, np.float32), SR)
    r = CliRunner().invoke(app, ["watermark", "detect", str(silent)])
    assert r.exit_code == EXIT_NOT_FOUND and "NaN" not in r.output, r.output
    out = json.loads(r.output)
    assert out["watermark"] is False and out["score"] is None and out["signal"].startswith("none: every window is silent")
    # silent windows are left out, the rest still decide: a marked line followed by silence
    tail = np.concatenate([clips["marked"], np.zeros(4 * SR, np.float32)])
    presence = watermark.detect(tail, SR)
    assert presence.present and presence.signal and 0 < presence.scored_windows < presence.windows, presence
    assert not np.isnan(presence.score)
