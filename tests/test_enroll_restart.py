"""A restart keeps the training (issue 24): kill the enrollment flow's own process (SIGKILL, not a worker) mid-
training or after training and before registering, run it again, and each voice is registered once, from the
checkpoint or the stored result the dead run left; plus the parts that make it so, each on its own: the
training key, the idempotent registration, the lock of a dead flow process, a stored result under a new gate.

The two kill tests run the real `enroll_batch` flow (Prefect, Ray, a local store; the tiny base, one demo
speaker, four epochs, gate off) in a subprocess. A driver script wraps the flow's `train_voices` to hand the
trainers a hook that logs every epoch event to a file and, in the first run, stops the trainer right after the
checkpoint of epoch 1; or replaces `register` with a stop. The test waits for the stop, checks the store, and
kills the process group. Ray is the test's own cluster (RAY_ADDRESS), so the killed driver's actors are ended by
Ray, as a dead Prefect worker's are.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from voicefleet.flows.enroll import register_one
from voicefleet.tasks.enroll.prepare import SpeakerResult, run_prefix, training_key
from voicefleet.tasks.render import process_identity
from voicefleet.tasks.safety import audit
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.checkpoint import state_key
from voicefleet.tasks.train.finetune import PLAIN_GPT
from voicefleet.tasks.train.unit import result_key, stored_result
from voicefleet.tasks.train.voice_lock import TrainingLocks, VoiceBusy, lock_key
from voicefleet.tasks.voices.records import NewVersion
from voicefleet.tasks.voices.registry import VoiceRegistry

OWNER = "user:ada@example.com"
RECIPE = {"sovits_epochs": 1, "gpt_epochs": 3, "batch_size": 4, "sovits_lr": 5e-4, "gpt_lr": 2e-3,
          "min_items_per_epoch": 8, **PLAIN_GPT}
QC = {"min_speech_s": 5.0, "recommended_speech_s": 5.0}

DRIVER = r"""
import json, os, sys, time
settings = json.loads(sys.argv[1])
os.environ["VOICEFLEET_DASHBOARD"] = "0"
import voicefleet.flows.enroll as flow

events, stop = settings["events"], settings["stop"]

def hook(voice, event, epoch, _events=events, _stop=stop):
    import os, time
    with open(_events, "a") as f:
        f.write(f"{os.getpid()} {voice} {event} {epoch}\n")
    if _stop == "after-epoch-1" and event == "checkpoint" and epoch == 1:
        open(_events + ".stopped", "w").close()
        time.sleep(3600)  # the flow process is killed meanwhile; Ray ends this actor with it

plain_train_voices = flow.train_voices
flow.train_voices = lambda *args, **kwargs: plain_train_voices(*args, **kwargs, hook=hook)
if stop == "before-register":
    def register(*args, **kwargs):
        open(events + ".stopped", "w").close()
        time.sleep(3600)
    flow.register = register
summary = flow.enroll_batch(settings["src"], settings["store"], recipe=settings["recipe"], qc=settings["qc"],
                            gate={"mode": "off"}, workers=1)
print("SUMMARY " + json.dumps({k: summary[k] for k in ("run_id", "counts", "speakers")}, default=str))
"""


# -- the parts, each on its own (fast) ----------------------------------------------------------------------


def test_the_training_key_is_made_of_what_is_trained_not_of_the_run() -> None:
    key = training_key("upload-fingerprint", "identity")
    assert key == training_key("upload-fingerprint", "identity") and key.startswith("t-")
    others = {training_key("another upload", "identity"), training_key("upload-fingerprint", "another recipe"),
              training_key("upload-fingerprint", "identity", after=3)}  # a forced retraining after version 3
    assert key not in others and len(others) == 3
    assert run_prefix("ada", key) == f"voices/ada/runs/{key}"


def version(store: Store, voice: str, key: str, fingerprint: str) -> NewVersion:
    files = {name: f"{run_prefix(voice, key)}/{name}.bin" for name in ("gpt", "sovits")}
    for k in files.values():
        store.write_bytes(k, b"x")
    return NewVersion(base_model="tiny", untrained=True, files=files, metrics={"source_hash": fingerprint})


def test_registering_a_training_again_makes_no_second_version(store: Store) -> None:
    """Listed already: the same version back, nothing written. Written but never listed (the registering run
    died between the version file and the record update): listed now, under its own number."""
    registry = VoiceRegistry(store)
    registry.ensure_voice("ada", OWNER)
    first = registry.add_version("ada", version(store, "ada", "t-1", "upload A"), training_key="t-1")
    again = registry.add_version("ada", version(store, "ada", "t-1", "upload A"), training_key="t-1")
    assert (first.version, again.version, again.created_at) == (1, 1, first.created_at)
    assert first.metrics["training_key"] == "t-1" and registry.get("ada").versions == [1]

    crashed = VoiceRegistry(Store(store.uri, store.storage_options))

    def die(*args, **kwargs):
        raise KeyboardInterrupt("the process dies here")

    crashed._update = die
    with pytest.raises(KeyboardInterrupt):
        crashed.add_version("ada", version(store, "ada", "t-2", "upload B"), training_key="t-2")
    assert store.exists("voices/ada/v2/version.json") and registry.get("ada").versions == [1]
    rerun = registry.add_version("ada", version(store, "ada", "t-2", "upload B"), training_key="t-2")
    assert rerun.version == 2 and registry.get("ada").versions == [1, 2] and registry.get("ada").current_version == 2
    assert not store.exists("voices/ada/v3/version.json")
    # another training of the same upload (a forced one: another key) is a new version; no key, as before
    assert registry.add_version("ada", version(store, "ada", "t-3", "upload B"), training_key="t-3").version == 3
    assert registry.add_version("ada", version(store, "ada", "t-3", "upload B")).version == 4


def trained_voice(store: Store) -> tuple[VoiceRegistry, SpeakerResult, str]:
    """A voice "ada" whose training (upload A) finished and wrote its files, not yet registered."""
    registry = VoiceRegistry(store)
    registry.ensure_voice("ada", OWNER)
    key = training_key("upload A")
    files = {name: f"{run_prefix('ada', key)}/{name}.bin" for name in ("gpt", "sovits")}
    for k in files.values():
        store.write_bytes(k, b"x")
    trained = SpeakerResult(speaker_id="ada", status="trained", source_hash="upload A", owner=OWNER, files=files,
                            run_prefix=run_prefix("ada", key), evaluation={"gate": {"mode": "off", "passed": True}})
    return registry, trained, key


def test_a_trained_result_is_registered_once_through_the_flow_step(local_store: Store) -> None:
    registry, trained, key = trained_voice(local_store)
    outs = [register_one(registry, trained, {}) for _ in range(2)]
    assert [(o.status, o.voice_version) for o in outs] == [("accepted", 1), ("accepted", 1)]
    assert registry.get("ada").versions == [1] and registry.version("ada", 1).metrics["training_key"] == key


def test_a_version_is_listed_only_after_its_audit_record(local_store: Store, monkeypatch) -> None:
    registry, trained, key = trained_voice(local_store)
    real_append = audit.append

    def unavailable(*args, **kwargs):
        raise audit.AuditUnavailable("cannot record version_registered: the store refused the write")

    monkeypatch.setattr(audit, "append", unavailable)
    out = register_one(registry, trained, {}, actor="enroll-run:r1")
    assert out.status == "failed" and "cannot record version_registered" in out.reasons[0]
    assert registry.get("ada").versions == [] and registry.get("ada").current_version is None  # never rendered
    monkeypatch.setattr(audit, "append", real_append)
    out = register_one(registry, trained, {}, actor="enroll-run:r2")  # the rerun records, then lists it
    assert (out.status, out.voice_version) == ("accepted", 1) and registry.get("ada").current_version == 1
    records = [r for r in audit.read(local_store) if r["event"] == "version_registered"]
    assert [(r["voice"], r["version"], r["actor"], r["detail"]["training_key"]) for r in records] == [
        ("ada", "1", "enroll-run:r2", key)]


def test_the_lock_of_a_dead_flow_process_is_taken_at_once_a_live_ones_is_not(local_store: Store) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = {**process_identity.current(), "pid": child.pid, "start_time": process_identity.start_time(child.pid)}
        dead_run = TrainingLocks(local_store, "run-a", process=identity, holder_gone=process_identity.is_dead)
        dead_run.claim("ada")
        dead_run._stop.set()  # its heartbeat is gone with its process (below)
        rerun = TrainingLocks(local_store, "run-b", process=process_identity.current(),
                              holder_gone=process_identity.is_dead)
        with pytest.raises(VoiceBusy, match="being trained by run run-a"):
            rerun.claim("ada")  # alive: busy until its lock expires (ten minutes)
    finally:
        child.kill()
        child.wait()
    rerun.claim("ada")  # its process is gone: taken now, not in ten minutes
    assert local_store.read_json(lock_key("ada"))["run"] == "run-b"
    other = TrainingLocks(local_store, "run-c", process=process_identity.current(), holder_gone=process_identity.is_dead)
    with pytest.raises(VoiceBusy, match="being trained by run run-b"):
        other.claim("ada")  # a live holder (this very process) is never taken over
    rerun.close()
    other.close()
    assert local_store.read_json(lock_key("ada"))["released"] is True


def test_a_stored_result_is_judged_again_under_a_new_gate(local_store: Store) -> None:
    prefix = run_prefix("ada", "t-1")
    prepared = SpeakerResult(speaker_id="ada", status="prepared", run_prefix=prefix)
    assert stored_result(local_store, prepared, {"mode": "enforce"}) is None
    figures = {"similarity": 0.5, "wer": 0.1}
    result = prepared.model_copy(update={"status": "trained", "evaluation": {
        **figures, "gate": {"mode": "report", "min_similarity": 0.8, "max_wer": 0.35, "passed": False,
                            "reasons": ["speaker similarity 0.5 < 0.8"]}}})
    local_store.write_bytes(result_key(prefix), result.model_dump_json().encode())
    local_store.write_bytes(state_key(prefix), b"left by a process that died right after the result")
    same = stored_result(local_store, prepared, {"mode": "report"})
    assert same == result and not local_store.exists(state_key(prefix))
    lower = stored_result(local_store, prepared, {"mode": "enforce", "min_similarity": 0.4})
    assert lower.evaluation["gate"] == {"mode": "enforce", "min_similarity": 0.4, "max_wer": 0.35, "passed": True,
                                        "reasons": []}
    assert stored_result(local_store, prepared, {"mode": "off"}).evaluation["gate"]["passed"] is True
    unmeasured = result.model_copy(update={"evaluation": {"gate": {"mode": "off", "passed": True}}})
    local_store.write_bytes(result_key(prefix), unmeasured.model_dump_json().encode())
    assert stored_result(local_store, prepared, {"mode": "enforce"}) is None  # never measured: trained again
    assert stored_result(local_store, prepared.model_copy(update={"speaker_id": "bob"}), {"mode": "off"}) is None


# -- the flow process killed, and run again (slow) -----------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address():
    import ray

    from voicefleet.tasks.cluster.runtime import ensure_ray

    started = not ray.is_initialized()
    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> Path:
    from voicefleet.flows.demo.enrollment import build_demo_enrollment

    root = tmp_path_factory.mktemp("enroll")
    build_demo_enrollment(root, n_speakers=1, clips_per_speaker=4)
    return root


class Flow:
    """`enroll_batch` in a process of its own (its own process group), over `upload` into `store`."""

    def __init__(self, upload: Path, store: Store, ray_address: str, tmp: Path):
        self.upload, self.store, self.tmp, self.runs = upload, store, tmp, 0
        self.env = dict(os.environ, RAY_ADDRESS=ray_address, VOICEFLEET_DASHBOARD="0")

    def start(self, stop: str | None = None) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        events = self.tmp / f"events-{self.runs}.txt"
        settings = {"src": str(self.upload), "store": self.store.uri, "recipe": RECIPE, "qc": QC,
                    "events": str(events), "stop": stop}
        with open(self.tmp / f"flow-{self.runs}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(settings)], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return proc, events

    def log(self, n: int | None = None) -> str:
        return (self.tmp / f"flow-{n or self.runs}.log").read_text(errors="replace")

    def kill_when_stopped(self, stop: str) -> Path:
        """Run the flow until the driver's stop, then SIGKILL its process group; the events file."""
        proc, events = self.start(stop)
        deadline = time.monotonic() + 300
        while not Path(str(events) + ".stopped").exists():
            assert proc.poll() is None, self.log()[-4000:]
            assert time.monotonic() < deadline, "the flow never reached its stop"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return events

    def run(self) -> tuple[dict, list[tuple[int, str, int]]]:
        """Run the flow to its end: (its summary, its trainers' epoch events (pid, event, epoch))."""
        proc, events = self.start()
        assert proc.wait(timeout=600) == 0, self.log()[-4000:]
        line = next(x for x in self.log().splitlines() if x.startswith("SUMMARY "))
        return json.loads(line.removeprefix("SUMMARY ")), read_events(events)


def read_events(events: Path) -> list[tuple[int, str, int]]:
    if not events.exists():
        return []
    return [(int(pid), event, int(epoch)) for pid, _, event, epoch in
            (line.split() for line in events.read_text().splitlines())]


def gone(pid: int, within_s: float = 60.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def only_voice(store: Store) -> str:
    [voice] = {k.split("/")[1] for k in store.list("voices") if "/runs/" in k}
    return voice


@pytest.mark.slow
def test_a_flow_killed_mid_training_and_again_after_training_ends_with_the_voice_trained_once_registered_once(
        upload, ray_address, tmp_path) -> None:
    """Run 1 is killed after the checkpoint of epoch 1; run 2 resumes it (epochs 2-4 only) and is killed after
    training, before registering; run 3 trains nothing and registers the stored result: one version."""
    store = Store(str(tmp_path / "store"))
    flow = Flow(upload, store, ray_address, tmp_path)

    first = read_events(flow.kill_when_stopped("after-epoch-1"))
    assert [n for _, e, n in first if e == "epoch_start"] == [1]  # killed inside the training
    voice = only_voice(store)
    [state] = store.glob(f"voices/{voice}/runs/*/train/state.pt")
    prefix = state.removesuffix("/train/state.pt")
    assert torch.load(io.BytesIO(store.read_bytes(state)), weights_only=True)["epoch"] == 1
    assert not store.read_json(lock_key(voice))["released"]  # the killed run never released its lock
    assert gone(first[0][0]), "Ray should end the trainer of a driver that died"  # no stale writer of the folder

    second = read_events(flow.kill_when_stopped("before-register"))
    assert [n for _, e, n in second if e == "epoch_start"] == [2, 3, 4]  # resumed after epoch 1, not from 1
    assert store.glob(f"voices/{voice}/runs/*/train/result.json") == [result_key(prefix)]  # the same folder
    assert not store.glob(f"voices/{voice}/v*/version.json")  # trained, not registered

    summary, third = flow.run()
    assert summary["counts"]["accepted"] == 1, summary
    assert third == []  # no trainer ran: the stored result was registered
    assert summary["speakers"][0]["files_decoded"] == 0  # nor was the upload decoded again
    registry = VoiceRegistry(store)
    assert registry.get(voice).versions == [1] and registry.get(voice).current_version == 1
    v1 = registry.version(voice, 1)
    assert v1.metrics["training_key"] == prefix.rsplit("/", 1)[1] and v1.files["gpt"].startswith(prefix + "/")
    assert v1.metrics["resumed_from"] == [1] and [e["epoch"] for e in v1.metrics["epoch_log"]] == [1, 2, 3, 4]
    pids = [e["pid"] for e in v1.metrics["epoch_log"]]
    assert pids[0] == first[0][0] != pids[1] == second[0][0]  # epoch 1 in run 1's trainer, the rest in run 2's
    lock = store.read_json(lock_key(voice))
    assert lock["run"] == summary["run_id"] and lock["released"]  # taken over at once, then released
