"""The audit log: every event in order, hash-chained, safe with concurrent writers; edits are caught."""
from __future__ import annotations

import json
import threading

import pytest
from test_access import BOB, OWNER, ready_voice
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_PARTIAL
from voicefleet.tasks.safety import audit
from voicefleet.tasks.store.storage import Store

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_the_log_lists_every_event_of_a_run_in_order_and_catches_an_edit(local_store: Store, monkeypatch) -> None:
    monkeypatch.delenv("VOICEFLEET_TOKEN", raising=False)
    ready_voice(local_store)
    s = local_store.uri
    for args in (("grant", "ada", "--to", BOB), ("revoke", "ada", "--from", BOB), ("withdraw", "ada")):
        assert cli("voices", *args, "--as", OWNER, "--local", "--store", s).exit_code == 0
    audit.append(local_store, "render_started", BOB, job="job-1", lines=3, detail={"voices": {"ada": {"version": 1}}})
    records = audit.read(local_store)
    assert [(r["seq"], r["event"], r["actor"]) for r in records] == [
        (1, "grant", OWNER), (2, "revoke", OWNER), (3, "withdraw", OWNER), (4, "render_started", BOB)]
    assert records[0]["detail"]["to"] == BOB and records[1]["detail"]["had_grant"] is True
    assert audit.verify(records) == 4

    r = cli("audit", "--store", s, "--voice", "ada")
    assert r.exit_code == 0 and "4 records, chain verified" in r.output
    listed = [json.loads(line) for line in cli("audit", "--store", s, "--voice", "ada", "--json").output.splitlines()]
    assert listed == records
    assert cli("audit", "--store", s, "--since", "2999-01-01", "--json").output.strip() == ""

    edited = json.loads(local_store.read_text("audit/000000000002.json"))
    edited["detail"]["from"] = "user:someone-else@example.com"
    local_store.write_text("audit/000000000002.json", json.dumps(edited))
    r = cli("audit", "--store", s)
    assert r.exit_code == EXIT_PARTIAL and "audit record 2 (revoke at" in r.output and "was edited" in r.output


def test_a_removed_or_replaced_record_breaks_the_chain(local_store: Store) -> None:
    for i in range(3):
        audit.append(local_store, "grant", OWNER, voice="ada", detail={"i": i})
    records = audit.read(local_store)
    with pytest.raises(audit.AuditBroken, match="audit record 2 is missing or out of place"):
        audit.verify([records[0], records[2]])
    forged = dict(records[1], detail={"i": 99}, prev_hash=records[1]["prev_hash"])
    forged["hash"] = audit._digest(forged)  # rehashed so it verifies alone: the next record catches it
    with pytest.raises(audit.AuditBroken, match="audit record 3 does not follow record 2"):
        audit.verify([records[0], forged, records[2]])


def test_concurrent_writers_never_share_a_slot(store: Store) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        mine = Store(store.uri, store.storage_options)
        barrier.wait()
        try:
            for i in range(4):
                audit.append(mine, "render_finished", name, job=f"{name}-{i}", lines=i)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = audit.read(store)
    assert audit.verify(records) == 8
    assert sorted(r["job"] for r in records) == sorted(f"{n}-{i}" for n in "ab" for i in range(4))
