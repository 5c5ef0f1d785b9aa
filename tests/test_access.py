"""Principals, grants, consent expiry/withdrawal and secrets: who may render, decided before compute."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT, EXIT_PARTIAL
from voicefleet.tasks.safety.principal import (
    InvalidToken,
    LocalModeRequired,
    mint_token,
    resolve_principal,
    verify_token,
)
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.errors import ConsentWithdrawn
from voicefleet.tasks.voices.records import NewVersion
from voicefleet.tasks.voices.registry import VoiceRegistry

OWNER = "user:ada@example.com"
BOB = "user:bob@example.com"
KEY = "a-test-key-that-is-long-enough-0123456789"
runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def ready_voice(store: Store, voice: str = "ada", sharing="public", expires: datetime | None = None) -> VoiceRegistry:
    registry = VoiceRegistry(store)
    registry.ensure_voice(voice, OWNER, sharing, consent_granted_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
                          consent_expires_at=expires)
    files = {}
    for name in ("gpt", "sovits"):
        files[name] = f"voices/{voice}/runs/r1/{name}.bin"
        store.write_bytes(files[name], b"x")
    registry.add_version(voice, NewVersion(base_model="tiny", untrained=True, files=files))
    return registry


def flow_decisions(store: Store, principal: str) -> dict:
    """The render plan's own authorization step (what `render_script` decides per voice: no Ray)."""
    from voicefleet.tasks.render.plan import VoiceAuthorizer

    return {"ada": VoiceAuthorizer(store, principal)("ada")}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", KEY)
    monkeypatch.delenv("VOICEFLEET_TOKEN", raising=False)
    monkeypatch.delenv("VOICEFLEET_LOCAL_MODE", raising=False)
    monkeypatch.delenv("VOICEFLEET_ADMINS", raising=False)


def test_non_owner_refused_then_granted_then_refused_after_revoke(local_store: Store, key) -> None:
    ready_voice(local_store)
    store = local_store.uri
    assert not flow_decisions(local_store, BOB)["ada"].allowed
    # bob cannot grant himself; ada (with a signed token) can
    r = cli("voices", "grant", "ada", "--to", BOB, "--as", BOB, "--local", "--store", store)
    assert r.exit_code == EXIT_PARTIAL and f"principal {BOB} may not manage voice ada" in r.output
    ada = mint_token(OWNER, datetime.now(timezone.utc) + timedelta(hours=1))
    r = cli("voices", "grant", "ada", "--to", BOB, "--expires", "2099-01-01", "--token", ada, "--store", store)
    assert r.exit_code == 0, r.output
    decision = flow_decisions(local_store, BOB)["ada"]
    assert decision.allowed and decision.version == 1
    r = cli("voices", "revoke", "ada", "--from", BOB, "--token", ada, "--store", store)
    assert r.exit_code == 0 and "revoked" in r.output
    refused = flow_decisions(local_store, BOB)["ada"]
    assert not refused.allowed and f"principal {BOB} has no grant for voice ada" in refused.reason


def test_an_admin_may_grant_and_the_consent_scope_bounds_grants(local_store: Store, key, monkeypatch) -> None:
    ready_voice(local_store, sharing=[BOB])
    monkeypatch.setenv("VOICEFLEET_ADMINS", "user:root")
    r = cli("voices", "grant", "ada", "--to", "user:carol@example.com", "--as", "user:root", "--local",
            "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and "consent scope names only user:bob@example.com" in r.output
    r = cli("voices", "grant", "ada", "--to", BOB, "--as", "user:root", "--local", "--store", local_store.uri)
    assert r.exit_code == 0, r.output


def test_expired_consent_refuses_every_principal(local_store: Store) -> None:
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    registry = ready_voice(local_store, expires=expires)
    assert registry.authorize("ada", OWNER).allowed
    later = registry.authorize("ada", OWNER, at=expires + timedelta(seconds=1))
    assert not later.allowed and later.reason == f"the speaker's consent for voice ada expired at {expires.isoformat()}"


def test_withdrawn_consent_refuses_jobs_started_after_it(local_store: Store, key) -> None:
    registry = ready_voice(local_store)
    before = datetime.now(timezone.utc)
    r = cli("voices", "withdraw", "ada", "--as", OWNER, "--local", "--store", local_store.uri)
    assert r.exit_code == 0 and "withdrawn" in r.output
    assert registry.authorize("ada", OWNER, at=before).allowed  # a job that started before it
    refused = flow_decisions(local_store, OWNER)["ada"]
    assert not refused.allowed and "consent for voice ada was withdrawn at" in refused.reason
    # re-enrolling under the old consent is refused; a consent granted after the withdrawal clears it
    with pytest.raises(ConsentWithdrawn, match="only a consent.json granted after that"):
        registry.ensure_voice("ada", OWNER, "public", consent_granted_at=datetime(2025, 1, 1, tzinfo=timezone.utc))
    registry.ensure_voice("ada", OWNER, "public", consent_granted_at=datetime.now(timezone.utc))
    assert registry.authorize("ada", OWNER).allowed


def test_tokens_verify_and_forged_or_expired_ones_are_refused(key, monkeypatch) -> None:
    token = mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5))
    assert verify_token(token).name == BOB
    head, _, expiry, mac = token.split(".")
    forged = ".".join([head, "dXNlcjphZGFAZXhhbXBsZS5jb20", expiry, mac])  # ada's name under bob's MAC
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verify_token(forged)
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verify_token(".".join([head, _, str(int(expiry) + 86400), mac]))  # a longer life
    with pytest.raises(InvalidToken, match="expired at"):
        verify_token(token, now=datetime.now(timezone.utc) + timedelta(minutes=10))
    with pytest.raises(InvalidToken, match="malformed"):
        verify_token("user:ada")
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", "another-deployment-key-0123456789abcdef")
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verify_token(token)
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", "short")
    with pytest.raises(InvalidToken, match="at least 32 bytes"):
        verify_token(token)


def test_the_flow_trusts_a_plain_name_only_in_local_mode(key, monkeypatch) -> None:
    with pytest.raises(LocalModeRequired, match="accepted only in local mode"):
        resolve_principal(name=OWNER)
    assert resolve_principal(name=OWNER, local=True).via == "local"
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")
    assert resolve_principal(name=OWNER).name == OWNER
    monkeypatch.setenv("VOICEFLEET_TOKEN", mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5)))
    assert resolve_principal() == resolve_principal(token=None)
    assert resolve_principal().name == BOB and resolve_principal().via == "token"


def test_principal_token_command_mints_a_verifiable_token(key) -> None:
    r = cli("principal", "token", BOB, "--expires", "2099-01-01")
    assert r.exit_code == 0, r.output
    who = verify_token(r.output.strip())
    assert who.name == BOB and who.expires_at == datetime(2099, 1, 1, tzinfo=timezone.utc)
    r = cli("principal", "token", BOB, "--expires", "2001-01-01")
    assert r.exit_code == EXIT_BAD_INPUT and "already expired" in r.output


def test_workers_get_no_secrets_through_ray(monkeypatch) -> None:
    import ray

    from voicefleet.tasks.cluster import runtime

    for name, value in {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t",
                        "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL_S3": "http://minio:9000",
                        "VOICEFLEET_PRINCIPAL_KEY": KEY, "VOICEFLEET_TOKEN": "vf1.x", "HF_TOKEN": "hf",
                        "VOICEFLEET_RAY_LOGS": "1"}.items():
        monkeypatch.setenv(name, value)
    forwarded = runtime.worker_env()
    assert forwarded["AWS_REGION"] == "eu-west-1" and forwarded["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert forwarded["VOICEFLEET_RAY_LOGS"] == "1"
    leaked = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VOICEFLEET_PRINCIPAL_KEY",
              "VOICEFLEET_TOKEN", "HF_TOKEN"} & set(forwarded)
    assert leaked == set()

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or object())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.ensure_ray()  # a local cluster: workers are children of ray.init and inherit os.environ
    runtime.ensure_ray(address="ray://head:10001")
    assert "runtime_env" not in calls[0]
    assert calls[1]["runtime_env"] == {"env_vars": forwarded}
