"""Ray custom metrics of the render actors, shown on the Ray dashboard (Metrics tab / Prometheus).

    voicefleet_render_lines{status}         lines finished by an actor: ok | failed | refused
    voicefleet_render_truncated_lines       ok lines that hit the runaway-length guard
    voicefleet_render_audio_seconds         seconds of audio rendered
    voicefleet_render_compute_seconds       seconds spent in synthesis calls
    voicefleet_render_retries{kind}         batch_split | line_retry | voice_load | shard_write
    voicefleet_render_rtf                   compute s / audio s of the last batch (gauge)
    voicefleet_render_stage_seconds{stage}  busy seconds of each stage of an actor's work:
                                            synthesis | post_qc (post-processing and line QC) |
                                            watermark | encode (FLAC); their rates side by side
                                            show which stage limits a job (synthesis alone is the
                                            RTF above; the rest is time the model waits)

(Counters; Prometheus shows them with Ray's `ray_` prefix.)

lines/s and audio s/s are the rates of the counters (`rate(...[1m])` in Grafana / the dashboard).
Outside a Ray worker (unit tests) the metrics are no-ops.
"""
from __future__ import annotations


class RenderMetrics:
    def __init__(self) -> None:
        try:
            from ray.util.metrics import Counter, Gauge

            self.lines = Counter("voicefleet_render_lines", "Render lines finished, by status.", tag_keys=("status",))
            self.truncated = Counter("voicefleet_render_truncated_lines", "Lines that hit the runaway guard.")
            self.audio_s = Counter("voicefleet_render_audio_seconds", "Seconds of audio rendered.")
            self.compute_s = Counter("voicefleet_render_compute_seconds", "Seconds spent synthesizing.")
            self.retries = Counter("voicefleet_render_retries", "Retries, by kind.", tag_keys=("kind",))
            self.rtf = Gauge("voicefleet_render_rtf", "Real-time factor of the last synthesis batch.")
            self.stage_s = Counter("voicefleet_render_stage_seconds", "Busy seconds per stage of the render actors.",
                                   tag_keys=("stage",))
            self.enabled = True
        except Exception:  # noqa: BLE001 — metrics are optional outside Ray
            self.enabled = False

    def line(self, status: str, audio_s: float = 0.0, truncated: bool = False) -> None:
        if self.enabled:
            self.lines.inc(1, tags={"status": status})
            if audio_s:
                self.audio_s.inc(audio_s)
            if truncated:
                self.truncated.inc(1)

    def batch(self, compute_s: float, audio_s: float) -> None:
        if self.enabled and compute_s > 0:
            self.compute_s.inc(compute_s)
            if audio_s > 0:
                self.rtf.set(compute_s / audio_s)

    def stage(self, name: str, seconds: float) -> None:
        if self.enabled and seconds > 0:
            self.stage_s.inc(seconds, tags={"stage": name})

    def retry(self, kind: str) -> None:
        if self.enabled:
            self.retries.inc(1, tags={"kind": kind})
