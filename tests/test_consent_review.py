"""Consent an uploader cannot self-attest: operator approval and reinstatement after a withdrawal are an
admin's audited actions, bound to one consent clip, never fields of the upload (pip-shipped voices)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import librosa
import numpy as np
import pytest
from test_consent_verify import JOE, PHRASE, SR, TAKES, speak
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT, EXIT_PARTIAL
from voicefleet.flows.enroll import enrollment_terms
from voicefleet.tasks.enroll.ingest import QCConfig, RejectedSpeaker, ingest_speaker
from voicefleet.tasks.enroll.prepare import SpeakerResult
from voicefleet.tasks.measure.audio import write_audio
from voicefleet.tasks.safety import audit
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.errors import ConsentWithdrawn
from voicefleet.tasks.voices.records import NewVersion
from voicefleet.tasks.voices.registry import VoiceRegistry

# a new consent after a withdrawal says so: a new recording, not the old phrase again (a deterministic TTS voice
# saying the old phrase would be the old recording by its fingerprint)
AGAIN = "Today, after withdrawing it, I give my consent again for a synthetic voice made from my recordings."
OWNER, ADMIN = "user:joe@example.com", "user:root"
QC = QCConfig(min_speech_s=3, recommended_speech_s=3)
runner = CliRunner()


@pytest.fixture(scope="module")
def audio() -> dict:
    """joe's takes (tests/test_consent_verify.py's), his consent clip, and a new one he records after a withdrawal."""
    return {"takes": [speak(JOE, t) for t in TAKES], "consent": speak(JOE, PHRASE), "again": speak(JOE, AGAIN)}


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("VOICEFLEET_ADMINS", ADMIN)
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")
    monkeypatch.delenv("VOICEFLEET_PRINCIPAL_KEY", raising=False)
    monkeypatch.delenv("VOICEFLEET_TOKEN", raising=False)


def upload(root: Path, audio: dict, *, language: str = "en", clip: np.ndarray | None = None, clip_name="consent.wav",
           phrase: str = PHRASE, granted_at: datetime = datetime(2025, 1, 1, tzinfo=timezone.utc),
           **extra) -> Path:
    """The speaker folder spk-joe under `root`, written anew: takes, transcripts, consent clip and consent.json."""
    folder = root / "spk-joe"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    rows = []
    for i, take in enumerate(audio["takes"]):
        write_audio(folder / f"take{i}.wav", take, SR)
        rows.append({"file": f"take{i}.wav", "text": TAKES[i], "language": language})
    (folder / "transcripts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    write_audio(folder / clip_name, audio["consent"] if clip is None else clip, SR)
    (folder / "consent.json").write_text(json.dumps({
        "speaker_id": "spk-joe", "full_name": "Joe Carter", "owner": OWNER, "scope": {"training": True},
        "granted_at": granted_at.isoformat(), "consent_clip": clip_name, "consent_phrase": phrase, **extra}))
    return folder


def consent_cli(action: str, root: Path, store: Store, actor: str = ADMIN):
    r = runner.invoke(app, ["consent", action, "spk-joe", "--src", str(root), "--as", actor, "--local",
                            "--store", store.uri])
    assert "Traceback" not in r.output, r.output
    return r


def events(store: Store) -> list[tuple[str, str]]:
    return [(r["event"], r["actor"]) for r in audit.read(store)]


def test_an_upload_cannot_approve_its_own_consent_phrase(audio, tmp_path, local_store, admin_env) -> None:
    root = tmp_path / "enroll"
    # the attack: takes labelled zh (no ASR model), an ordinary take as the "consent clip", approved_by self-set
    upload(root, audio, language="zh", clip=audio["takes"][0], approved_by=OWNER)
    src = Store(str(root))
    with pytest.raises(RejectedSpeaker, match="approved_by cannot be set in consent.json: an upload cannot approve "
                                              "its own consent"):
        ingest_speaker(src, "spk-joe", QC, reviews=local_store)
    upload(root, audio, language="zh", clip=audio["takes"][0])
    with pytest.raises(RejectedSpeaker, match=r"the consent phrase cannot be checked: .*an admin who listened to the "
                                              r"clip must approve it: voicefleet consent approve"):
        ingest_speaker(src, "spk-joe", QC, reviews=local_store)

    r = consent_cli("approve", root, local_store, actor=OWNER)  # the owner is not an admin
    assert r.exit_code == EXIT_PARTIAL and f"principal {OWNER} may not approve a consent clip" in r.output
    assert local_store.list("consent") == [] and events(local_store) == []

    upload(root, audio, language="zh")  # the real consent clip, which the admin listens to
    r = consent_cli("approve", root, local_store)
    assert r.exit_code == 0, r.output
    assert events(local_store) == [("consent_approve", ADMIN)]
    ok = ingest_speaker(src, "spk-joe", QC, reviews=local_store)
    check = ok.consent_check
    assert check["verdict"] == "verified" and check["approved_by"] == ADMIN
    assert f"phrase approved by admin {ADMIN}" in check["detail"] and "same speaker" in check["detail"]

    # the approval is of that clip and phrase: swapping either after it is approved undoes it
    upload(root, audio, language="zh", clip=audio["takes"][0])
    with pytest.raises(RejectedSpeaker, match="an admin who listened to the clip must approve it"):
        ingest_speaker(src, "spk-joe", QC, reviews=local_store)
    upload(root, audio, language="zh", phrase=AGAIN)
    with pytest.raises(RejectedSpeaker, match="an admin who listened to the clip must approve it"):
        ingest_speaker(src, "spk-joe", QC, reviews=local_store)


def enrolled(store: Store, upload_result) -> VoiceRegistry:
    """spk-joe registered with version 1 made from `upload_result` (what enroll_batch's register stores)."""
    registry = VoiceRegistry(store)
    registry.ensure_voice("spk-joe", OWNER, "private", **enrollment_terms(registry, prepared(upload_result)))
    files = {}
    for name in ("gpt", "sovits"):
        files[name] = f"voices/spk-joe/runs/r1/{name}.bin"
        store.write_bytes(files[name], b"x")
    registry.add_version("spk-joe", NewVersion(base_model="tiny", untrained=True, files=files,
                                               consent=upload_result.consent.model_dump(mode="json"),
                                               consent_check=upload_result.consent_check))
    return registry


def prepared(upload_result) -> SpeakerResult:
    return SpeakerResult(speaker_id=upload_result.speaker_id, status="prepared", owner=upload_result.consent.owner,
                         consent=upload_result.consent.model_dump(mode="json"),
                         consent_check=upload_result.consent_check)


def test_a_withdrawal_stands_until_an_admin_reinstates_a_new_verified_clip(audio, tmp_path, local_store,
                                                                          admin_env) -> None:
    root = tmp_path / "enroll"
    src = Store(str(root))
    upload(root, audio)
    registry = enrolled(local_store, ingest_speaker(src, "spk-joe", QC, reviews=local_store))
    withdrawn = registry.withdraw("spk-joe", OWNER).withdrawn_at
    later = withdrawn + timedelta(minutes=5)

    # the attack: the same old clip under a re-dated consent.json, enrolled again
    upload(root, audio, granted_at=later)
    redated = prepared(ingest_speaker(src, "spk-joe", QC, reviews=local_store))
    with pytest.raises(ConsentWithdrawn, match="it stands until an admin reinstates it for a new consent clip"):
        registry.ensure_voice("spk-joe", OWNER, "private", **enrollment_terms(registry, redated))
    # ... and an admin asked to reinstate it: the old clip as it is, re-encoded, cut, stretched or shifted: refused
    r = consent_cli("reinstate", root, local_store)
    assert r.exit_code == EXIT_PARTIAL and "is the consent clip of version 1: the same file (SHA-256 equal)" in r.output
    old = audio["consent"]
    # the stretch is found on a 0.01 grid: x0.95 (1/1.05) or a neighbour, as the BLAS rounds the near-tie
    for changed, how in ((old[int(0.4 * SR):] * 0.7, r"\)"),  # FLAC, cut, quieter
                         (librosa.effects.time_stretch(old, rate=1.05), r", duration x0\.9[4-6]\)"),
                         (librosa.effects.pitch_shift(old, sr=SR, n_steps=1), r", pitch \+1 semitone\(s\)\)")):
        upload(root, audio, granted_at=later, clip=changed, clip_name="consent.flac")
        r = consent_cli("reinstate", root, local_store)
        assert r.exit_code == EXIT_PARTIAL, r.output
        assert re.search(r"the same recording re-encoded, cut or changed \(fingerprint bit error rate 0\.\d\d < "
                         r"0\.28" + how, r.output), r.output
    # a new clip under a consent.json dated before the withdrawal, or asked for by the owner, is refused
    upload(root, audio, clip=audio["again"], phrase=AGAIN)
    r = consent_cli("reinstate", root, local_store)
    assert r.exit_code == EXIT_PARTIAL and "is not after the withdrawal" in r.output
    upload(root, audio, clip=audio["again"], phrase=AGAIN, granted_at=later)
    r = consent_cli("reinstate", root, local_store, actor=OWNER)
    assert r.exit_code == EXIT_PARTIAL and f"principal {OWNER} may not reinstate consent" in r.output
    assert local_store.list("consent") == []
    assert [e for e, _ in events(local_store)] == []

    # the admin reinstates for the new clip; it is verified by enrolling again, and only then lifted
    r = consent_cli("reinstate", root, local_store)
    assert r.exit_code == 0 and "once enrolling spk-joe again verifies that clip" in r.output, r.output
    assert events(local_store) == [("consent_reinstate", ADMIN)]
    assert registry.get("spk-joe").withdrawn_at == withdrawn  # not lifted by the admin's word alone
    with pytest.raises(ConsentWithdrawn):  # the old clip swapped back in after the reinstatement
        registry.ensure_voice("spk-joe", OWNER, "private", **enrollment_terms(registry, redated))
    new = prepared(ingest_speaker(src, "spk-joe", QC, reviews=local_store))
    assert new.consent_check["verdict"] == "verified"
    record = registry.ensure_voice("spk-joe", OWNER, "private", **enrollment_terms(registry, new))
    assert record.withdrawn_at is None and registry.authorize("spk-joe", OWNER).allowed


def test_reinstating_a_voice_that_is_not_withdrawn_or_unknown_is_refused(audio, tmp_path, local_store,
                                                                        admin_env) -> None:
    root = tmp_path / "enroll"
    upload(root, audio)
    r = consent_cli("reinstate", root, local_store)
    assert r.exit_code == 3 and "spk-joe" in r.output  # no such voice
    enrolled(local_store, ingest_speaker(Store(str(root)), "spk-joe", QC, reviews=local_store))
    r = consent_cli("reinstate", root, local_store)
    assert r.exit_code == EXIT_PARTIAL and "consent is not withdrawn, there is nothing to reinstate" in r.output
    (root / "spk-joe" / "consent.json").write_text("{}")
    r = consent_cli("approve", root, local_store)
    assert r.exit_code == EXIT_BAD_INPUT and "consent.json does not match the schema" in r.output
