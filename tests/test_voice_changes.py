"""Every change to a voice (rollback, grant, revoke, withdraw) needs its owner or an admin, is recorded in the
audit log before it is made, and is not made when it cannot be recorded; rollback never defaults to a
version that failed its quality gate."""
from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PARTIAL
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.principal import mint_token
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices import manage
from voicefleet.tasks.voices.records import NewVersion
from voicefleet.tasks.voices.registry import VoiceRegistry

OWNER = "user:ada@example.com"
BOB = "user:bob@example.com"
ROOT = "user:root@example.com"
runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def deployment(monkeypatch):
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", base64.b64encode(bytes(range(1, 65, 2))).decode())
    monkeypatch.setenv("VOICEFLEET_AUDIT_KEY", base64.b64encode(bytes(range(3, 99, 3))).decode())
    monkeypatch.setenv("VOICEFLEET_ADMINS", ROOT)
    for name in ("VOICEFLEET_TOKEN", "VOICEFLEET_LOCAL_MODE"):
        monkeypatch.delenv(name, raising=False)


def token(principal: str) -> str:
    return mint_token(principal, datetime.now(UTC) + timedelta(hours=1))


def gate(passed: bool) -> dict:
    return {"gate": {"mode": "enforce", "passed": passed, "reasons": [] if passed else ["similarity 0.31 < 0.60"]}}


def three_versions(store: Store, gates: tuple[bool, ...] = (True, False, True)) -> VoiceRegistry:
    """Voice "ada": by default v1 passed its gate, v2 failed it (held back), v3 passed and is current."""
    registry = VoiceRegistry(store)
    registry.ensure_voice("ada", OWNER, "public", consent_granted_at=datetime(2025, 1, 1, tzinfo=UTC))
    for n, passed in enumerate(gates, 1):
        files = {}
        for name in ("gpt", "sovits"):
            files[name] = f"voices/ada/runs/r{n}/{name}.bin"
            store.write_bytes(files[name], b"x")
        registry.add_version("ada", NewVersion(base_model="tiny", untrained=True, files=files, evaluation=gate(passed)),
                             make_current=passed, held_back=None if passed else "below the quality gate")
    return registry


def test_rollback_needs_the_owner_or_an_admin_and_is_recorded(local_store: Store, deployment) -> None:
    registry = three_versions(local_store)
    s = local_store.uri
    assert registry.get("ada").current_version == 3
    r = cli("voices", "rollback", "ada", "--to", "1", "--store", s)  # no one: the attack of issue 23
    assert r.exit_code == EXIT_BAD_INPUT and "no principal" in r.output
    r = cli("voices", "rollback", "ada", "--to", "1", "--token", token(BOB), "--store", s)
    assert r.exit_code == EXIT_PARTIAL and f"principal {BOB} may not manage voice ada" in r.output
    assert registry.get("ada").current_version == 3 and audit.read(local_store) == []

    r = cli("voices", "rollback", "ada", "--token", token(OWNER), "--store", s)  # default: skips gate-failed v2
    assert r.exit_code == 0 and "current version 3 -> 1 by user:ada@example.com" in r.output, r.output
    assert registry.get("ada").current_version == 1
    record = audit.read(local_store)[-1]
    assert (record["event"], record["actor"], record["voice"], record["version"]) == ("rollback", OWNER, "ada", "1")
    assert record["detail"] == {"from": 3, "gate_failed": False}

    r = cli("voices", "rollback", "ada", "--to", "2", "--token", token(ROOT), "--store", s)
    assert r.exit_code == EXIT_PARTIAL and "version 2 failed its quality gate (similarity 0.31 < 0.60)" in r.output
    assert registry.get("ada").current_version == 1 and len(audit.read(local_store)) == 1
    r = cli("voices", "rollback", "ada", "--to", "2", "--allow-gate-failed", "--token", token(ROOT), "--store", s)
    assert r.exit_code == 0 and registry.get("ada").current_version == 2
    record = audit.read(local_store)[-1]
    assert (record["actor"], record["version"], record["detail"]) == (ROOT, "2", {"from": 1, "gate_failed": True})
    assert audit.verify(local_store) == 2


def test_rollback_has_no_default_when_every_earlier_version_failed_its_gate(local_store: Store, deployment) -> None:
    registry = three_versions(local_store, gates=(False, False, True))
    r = cli("voices", "rollback", "ada", "--token", token(OWNER), "--store", local_store.uri)
    assert r.exit_code == EXIT_NOT_FOUND and "no version before 3 that passed its quality gate" in r.output \
        and "gate failed: 1, 2" in r.output
    assert registry.get("ada").current_version == 3 and audit.read(local_store) == []
    manage.rollback(local_store, "ada", 1, OWNER, allow_gate_failed=True)  # the API takes the same insistence
    assert registry.get("ada").current_version == 1


CHANGES = {
    "grant": ("grant", "ada", "--to", BOB),
    "revoke": ("revoke", "ada", "--from", BOB),
    "withdraw": ("withdraw", "ada"),
    "rollback": ("rollback", "ada", "--to", "1"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_the_log_cannot_record_is_not_made(local_store: Store, deployment, monkeypatch, change) -> None:
    registry = three_versions(local_store)
    registry.grant("ada", BOB)
    before = registry.get("ada")
    for i in range(2):
        audit.append(local_store, "render_finished", OWNER, job=f"j{i}")
    local_store.delete("audit/000000000002.json")  # a cut log: the head is ahead of the records
    r = cli("voices", *CHANGES[change], "--token", token(OWNER), "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and f"cannot record {change} in the audit log" in r.output, r.output
    assert registry.get("ada") == before

    local_store.write_bytes("audit/000000000002.json", b"")  # repaired wrongly: still refused
    r = cli("voices", *CHANGES[change], "--token", token(OWNER), "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and "is not readable JSON" in r.output
    monkeypatch.delenv("VOICEFLEET_AUDIT_KEY")  # and a deployment without the key records nothing
    local_store.delete(audit.PREFIX, recursive=True)
    local_store.delete(audit.HEAD)
    r = cli("voices", *CHANGES[change], "--token", token(OWNER), "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and "VOICEFLEET_AUDIT_KEY is unset" in r.output
    assert registry.get("ada") == before


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_record_is_written_before_the_change(local_store: Store, deployment, monkeypatch, change) -> None:
    registry = three_versions(local_store)
    registry.grant("ada", BOB)
    before = registry.get("ada")
    seen = []
    real_append = audit.append

    def append(store, event, actor, **fields):
        seen.append(registry.get("ada") == before)  # the registry as it is while the record is written
        return real_append(store, event, actor, **fields)

    monkeypatch.setattr(audit, "append", append)
    assert cli("voices", *CHANGES[change], "--token", token(OWNER), "--store", local_store.uri).exit_code == 0
    assert seen == [True] and registry.get("ada") != before
    assert [r["event"] for r in audit.read(local_store)] == [change]
