"""The knobs of a render job (RenderSettings) and the model's settings for one line (line_settings)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from voicefleet.tasks.cluster.runtime import Resources

from .line_qc import QCConfig
from .postprocess import PostConfig


@dataclass
class RenderSettings:
    """Knobs of a render job (per-line columns override the sampling ones)."""

    actors: int = 1
    batch_size: int = 16  # lines per synthesis call
    lines_per_shard: int = 256
    resources: Resources = field(default_factory=Resources)
    top_k: int = 15
    temperature: float = 1.0
    noise_scale: float = 0.5
    speed: float = 1.0
    max_tokens_per_phone: float = 6.0
    voice_cache: int = 4  # loaded voices kept per actor
    retries: int = 3  # calls in all for a voice load / shard write failing with a transient error
    line_retries: int = 1  # extra calls for a single line failing with a transient error
    backoff_s: float = 0.5
    post: PostConfig = field(default_factory=PostConfig)  # loudness, silence pads, target length
    qc: QCConfig = field(default_factory=QCConfig)  # per-line quality control and retries
    precision: str | None = None  # fp32 | bf16 | fp16 | int8; None: bf16 on CUDA, fp32 on CPU
    actor_start_timeout_s: int = 900  # synthesis actors not started (placed + models loaded) by then: the run stops
    # batches an actor may have in post-processing, QC, watermark and encoding (on its finishing thread)
    # while it synthesises the next one; 0: each batch finished before the next is synthesised
    post_overlap: int = 1

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size", "lines_per_shard", "voice_cache", "retries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.post_overlap < 0:
            raise ValueError(f"post_overlap must be 0 or more, got {self.post_overlap}")

    def audio_key(self) -> str:
        """The job-wide settings that change a line's audio, as one string for its `line_hash`:
        sampling defaults, the runaway guard, post-processing and QC (which attempt is kept).
        Not here: actors, batch sizes, caches, retries of transient errors, overlap, precision and device."""
        return json.dumps({"top_k": self.top_k, "temperature": self.temperature, "noise_scale": self.noise_scale,
                           "speed": self.speed, "max_tokens_per_phone": self.max_tokens_per_phone,
                           "post": asdict(self.post), "qc": asdict(self.qc)}, sort_keys=True)


def line_settings(r: dict, s: RenderSettings):
    """The model's LineSettings for a plan row; temperature 0 is greedy decoding (top_k 1)."""
    from voicefleet.model.synthesizer import LineSettings

    temperature = s.temperature if r["temperature"] is None else r["temperature"]
    top_k = s.top_k if r["top_k"] is None else int(r["top_k"])
    if temperature == 0:
        top_k, temperature = 1, 1.0
    return LineSettings(seed=int(r["seed"]), speed=s.speed if r["speed"] is None else r["speed"], top_k=top_k,
                        temperature=temperature, noise_scale=s.noise_scale if r["noise_scale"] is None else r["noise_scale"],
                        max_tokens_per_phone=s.max_tokens_per_phone)
