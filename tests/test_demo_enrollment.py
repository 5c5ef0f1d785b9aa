"""flows/demo/: an enrollment set of distinct real voices that the pipeline's own readers accept."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from voicefleet.flows.demo import enrollment as demo_enrollment
from voicefleet.flows.demo.enrollment import MAX_CLIP_S, MIN_CLIP_S, build_demo_enrollment
from voicefleet.flows.demo.script import build_demo_script
from voicefleet.flows.demo.voices import (
    DEMO_VOICES,
    demo_speakers,
    english_phonemes,
    kana_g2p,
    kokoro_vocab,
)
from voicefleet.tasks.measure.audio import load_audio, peak_dbfs, probe_audio
from voicefleet.tasks.safety.consent import load_consent, verify_consent_clip


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two speakers (piper joe, Kokoro jf_alpha) with two takes each, in English."""
    root = tmp_path_factory.mktemp("enroll")
    return root, build_demo_enrollment(root, n_speakers=2, clips_per_speaker=2, seed=0)


def read_transcripts(folder: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (folder / "transcripts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_builds_one_folder_per_distinct_voice(enrolled: tuple[Path, list[str]]) -> None:
    root, ids = enrolled
    assert ids == ["demo-joe", "demo-alpha"]
    assert sorted(p.name for p in root.iterdir()) == sorted(ids)  # no staging folders left behind
    assert len({v.engine_voice for v in DEMO_VOICES}) == len(DEMO_VOICES)


def test_takes_decode_and_last_two_to_six_seconds(enrolled: tuple[Path, list[str]]) -> None:
    root, ids = enrolled
    for speaker in ids:
        rows = read_transcripts(root / speaker)
        assert [r["file"] for r in rows] == ["take01.wav", "take02.flac"]
        for row in rows:
            info = probe_audio(root / speaker / row["file"])
            assert info.channels == 1 and info.subtype == "PCM_16"
            assert info.sample_rate in (22_050, 24_000)  # native rates of piper and Kokoro
            assert MIN_CLIP_S <= info.duration_s <= MAX_CLIP_S
            audio = load_audio(root / speaker / row["file"], 16_000)
            assert -6.5 < peak_dbfs(audio) < -2.5  # never at full scale


def test_transcripts_follow_the_contract(enrolled: tuple[Path, list[str]]) -> None:
    root, ids = enrolled
    for speaker in ids:
        for row in read_transcripts(root / speaker):
            assert set(row) == {"file", "text", "language"}
            assert row["language"] == "en" and row["text"].strip()


def test_consent_records_are_valid(enrolled: tuple[Path, list[str]]) -> None:
    root, ids = enrolled
    for speaker in ids:
        consent = load_consent(root / speaker)
        assert consent.speaker_id == speaker and consent.scope.training
        assert consent.full_name in consent.consent_phrase
        assert verify_consent_clip(consent, root / speaker).duration_s > 2.0


def test_existing_speaker_is_not_overwritten_silently(tmp_path: Path) -> None:
    (tmp_path / "demo-joe").mkdir()
    with pytest.raises(FileExistsError, match="demo-joe"):
        build_demo_enrollment(tmp_path, n_speakers=1, clips_per_speaker=1)


@pytest.mark.slow  # ~10 s of Kokoro audio (~10 CPU-seconds); the engine itself is covered above
def test_japanese_speaker_has_japanese_transcripts(tmp_path: Path) -> None:
    ids = build_demo_enrollment(tmp_path, n_speakers=1, clips_per_speaker=1, language="ja", sample_rate=32_000)
    assert ids == ["demo-alpha"]
    (row,) = read_transcripts(tmp_path / "demo-alpha")
    assert row["language"] == "ja" and row["text"].endswith("。")
    assert probe_audio(tmp_path / "demo-alpha" / row["file"]).sample_rate == 32_000
    assert "同意" in load_consent(tmp_path / "demo-alpha").consent_phrase


def test_every_demo_line_maps_onto_kokoro_symbols() -> None:
    """No phoneme of any English or Japanese line (consent phrases included) is silently dropped."""
    vocab, g2p = kokoro_vocab(), kana_g2p()
    english = [*demo_enrollment.EN_ENROLL, *(demo_enrollment.consent_phrase(v, "en")[0] for v in DEMO_VOICES)]
    for text in english:
        assert set(english_phonemes(text)) <= set(vocab), text
    readings = [r for _, r in demo_enrollment.JA_ENROLL]
    readings += [demo_enrollment.consent_phrase(v, "ja")[1] for v in DEMO_VOICES if "ja" in v.languages]
    for reading in readings:
        assert re.fullmatch(r"[\u30a0-\u30ff\u3040-\u309f 、。？！]+", reading), reading  # kana only
        assert set(g2p(reading)) <= set(vocab), reading


def test_phonemes_look_like_kokoro_expects() -> None:
    assert kana_g2p()("キョー ワ イイ テンキ デス ネ。") == "kʲoː βa ii teŋkʲi desɨ ne."
    # diphthongs and affricates are single Kokoro symbols; the glottal stop becomes t
    assert english_phonemes("I agree, button church judge.") == "I əɡɹˈi, bˈʌtᵊn ʧˈɜɹʧ ʤˈʌʤ."


def test_speaker_choice_limits() -> None:
    assert [v.key for v, _ in demo_speakers(6, "en")][:3] == ["joe", "alpha", "kumo"]
    assert {lang for _, lang in demo_speakers(6, "native")} == {"en", "ja"}
    with pytest.raises(ValueError, match="n_speakers must be 1-5 for language='ja', got 6"):
        demo_speakers(6, "ja")
    with pytest.raises(ValueError, match="language must be"):
        demo_speakers(1, "fr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clips_per_speaker must be 1-16 for language='ja', got 17"):
        build_demo_enrollment("unused", n_speakers=1, clips_per_speaker=17, language="ja")


def test_render_script_is_deterministic_and_varied() -> None:
    voices = ["demo-joe", "demo-alpha", "demo-kumo"]
    rows = build_demo_script(voices, 300, seed=0)
    assert rows == build_demo_script(voices, 300, seed=0)
    assert rows != build_demo_script(voices, 300, seed=1)
    assert len({r["line_id"] for r in rows}) == 300
    assert {r["voice_id"] for r in rows} == set(voices)
    assert all(r["language"] == "en" and set(r) == {"line_id", "voice_id", "text", "language"} for r in rows)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) > 250
    assert any(t.endswith("?") for t in texts) and any(t.endswith("!") for t in texts)
    assert all(3 <= len(t.split()) <= 16 for t in texts)


def test_render_script_rejects_no_voices() -> None:
    with pytest.raises(ValueError, match="at least one voice"):
        build_demo_script([], 10)
