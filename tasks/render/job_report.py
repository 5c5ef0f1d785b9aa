"""A render job's report: one self-contained HTML page beside its index, to look at.

    write_report(store, job_id) -> URL of renders/<job_id>/report.html

    index rows (read_index) + job.json
      -> counts (ok / failed / refused, QC passed / flagged / not checked, audio hours)
      -> per-voice throughput (lines, audio s, synthesis s from rtf x duration, audio s per synthesis s)
      -> histograms of duration, loudness, WER and speaker similarity (inline SVG)
      -> the worst lines with inline audio players (FLAC fetched by one ranged read per line from
         its shard, embedded as data: URIs) and their QC reasons and attempts
      -> failed and refused lines with their errors

No CDN, no script from elsewhere: the page works offline, from an object store or a mail
attachment. A few lines of its own JavaScript mark each player with the duration the browser
decoded (`data-decoded-s`), so a test (or a person) can see the audio really plays.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

from voicefleet.tasks.store.storage import Store

from .index_read import fetch_audio, read_index
from .job_paths import job_prefix, read_job

WORST_LINES = 20
FAILED_LISTED = 100


def report_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/report.html"


# ---------------------------------------------------------------- SVG histogram
def histogram_svg(values: list[float], title: str, unit: str, bins: int = 20, width: int = 420,
                  height: int = 200, marker: float | None = None, marker_label: str = "", min_span: float = 0.0) -> str:
    """A histogram as an inline <svg> (class "histogram"); an empty-data note when nothing was measured."""
    esc = html.escape
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    head = f'<figure class="chart"><figcaption>{esc(title)} <span class="n">(n = {len(vals)})</span></figcaption>'
    if len(vals) == 0:
        return head + f'<svg class="histogram empty" width="{width}" height="40" role="img" aria-label="{esc(title)}">' \
                      f'<text x="8" y="24">not measured for any line</text></svg></figure>'
    lo, hi = float(vals.min()), float(vals.max())
    if marker is not None and math.isfinite(marker):
        lo, hi = min(lo, marker), max(hi, marker)
    span = max(hi - lo, min_span, 1e-6)
    if hi - lo < span:  # a narrow spread is drawn on a readable scale, centred
        mid = (hi + lo) / 2
        lo, hi = mid - span / 2, mid + span / 2
    digits = max(0, 2 - int(math.floor(math.log10(hi - lo))))
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    left, bottom, top = 40, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(int(counts.max()), 1)
    bw = plot_w / bins
    parts = [f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{esc(title)}">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>']
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        parts.append(f'<rect class="bar" x="{left + i * bw + 0.5:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}"><title>{edges[i]:.{digits}f} to {edges[i + 1]:.{digits}f} '
                     f'{esc(unit)}: {int(c)} line(s)</title></rect>')
    for x, anchor in ((lo, "start"), ((lo + hi) / 2, "middle"), (hi, "end")):
        px = left + plot_w * (x - lo) / (hi - lo)
        parts.append(f'<text x="{px:.1f}" y="{height - 10}" text-anchor="{anchor}">{x:.{digits}f} {esc(unit)}</text>')
    if marker is not None and math.isfinite(marker):
        px = left + plot_w * (marker - lo) / (hi - lo)
        parts.append(f'<line class="marker" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + plot_h}">'
                     f'<title>{esc(marker_label)}</title></line>')
    parts.append("</svg>")
    return head + "".join(parts) + "</figure>"


# ---------------------------------------------------------------- the data
def _badness(r: dict) -> tuple:
    """Sort key, worst first: QC failed, then more reasons, higher WER, lower similarity."""
    reasons = [x for x in (r.get("qc_reasons") or "").split("; ") if x and "not measured" not in x]
    wer = r.get("wer") if r.get("wer") is not None else 0.0
    sim = r.get("speaker_similarity") if r.get("speaker_similarity") is not None else 1.0
    return (r.get("qc_passed") is False, len(reasons), wer, -sim)


def voice_throughput(rows: list[dict]) -> list[dict]:
    """Per voice: lines by status, audio seconds, synthesis seconds (rtf x duration) and their ratio."""
    by: dict[str, dict[str, Any]] = defaultdict(lambda: {"ok": 0, "failed": 0, "refused": 0, "audio_s": 0.0,
                                                         "synth_s": 0.0, "qc_flagged": 0})
    for r in rows:
        v = by[r.get("voice_id") or "(none)"]
        v[r["status"]] += 1
        if r["status"] == "ok":
            v["audio_s"] += r.get("duration_s") or 0.0
            if r.get("rtf") is not None:
                v["synth_s"] += r["rtf"] * (r.get("duration_s") or 0.0)
        if r.get("qc_passed") is False:
            v["qc_flagged"] += 1
    out = []
    for voice, v in sorted(by.items()):
        v["voice_id"] = voice
        v["lines_per_synth_s"] = v["ok"] / v["synth_s"] if v["synth_s"] > 0 else None
        v["audio_per_synth_s"] = v["audio_s"] / v["synth_s"] if v["synth_s"] > 0 else None
        out.append(v)
    return out


def _wall_s(job: dict) -> float | None:
    total = 0.0
    for run in job.get("runs", []):
        try:
            total += (dt.datetime.fromisoformat(run["finished_at"]) - dt.datetime.fromisoformat(run["started_at"])
                      ).total_seconds()
        except (KeyError, TypeError, ValueError):
            continue
    return total or None


# ---------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:16px}figure.chart{margin:0}figcaption{font-weight:600}
svg.histogram text{font-size:10px;fill:#555}.bar{fill:#4a7fb5}.axis{stroke:#888}.marker{stroke:#c33;stroke-width:2}
.bad{color:#b00}.ok{color:#070}.n{font-weight:normal;color:#777}small{color:#666}audio{width:260px}
"""

_JS = """
document.querySelectorAll('audio').forEach(function (a) {
  a.addEventListener('loadedmetadata', function () { a.dataset.decodedS = a.duration.toFixed(3); });
  a.addEventListener('error', function () { a.dataset.decodeError = String(a.error && a.error.code); });
  a.load();
});
"""


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else html.escape(str(v))


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{th}</tr></thead>" if head else ""
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _td(v: Any, digits: int = 2, num: bool = False) -> str:
    return f'<td class="num">{_fmt(v, digits)}</td>' if num else f"<td>{_fmt(v, digits)}</td>"


def _attempts_summary(log: str | None) -> str:
    try:
        entries = json.loads(log or "[]")
    except ValueError:
        return ""
    parts = []
    for e in entries:
        verdict = "error" if e.get("error") else ("pass" if e.get("passed") else "fail" if "passed" in e else "done")
        parts.append(f"#{e.get('attempt')} seed {e.get('seed')}: {verdict}")
    return html.escape(", ".join(parts))


def render_html(job_id: str, job: dict, rows: list[dict], audio: dict[str, bytes], post_target: float | None,
                worst: int = WORST_LINES) -> str:
    """The report page from index rows and the FLAC bytes of the lines to play (line_id -> bytes)."""
    esc = html.escape
    ok = [r for r in rows if r["status"] == "ok"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "refused")}
    qc_pass = sum(r.get("qc_passed") is True for r in rows)
    qc_flag = sum(r.get("qc_passed") is False for r in rows)
    audio_s = sum(r.get("duration_s") or 0.0 for r in ok)
    wall = _wall_s(job)
    summary = [("script lines", job.get("lines", "–")), ("indexed lines", len(rows)), ("ok", counts["ok"]),
               ("failed", counts["failed"]), ("refused", counts["refused"]), ("QC passed", qc_pass),
               ("QC flagged or failed", qc_flag), ("QC not run", len(rows) - qc_pass - qc_flag),
               ("audio", f"{audio_s:.1f} s ({audio_s / 3600:.3f} h)"),
               ("retried lines", sum((r.get("attempts") or 0) > 1 for r in rows)),
               ("wall time of runs", f"{wall:.0f} s" if wall else "–"),
               ("lines/s (wall)", f"{len(rows) / wall:.2f}" if wall else "–"),
               ("principal", job.get("principal", "–")), ("script", job.get("script", "–"))]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>voicefleet job {esc(job_id)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Render job <code>{esc(job_id)}</code> <small>({esc(str(job.get('status', '?')))})</small></h1>",
           '<h2 id="counts">Counts</h2>',
           _table([], [[f"<th>{esc(k)}</th>", _td(v)] for k, v in summary], "counts")]

    tp = voice_throughput(rows)
    out += ['<h2 id="voices">Per voice</h2>',
            _table(["voice", "ok", "failed", "refused", "QC flagged", "audio s", "synthesis s",
                    "lines / synthesis s", "audio s / synthesis s"],
                   [[_td(v["voice_id"]), _td(v["ok"], num=True), _td(v["failed"], num=True), _td(v["refused"], num=True),
                     _td(v["qc_flagged"], num=True), _td(v["audio_s"], 1, True), _td(v["synth_s"], 1, True),
                     _td(v["lines_per_synth_s"], 2, True), _td(v["audio_per_synth_s"], 2, True)] for v in tp],
                   "voices"),
            "<small>synthesis s = Σ rtf × duration of the voice's ok lines (time in the model, QC excluded).</small>"]

    out += ['<h2 id="distributions">Distributions (ok lines)</h2><div class="charts">',
            histogram_svg([r.get("duration_s") for r in ok], "Duration", "s", min_span=1.0),
            histogram_svg([r.get("loudness_lufs") for r in ok], "Loudness (integrated)", "LUFS",
                          marker=post_target, marker_label="target", min_span=4.0),
            histogram_svg([r.get("wer") for r in ok], "Word error rate (English lines)", "", min_span=1.0),
            histogram_svg([r.get("speaker_similarity") for r in ok], "Speaker similarity to the reference", "",
                          min_span=0.5),
            "</div>"]

    worst_rows = sorted(ok, key=_badness, reverse=True)[:worst]
    rows_html = []
    for r in worst_rows:
        data = audio.get(r["line_id"])
        player = (f'<audio controls preload="metadata" data-line="{esc(r["line_id"])}" '
                  f'data-index-s="{r.get("duration_s") or 0:.3f}"><source type="audio/flac" '
                  f'src="data:audio/flac;base64,{base64.b64encode(data).decode()}"></audio>') if data else "(audio unavailable)"
        verdict = {True: '<span class="ok">pass</span>', False: '<span class="bad">fail</span>'}.get(r.get("qc_passed"), "–")
        rows_html.append([_td(r["line_id"]), _td(r.get("voice_id")), f"<td>{player}</td>", f"<td>{verdict}</td>",
                          _td(r.get("wer"), 2, True), _td(r.get("speaker_similarity"), 2, True),
                          _td(r.get("loudness_lufs"), 1, True), _td(r.get("duration_s"), 2, True),
                          _td(r.get("attempts"), num=True), _td(r.get("text")), _td(r.get("asr_text")),
                          _td(r.get("qc_reasons")), f"<td><small>{_attempts_summary(r.get('attempt_log'))}</small></td>"])
    out += [f'<h2 id="worst">Worst {len(worst_rows)} lines</h2>',
            "<small>ranked: QC failed first, then number of QC reasons, WER, and lowest speaker similarity.</small>",
            _table(["line", "voice", "audio", "QC", "WER", "similarity", "LUFS", "s", "attempts", "text", "heard",
                    "QC reasons", "attempts log"], rows_html, "worst")]

    bad = [r for r in rows if r["status"] != "ok"][:FAILED_LISTED]
    out += [f'<h2 id="failed">Failed and refused lines ({counts["failed"] + counts["refused"]})</h2>',
            _table(["line", "voice", "status", "attempts", "error"],
                   [[_td(r["line_id"]), _td(r.get("voice_id")), _td(r["status"]), _td(r.get("attempts"), num=True),
                     _td(r.get("error"))] for r in bad], "failed")]
    out += [f"<script>{_JS}</script></body></html>"]
    return "\n".join(out)


def write_report(store: Store, job_id: str, worst: int = WORST_LINES) -> str:
    """Build renders/<job_id>/report.html from the job's index and shards; returns its URL."""
    job = read_job(store, job_id)
    rows = read_index(store, job_id).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    audio = {r["line_id"]: fetch_audio(store, job_id, r) for r in sorted(ok, key=_badness, reverse=True)[:worst]}
    target = (job.get("post") or {}).get("loudness_lufs", -23.0)
    store.write_text(report_key(job_id), render_html(job_id, job, rows, audio, target, worst))
    return store.url(report_key(job_id))
