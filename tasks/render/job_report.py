"""A render job's report: one self-contained HTML page beside its index, to look at.

    write_report(store, job_id) -> URL of renders/<job_id>/report.html

    the job's index (newest row per line, current script lines: tasks/render/job_index.py) + job.json
      -> counts (ok / failed / refused, QC passed / flagged / not checked, audio hours, lines edited
         since they were rendered and lines no longer in the script)
      -> per-voice throughput (lines, audio s, synthesis s from rtf x duration, audio s per synthesis s)
      -> histograms of duration, loudness, WER and speaker similarity (inline SVG)
      -> the worst lines with inline audio players (FLAC fetched by one ranged read per line from
         its shard, embedded as data: URIs) and their QC reasons and attempts
      -> failed and refused lines with their errors

Everything but the listed lines is an aggregate DuckDB computes out of core (`report_data`: counts,
per-voice sums, histogram bins as a GROUP BY on the bin index), so the report of a 1e6-line job
takes as little memory as one of ten lines; only the worst and the listed failed lines reach Python.

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
import tempfile
from dataclasses import dataclass, field
from typing import Any

import duckdb

from voicefleet.tasks.store.storage import Store

from .index_read import CorruptAudio, fetch_audio, index_parts
from .job_index import TOTAL_FIELDS, JobTotals, line_details, open_lines, totals_of
from .job_paths import job_prefix, read_job
from .out_of_core import MEMORY_MB, with_memory
from .shards import InvalidRow

WORST_LINES = 20
FAILED_LISTED = 100
BINS = 20


def report_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/report.html"


# ---------------------------------------------------------------- SVG histogram
@dataclass
class Histogram:
    """Counts of a measure over `bins` equal bins from `lo` to `hi` (the last bin includes `hi`);
    `n` values in all (0: not measured for any line)."""

    counts: list[int] = field(default_factory=list)
    lo: float = 0.0
    hi: float = 1.0
    n: int = 0


def histogram_range(vmin: float, vmax: float, marker: float | None = None, min_span: float = 0.0) -> tuple[float, float]:
    """The drawn range of values from vmin to vmax: widened to include the marker, and a narrow
    spread drawn on a readable scale (at least `min_span`), centred."""
    lo, hi = vmin, vmax
    if marker is not None and math.isfinite(marker):
        lo, hi = min(lo, marker), max(hi, marker)
    span = max(hi - lo, min_span, 1e-6)
    if hi - lo < span:
        mid = (hi + lo) / 2
        lo, hi = mid - span / 2, mid + span / 2
    return lo, hi


def histogram_svg(hist: Histogram, title: str, unit: str, width: int = 420, height: int = 200,
                  marker: float | None = None, marker_label: str = "") -> str:
    """A histogram as an inline <svg> (class "histogram"); an empty-data note when nothing was measured."""
    esc = html.escape
    head = f'<figure class="chart"><figcaption>{esc(title)} <span class="n">(n = {hist.n})</span></figcaption>'
    if hist.n == 0:
        return head + f'<svg class="histogram empty" width="{width}" height="40" role="img" aria-label="{esc(title)}">' \
                      f'<text x="8" y="24">not measured for any line</text></svg></figure>'
    lo, hi, counts = hist.lo, hist.hi, hist.counts
    bins = len(counts)
    edges = [i * ((hi - lo) / bins) + lo for i in range(bins)] + [hi]
    digits = max(0, 2 - math.floor(math.log10(hi - lo)))
    left, bottom, top = 40, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(max(counts), 1)
    bw = plot_w / bins
    parts = [(f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{esc(title)}">'),
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


# ---------------------------------------------------------------- the data, out of core
# measure -> (title, unit, smallest drawn span); the loudness chart also marks the target
MEASURES = {"duration_s": ("Duration", "s", 1.0), "loudness_lufs": ("Loudness (integrated)", "LUFS", 4.0),
            "wer": ("Word error rate (English lines)", "", 1.0),
            "speaker_similarity": ("Speaker similarity to the reference", "", 0.5)}
# The newest row's columns the page aggregates (struct_pack arguments); n_reasons: QC reasons other
# than "not measured", which rank the worst lines
REPORT_FIELDS = (f"{TOTAL_FIELDS}, voice_id, loudness_lufs, wer, speaker_similarity, rtf, attempts, "
                 "n_reasons := len(list_filter(string_split(coalesce(qc_reasons, ''), '; '), "
                 "lambda x: x <> '' AND NOT contains(x, 'not measured')))")
WORST_ORDER = ("(qc_passed = false) DESC, n_reasons DESC, coalesce(wer, 0) DESC, coalesce(speaker_similarity, 1) ASC, "
               "line_id")
WORST_FIELDS = ("voice_id, status, qc_passed, wer, speaker_similarity, loudness_lufs, duration_s, attempts, text, "
                'asr_text, qc_reasons, attempt_log, shard, "offset", size, sha256')


@dataclass
class ReportData:
    """What the page shows: totals (current script lines), QC and retry counts, per-voice rows,
    one Histogram per measure of MEASURES (ok lines), the worst ok lines (full rows, worst first:
    QC failed, then more QC reasons, higher WER, lower similarity) and the first failed or refused
    lines (ordered by line id)."""

    totals: JobTotals
    qc_pass: int = 0
    qc_flag: int = 0
    retried: int = 0
    voices: list[dict] = field(default_factory=list)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    worst: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def report_data(con: duckdb.DuckDBPyConnection, store: Store, job_id: str, worst: int = WORST_LINES,
                loudness_target: float | None = None) -> ReportData:
    """Everything the page shows but the audio, from DuckDB over the job's index."""
    parts = index_parts(store, job_id)
    script_lines = open_lines(con, store, job_id, REPORT_FIELDS, parts)
    con.execute("CREATE TABLE newest AS SELECT * FROM lines")  # one pass over the index; spills when large
    con.execute("CREATE VIEW current AS SELECT * FROM newest WHERE place = 'current'")
    data = ReportData(totals_of(con, len(parts), script_lines, "newest"))
    data.qc_pass, data.qc_flag, data.retried = (int(v) for v in con.execute(
        "SELECT count(*) FILTER (qc_passed), count(*) FILTER (qc_passed = false), count(*) FILTER (attempts > 1) "
        "FROM current").fetchall()[0])
    data.voices = voice_throughput(con)
    data.histograms = histograms(con, loudness_target)
    ids = [i for (i,) in con.execute(f"SELECT line_id FROM current WHERE status = 'ok' ORDER BY {WORST_ORDER} LIMIT ?",
                                     [worst]).fetchall()]
    rows = line_details(con, ids, WORST_FIELDS)
    data.worst = [rows[i] for i in ids]
    ids = [i for (i,) in con.execute("SELECT line_id FROM current WHERE status <> 'ok' ORDER BY line_id LIMIT ?",
                                     [FAILED_LISTED]).fetchall()]
    rows = line_details(con, ids, "voice_id, status, attempts, error")
    data.failed = [rows[i] for i in ids]
    return data


def voice_throughput(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Per voice: lines by status, audio seconds, synthesis seconds (rtf x duration) and their ratio."""
    rows = con.sql("""
        SELECT coalesce(voice_id, '(none)') AS voice_id, count(*) FILTER (status = 'ok') AS ok,
               count(*) FILTER (status = 'failed') AS failed, count(*) FILTER (status = 'refused') AS refused,
               coalesce(sum(coalesce(duration_s, 0)) FILTER (status = 'ok'), 0) AS audio_s,
               coalesce(sum(rtf * coalesce(duration_s, 0)) FILTER (status = 'ok' AND rtf IS NOT NULL), 0) AS synth_s,
               count(*) FILTER (qc_passed = false) AS qc_flagged
        FROM current GROUP BY ALL ORDER BY voice_id""").to_arrow_table().to_pylist()
    for v in rows:
        v["lines_per_synth_s"] = v["ok"] / v["synth_s"] if v["synth_s"] > 0 else None
        v["audio_per_synth_s"] = v["audio_s"] / v["synth_s"] if v["synth_s"] > 0 else None
    return rows


def histograms(con: duckdb.DuckDBPyConnection, loudness_target: float | None = None, bins: int = BINS
               ) -> dict[str, Histogram]:
    """One Histogram per measure of MEASURES over the current ok lines: their range first, then the
    count per bin as a GROUP BY on the bin index (the counts numpy.histogram gives)."""
    ok = "FROM current WHERE status = 'ok'"
    stats = con.execute("SELECT " + ", ".join(
        f"count({m}) FILTER (isfinite({m})), min({m}) FILTER (isfinite({m})), max({m}) FILTER (isfinite({m}))"
        for m in MEASURES) + f" {ok}").fetchall()[0]
    out = {}
    for k, (m, (_, _, min_span)) in enumerate(MEASURES.items()):
        n, vmin, vmax = stats[3 * k: 3 * k + 3]
        if not n:
            out[m] = Histogram()
            continue
        marker = loudness_target if m == "loudness_lufs" else None
        lo, hi = histogram_range(float(vmin), float(vmax), marker, min_span)
        step = (hi - lo) / bins
        edges = [i * step + lo for i in range(bins)] + [hi]   # numpy.linspace's
        counts = [0] * bins
        # numpy.histogram's rule: the bin from the scaled value, then moved by one where rounding put
        # the value across an edge (DuckDB lists count from 1: e[i + 1] is edge i)
        for b, c in con.execute(f"""
                SELECT CASE WHEN v < e[i + 1] THEN i - 1 WHEN i < {bins - 1} AND v >= e[i + 2] THEN i + 1
                            ELSE i END AS b, count(*)
                FROM (SELECT {m} AS v, least(greatest(floor(({m} - ?) * ?)::INTEGER, 0), {bins - 1}) AS i,
                             ?::DOUBLE[] AS e {ok} AND isfinite({m}))
                GROUP BY b""", [lo, bins / (hi - lo), edges]).fetchall():
            counts[b] = int(c)
        out[m] = Histogram(counts, lo, hi, int(n))
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


def render_html(job_id: str, job: dict, data: ReportData, audio: dict[str, bytes], post_target: float | None) -> str:
    """The report page from the job's aggregates and the FLAC bytes of the lines to play (line_id -> bytes)."""
    esc = html.escape
    t = data.totals
    wall = _wall_s(job)
    summary = [("script lines", t.script_lines if t.script_lines is not None else job.get("lines", "–")),
               ("indexed lines", t.lines_indexed), ("ok", t.ok), ("failed", t.failed), ("refused", t.refused),
               ("QC passed", data.qc_pass), ("QC flagged or failed", data.qc_flag),
               ("QC not run", t.lines_indexed - data.qc_pass - data.qc_flag),
               ("audio", f"{t.audio_s:.1f} s ({t.audio_s / 3600:.3f} h)"), ("retried lines", data.retried),
               ("wall time of runs", f"{wall:.0f} s" if wall else "–"),
               ("lines/s (wall)", f"{t.lines_indexed / wall:.2f}" if wall else "–"),
               ("principal", job.get("principal", "–")), ("script", job.get("script", "–"))]
    if t.stale or t.not_in_script:
        summary[2:2] = [("edited since rendered (a rerun renders them)", t.stale),
                        ("indexed, no longer in the script", t.not_in_script)]
    out = [(f"<!doctype html><html><head><meta charset='utf-8'><title>voicefleet job {esc(job_id)}</title>"
           f"<style>{_CSS}</style></head><body>"),
           f"<h1>Render job <code>{esc(job_id)}</code> <small>({esc(str(job.get('status', '?')))})</small></h1>",
           '<h2 id="counts">Counts</h2>',
           _table([], [[f"<th>{esc(k)}</th>", _td(v)] for k, v in summary], "counts")]

    out += ['<h2 id="voices">Per voice</h2>',
            _table(["voice", "ok", "failed", "refused", "QC flagged", "audio s", "synthesis s",
                    "lines / synthesis s", "audio s / synthesis s"],
                   [[_td(v["voice_id"]), _td(v["ok"], num=True), _td(v["failed"], num=True), _td(v["refused"], num=True),
                     _td(v["qc_flagged"], num=True), _td(v["audio_s"], 1, True), _td(v["synth_s"], 1, True),
                     _td(v["lines_per_synth_s"], 2, True), _td(v["audio_per_synth_s"], 2, True)] for v in data.voices],
                   "voices"),
            "<small>synthesis s = Σ rtf × duration of the voice's ok lines (time in the model, QC excluded).</small>"]

    out += ['<h2 id="distributions">Distributions (ok lines)</h2><div class="charts">']
    for m, (title, unit, _) in MEASURES.items():
        marked = m == "loudness_lufs"
        out.append(histogram_svg(data.histograms.get(m, Histogram()), title, unit,
                                 marker=post_target if marked else None, marker_label="target" if marked else ""))
    out.append("</div>")

    rows_html = []
    for r in data.worst:
        clip = audio.get(r["line_id"])
        player = (f'<audio controls preload="metadata" data-line="{esc(r["line_id"])}" '
                  f'data-index-s="{r.get("duration_s") or 0:.3f}"><source type="audio/flac" '
                  f'src="data:audio/flac;base64,{base64.b64encode(clip).decode()}"></audio>') if clip else "(audio unavailable)"
        verdict = {True: '<span class="ok">pass</span>', False: '<span class="bad">fail</span>'}.get(r.get("qc_passed"), "–")
        rows_html.append([_td(r["line_id"]), _td(r.get("voice_id")), f"<td>{player}</td>", f"<td>{verdict}</td>",
                          _td(r.get("wer"), 2, True), _td(r.get("speaker_similarity"), 2, True),
                          _td(r.get("loudness_lufs"), 1, True), _td(r.get("duration_s"), 2, True),
                          _td(r.get("attempts"), num=True), _td(r.get("text")), _td(r.get("asr_text")),
                          _td(r.get("qc_reasons")), f"<td><small>{_attempts_summary(r.get('attempt_log'))}</small></td>"])
    out += [f'<h2 id="worst">Worst {len(data.worst)} lines</h2>',
            "<small>ranked: QC failed first, then number of QC reasons, WER, and lowest speaker similarity.</small>",
            _table(["line", "voice", "audio", "QC", "WER", "similarity", "LUFS", "s", "attempts", "text", "heard",
                    "QC reasons", "attempts log"], rows_html, "worst")]

    out += [f'<h2 id="failed">Failed and refused lines ({t.failed + t.refused})</h2>',
            _table(["line", "voice", "status", "attempts", "error"],
                   [[_td(r["line_id"]), _td(r.get("voice_id")), _td(r["status"]), _td(r.get("attempts"), num=True),
                     _td(r.get("error"))] for r in data.failed], "failed")]
    out += [f"<script>{_JS}</script></body></html>"]
    return "\n".join(out)


def write_report(store: Store, job_id: str, worst: int = WORST_LINES) -> str:
    """Build renders/<job_id>/report.html from the job's index and shards; returns its URL.

    A worst line whose audio cannot be fetched (its tar gone, bytes not matching the row) is shown
    without a player rather than failing the page."""
    job = read_job(store, job_id)
    target = (job.get("post") or {}).get("loudness_lufs", -23.0)
    with tempfile.TemporaryDirectory(prefix="vf-report-") as tmp:
        data = with_memory(MEMORY_MB, tmp, lambda con: report_data(con, store, job_id, worst, target))
    audio = {}
    for r in data.worst:
        try:
            audio[r["line_id"]] = fetch_audio(store, job_id, r)
        except (OSError, EOFError, CorruptAudio, InvalidRow):
            continue
    store.write_text(report_key(job_id), render_html(job_id, job, data, audio, target))
    return store.url(report_key(job_id))
