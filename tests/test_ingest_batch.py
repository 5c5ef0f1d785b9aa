"""A batch of real uploads through `enroll_batch` (Ray + Prefect): the good speakers are accepted, every
bad one is reported with its reason, the report is Parquet, and a second run does no work."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from ingest_audio import RATE, SENTENCES, add_noise, encode, join, resample, speak, write_speaker

from voicefleet.tasks.enroll.speech_checks import QCConfig
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.finetune import Recipe
from voicefleet.tasks.voices.registry import VoiceRegistry

pytestmark = pytest.mark.slow
QC = QCConfig(min_speech_s=4.0, recommended_speech_s=4.0).model_dump(exclude_defaults=True)


@pytest.fixture(scope="module")
def batch(request, tmp_path_factory, s3_server):
    """Ray is started after the S3 server's env is set (as tests/test_e2e.py does): workers inherit it."""
    from voicefleet.tasks.cluster.runtime import ensure_ray

    cache = request.config.cache.mkdir("voicefleet-ingest-voices")
    joe = []
    for i, text in enumerate(SENTENCES[:3]):
        f = cache / f"joe-{i}.npy"
        if not f.exists():
            np.save(f, speak("joe", text))
        joe.append(np.load(f))
    root = tmp_path_factory.mktemp("batch")
    two = join(joe[:2])
    write_speaker(root, "José García-Ñúñez", {"take one.mp3": encode(resample(two, RATE, 44100), 44100, "MP3")})
    flac = encode(two, RATE, "FLAC")
    write_speaker(root, "mixed", {"good.flac": flac, "zero.wav": b"", "readme.wav": b"not audio",
                                  "cut.flac": flac[: len(flac) // 3]},
                  transcripts=[{"file": "good.flac", "text": " ".join(SENTENCES[:2]), "language": "en"}])
    write_speaker(root, "noisy", {"take1.wav": encode(add_noise(two, 10), RATE, "WAV")})
    write_speaker(root, "telephone", {"take1.wav": encode(resample(two, RATE, 8000), 8000, "WAV")})
    write_speaker(root, "not-audio", {"take1.wav": b"text, not audio"})
    write_speaker(root, "no-consent", {"take1.wav": flac}, consent=None)
    write_speaker(root, "Zoë N", {"take1.flac": flac})
    write_speaker(root, "zoe n", {"take1.flac": flac})
    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    store = Store(str(tmp_path_factory.mktemp("store")))
    from voicefleet.flows.enroll import enroll_batch

    # tiny random-weight voices cannot pass the fine-tune quality gate: record its verdict, do not enforce it
    first = enroll_batch(str(root), store.uri, recipe=Recipe.demo().model_dump(), qc=QC, gate={"mode": "report"})
    second = enroll_batch(str(root), store.uri, recipe=Recipe.demo().model_dump(), qc=QC, gate={"mode": "report"})
    return store, first, second


def test_batch_accepts_the_good_and_reports_every_bad_speaker(batch):
    store, first, _ = batch
    rows = {r["speaker"]: r for r in first["speakers"]}
    assert {s for s, r in rows.items() if r["status"] == "accepted"} == {"jose-garcia-nunez", "mixed"}, rows
    assert rows["jose-garcia-nunez"]["display_name"] == "José García-Ñúñez"
    assert rows["jose-garcia-nunez"]["utterances"] >= 1 and rows["jose-garcia-nunez"]["minutes"] > 0.05
    assert all(w in rows["mixed"]["warnings"] for w in ("zero.wav", "readme.wav", "cut.flac"))
    expected = {"noisy": "SNR", "telephone": "sample rate 8000 Hz < 16000 Hz", "not-audio": "not a recognised audio format",
                "no-consent": "consent.json missing", "Zoë N": "all map to voice id 'zoe-n'",
                "zoe n": "all map to voice id 'zoe-n'"}
    for speaker, why in expected.items():
        assert rows[speaker]["status"] == "rejected" and why in rows[speaker]["reasons"], rows[speaker]
    table = pq.read_table(io.BytesIO(store.read_bytes(f"reports/enroll/{first['run_id']}.parquet")))
    report = {r["speaker"]: r for r in table.to_pylist()}
    assert report["noisy"]["reasons"][0].startswith("SNR ") and report["mixed"]["utterances"] >= 1
    assert VoiceRegistry(store).get("jose-garcia-nunez").status == "ready"


def test_second_run_decodes_and_trains_nothing(batch):
    store, first, second = batch
    assert {r["speaker"]: r["status"] for r in second["speakers"]} == {
        r["speaker"]: ("unchanged" if r["status"] == "accepted" else r["status"]) for r in first["speakers"]}
    assert all(r["files_decoded"] == 0 for r in second["speakers"]), second["speakers"]
    assert sum(r["files_decoded"] for r in first["speakers"]) >= 8
    registry = VoiceRegistry(store)
    for voice in ("jose-garcia-nunez", "mixed"):
        assert registry.get(voice).current_version == 1
        assert not store.list(f"voices/{voice}/runs/{second['run_id']}")  # no dataset, no checkpoint
