"""The base model a voice is fine-tuned from: official pretrained v2 weights, or a tiny random one.

`--pretrained DIR` points at a folder laid out like the reference's `pretrained_models/`:

    DIR/gsv-v2final-pretrained/s1bert25hz-*.ckpt   GPT (any single *.ckpt found under DIR)
    DIR/gsv-v2final-pretrained/s2G2333k.pth        SoVITS generator with enc_q (s2G*.pth)
    DIR/gsv-v2final-pretrained/s2D2333k.pth        discriminator (optional, s2D*.pth)
    DIR/chinese-hubert-base/                       HuBERT (transformers format)
    DIR/chinese-roberta-wwm-ext-large/             BERT for Chinese (optional)

Without it, `tiny` builds the same architecture at a few hundred thousand parameters from a fixed
seed: the pipeline runs end to end, and every voice made from it is marked untrained.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from voicefleet.model.checkpoint import load_gpt, load_sovits
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.ssl import SSLExtractor

TINY = "tiny-random-v1"
TINY_SEED = 1234


class PretrainedNotFound(FileNotFoundError):
    """The --pretrained folder lacks a file the pipeline needs."""


@dataclass
class BaseModel:
    name: str
    untrained: bool
    gpt: Text2SemanticDecoder
    sovits: SynthesizerTrn  # with enc_q, ready to fine-tune
    ssl: SSLExtractor
    bert_dir: str | None = None
    discriminator_state: dict | None = None


def base_spec(pretrained: str | None) -> str:
    """The string a flow passes to workers: 'tiny' or 'pretrained:<dir>'."""
    return f"pretrained:{Path(pretrained).resolve()}" if pretrained else "tiny"


def _one(dir_: Path, pattern: str, what: str) -> Path:
    hits = sorted(dir_.rglob(pattern))
    if not hits:
        raise PretrainedNotFound(f"{what} not found in {dir_} (looked for {pattern})")
    return hits[0]


def load_base(spec: str = "tiny") -> BaseModel:
    if spec == "tiny":
        return tiny_base()
    if not spec.startswith("pretrained:"):
        raise ValueError(f"unknown base model {spec!r}; use 'tiny' or 'pretrained:<dir>'")
    root = Path(spec.split(":", 1)[1])
    if not root.is_dir():
        raise PretrainedNotFound(f"pretrained folder {root} does not exist")
    gpt = load_gpt(_one(root, "*.ckpt", "GPT checkpoint (*.ckpt)")).model
    sovits = load_sovits(_one(root, "s2G*.pth", "SoVITS generator (s2G*.pth)"), with_posterior=True).model
    hubert = _one(root, "config.json", "chinese-hubert-base").parent
    hubert = next((p.parent for p in root.rglob("config.json") if "hubert" in p.parent.name.lower()), hubert)
    bert = next((str(p.parent) for p in root.rglob("config.json") if "roberta" in p.parent.name.lower()), None)
    disc = None
    d_files = sorted(root.rglob("s2D*.pth"))
    if d_files:
        disc = torch.load(d_files[0], map_location="cpu", weights_only=True).get("weight")
    return BaseModel(f"pretrained:{root.name}", False, gpt, sovits, SSLExtractor.from_pretrained(hubert), bert, disc)


def tiny_base() -> BaseModel:
    """Deterministic tiny models: the same weights in every process for the same torch version."""
    with torch.random.fork_rng():
        torch.manual_seed(TINY_SEED)
        gpt = Text2SemanticDecoder(GPTConfig.tiny())
        sovits = SynthesizerTrn(dataclasses.replace(SoVITSConfig.tiny()))
    ssl = SSLExtractor.tiny(dim=sovits.cfg.ssl_dim, seed=TINY_SEED)
    return BaseModel(TINY, True, gpt.eval(), sovits.eval(), ssl)
