"""The audit log: keyed records in order, a signed head, safe with concurrent writers; rewrites, cut tails, a
deleted log and strange keys are caught, and nothing is recorded without the key in a deployment."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta

import pytest
from test_access import BOB, OWNER, ready_voice
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT, EXIT_PARTIAL
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.audit_key import KEY_ENV, KEY_FILE_ENV, audit_key
from voicefleet.tasks.safety.principal import mint_token
from voicefleet.tasks.store.storage import Store

runner = CliRunner()
PRINCIPAL_KEY = "JNnUXG7j+iIkiq3nKgQ9Iqueky/2dPQPtd6rWeyLakw="  # base64 of 32 random bytes
AUDIT_KEY = base64.b64encode(bytes(range(7, 71, 2))).decode()  # 32 distinct bytes


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def deployment(monkeypatch):
    """A deployment: principals are signed tokens, and the audit log has its own key."""
    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", PRINCIPAL_KEY)
    monkeypatch.setenv(KEY_ENV, AUDIT_KEY)
    for name in ("VOICEFLEET_TOKEN", "VOICEFLEET_LOCAL_MODE", "VOICEFLEET_ADMINS"):
        monkeypatch.delenv(name, raising=False)


def token(principal: str) -> str:
    return mint_token(principal, datetime.now(UTC) + timedelta(hours=1))


def log_of(store: Store, n: int) -> list[dict]:
    for i in range(n):
        audit.append(store, "grant", OWNER, voice="ada", detail={"i": i})
    return audit.read(store)


def test_the_log_lists_every_event_of_a_run_in_order_and_catches_an_edit(local_store: Store, deployment) -> None:
    ready_voice(local_store)
    s, ada = local_store.uri, token(OWNER)
    for args in (("grant", "ada", "--to", BOB), ("revoke", "ada", "--from", BOB), ("withdraw", "ada")):
        assert cli("voices", *args, "--token", ada, "--store", s).exit_code == 0
    audit.append(local_store, "render_started", BOB, job="job-1", lines=3, detail={"voices": {"ada": {"version": 1}}})
    records = audit.read(local_store)
    assert [(r["seq"], r["event"], r["actor"]) for r in records] == [
        (1, "grant", OWNER), (2, "revoke", OWNER), (3, "withdraw", OWNER), (4, "render_started", BOB)]
    assert records[0]["detail"]["to"] == BOB and records[1]["detail"]["had_grant"] is True
    assert audit.verify(local_store) == 4
    assert json.loads(local_store.read_text(audit.HEAD))["seq"] == 4

    r = cli("audit", "--store", s, "--voice", "ada")
    assert r.exit_code == 0 and "4 records, chain and head verified" in r.output
    listed = [json.loads(line) for line in cli("audit", "--store", s, "--voice", "ada", "--json").output.splitlines()]
    assert listed == records
    assert cli("audit", "--store", s, "--since", "2999-01-01", "--json").output.strip() == ""

    edited = json.loads(local_store.read_text("audit/000000000002.json"))
    edited["detail"]["from"] = "user:someone-else@example.com"
    local_store.write_text("audit/000000000002.json", json.dumps(edited))
    r = cli("audit", "--store", s)
    assert r.exit_code == EXIT_PARTIAL and "broken at record 2" in r.output and "(revoke at" in r.output \
        and "was edited" in r.output


def test_an_edit_with_every_hash_recomputed_is_caught(local_store: Store, deployment) -> None:
    """The attack on a plain SHA-256 chain: edit record 2, recompute its hash and every later prev_hash/hash."""
    records = log_of(local_store, 3)
    prev = records[0]["hash"]
    for record in records[1:]:
        record = dict(record, prev_hash=prev, detail={"i": 99} if record["seq"] == 2 else record["detail"])
        body = {k: v for k, v in record.items() if k != "hash"}
        record["hash"] = prev = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                                               .encode()).hexdigest()
        local_store.write_text(f"audit/{record['seq']:012d}.json", json.dumps(record))
    with pytest.raises(audit.AuditBroken, match="audit record 2 .* was edited") as broken:
        audit.verify(local_store)
    assert broken.value.seq == 2


def test_records_and_a_head_made_with_another_key_are_refused(local_store: Store, deployment, monkeypatch) -> None:
    log_of(local_store, 2)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(bytes(range(100, 164, 2))).decode())  # the attacker's own key
    forger = Store(local_store.uri)
    with pytest.raises(audit.AuditBroken, match="head .* written with another audit key"):
        audit.verify(forger)
    local_store.delete(audit.HEAD)
    with pytest.raises(audit.AuditBroken, match="audit record 1 was not written with this audit key"):
        audit.verify(forger)


def test_deleting_the_last_records_is_caught_and_their_numbers_are_not_reused(local_store: Store, deployment) -> None:
    log_of(local_store, 4)
    local_store.delete("audit/000000000004.json")
    local_store.delete("audit/000000000003.json")
    with pytest.raises(audit.AuditBroken, match="audit record 3 is missing: the head says the log has 4") as broken:
        audit.verify(local_store)
    assert broken.value.seq == 3
    with pytest.raises(audit.AuditUnavailable, match="cannot record grant .* record 3 is missing"):
        audit.append(local_store, "grant", OWNER, voice="ada")
    assert not local_store.exists("audit/000000000003.json")
    r = cli("audit", "--store", local_store.uri)
    assert r.exit_code == EXIT_PARTIAL and "broken at record 3" in r.output


def test_deleting_the_whole_log_is_caught(local_store: Store, deployment) -> None:
    ready_voice(local_store)
    log_of(local_store, 3)
    local_store.delete(audit.PREFIX, recursive=True)
    with pytest.raises(audit.AuditBroken, match="audit record 1 is missing: the head says the log has 3"):
        audit.verify(local_store)
    # the head deleted too: the store still registers a voice, and every voice was enrolled with a record
    local_store.delete(audit.HEAD)
    assert audit.verify(local_store) == 0
    r = cli("audit", "--store", local_store.uri)
    assert r.exit_code == EXIT_PARTIAL \
        and "the log is empty (its records and head deleted?), yet the store registers 1 voice" in r.output


def test_a_removed_replaced_or_headless_record_breaks_the_log(local_store: Store, deployment) -> None:
    records = log_of(local_store, 3)
    key = audit_key()
    middle = dict(records[1], detail={"i": 99})
    middle["hash"] = key.mac(audit._canonical(middle, "hash"))  # even with the key: record 3 no longer follows
    local_store.write_text("audit/000000000002.json", json.dumps(middle))
    with pytest.raises(audit.AuditBroken, match="audit record 3 does not follow record 2"):
        audit.verify(local_store)
    local_store.write_text("audit/000000000002.json", json.dumps(records[1]))
    local_store.delete("audit/000000000002.json")
    with pytest.raises(audit.AuditBroken, match=r"audit record 2 is missing \(the next one kept is 3\)"):
        audit.verify(local_store)
    local_store.write_text("audit/000000000002.json", json.dumps(records[1]))
    assert audit.verify(local_store) == 3
    local_store.delete(audit.HEAD)
    with pytest.raises(audit.AuditBroken, match="the audit head .* is missing"):
        audit.verify(local_store)


def test_an_edited_head_is_refused_by_verify_and_append(local_store: Store, deployment) -> None:
    log_of(local_store, 2)
    head = json.loads(local_store.read_text(audit.HEAD))
    local_store.write_text(audit.HEAD, json.dumps(dict(head, seq=1)))
    with pytest.raises(audit.AuditBroken, match="audit head .* was edited or forged") as broken:
        audit.verify(local_store)
    assert broken.value.seq == 0
    with pytest.raises(audit.AuditUnavailable, match="was edited or forged"):
        audit.append(local_store, "grant", OWNER)


def test_keys_of_unicode_digits_neither_match_nor_break_appends(local_store: Store, deployment) -> None:
    log_of(local_store, 2)
    arabic = "".join(chr(0x660 + int(d)) for d in "000000000099")  # ٠٠٠٠٠٠٠٠٠٠٩٩
    local_store.write_text(f"audit/{arabic}.json", json.dumps({"seq": 99}))
    local_store.write_text("audit/00000000003.json", "{}")  # eleven digits: not a record either
    record = audit.append(local_store, "revoke", OWNER, voice="ada")
    assert record["seq"] == 3 and [r["seq"] for r in audit.read(local_store)] == [1, 2, 3]
    assert audit.verify(local_store) == 3


def test_a_deployment_without_an_audit_key_records_nothing_and_changes_nothing(local_store: Store, deployment,
                                                                                 monkeypatch) -> None:
    ready_voice(local_store)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(audit.AuditUnavailable, match="VOICEFLEET_AUDIT_KEY is unset and this is a deployment"):
        audit.append(local_store, "grant", OWNER, voice="ada")
    r = cli("voices", "grant", "ada", "--to", BOB, "--token", token(OWNER), "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and "VOICEFLEET_AUDIT_KEY is unset" in r.output
    from voicefleet.tasks.voices.registry import VoiceRegistry
    assert VoiceRegistry(local_store).get("ada").grants == [] and audit.read(local_store) == []
    r = cli("audit", "--store", local_store.uri)
    assert r.exit_code == EXIT_BAD_INPUT and "refuses to record or verify without its key" in r.output
    monkeypatch.setenv(KEY_ENV, "k" * 44)  # long, but three distinct bytes
    with pytest.raises(audit.AuditUnavailable, match="only 3 distinct values"):
        audit.append(local_store, "grant", OWNER, voice="ada")


def test_local_mode_keys_the_log_with_a_private_key_file(local_store: Store, tmp_path, monkeypatch) -> None:
    for name in (KEY_ENV, "VOICEFLEET_PRINCIPAL_KEY", "VOICEFLEET_LOCAL_MODE"):
        monkeypatch.delenv(name, raising=False)
    key_file = tmp_path / "config" / "audit.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    log_of(local_store, 2)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and len(base64.b64decode(key_file.read_text())) == 32
    assert audit.verify(local_store) == 2
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "another.key"))  # another machine, another user
    with pytest.raises(audit.AuditBroken, match="written with another audit key"):
        audit.verify(local_store)
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "0")  # saying "not local" is a deployment: no key file
    with pytest.raises(audit.AuditKeyMissing, match=r"deployment \(VOICEFLEET_LOCAL_MODE=0\)"):
        audit.verify(local_store)


def test_concurrent_writers_keep_one_chain_and_the_head_on_its_end(store: Store, deployment) -> None:
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        mine = Store(store.uri, store.storage_options)
        barrier.wait()
        try:
            for i in range(4):
                audit.append(mine, "render_finished", name, job=f"{name}-{i}", lines=i)
        except BaseException as e:  # noqa: BLE001 -- surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert audit.verify(store) == 12
    records = audit.read(store)
    assert sorted(r["job"] for r in records) == sorted(f"{n}-{i}" for n in "abc" for i in range(4))
    head = json.loads(store.read_text(audit.HEAD))
    assert (head["seq"], head["hash"]) == (12, records[-1]["hash"])


def test_a_checkpoint_kept_off_the_store_catches_a_log_rolled_back_to_an_older_head(local_store: Store,
                                                                                     deployment) -> None:
    """What the head alone cannot catch: an attacker copies audit/ and the head, and puts them back later."""
    log_of(local_store, 2)
    saved = {k: local_store.read_bytes(k) for k in (*local_store.list(audit.PREFIX), audit.HEAD)}
    r = cli("audit", "--store", local_store.uri)
    assert r.exit_code == 0
    log_of(local_store, 2)
    r = cli("audit", "--store", local_store.uri)
    checkpoint = r.output.split("checkpoint ")[1].split()[0]
    assert checkpoint == f"4:{audit.read(local_store)[-1]['hash']}"

    local_store.delete(audit.PREFIX, recursive=True)  # the rollback: records 3 and 4 gone, the old head back
    for k, data in saved.items():
        local_store.write_bytes(k, data)
    assert audit.verify(local_store) == 2  # the head alone is satisfied
    r = cli("audit", "--store", local_store.uri, "--checkpoint", checkpoint)
    assert r.exit_code == EXIT_PARTIAL and "broken at record 3" in r.output and "rolled back" in r.output
    with pytest.raises(audit.AuditBroken, match="audit record 2 is not the one an earlier check saw"):
        audit.verify(local_store, (2, "0" * 64))
    r = cli("audit", "--store", local_store.uri, "--checkpoint", "2:abc")
    assert r.exit_code == EXIT_BAD_INPUT and "is not <record number>:<its 64-hex hash>" in r.output


def test_a_head_that_cannot_move_lags_without_undoing_the_record(local_store: Store, deployment, monkeypatch,
                                                                  caplog) -> None:
    log_of(local_store, 1)

    def refused(*args, **kwargs):
        raise PermissionError("head.json: access denied")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "swap_bytes", refused)
        record = audit.append(local_store, "grant", OWNER, voice="ada")  # written: what it records goes ahead
    assert record["seq"] == 2 and "the head could not be moved to it (head.json: access denied)" in caplog.text
    assert json.loads(local_store.read_text(audit.HEAD))["seq"] == 1 and audit.verify(local_store) == 2
    audit.append(local_store, "grant", OWNER, voice="ada")  # the next append moves it on
    assert json.loads(local_store.read_text(audit.HEAD))["seq"] == 3 and audit.verify(local_store) == 3


def test_a_cut_hidden_by_deleting_the_head_too_is_not_covered_by_the_next_append(local_store: Store,
                                                                                deployment) -> None:
    log_of(local_store, 3)
    local_store.delete("audit/000000000003.json")
    local_store.delete(audit.HEAD)  # without the head, an append would start a new one over the cut
    with pytest.raises(audit.AuditUnavailable, match="the audit head .* is missing while 2 records are kept"):
        audit.append(local_store, "grant", OWNER, voice="ada")
    assert not local_store.exists(audit.HEAD) and not local_store.exists("audit/000000000003.json")
    with pytest.raises(audit.AuditBroken, match="the audit head .* is missing"):
        audit.verify(local_store)


def test_a_new_log_starts_with_a_head_at_zero(local_store: Store, deployment) -> None:
    assert audit.verify(local_store) == 0 and not local_store.exists(audit.HEAD)
    audit.append(local_store, "grant", OWNER, voice="ada")
    assert json.loads(local_store.read_text(audit.HEAD))["seq"] == 1
    local_store.delete(audit.HEAD)
    local_store.delete("audit/000000000001.json")
    audit._last_sequence(local_store, audit_key())  # what an append does first on an empty store
    assert json.loads(local_store.read_text(audit.HEAD))["seq"] == 0 and audit.verify(local_store) == 0
