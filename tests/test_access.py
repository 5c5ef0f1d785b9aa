"""Principals, grants, consent expiry/withdrawal and secrets: who may render, decided before compute."""
from __future__ import annotations

import base64
import os
import re
import secrets
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT, EXIT_PARTIAL
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.principal import (
    InvalidToken,
    LocalModeRequired,
    Principal,
    mint_token,
    resolve_principal,
    token_id_of,
    verify_token,
)
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.errors import ConsentWithdrawn
from voicefleet.tasks.voices.records import NewVersion
from voicefleet.tasks.voices.registry import VoiceRegistry

OWNER = "user:ada@example.com"
BOB = "user:bob@example.com"
KEY = "JNnUXG7j+iIkiq3nKgQ9Iqueky/2dPQPtd6rWeyLakw="  # base64 of 32 random bytes (`openssl rand -base64 32`)
AUDIT_KEY = "q4Qm8c0rj5Tn1zW1bC9xE0pH7yKk2uFv6sLd3aGe5Ns="  # a deployment (a principal key) keys its audit log too
ROOT = "user:root@example.com"
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


def token_for(principal: str, hours: float = 1) -> str:
    return mint_token(principal, datetime.now(timezone.utc) + timedelta(hours=hours))


def flow_decisions(store: Store, principal: str) -> dict:
    """The render plan's own authorization step (what `render_script` decides per voice: no Ray)."""
    from voicefleet.tasks.render.plan import VoiceAuthorizer

    return {"ada": VoiceAuthorizer(store, principal)("ada")}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", KEY)
    monkeypatch.setenv("VOICEFLEET_AUDIT_KEY", AUDIT_KEY)
    monkeypatch.delenv("VOICEFLEET_TOKEN", raising=False)
    monkeypatch.delenv("VOICEFLEET_LOCAL_MODE", raising=False)
    monkeypatch.delenv("VOICEFLEET_ADMINS", raising=False)


def test_non_owner_refused_then_granted_then_refused_after_revoke(local_store: Store, key) -> None:
    ready_voice(local_store)
    store = local_store.uri
    assert not flow_decisions(local_store, BOB)["ada"].allowed
    # bob cannot grant himself; ada (with a signed token) can
    r = cli("voices", "grant", "ada", "--to", BOB, "--token", token_for(BOB), "--store", store)
    assert r.exit_code == EXIT_PARTIAL and f"principal {BOB} may not manage voice ada" in r.output
    ada = token_for(OWNER)
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
    monkeypatch.setenv("VOICEFLEET_ADMINS", ROOT)
    root = token_for(ROOT)
    r = cli("voices", "grant", "ada", "--to", "user:carol@example.com", "--token", root, "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and "consent scope names only user:bob@example.com" in r.output
    r = cli("voices", "grant", "ada", "--to", BOB, "--token", root, "--store", local_store.uri)
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
    r = cli("voices", "withdraw", "ada", "--token", token_for(OWNER), "--store", local_store.uri)
    assert r.exit_code == 0 and "withdrawn" in r.output
    assert registry.authorize("ada", OWNER, at=before).allowed  # a job that started before it
    refused = flow_decisions(local_store, OWNER)["ada"]
    assert not refused.allowed and "consent for voice ada was withdrawn at" in refused.reason
    # re-enrolling does not lift it, whatever consent.json says: only an admin's reinstatement for a new clip,
    # verified by that enrollment (tests/test_consent_review.py), with a consent granted after the withdrawal
    now = datetime.now(timezone.utc)
    with pytest.raises(ConsentWithdrawn, match="it stands until an admin reinstates it for a new consent clip"):
        registry.ensure_voice("ada", OWNER, "public", consent_granted_at=now)
    with pytest.raises(ConsentWithdrawn, match="only a consent.json granted after that"):
        registry.ensure_voice("ada", OWNER, "public", consent_granted_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
                              reinstated_at=now)
    registry.ensure_voice("ada", OWNER, "public", consent_granted_at=now, reinstated_at=now)
    assert registry.authorize("ada", OWNER).allowed


def test_worker_env_is_an_allowlist_and_urls_travel_without_credentials(monkeypatch) -> None:
    from voicefleet.tasks.cluster import runtime

    for name in runtime.FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ENDPOINT_URL": "https://user:pass@minio.example:9000/base?X-Amz-Credential=c#f",
                        "AWS_ENDPOINT_URL_S3": "not a url", "VOICEFLEET_PASSWD": "hunter2",
                        "VOICEFLEET_ADMINS": "user:root", "VOICEFLEET_LOCAL_MODE": "1", "HF_HUB_OFFLINE": "1",
                        "VOICEFLEET_DEBUG": "1", "GITHUB_PAT": "ghp_x", "DATABASE_URL": "postgres://u:p@db/x"}.items():
        monkeypatch.setenv(name, value)
    forwarded = runtime.worker_env()
    assert forwarded == {"AWS_ENDPOINT_URL": "https://minio.example:9000/base", "HF_HUB_OFFLINE": "1",
                         "VOICEFLEET_DEBUG": "1"}
    assert "pass" not in repr(forwarded) and "hunter2" not in repr(forwarded)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://[::1]:9000")
    assert runtime.worker_env()["AWS_ENDPOINT_URL"] == "http://[::1]:9000"


def test_tokens_verify_and_forged_or_expired_ones_are_refused(key, local_store: Store, monkeypatch) -> None:
    token = mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5))
    who = verify_token(token, local_store)
    assert who.name == BOB and re.fullmatch(r"[0-9a-f]{32}", who.token_id) and who.token_id == token_id_of(token)
    head, _, tid, issued, expiry, mac = token.split(".")
    forged = ".".join([head, "dXNlcjphZGFAZXhhbXBsZS5jb20", tid, issued, expiry, mac])  # ada's name, bob's MAC
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verify_token(forged, local_store)
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verify_token(".".join([head, _, tid, issued, "253402300799", mac]), local_store)  # expiry 9999
    with pytest.raises(InvalidToken, match="expired at"):
        verify_token(token, local_store, now=datetime.now(timezone.utc) + timedelta(minutes=10))
    with pytest.raises(InvalidToken, match="malformed"):
        verify_token("user:ada", local_store)
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", base64.b64encode(bytes(range(100, 132))).decode())
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verify_token(token, local_store)


@pytest.mark.parametrize(("weak", "why"), [("k" * 32, "decodes to 24 bytes"),            # 32 characters, not 32 bytes
                                           ("k" * 44, "only 3 distinct values"),         # 33 bytes, one pattern
                                           ("61" * 40, "only 1 distinct values"),        # hex of 'a' * 40
                                           ("a-test-key-that-is-long-enough-0123456789", "not valid base64 or hex"),
                                           ("shortkey", "decodes to 6 bytes")])
def test_the_principal_key_is_checked_for_random_bytes_not_length(key, monkeypatch, weak: str, why: str) -> None:
    token = mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5))
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", weak)
    with pytest.raises(InvalidToken, match=why):
        mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5))
    with pytest.raises(InvalidToken, match=why):
        verify_token(token, Store("memory://unused"))
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", "a3" + secrets.token_hex(31) + "5f")  # `openssl rand -hex 32`
    mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5))


def test_a_token_lives_at_most_the_maximum_lifetime(key, local_store: Store, monkeypatch) -> None:
    now = datetime.now(timezone.utc)
    with pytest.raises(ValueError, match="longer than the maximum 30 days"):
        mint_token(BOB, now + timedelta(days=31))
    with pytest.raises(ValueError, match="longer than the maximum 30 days"):
        mint_token(BOB, datetime(9999, 12, 31, tzinfo=timezone.utc))
    token = mint_token(BOB, now + timedelta(days=20))
    assert verify_token(token, local_store).name == BOB
    monkeypatch.setenv("VOICEFLEET_TOKEN_MAX_DAYS", "7")  # lowered: tokens minted for longer stop working
    with pytest.raises(InvalidToken, match="longer than the maximum 7 days"):
        verify_token(token, local_store)
    monkeypatch.setenv("VOICEFLEET_TOKEN_MAX_DAYS", "forever")
    with pytest.raises(InvalidToken, match="is not a number of days"):
        verify_token(token, local_store)


def test_a_revoked_token_is_refused_on_every_use(key, local_store: Store, monkeypatch) -> None:
    ready_voice(local_store)
    store = local_store.uri
    monkeypatch.setenv("VOICEFLEET_ADMINS", ROOT)
    ada, root = token_for(OWNER), token_for(ROOT)
    ada_id = token_id_of(ada)
    r = cli("principal", "revoke", ada_id, "--token", token_for(BOB), "--store", store)
    assert r.exit_code == EXIT_PARTIAL and f"may not revoke token {ada_id}" in r.output
    r = cli("principal", "revoke", "not-an-id", "--token", root, "--store", store)
    assert r.exit_code == EXIT_BAD_INPUT and "is not 32 lower-case hex digits" in r.output
    r = cli("principal", "revoke", ada_id, "--token", root, "--reason", "laptop stolen", "--store", store)
    assert r.exit_code == 0 and f"token {ada_id} revoked" in r.output
    with pytest.raises(InvalidToken, match=f"principal token {ada_id} for {OWNER} was revoked at .* by {ROOT}"):
        verify_token(ada, local_store)
    r = cli("voices", "grant", "ada", "--to", BOB, "--token", ada, "--store", store)  # the CLI checks it too
    assert r.exit_code == EXIT_BAD_INPUT and "was revoked" in r.output
    r = cli("render", "nope.csv", "--token", ada, "--store", store)
    assert r.exit_code == EXIT_BAD_INPUT and "was revoked" in r.output
    assert verify_token(token_for(OWNER), local_store).name == OWNER  # the principal's other tokens still work
    assert verify_token(ada, Store(str(local_store.uri) + "-elsewhere")).name == OWNER  # the list is per store
    event = [rec for rec in audit.read(local_store) if rec["event"] == "token_revoke"]
    assert [(e["actor"], e["detail"]["token_id"], e["detail"]["reason"]) for e in event] == [
        (ROOT, ada_id, "laptop stolen")]
    # a holder may revoke the token it acts with
    bob = token_for(BOB)
    r = cli("principal", "revoke", token_id_of(bob), "--token", bob, "--store", store)
    assert r.exit_code == 0, r.output
    with pytest.raises(InvalidToken, match="was revoked"):
        verify_token(bob, local_store)


def test_local_mode_needs_the_switch_and_no_principal_key(key, local_store: Store, monkeypatch) -> None:
    """`--as NAME` is trusted only with VOICEFLEET_LOCAL_MODE=1 and no principal key: a key means who acts is
    proven by a token, whatever --local or the switch say."""
    store = local_store.uri
    cases = [(True, switch, "a principal key is configured") for switch in (None, "0", "1")]
    cases += [(False, switch, "accepted only in local mode") for switch in (None, "0", "true")]
    for with_key, switch, refusal in cases:
        if not with_key:
            monkeypatch.delenv("VOICEFLEET_PRINCIPAL_KEY", raising=False)
        if switch is None:
            monkeypatch.delenv("VOICEFLEET_LOCAL_MODE", raising=False)
        else:
            monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", switch)
        for local in (True, False):
            with pytest.raises(LocalModeRequired, match=refusal):
                resolve_principal(name=OWNER, local=local, store=store)
        r = cli("voices", "withdraw", "ada", "--as", OWNER, "--local", "--store", store)
        assert r.exit_code == EXIT_BAD_INPUT and refusal in r.output, (with_key, switch, r.output)
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")
    assert resolve_principal(name=OWNER, store=store) == Principal(OWNER, "local")
    assert resolve_principal(name=OWNER, local=True, store=store).via == "local"


def test_a_token_from_the_environment_acts(key, local_store: Store, monkeypatch) -> None:
    monkeypatch.setenv("VOICEFLEET_TOKEN", mint_token(BOB, datetime.now(timezone.utc) + timedelta(minutes=5)))
    who = resolve_principal(store=local_store)
    assert who.name == BOB and who.via == "token" and who.token_id == token_id_of(os.environ["VOICEFLEET_TOKEN"])


def test_principal_token_command_mints_a_verifiable_token(key, local_store: Store) -> None:
    r = runner.invoke(app, ["principal", "token", BOB])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    who = verify_token(token, local_store)
    assert who.name == BOB and f"token id {who.token_id}, expires" in r.stderr
    assert timedelta(days=29) < who.expires_at - datetime.now(timezone.utc) <= timedelta(days=30)
    r = cli("principal", "token", BOB, "--expires", "2001-01-01")
    assert r.exit_code == EXIT_BAD_INPUT and "already expired" in r.output
    r = cli("principal", "token", BOB, "--expires", "9999-12-31")
    assert r.exit_code == EXIT_BAD_INPUT and "longer than the maximum 30 days" in r.output


def test_workers_get_no_secrets_through_ray(monkeypatch) -> None:
    import ray

    from voicefleet.tasks.cluster import runtime

    for name, value in {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t",
                        "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL_S3": "http://minio:9000",
                        "VOICEFLEET_PRINCIPAL_KEY": KEY, "VOICEFLEET_TOKEN": "vf1.x", "HF_TOKEN": "hf",
                        "VOICEFLEET_DEBUG": "1"}.items():
        monkeypatch.setenv(name, value)
    forwarded = runtime.worker_env()
    assert forwarded["AWS_REGION"] == "eu-west-1" and forwarded["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert forwarded["VOICEFLEET_DEBUG"] == "1"
    leaked = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VOICEFLEET_PRINCIPAL_KEY",
              "VOICEFLEET_TOKEN", "HF_TOKEN"} & set(forwarded)
    assert leaked == set()
    assert set(forwarded) <= set(runtime.FORWARDED_ENV)

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or object())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.ensure_ray()  # a local cluster: workers are children of ray.init and inherit os.environ
    runtime.ensure_ray(address="ray://head:10001")
    assert "runtime_env" not in calls[0]
    assert calls[1]["runtime_env"] == {"env_vars": forwarded}


@pytest.mark.parametrize("lookalike", ["user:mallory@\u212aodak.com",      # Kelvin sign: lower() makes it 'k'
                                       "user:mallory@xn--odak-ue8a.com",  # the same name as an A-label
                                       "user:x@evil.io#@kodak.com",       # a second '@' hiding the real domain
                                       "user:mallory@KODAK.com\u200b"])   # a zero-width space after it
def test_org_scope_compares_ascii_domains_and_refuses_lookalikes(local_store: Store, lookalike: str) -> None:
    from voicefleet.tasks.safety.access import email_domain
    from voicefleet.tasks.voices.errors import InvalidGrant

    registry = VoiceRegistry(local_store, org_of=email_domain)
    registry.ensure_voice("ada", "user:ada@kodak.com", "org")
    registry.grant("ada", "user:bob@Kodak.COM")   # ASCII case is no difference
    assert email_domain(lookalike) is None
    with pytest.raises(InvalidGrant, match=f"organisation kodak.com, and {re.escape(lookalike)} is not in it"):
        registry.grant("ada", lookalike)
    assert email_domain("user:a@xn--bcher-kva.de") == "xn--bcher-kva.de"   # an IDNA A-label is ASCII
    assert email_domain("user:a@b\u00fccher.de") is None                     # its Unicode form is refused
