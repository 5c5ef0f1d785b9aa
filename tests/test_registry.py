"""VoiceRegistry on a local folder and on S3 (moto): lifecycle, immutable versions, grants, races."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from voicefleet.tasks.safety.access import InvalidPrincipal, email_domain
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import Store, UnsafeStore
from voicefleet.tasks.voices.errors import (
    InvalidGrant,
    InvalidStatus,
    MissingVersionFile,
    OwnerMismatch,
    UnknownVersion,
    UnknownVoice,
)
from voicefleet.tasks.voices.records import NewVersion, VersionRecord
from voicefleet.tasks.voices.registry import VoiceRegistry

OWNER = "user:alice@example.com"
BOB = "user:bob@example.com"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def artifacts(store: Store, voice_id: str, run: str) -> dict[str, str]:
    """Write a fine-tune's files where a training run would, and return their keys."""
    files = {name: f"voices/{voice_id}/runs/{run}/{name}.bin" for name in ("gpt", "sovits", "ref_wav")}
    for key in files.values():
        store.write_bytes(key, key.encode())
    return files


def new_version(store: Store, voice_id: str, run: str = "r1", **overrides: Any) -> NewVersion:
    fields: dict[str, Any] = {
        "base_model": "tiny-random-v1",
        "untrained": True,
        "files": artifacts(store, voice_id, run),
        "ref_text": "hello there",
        "ref_language": "en",
        "prompt_tokens": [1, 2, 3],
        "metrics": {"run": run},
        "recipe": {"sovits_epochs": 1},
        "consent": {"speaker_id": voice_id, "owner": OWNER},
    }
    fields.update(overrides)
    return NewVersion(**fields)


@pytest.fixture
def registry(store: Store) -> VoiceRegistry:
    return VoiceRegistry(store)


def test_new_voice_is_queued_and_becomes_ready_with_its_first_version(registry: VoiceRegistry) -> None:
    created = registry.ensure_voice("alice", OWNER, "private")
    assert (created.status, created.current_version, created.versions) == ("queued", None, [])
    registry.set_status("alice", "training")

    v1 = registry.add_version("alice", new_version(registry.store, "alice"))

    assert v1.version == 1 and v1.voice_id == "alice" and v1.prompt_tokens == [1, 2, 3]
    voice = registry.get("alice")
    assert (voice.status, voice.status_reason, voice.current_version, voice.versions) == ("ready", None, 1, [1])
    assert registry.version("alice") == v1
    assert [v.voice_id for v in registry.list()] == ["alice"]


def test_ensure_voice_is_idempotent_updates_sharing_and_refuses_another_owner(registry: VoiceRegistry) -> None:
    first = registry.ensure_voice("alice", OWNER)
    assert registry.ensure_voice("alice", OWNER) == first                 # nothing written twice
    assert registry.ensure_voice("alice", OWNER, "public").sharing == "public"
    with pytest.raises(OwnerMismatch, match="voice alice is owned by user:alice@example.com, not user:bob"):
        registry.ensure_voice("alice", BOB)


def test_versions_are_immutable_and_numbered_past_existing_files(registry: VoiceRegistry) -> None:
    store = registry.store
    registry.ensure_voice("alice", OWNER)
    v1 = registry.add_version("alice", new_version(store, "alice", "r1"))
    before = store.read_bytes("voices/alice/v1/version.json")
    # a run that crashed after writing v2's file but before registering it
    store.write_bytes("voices/alice/v2/version.json", b"{}")

    v3 = registry.add_version("alice", new_version(store, "alice", "r2"))

    assert v3.version == 3
    assert store.read_bytes("voices/alice/v1/version.json") == before
    assert registry.version("alice", 1) == v1
    assert registry.get("alice").versions == [1, 3]
    with pytest.raises(UnknownVersion, match=r"voice alice has no version 2 \(versions: 1, 3\)"):
        registry.version("alice", 2)


def test_rollback_makes_an_older_version_current(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    for run in ("r1", "r2", "r3"):
        registry.add_version("alice", new_version(registry.store, "alice", run))

    voice = registry.rollback("alice", 1)

    assert voice.current_version == 1 and voice.versions == [1, 2, 3]
    assert voice.status_reason == "rolled back from version 3 to 1"
    assert registry.version("alice").metrics == {"run": "r1"}
    with pytest.raises(UnknownVersion, match="voice alice has no version 7"):
        registry.rollback("alice", 7)


def test_failed_status_keeps_its_reason_and_ready_needs_a_version(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    with pytest.raises(InvalidStatus, match="voice alice cannot be ready: it has no version"):
        registry.set_status("alice", "ready")
    with pytest.raises(InvalidStatus, match="got 'done'"):
        registry.set_status("alice", "done")  # type: ignore[arg-type]
    failed = registry.set_status("alice", "failed", "SNR 12.4 dB < 20 dB in take3.wav")
    assert (failed.status, failed.status_reason) == ("failed", "SNR 12.4 dB < 20 dB in take3.wav")


def test_add_version_refuses_files_that_are_not_in_the_store(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    files = {"gpt": "voices/alice/nope/gpt.ckpt", "sovits": "voices/alice/nope/sovits.pth"}
    with pytest.raises(MissingVersionFile, match=r"version file gpt .*voices/alice/nope/gpt.ckpt does not exist"):
        registry.add_version("alice", new_version(registry.store, "alice", files=files))
    with pytest.raises(ValueError, match="files must name sovits"):
        NewVersion(base_model="tiny-random-v1", untrained=True, files={"gpt": "g"})
    assert registry.get("alice").versions == []


def test_unknown_voice_names_the_id(registry: VoiceRegistry) -> None:
    with pytest.raises(UnknownVoice, match="unknown voice ghost") as caught:
        registry.get("ghost")
    assert isinstance(caught.value, KeyError) and str(caught.value) == "unknown voice ghost"
    with pytest.raises(UnknownVoice, match="ghost"):
        registry.grant("ghost", BOB)
    assert registry.authorize("ghost", BOB).reason == "unknown voice ghost"
    assert registry.list() == []


def test_ids_and_principals_are_validated(registry: VoiceRegistry) -> None:
    with pytest.raises(InvalidId):
        registry.ensure_voice("../etc", OWNER)
    with pytest.raises(InvalidId):
        registry.get("a/b")
    with pytest.raises(InvalidPrincipal, match="principal is empty"):
        registry.ensure_voice("alice", "  ")
    with pytest.raises(ValueError, match="sharing must be one of"):
        registry.ensure_voice("alice", OWNER, "everyone")  # type: ignore[arg-type]


def test_authorize_owner_sharing_and_readiness(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    assert registry.authorize("alice", OWNER).reason == "voice alice is not ready (status queued)"
    registry.set_status("alice", "failed", "two speakers detected")
    refused = registry.authorize("alice", OWNER)
    assert not refused.allowed and refused.reason == "voice alice is not ready (status failed: two speakers detected)"

    registry.add_version("alice", new_version(registry.store, "alice"))
    assert registry.authorize("alice", OWNER).allowed
    refused = registry.authorize("alice", BOB)
    assert not refused.allowed
    assert refused.reason == f"principal {BOB} has no grant for voice alice (owner {OWNER})"

    # the consent scope is the ceiling; within it, only a grant admits someone besides the owner
    registry.ensure_voice("alice", OWNER, [BOB])
    assert not registry.authorize("alice", BOB).allowed
    registry.grant("alice", BOB)
    assert registry.authorize("alice", BOB).allowed
    with pytest.raises(InvalidGrant, match=r"consent scope names only user:bob@example.com, not user:carol"):
        registry.grant("alice", "user:carol@example.com")
    with pytest.raises(InvalidGrant, match=r"'\*'\) needs a public consent scope"):
        registry.grant("alice", "*")
    registry.ensure_voice("alice", OWNER, "public")
    assert not registry.authorize("alice", "user:carol@example.com").allowed
    registry.grant("alice", "*")
    assert registry.authorize("alice", "user:carol@example.com").allowed
    # a narrower consent later puts earlier grants outside it
    registry.ensure_voice("alice", OWNER, "private")
    refused = registry.authorize("alice", BOB)
    assert not refused.allowed and "outside the consent: the consent scope is private" in refused.reason


def test_a_retrain_in_progress_keeps_the_current_version_renderable(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    registry.add_version("alice", new_version(registry.store, "alice"))
    registry.set_status("alice", "training")
    decision = registry.authorize("alice", OWNER)
    assert decision.allowed and decision.reason.endswith("renders version 1")


def test_org_sharing_needs_an_org_resolver(store: Store) -> None:
    plain, with_orgs = VoiceRegistry(store), VoiceRegistry(store, org_of=email_domain)
    plain.ensure_voice("alice", OWNER, "org")
    plain.add_version("alice", new_version(store, "alice"))
    with pytest.raises(InvalidGrant, match="no organisation is known for user:alice@example.com"):
        plain.grant("alice", BOB)
    with_orgs.grant("alice", BOB)
    assert with_orgs.authorize("alice", BOB).allowed
    assert not plain.authorize("alice", BOB).allowed  # without a resolver the org scope admits no one
    with pytest.raises(InvalidGrant, match="organisation example.com, and user:mallory@elsewhere.org is not in it"):
        with_orgs.grant("alice", "user:mallory@elsewhere.org")


def test_grants_expire_and_can_be_revoked(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER, "public")
    registry.add_version("alice", new_version(registry.store, "alice"))
    expires = datetime.now(timezone.utc) + timedelta(days=1)

    voice = registry.grant("alice", BOB, expires_at=expires)

    assert [(g.principal, g.expires_at) for g in voice.grants] == [(BOB, expires)]
    assert registry.authorize("alice", BOB).allowed
    later = registry.authorize("alice", BOB, at=expires + timedelta(seconds=1))
    assert not later.allowed
    assert later.reason == f"principal {BOB}'s grant for voice alice expired at {expires.isoformat()} (owner {OWNER})"

    registry.grant("alice", BOB)  # renewing replaces the grant: now without end
    assert [g.expires_at for g in registry.get("alice").grants] == [None]
    assert registry.authorize("alice", BOB, at=expires + timedelta(days=365)).allowed

    assert registry.revoke("alice", BOB) is True
    assert registry.revoke("alice", BOB) is False
    assert registry.get("alice").grants == []
    assert "has no grant for voice alice" in registry.authorize("alice", BOB).reason


def test_a_grant_must_expire_in_the_future_and_times_need_a_zone(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    with pytest.raises(InvalidGrant, match="not in the future"):
        registry.grant("alice", BOB, expires_at=NOW - timedelta(days=1))
    with pytest.raises(ValueError, match="must carry a time zone"):
        registry.authorize("alice", BOB, at=datetime(2026, 1, 1))


def test_every_change_is_a_new_revision_and_the_newest_wins(registry: VoiceRegistry) -> None:
    store = registry.store
    registry.ensure_voice("alice", OWNER, "public")
    registry.set_status("alice", "training")
    registry.grant("alice", BOB)
    revisions = store.list("registry/alice")
    assert revisions == [f"registry/alice/rev-{n:010d}.json" for n in (1, 2, 3)]
    assert [store.read_json(k)["revision"] for k in revisions] == [1, 2, 3]
    assert registry.get("alice").revision == 3
    assert store.read_json(revisions[0])["status"] == "queued"   # history stays as it was


def test_version_record_round_trips_through_json(registry: VoiceRegistry) -> None:
    registry.ensure_voice("alice", OWNER)
    v1 = registry.add_version("alice", new_version(registry.store, "alice"))
    raw = registry.store.read_json("voices/alice/v1/version.json")
    assert raw["version"] == 1 and raw["files"]["gpt"] == "voices/alice/runs/r1/gpt.bin"
    assert VersionRecord.model_validate(raw) == v1


def test_concurrent_writers_get_distinct_versions_and_lose_no_update(registry: VoiceRegistry) -> None:
    store = registry.store
    registry.ensure_voice("alice", OWNER, "public")
    per_thread = 4
    made: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        # each thread uses its own registry (and filesystem client), as separate flows would
        mine = VoiceRegistry(Store(store.uri, store.storage_options))
        barrier.wait()
        try:
            for i in range(per_thread):
                made[name].append(mine.add_version("alice", new_version(store, "alice", f"{name}{i}")).version)
                mine.grant("alice", f"user:{name}{i}@example.com")
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(name,)) for name in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    everything = sorted(made["a"] + made["b"])
    assert everything == list(range(1, 2 * per_thread + 1))            # distinct, no gaps
    voice = registry.get("alice")
    assert voice.versions == everything                                 # no lost update
    assert voice.current_version in everything
    assert sorted(g.principal for g in voice.grants) == sorted(
        f"user:{n}{i}@example.com" for n in made for i in range(per_thread))
    for name, numbers in made.items():                                  # each file is its writer's
        for i, n in enumerate(numbers):
            assert registry.version("alice", n).metrics == {"run": f"{name}{i}"}


def test_concurrent_ensure_voice_registers_once(store: Store) -> None:
    barrier = threading.Barrier(4)
    results = []

    def worker() -> None:
        mine = VoiceRegistry(Store(store.uri, store.storage_options))
        barrier.wait()
        results.append(mine.ensure_voice("alice", OWNER))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and {r.revision for r in results} == {1}
    assert store.list("registry/alice") == ["registry/alice/rev-0000000001.json"]


def test_listing_ignores_foreign_keys_and_other_voices_with_a_common_prefix(registry: VoiceRegistry) -> None:
    registry.ensure_voice("al", OWNER)
    registry.ensure_voice("alice", OWNER)
    registry.store.write_text("registry/README.txt", "not a record")
    registry.store.write_text("registry/alice/notes.txt", "not a revision")
    assert [v.voice_id for v in registry.list()] == ["al", "alice"]
    assert registry.get("al").voice_id == "al"


def test_a_store_without_exclusive_create_is_refused_unless_allowed(tmp_path) -> None:
    memory = Store(f"memory:///vf-registry-{tmp_path.name}")
    with pytest.raises(UnsafeStore, match="protocol 'memory' has no exclusive create"):
        VoiceRegistry(memory).ensure_voice("alice", OWNER)
    single_writer = VoiceRegistry(memory, allow_unsafe_writes=True)
    assert single_writer.ensure_voice("alice", OWNER).revision == 1
    assert single_writer.set_status("alice", "training").revision == 2


def test_an_s3_server_that_ignores_if_none_match_is_refused(s3_store: Store, monkeypatch) -> None:
    fs = s3_store.fs
    plain_pipe = fs.pipe_file

    def ignore_mode(path, data, mode="overwrite", **kwargs):  # a server without conditional writes
        return plain_pipe(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", ignore_mode)
    with pytest.raises(UnsafeStore, match="ignored 'If-None-Match: \\*'"):
        VoiceRegistry(s3_store).ensure_voice("alice", OWNER)
    assert s3_store.list("registry") == []   # the probe cleaned up after itself
