"""The deployments' closed parameter surface, and the credential reference a run is started with.

Whoever can start a run of a deployment chooses its parameters: each flow takes only what a caller may
choose (script, store, job, settings, a credential reference). Who acts, local mode and the render
plan are never parameters; the credential is a Secret block read once, never the token.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from voicefleet.flows import credential
from voicefleet.tasks.safety.principal import InvalidToken, Principal, mint_token, token_id_of

ROOT = Path(__file__).resolve().parents[1]
KEY = "JNnUXG7j+iIkiq3nKgQ9Iqueky/2dPQPtd6rWeyLakw="
OWNER = "user:ada@example.com"
SETTINGS = {"pretrained", "model_version", "num_gpus", "num_cpus", "qc"}
PARAMETERS = {  # deployment -> every parameter its flow takes
    "render-script": {"script", "credential", "store", "job_id", *SETTINGS, "actors", "batch_size", "lines_per_shard",
                      "retry_failed", "max_chars", "voice_cache", "precision", "post", "unsafe_single_writer"},
    "enroll-batch": {"src", "store", *SETTINGS, "recipe", "gate", "workers", "force"},
}
NEVER = {"principal", "token", "local", "plan", "who", "actor", "owner", "admin"}


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_each_deployment_takes_only_what_a_caller_may_choose(name: str, monkeypatch) -> None:
    """Prefect's parameter schema of the flow, read as `prefect deploy` reads it (from the entrypoint) and
    from the imported flow: exactly the listed parameters, none of who acts, local mode or the plan."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint

    deployment = deployments()[name]
    monkeypatch.chdir(ROOT)
    from_source = parameter_schema_from_entrypoint(deployment["entrypoint"]).model_dump()
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    imported = parameter_schema(flow.fn).model_dump()
    for schema in (from_source, imported):
        assert set(schema["properties"]) == PARAMETERS[name], set(schema["properties"]) ^ PARAMETERS[name]
        assert not set(schema["properties"]) & NEVER
    assert set(deployment["parameters"]) <= PARAMETERS[name]
    assert deployment["enforce_parameter_schema"] is True
    if name == "render-script":
        assert from_source["properties"]["credential"]["type"] == "string"
        assert set(from_source["required"]) == {"script", "credential"}


def test_a_run_cannot_be_told_who_to_be_or_what_to_delete(tmp_path) -> None:
    """The issue's attacks, as a run's parameters: `local`, `principal` and `plan` are not parameters (the
    run is refused before its body, so no folder named in a plan is touched); a plain name, the token itself
    or a guessed in-process reference as the credential is refused with the reason."""
    from prefect.exceptions import SignatureMismatchError

    from voicefleet.flows.render import render_script

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    for extra in ({"local": True}, {"principal": OWNER}, {"plan": {"directory": str(victim)}}):
        with pytest.raises(SignatureMismatchError):
            render_script.validate_parameters({"script": "s.csv", "credential": "c", **extra})
    assert (victim / "keep.txt").exists()
    with pytest.raises(InvalidToken, match="not a Secret block name"):
        credential.redeem(OWNER, str(tmp_path / "store"))
    with pytest.raises(InvalidToken, match="never the token"):
        credential.redeem("vf2.dXNlcg.0123.1.2.mac", str(tmp_path / "store"))
    with pytest.raises(InvalidToken, match="unknown or already used"):
        credential.redeem(credential.HANDOFF_PREFIX + "0" * 32, str(tmp_path / "store"))


def test_an_in_process_handoff_is_single_use() -> None:
    who = Principal(OWNER, "local")
    ref = credential.hand_over(who, "the plan")
    assert credential.redeem(ref, "unused") == (who, "the plan")
    with pytest.raises(InvalidToken, match="unknown or already used"):
        credential.redeem(ref, "unused")
    assert credential.discard(ref) is None
    unused = credential.hand_over(who, "another plan")
    assert credential.discard(unused) == "another plan"   # `render_as` cleans up a plan no run redeemed


@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect server with its own database (Prefect's test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_a_secret_block_is_redeemed_once_and_a_revoked_token_refused(prefect_server, tmp_path, monkeypatch) -> None:
    from prefect.blocks.system import Secret

    from voicefleet.tasks.safety.revocation import revoke

    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", KEY)
    store = str(tmp_path / "store")
    token = mint_token(OWNER, datetime.now(timezone.utc) + timedelta(hours=1))
    name = credential.hand_over_secret(token)
    who, plan = credential.redeem(name, store)
    assert (who.name, who.via, who.token_id, plan) == (OWNER, "token", token_id_of(token), None)
    with pytest.raises(ValueError):
        Secret.load(name)   # deleted by the run that used it
    with pytest.raises(InvalidToken, match="a run already used it"):
        credential.redeem(name, store)
    from voicefleet.tasks.store.storage import Store

    revoke(Store(store), token_id_of(token), "user:root")
    with pytest.raises(InvalidToken, match="was revoked"):
        credential.redeem(credential.hand_over_secret(token), store)


def test_principal_handoff_puts_the_token_in_a_secret_block_and_prints_only_its_name(prefect_server,
                                                                                   monkeypatch) -> None:
    from prefect.blocks.system import Secret
    from typer.testing import CliRunner

    from voicefleet.flows.cli import app
    from voicefleet.flows.commands.exits import EXIT_BAD_INPUT

    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", KEY)
    monkeypatch.delenv("VOICEFLEET_TOKEN", raising=False)
    token = mint_token(OWNER, datetime.now(timezone.utc) + timedelta(hours=1))
    r = CliRunner().invoke(app, ["principal", "handoff", "--token", token])
    assert r.exit_code == 0, r.output
    name = r.stdout.strip()
    assert name.startswith(credential.SECRET_PREFIX) and token not in r.output
    assert Secret.load(name).get() == token
    r = CliRunner().invoke(app, ["principal", "handoff", "--token", "user:ada"])
    assert r.exit_code == EXIT_BAD_INPUT and "malformed" in r.output
    r = CliRunner().invoke(app, ["principal", "handoff"])
    assert r.exit_code == EXIT_BAD_INPUT and "no token" in r.output
