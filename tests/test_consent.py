"""tasks/safety/consent.py: a valid record loads; every way it can fail names the reason a person can fix."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from voicefleet.tasks.measure.audio import encode_wav
from voicefleet.tasks.safety.consent import (
    ClipVerdict,
    Consent,
    ConsentError,
    load_consent,
    parse_consent,
    verify_consent_clip,
)

SPEAKER = "spk-ada"


def record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "speaker_id": SPEAKER,
        "full_name": "Ada Example",
        "owner": "user:ada@example.com",
        "scope": {"training": True, "sharing": "private"},
        "granted_at": "2025-03-01T09:30:00Z",
        "expires_at": None,
        "consent_clip": "take_consent.wav",
        "consent_phrase": "I, Ada Example, agree that voicefleet may build a synthetic voice from my recordings.",
    }
    base.update(overrides)
    return base


def clip_bytes(seconds: float = 2.0, sr: int = 16_000) -> bytes:
    rng = np.random.default_rng(0)
    return encode_wav((0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)


@pytest.fixture
def speaker_dir(tmp_path: Path) -> Path:
    folder = tmp_path / SPEAKER
    folder.mkdir()
    (folder / "consent.json").write_text(json.dumps(record()))
    (folder / "take_consent.wav").write_bytes(clip_bytes())
    return folder


def write_record(folder: Path, **overrides: Any) -> None:
    (folder / "consent.json").write_text(json.dumps(record(**overrides)))


def test_valid_record_loads(speaker_dir: Path) -> None:
    consent = load_consent(speaker_dir)
    assert isinstance(consent, Consent)
    assert consent.speaker_id == SPEAKER and consent.owner == "user:ada@example.com"
    assert consent.scope.training is True and consent.scope.sharing == "private"
    assert consent.granted_at == datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)
    assert consent.is_active()


def test_consent_json_path_works_like_the_folder(speaker_dir: Path) -> None:
    assert load_consent(speaker_dir / "consent.json") == load_consent(str(speaker_dir))


def test_record_in_an_object_store_loads_through_fsspec() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/enroll/{SPEAKER}/consent.json", json.dumps(record()).encode())
    fs.pipe(f"/enroll/{SPEAKER}/take_consent.wav", clip_bytes())
    assert load_consent(f"memory://enroll/{SPEAKER}").full_name == "Ada Example"
    assert load_consent(f"/enroll/{SPEAKER}", fs=fs).speaker_id == SPEAKER


def test_record_in_a_store_loads_by_key(store) -> None:  # type: ignore[no-untyped-def]
    """`store` is conftest's Store fixture: once on local disk, once on a moto S3 server."""
    store.write_bytes(f"enroll/{SPEAKER}/consent.json", json.dumps(record()).encode())
    with pytest.raises(ConsentError, match="consent clip take_consent.wav not found"):
        load_consent(f"enroll/{SPEAKER}", store=store)
    store.write_bytes(f"enroll/{SPEAKER}/take_consent.wav", clip_bytes())
    assert load_consent(f"enroll/{SPEAKER}", store=store).speaker_id == SPEAKER
    with pytest.raises(ConsentError, match=r"^spk-bob: consent\.json missing$"):
        load_consent("enroll/spk-bob", store=store)


def test_sharing_with_named_principals(speaker_dir: Path) -> None:
    write_record(speaker_dir, scope={"training": True, "sharing": ["group:dubbing", "user:bo"]})
    assert load_consent(speaker_dir).scope.sharing == ["group:dubbing", "user:bo"]


def test_missing_record(tmp_path: Path) -> None:
    (tmp_path / SPEAKER).mkdir()
    with pytest.raises(ConsentError, match=r"^spk-ada: consent\.json missing$") as err:
        load_consent(tmp_path / SPEAKER)
    assert err.value.speaker == SPEAKER and err.value.reason == "consent.json missing"
    assert isinstance(err.value, ValueError)


def test_malformed_json(speaker_dir: Path) -> None:
    (speaker_dir / "consent.json").write_text('{"speaker_id": "spk-ada",, }')
    with pytest.raises(ConsentError, match=r"consent\.json is not valid JSON: .*line 1 column"):
        load_consent(speaker_dir)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"owner": ""}, r"owner: String should have at least 1 character"),
        ({"granted_at": "2025-03-01T09:30:00"}, r"granted_at: Input should have timezone info"),
        ({"scope": {"training": True, "sharing": "everyone"}}, r"scope\.sharing: sharing must be one of private, org, public"),
        ({"scope": {"training": True, "sharing": []}}, r"scope\.sharing: an empty list of principals"),
        ({"consent_clip": "../other/clip.wav"}, r"consent_clip: must be a file inside the speaker folder"),
        ({"expires_at": "2024-01-01T00:00:00Z"}, r"expires_at .* is not after granted_at"),
        ({"expiers_at": "2030-01-01T00:00:00Z"}, r"expiers_at: unknown field"),
    ],
)
def test_schema_violations_name_the_field(speaker_dir: Path, overrides: dict[str, Any], expected: str) -> None:
    write_record(speaker_dir, **overrides)
    with pytest.raises(ConsentError, match=r"consent\.json does not match the schema: .*" + expected):
        load_consent(speaker_dir)


def test_missing_field_is_named() -> None:
    data = record()
    del data["scope"]
    with pytest.raises(ConsentError, match=r"scope: Field required"):
        parse_consent(data)


def test_training_not_allowed(speaker_dir: Path) -> None:
    write_record(speaker_dir, scope={"training": False, "sharing": "private"})
    with pytest.raises(ConsentError, match=r"^spk-ada: scope\.training is false$"):
        load_consent(speaker_dir)
    assert load_consent(speaker_dir, require_training=False).scope.training is False


def test_missing_clip(speaker_dir: Path) -> None:
    (speaker_dir / "take_consent.wav").unlink()
    with pytest.raises(ConsentError, match=r"^spk-ada: consent clip take_consent\.wav not found$"):
        load_consent(speaker_dir)
    assert load_consent(speaker_dir, check_clip=False).consent_clip == "take_consent.wav"


def test_clip_that_is_not_audio(speaker_dir: Path) -> None:
    (speaker_dir / "take_consent.wav").write_text("not a recording")
    with pytest.raises(ConsentError, match=r"consent clip take_consent\.wav: not a recognised audio format"):
        load_consent(speaker_dir)


def test_clip_too_short_for_a_phrase(speaker_dir: Path) -> None:
    (speaker_dir / "take_consent.wav").write_bytes(clip_bytes(seconds=0.4))
    with pytest.raises(ConsentError, match=r"take_consent\.wav is 0\.40 s long"):
        load_consent(speaker_dir)


def test_expired_consent(speaker_dir: Path) -> None:
    write_record(speaker_dir, expires_at="2026-01-01T00:00:00Z")
    assert load_consent(speaker_dir, now=datetime(2025, 6, 1, tzinfo=timezone.utc))
    with pytest.raises(ConsentError, match=r"consent expired at 2026-01-01T00:00:00\+00:00"):
        load_consent(speaker_dir, now=datetime(2026, 6, 1, tzinfo=timezone.utc))


def test_record_for_another_speaker(speaker_dir: Path) -> None:
    write_record(speaker_dir, speaker_id="spk-bob")
    with pytest.raises(ConsentError, match=r"speaker_id 'spk-bob' does not match the speaker folder 'spk-ada'"):
        load_consent(speaker_dir)


def test_clip_verification_hook_says_not_verified(speaker_dir: Path) -> None:
    consent = load_consent(speaker_dir, check_clip=False)
    check = verify_consent_clip(consent, speaker_dir)
    assert check.verdict is ClipVerdict.NOT_VERIFIED and not check.verified
    assert "not verified" in check.detail
    assert check.duration_s == pytest.approx(2.0, abs=0.01)
    assert check.speaker_similarity is None and check.phrase_match is None


def test_model_round_trips_through_json(speaker_dir: Path) -> None:
    consent = load_consent(speaker_dir)
    assert parse_consent(consent.model_dump_json()) == consent
