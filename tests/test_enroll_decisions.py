"""Decisions that stick (issue 24): an upload is trained once, into whichever version, unless forced; the
current version only moves forward (two runs that register v1 and v2 end on 2 whatever order their
record updates land in); one run at a time trains a voice; a rollback is not undone by the next run."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from test_voice_changes import cli, deployment, three_versions, token  # noqa: F401 — `deployment` is a fixture

from voicefleet.flows.enroll import claim, register_one
from voicefleet.tasks.enroll.prepare import SpeakerResult, prepare_speaker
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.voice_lock import TrainingLocks, VoiceBusy, VoiceLockLost, lock_key
from voicefleet.tasks.voices.records import NewVersion
from voicefleet.tasks.voices.registry import VoiceRegistry

OWNER = "user:ada@example.com"


def version(store: Store, voice: str, run: str, fingerprint: str, passed: bool = True) -> NewVersion:
    files = {name: f"voices/{voice}/runs/{run}/{name}.bin" for name in ("gpt", "sovits")}
    for key in files.values():
        store.write_bytes(key, b"x")
    return NewVersion(base_model="tiny", untrained=True, files=files, metrics={"source_hash": fingerprint},
                      evaluation={"gate": {"mode": "enforce", "passed": passed, "reasons": []}})


def test_concurrent_runs_end_on_the_newest_version_whichever_record_update_lands_last(store: Store) -> None:
    """The issue's reproduction: run A takes number 1, run B number 2; B's record update lands first, then A's.
    Before: the voice ended on version 1. Now A's version is listed, and 2 stays current."""
    VoiceRegistry(store).ensure_voice("ada", OWNER)
    run_a = VoiceRegistry(Store(store.uri, store.storage_options))
    run_b = VoiceRegistry(Store(store.uri, store.storage_options))
    b_done = threading.Event()
    plain_update = run_a._update

    def slow_update(*args, **kwargs):  # A wrote v1/version.json and now waits before its record update
        assert b_done.wait(30)
        return plain_update(*args, **kwargs)

    run_a._update = slow_update
    made = {}
    thread = threading.Thread(target=lambda: made.update(a=run_a.add_version("ada", version(store, "ada", "a", "A"))))
    thread.start()
    deadline = time.monotonic() + 30
    while not store.exists("voices/ada/v1/version.json"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    made["b"] = run_b.add_version("ada", version(store, "ada", "b", "B"))
    b_done.set()
    thread.join()

    assert (made["a"].version, made["b"].version) == (1, 2)
    voice = VoiceRegistry(store).get("ada")
    assert voice.current_version == 2 and voice.versions == [1, 2] and voice.status == "ready"
    assert voice.status_reason == "version 1 not made current: version 2 is newer (a concurrent run registered it first)"


def test_a_rolled_back_or_gated_upload_is_not_trained_again_unless_forced(local_store: Store, tmp_path: Path) -> None:
    """After `voices rollback` the next run finds the upload of the version rolled back from, and a gated
    upload, already trained: "unchanged", nothing decoded, the current version stays where it was put."""
    src = tmp_path / "src"
    (src / "ada").mkdir(parents=True)
    (src / "ada" / "take1.wav").write_bytes(b"not audio")  # the decision comes before any decoding
    first = prepare_speaker(str(src), local_store.uri, "ada", "tiny", "run1", None, None, "identity")
    fingerprint = first.source_hash
    registry = VoiceRegistry(local_store)
    registry.ensure_voice("ada", OWNER)
    registry.add_version("ada", version(local_store, "ada", "r1", "older upload"))
    registry.add_version("ada", version(local_store, "ada", "r2", fingerprint))
    registry.rollback("ada", 1)
    registry.add_version("ada", version(local_store, "ada", "r3", "gated upload", passed=False), make_current=False)

    uploads = registry.uploads("ada")
    assert {h: v.version for h, v in uploads.items()} == {"older upload": 1, fingerprint: 2, "gated upload": 3}
    trained = {h: v.version for h, v in uploads.items()}
    again = prepare_speaker(str(src), local_store.uri, "ada", "tiny", "run2", None, trained, "identity")
    assert (again.status, again.voice_version, again.files_decoded) == ("unchanged", 2, 0)
    assert "already trained into version 2" in again.reasons[0] and "--force" in again.reasons[0]
    assert registry.get("ada").current_version == 1
    forced = prepare_speaker(str(src), local_store.uri, "ada", "tiny", "run3", None, {}, "identity")
    assert forced.status != "unchanged"   # looked at again (here: the same rejection, remembered)
    assert VoiceRegistry(local_store).uploads("nobody") == {}


def prepared(voice: str, fingerprint: str) -> SpeakerResult:
    return SpeakerResult(speaker_id=voice, status="prepared", source_hash=fingerprint, owner=OWNER,
                         run_prefix=f"voices/{voice}/runs/r9")


def test_one_run_at_a_time_trains_a_voice(store: Store) -> None:
    """Run B's claim meets run A's lock ("busy", naming A); a voice whose upload A registered meanwhile is
    "unchanged" for B; B trains it only after A released it."""
    registry = VoiceRegistry(store)
    registry.ensure_voice("ada", OWNER)
    registry.ensure_voice("bob", OWNER)
    registry.add_version("bob", version(store, "bob", "r1", "bob's upload"))
    with TrainingLocks(store, "run-a") as a, TrainingLocks(store, "run-b") as b:
        mine, left = claim.fn(store.uri, [prepared("ada", "ada's upload")], a)
        assert [p.speaker_id for p in mine] == ["ada"] and left == []
        mine, left = claim.fn(store.uri, [prepared("ada", "ada's upload"), prepared("bob", "bob's upload")], b)
        assert mine == [] and [(p.speaker_id, p.status) for p in left] == [("ada", "busy"), ("bob", "unchanged")]
        assert "being trained by run run-a" in left[0].reasons[0]
        assert left[1].voice_version == 1 and "by another run" in left[1].reasons[0]
        assert store.read_json(lock_key("bob"))["released"] is True  # b let go of bob at once
        mine, _ = claim.fn(store.uri, [prepared("bob", "bob's upload")], b, force=True)
        assert [p.speaker_id for p in mine] == ["bob"]
        a.release("ada")
        b.claim("ada")
        b.check("ada")
    assert store.read_json(lock_key("ada"))["released"] is True


def test_an_expired_lock_is_taken_over_and_its_old_holder_registers_nothing(local_store: Store) -> None:
    registry = VoiceRegistry(local_store)
    registry.ensure_voice("ada", OWNER)
    crashed = TrainingLocks(local_store, "run-a", ttl_s=1.0)
    crashed.claim("ada")
    crashed._stop.set()  # its process hangs: no renewal from now on
    crashed._thread.join()
    later = TrainingLocks(local_store, "run-b", ttl_s=1.0)
    with pytest.raises(VoiceBusy, match="being trained by run run-a"):
        later.claim("ada")
    time.sleep(2.2)
    later.claim("ada")
    with pytest.raises(VoiceLockLost, match="run run-a no longer holds its training lock"):
        crashed.check("ada")  # the old holder wakes up: the record in the store is no longer its own
    crashed.renew()  # and its renewal swaps nothing
    assert local_store.read_json(lock_key("ada"))["run"] == "run-b"
    trained = prepared("ada", "ada's upload").model_copy(update={"status": "trained"})
    out = register_one(registry, trained, {}, crashed)
    assert out.status == "failed" and "no longer holds its training lock" in out.reasons[-1]
    assert registry.get("ada").versions == []
    later.check("ada")
    later.close()
    crashed.close()  # releases nothing it lost
    assert local_store.read_json(lock_key("ada"))["run"] == "run-b"


def test_rollback_force_is_allow_gate_failed(local_store: Store, deployment) -> None:  # noqa: F811
    registry = three_versions(local_store)
    r = cli("voices", "rollback", "ada", "--to", "2", "--force", "--token", token(OWNER), "--store", local_store.uri)
    assert r.exit_code == 0 and registry.get("ada").current_version == 2, r.output


def test_enroll_force_reaches_the_flow(tmp_path: Path, monkeypatch) -> None:
    import voicefleet.flows.enroll as flow

    seen = {}

    def run(src, store, **settings):
        seen.update(settings)
        return {"run_id": "r1", "speakers": [], "report": "-", "counts": {"rejected": 0, "failed": 0, "busy": 0}}

    monkeypatch.setattr(flow, "enroll_batch", run)
    (tmp_path / "src").mkdir()
    for args, force in (((), False), (("--force",), True)):
        r = cli("enroll", str(tmp_path / "src"), "--store", str(tmp_path / "store"), *args)
        assert r.exit_code == 0 and seen["force"] is force, r.output
