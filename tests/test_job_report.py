"""The job report: built from a real index and shards, opened in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from voicefleet.tasks.render.job_paths import NoSuchJob, job_prefix
from voicefleet.tasks.render.job_report import report_key, write_report
from voicefleet.tasks.render.shards import write_shard
from voicefleet.tasks.store.storage import Store

JOB = "report-test"
TEXTS = ["The morning bus was late again, so I walked to work.", "Please put the green folder on the top shelf.",
         "We planted tomatoes and beans behind the old garage.", "Could you tell me where the nearest pharmacy is?",
         "A cold wind blew across the harbour all night.", "Hi there."]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def job_store(tmp_path_factory):
    """A job of 6 ok lines (piper speech, post-processed), one failed and one refused, in a local store."""
    from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine
    from voicefleet.tasks.measure.audio import encode_flac
    from voicefleet.tasks.render.postprocess import PostConfig, postprocess

    store = Store(str(tmp_path_factory.mktemp("store")))
    engine = load_engine("piper")
    items = []
    for i, text in enumerate(TEXTS):
        p = postprocess(engine.speak(DEMO_VOICES[0], text, None, "en", 1.0), engine.sample_rate, PostConfig())
        bad = i == 2  # the line the report must rank worst
        items.append(({"line_id": f"l{i}", "voice_id": "demo-joe" if i % 2 else "demo-alpha", "voice_version": "1",
                       "status": "ok", "text": text, "language": "en", "rtf": 0.5 + i / 10,
                       "loudness_lufs": p.loudness_lufs, "true_peak_dbtp": p.true_peak_dbtp,
                       "wer": 0.9 if bad else 0.05 * i, "asr_text": "something else" if bad else text,
                       "speaker_similarity": 0.4 if bad else 0.9, "qc_passed": not bad,
                       "qc_reasons": "WER 0.90 > 0.35; speaker similarity 0.40 < 0.6" if bad else None,
                       "attempt_log": json.dumps([{"attempt": 1, "seed": 5, "passed": not bad}]), "attempts": 1,
                       "truncated": False}, encode_flac(p.wav, p.sample_rate)))
    items.append(({"line_id": "f1", "voice_id": "demo-joe", "status": "failed", "text": "x", "language": "en",
                   "error": "quality check failed after 3 attempt(s): truncated", "attempts": 3}, None))
    items.append(({"line_id": "r1", "voice_id": "ghost", "status": "refused", "text": "y", "language": "en",
                   "error": "unknown voice 'ghost'", "attempts": 0}, None))
    write_shard(store, JOB, "part-a", items[:4])
    write_shard(store, JOB, "part-b", items[4:])
    store.write_json(f"{job_prefix(JOB)}/job.json", {
        "job_id": JOB, "lines": len(items), "status": "complete", "principal": "user:demo", "script": "s.csv",
        "post": {"loudness_lufs": -23.0},
        "runs": [{"started_at": "2026-11-27T10:00:00+00:00", "finished_at": "2026-11-27T10:00:40+00:00"}]})
    return store


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict]]:
    parser = _Elements()
    parser.feed(page)
    return parser.found


def test_report_is_written_beside_the_index_with_charts_and_players(job_store):
    url = write_report(job_store, JOB)
    assert url == job_store.url(report_key(JOB)) and url.endswith(f"renders/{JOB}/report.html")
    page = job_store.read_text(report_key(JOB))
    found = elements(page)
    charts = [a for t, a in found if t == "svg" and "histogram" in a.get("class", "")]
    assert len(charts) == 4 and all("empty" not in a["class"] for a in charts)
    assert sum(t == "rect" for t, _ in found) >= 4 * 20  # 20 bins per histogram
    players = [a for t, a in found if t == "audio"]
    sources = [a for t, a in found if t == "source"]
    assert len(players) == 6 and players[0]["data-line"] == "l2"  # worst first
    assert all(s["src"].startswith("data:audio/flac;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    for text in ("demo-joe", "demo-alpha", "quality check failed after 3 attempt(s)", "unknown voice"):
        assert text in page


def test_report_of_an_unknown_job_is_refused(tmp_path):
    with pytest.raises(NoSuchJob, match="no render job nope"):
        write_report(Store(str(tmp_path)), "nope")


def test_jobs_report_command(job_store, tmp_path):
    from typer.testing import CliRunner

    from voicefleet.flows.cli import app
    from voicefleet.flows.commands.exits import EXIT_NOT_FOUND

    r = CliRunner().invoke(app, ["jobs", "report", JOB, "--store", job_store.uri, "--worst", "3"])
    assert r.exit_code == 0, r.output
    assert f"renders/{JOB}/report.html" in r.output.replace("\n", "")
    assert sum(t == "audio" for t, _ in elements(job_store.read_text(report_key(JOB)))) == 3
    r = CliRunner().invoke(app, ["jobs", "report", "nope", "--store", str(tmp_path)])
    assert r.exit_code == EXIT_NOT_FOUND and "no render job nope" in r.output


def test_histogram_bins_are_numpys_and_the_worst_lines_rank_as_before(job_store, tmp_path):
    """The aggregates DuckDB computes equal the in-memory reading of the index they replace."""
    import numpy as np

    from voicefleet.tasks.render.index_read import read_index
    from voicefleet.tasks.render.job_report import MEASURES, report_data
    from voicefleet.tasks.render.out_of_core import connect

    data = report_data(connect(str(tmp_path), 64), job_store, JOB, worst=3, loudness_target=-23.0)
    ok = [r for r in read_index(job_store, JOB).to_pylist() if r["status"] == "ok"]
    for m in MEASURES:
        h = data.histograms[m]
        values = [r[m] for r in ok if r[m] is not None]
        assert h.n == len(values) and h.counts == np.histogram(values, bins=20, range=(h.lo, h.hi))[0].tolist(), m
    assert [r["line_id"] for r in data.worst] == ["l2", "l5", "l4"]   # QC failed, then by WER
    assert (data.totals.ok, data.totals.failed, data.totals.refused, data.qc_flag, data.qc_pass) == (6, 1, 1, 1, 5)
    assert [(r["line_id"], r["status"]) for r in data.failed] == [("f1", "failed"), ("r1", "refused")]
    assert [(v["voice_id"], v["ok"], v["failed"]) for v in data.voices] == [("demo-alpha", 3, 0), ("demo-joe", 3, 1),
                                                                           ("ghost", 0, 0)]


def test_report_counts_the_current_script_and_plays_what_it_can(job_store, tmp_path):
    """With a manifest, edited and cut lines are counted apart; a worst line whose tar is gone is
    listed without a player instead of failing the page."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from voicefleet.tasks.render.index_read import read_index
    from voicefleet.tasks.render.job_paths import script_prefix

    store = Store(str(tmp_path / "copy"))
    shutil.copytree(job_store.fs_path(job_prefix(JOB)), store.fs_path(job_prefix(JOB)))
    ids = [r["line_id"] for r in read_index(store, JOB).to_pylist() if r["line_id"] not in ("l0", "l1")]
    hashes = ["edited" if i == "l3" else None for i in ids]   # rows carry no hash: l3's is "edited"
    os.makedirs(store.fs_path(script_prefix(JOB, 2)))
    pq.write_table(pa.table({"line_id": ids, "line_hash": pa.array(hashes, pa.string())}),
                   store.fs_path(f"{script_prefix(JOB, 2)}/lines.parquet"))
    os.remove(store.fs_path(f"{job_prefix(JOB)}/shards/part-a.tar"))   # l0..l3's audio
    page = store.read_text(report_key(JOB)) if write_report(store, JOB) else ""
    cells = re.findall(r"<th>([^<]+)</th><td>([^<]*)</td>", page)
    assert ("script lines", "6") in cells and ("indexed lines", "6") in cells and ("ok", "4") in cells
    assert ("edited since rendered (a rerun renders them)", "0") in cells   # a null hash is an old row: current
    assert ("indexed, no longer in the script", "2") in cells
    players = [a["data-line"] for t, a in elements(page) if t == "audio"]
    assert "l2" in page and "l2" not in players and players == ["l5", "l4"]   # l2's tar is gone
    assert page.count("(audio unavailable)") == 2


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`.ci/run` installs it): "
                                              "apt-get install -y chromium")
def test_report_opens_in_headless_chromium_and_its_audio_decodes(job_store, tmp_path):
    write_report(job_store, JOB)
    path = job_store.url(report_key(JOB))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           f"file://{os.path.abspath(path)}"]
    dom = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120).stdout
    found = elements(dom)
    assert sum(t == "svg" and "histogram" in a.get("class", "") for t, a in found) == 4
    players = [a for t, a in found if t == "audio"]
    assert len(players) == 6
    for a in players:  # the page's own script records what the browser decoded
        assert "data-decode-error" not in a, a
        assert float(a["data-decoded-s"]) == pytest.approx(float(a["data-index-s"]), abs=0.05), a
    assert re.search(r"Render job .*report-test", dom)
