"""A render job on real Ray + Prefect: a script of several voices mixing short, long, English, Chinese
and mixed lines plus every bad value; a refusal lifted by a grant and a failed line retried on the
next run; a second concurrent run refused by the job lease; exit codes through the CLI."""
from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from render_checks import assert_render_complete
from render_voices import register_tiny_voices

from voicefleet.tasks.render.index_read import read_index
from voicefleet.tasks.render.job_lease import JobLease
from voicefleet.tasks.render.job_paths import job_prefix
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.registry import VoiceRegistry

pytestmark = pytest.mark.slow
OWNER = "user:demo"
INFRA = Path(__file__).resolve().parents[1] / "infra" / "prefect.yaml"

GOOD = [
    ("short", "ann", "Hi there.", "en", {}),
    ("long", "bob", "The storm rolled in before dawn. Nobody on the pier had seen it coming. "
                    "By noon the harbour was quiet again.", "en", {}),
    ("chinese", "ann", "你好，欢迎收听今天的节目。", "zh", {}),
    ("mixed", "bob", "我们今天 talk about the plan.", "auto", {}),
    ("greedy", "ann", "Temperature zero is greedy.", "en", {"temperature": "0"}),
    ("dub", "bob", "Two seconds, please.", "en", {"target_seconds": "2.0", "speed": "1.2", "seed": "7"}),
]
BAD = [
    ("speed-fast", {"speed": "fast"}, "speed 'fast' is not a number; use 0.5–2.0"),
    ("speed-neg", {"speed": "-1"}, "speed '-1' is out of range"),
    ("speed-zero", {"speed": "0"}, "speed '0' is out of range"),
    ("speed-nan", {"speed": "NaN"}, "speed 'NaN' is not a finite number"),
    ("topk-zero", {"top_k": "0"}, "top_k '0' is out of range"),
    ("temp-inf", {"temperature": "inf"}, "temperature 'inf' is not a finite number"),
    ("seed-frac", {"seed": "1.5"}, "seed '1.5' is not a whole number"),
    ("noise-neg", {"noise_scale": "-1"}, "noise_scale '-1' is out of range"),
    ("target-zero", {"target_seconds": "0"}, "target_seconds '0' is out of range"),
    ("empty", {"text": ""}, "text is empty"),
    ("blank", {"text": "   "}, "text is empty"),
    ("punct", {"text": "?!…"}, "no letters or digits"),
    ("control", {"text": "Bell\x07 here."}, "control character U+0007"),
    ("huge", {"text": "Word. " * 400}, "over the 2,000-character cap"),
    ("klingon", {"language": "tlh"}, "unsupported language 'tlh'"),
]
COLUMNS = ["line_id", "voice_id", "text", "language", "speed", "seed", "top_k", "temperature", "noise_scale",
           "target_seconds"]


@pytest.fixture(scope="module")
def ray_address(s3_server):
    from voicefleet.tasks.cluster.runtime import ensure_ray

    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    import ray

    return ray.get_runtime_context().gcs_address


def write_script(path, rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def cli(*args, env):
    env = {"COLUMNS": "250", **env}
    return subprocess.run([sys.executable, "-m", "voicefleet.flows.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_mixed_script_bad_lines_refused_rest_ok_then_grant_and_retry(ray_address, tmp_path):
    from voicefleet.flows.render import render_as
    from voicefleet.tasks.safety.principal import Principal

    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann", "bob", "dan"], OWNER)
    # cat's consent lets its owner share it, but nobody has been granted it yet
    register_tiny_voices(store, ["cat"], "user:other", sharing="public")
    rows = [{"line_id": i, "voice_id": v, "text": t, "language": lang, **o} for i, v, t, lang, o in GOOD]
    rows += [{"line_id": i, "voice_id": "ann", "text": "A fine line.", "language": "en", **o} for i, o, _ in BAD]
    rows += [{"line_id": "cat-1", "voice_id": "cat", "text": "Not yours yet.", "language": "en"},
             {"line_id": "dan-1", "voice_id": "dan", "text": "My checkpoint is broken.", "language": "en"}]
    script = write_script(tmp_path / "script.csv", rows)
    dan_gpt = "voices/dan/files/gpt.ckpt"
    good_ckpt = store.read_bytes(dan_gpt)
    store.write_bytes(dan_gpt, b"not a checkpoint")

    res = render_as(Principal(OWNER, "local"), script, store.uri, job_id="mixed", batch_size=4, lines_per_shard=4)
    ids = [r["line_id"] for r in rows]
    table = assert_render_complete(store, "mixed", ids)
    by_id = {r["line_id"]: r for r in table.to_pylist()}
    for line_id, _, reason in BAD:
        assert by_id[line_id]["status"] == "refused" and reason in by_id[line_id]["error"], by_id[line_id]
        assert by_id[line_id]["attempts"] == 0
    for line_id, *_ in GOOD:
        row = by_id[line_id]
        assert row["status"] == "ok" and row["attempts"] == 1 and row["run"] == 1, row
        assert row["truncated"] is not None and (row["qc_passed"] is False) == bool(row["truncated"])
    assert by_id["dub"]["target_seconds"] == 2.0 and by_id["dub"]["seed"] == 7
    assert by_id["dub"]["duration_deviation_s"] == pytest.approx(by_id["dub"]["duration_s"] - 2.0)
    assert by_id["cat-1"]["status"] == "refused" and "cat" in by_id["cat-1"]["error"]
    assert by_id["dan-1"]["status"] == "failed" and "could not be loaded" in by_id["dan-1"]["error"]
    assert (res["ok"], res["failed"], res["refused"]) == (len(GOOD), 1, len(BAD) + 1)
    assert res["lines_indexed"] == len(rows) and res["index_files"] == 1

    # the owner grants access and the checkpoint is repaired: the next run takes both lines again
    VoiceRegistry(store).grant("cat", OWNER)
    store.write_bytes(dan_gpt, good_ckpt)
    env = dict(os.environ, RAY_ADDRESS=ray_address, VOICEFLEET_LOCAL_MODE="1")  # `--as`: a single-user machine
    env.pop("VOICEFLEET_PRINCIPAL_KEY", None)
    args = ["render", script, "--as", OWNER, "--local", "--store", store.uri, "--job", "mixed", "--retry-failed"]
    with JobLease(store, "mixed"):   # another run holds the job: refused, nothing written
        busy = cli(*args, env=env)
    assert busy.returncode == 5 and "being written by another run" in busy.stderr, busy.stdout + busy.stderr
    again = cli(*args, env=env)
    assert again.returncode == 4, again.stdout[-2000:] + again.stderr[-2000:]   # bad lines are still refused
    table = assert_render_complete(store, "mixed", ids)
    by_id2 = {r["line_id"]: r for r in table.to_pylist()}
    assert by_id2["cat-1"]["status"] == "ok" and by_id2["cat-1"]["run"] == 2
    assert by_id2["dan-1"]["status"] == "ok" and by_id2["dan-1"]["run"] == 2
    for line_id, *_ in GOOD:   # finished lines untouched
        assert by_id2[line_id]["sha256"] == by_id[line_id]["sha256"] and by_id2[line_id]["run"] == 1
    for line_id, _, _ in BAD:  # refused again for the same reason: no new row
        assert by_id2[line_id]["run"] == 1
    assert len(store.glob(f"{job_prefix('mixed')}/index/*.parquet")) == 1
    assert not store.list(f"{job_prefix('mixed')}/runs")   # the work lists are gone
    shown = cli("jobs", "show", "mixed", "--store", store.uri, "--worst", "20", env=env)
    assert shown.returncode == 0 and "refused" in shown.stdout and "speed 'fast'" in shown.stdout
    assert read_index(store, "mixed").num_rows == len(rows)


ISOLATED = "VOICEFLEET_TEST_IN_FRESH_PROCESS"


def test_a_deployment_run_keeps_no_token_in_prefects_database_logs_artifacts_or_the_job():
    """The check below, run in a fresh interpreter: in the full suite, state that earlier tests leave in this
    process's Prefect and logging machinery kept the run's logs from reaching the temporary server (seen twice in
    CI, never alone), and a grep of a database without the run's logs proves nothing about them."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"} | {ISOLATED: "1"}
    test = f"{__file__}::test_deployment_run_keeps_no_token_fresh_process"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", test],
                       env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-6000:] + r.stderr[-3000:]


@pytest.mark.skipif(os.environ.get(ISOLATED) != "1", reason="run in a fresh interpreter by the test above")
def test_deployment_run_keeps_no_token_fresh_process(ray_address, tmp_path, monkeypatch):
    """A run started as the render-script deployment starts one (its parameters from infra/prefect.yaml, the
    caller's token in a Secret block), on a temporary Prefect server with its own database: afterwards no
    byte of the token is in that database (flow run parameters, logs, artifacts, block documents), nor in
    the store (job record, audit log, report); the job and audit records name the principal and token id."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    from voicefleet.flows.credential import hand_over_secret
    from voicefleet.flows.render import render_script
    from voicefleet.tasks.render.job_paths import job_key
    from voicefleet.tasks.safety import audit
    from voicefleet.tasks.safety.principal import mint_token, token_id_of

    monkeypatch.setenv("VOICEFLEET_PRINCIPAL_KEY", "JNnUXG7j+iIkiq3nKgQ9Iqueky/2dPQPtd6rWeyLakw=")
    monkeypatch.setenv("VOICEFLEET_AUDIT_KEY", "q4Qm8c0rj5Tn1zW1bC9xE0pH7yKk2uFv6sLd3aGe5Ns=")
    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    script = write_script(tmp_path / "script.csv", [{"line_id": "one", "voice_id": "ann", "text": "Hi there.",
                                                     "language": "en"}])
    token = mint_token(OWNER, datetime.now(timezone.utc) + timedelta(hours=1))
    secret_parts = [token, token.rsplit(".", 1)[1]]   # the whole token, and its MAC alone
    deployment = next(d for d in yaml.safe_load(INFRA.read_text())["deployments"]
                      if d["name"] == "render-script")
    params = {**deployment["parameters"], "store": store.uri, "pretrained": None, "num_gpus": 0.0, "script": script}
    # the CLI's quiet_logs() (earlier CLI tests in this process) leaves the "prefect" logger at WARNING, which
    # keeps the run's INFO logs from the API: the grep below must see the logs a deployment run would send
    prefect_logger = logging.getLogger("prefect")
    monkeypatch.setattr(prefect_logger, "level", logging.INFO)
    with prefect_test_harness(server_startup_timeout=180):
        db = PREFECT_API_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
        params["credential"] = hand_over_secret(token)
        res = render_script(**params)
        APILogHandler().flush()   # the run's logs reach the server before the database is read
        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs()
            deadline = time.monotonic() + 60   # the log worker sends in batches: wait until they have arrived
            while not (logs := client.read_logs()) and time.monotonic() < deadline:
                time.sleep(0.5)
        assert {k: run.parameters[k] for k in params} == params   # only the reference: the token is no parameter
        assert logs   # the run's logs reached this server
        database = b"".join(Path(p).read_bytes() for p in (db, db + "-wal") if Path(p).exists())
    assert res["ok"] == 1 and res["status"] == "complete"
    assert params["credential"].encode() in database and b"render-script" in database   # the grep sees the run
    for secret in secret_parts:
        assert secret.encode() not in database
        for f in (tmp_path / "store").rglob("*"):
            assert not f.is_file() or secret.encode() not in f.read_bytes(), f
    job = store.read_json(job_key(res["job_id"]))
    assert (job["principal"], job["principal_via"], job["principal_token_id"]) == (OWNER, "token", token_id_of(token))
    started = [r for r in audit.read(store) if r["event"] == "render_started"]
    assert [(r["actor"], r["detail"]["token_id"]) for r in started] == [(OWNER, token_id_of(token))]
