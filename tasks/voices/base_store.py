"""The shared base model in the object store, read once per worker process.

`publish_base` writes the base a run fine-tunes from under a content-addressed prefix (once per
content; a rerun finds it there):

    bases/<name>-<sha12>/gpt.ckpt      GPT, official layout, float32
    bases/<name>-<sha12>/sovits.pth    SoVITS generator with its posterior encoder, float32
    bases/<name>-<sha12>/disc.pt       discriminator weights, when the base has them
    bases/<name>-<sha12>/sv.ckpt       v2Pro / v2ProPlus: the speaker-verification model (official layout)
    bases/<name>-<sha12>/base.json     {"name", "untrained", "prefix"}

Training units and render actors call `cached_base(store, prefix)`, which reads those files the
first time a process asks and keeps the models in memory; every voice then starts from a clone
(`fresh_models`) instead of another read.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import torch
from pydantic import BaseModel as Record

from voicefleet.model.checkpoint import load_gpt, load_sovits, load_sv, save_gpt, save_sovits, save_sv
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.lora import clone
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.sv import ERes2NetV2
from voicefleet.tasks.store.storage import Store

from .base_model import load_base, sv_net_for

BASES_PREFIX = "bases"


class BaseRef(Record):
    name: str
    untrained: bool
    prefix: str
    bert_dir: str | None = None  # Chinese BERT folder on the workers (pretrained bases only)

    def files(self) -> dict[str, str]:
        return {"base_gpt": f"{self.prefix}/gpt.ckpt", "base_sovits": f"{self.prefix}/sovits.pth"}


@dataclass
class CachedBase:
    ref: BaseRef
    gpt: Text2SemanticDecoder
    sovits: SynthesizerTrn  # with enc_q
    discriminator_state: dict | None
    sv: ERes2NetV2 | None = None  # v2Pro / v2ProPlus: makes the speaker embeddings sv_emb reads


_CACHE: dict[tuple[str, str], CachedBase] = {}
_READS = [0]  # base models this process has read from a store


def publish_base(store: Store, spec: str) -> BaseRef:
    """Write the base named by `spec` ('tiny' or 'pretrained:<dir>') to the store unless it is there."""
    base = load_base(spec)
    gpt, sovits, disc, sv = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    save_gpt(base.gpt, gpt, info=base.name, dtype=None)
    save_sovits(base.sovits, sovits, info=base.name, dtype=None, with_posterior=True)
    if base.discriminator_state is not None:
        torch.save(base.discriminator_state, disc)
    if base.sv is not None:
        save_sv(base.sv, sv)
    # the discriminator is part of the content: a base published without one is never taken for one with it
    digest = hashlib.sha256(gpt.getvalue() + sovits.getvalue() + disc.getvalue() + sv.getvalue()).hexdigest()[:12]
    prefix = f"{BASES_PREFIX}/{re.sub(r'[^A-Za-z0-9_-]+', '-', base.name).strip('-')}-{digest}"
    ref = BaseRef(name=base.name, untrained=base.untrained, prefix=prefix, bert_dir=base.bert_dir)
    if not store.exists(f"{prefix}/base.json"):
        store.write_bytes(f"{prefix}/gpt.ckpt", gpt.getvalue())
        store.write_bytes(f"{prefix}/sovits.pth", sovits.getvalue())
        if base.discriminator_state is not None:
            store.write_bytes(f"{prefix}/disc.pt", disc.getvalue())
        if base.sv is not None:
            store.write_bytes(f"{prefix}/sv.ckpt", sv.getvalue())
        store.write_bytes(f"{prefix}/base.json", ref.model_dump_json().encode())  # last: marks it complete
    return ref


def cached_base(store: Store, prefix: str) -> CachedBase:
    """The published base at `prefix`, read from the store once per process."""
    key = (store.uri, prefix)
    if key not in _CACHE:
        ref = BaseRef.model_validate_json(store.read_bytes(f"{prefix}/base.json"))
        gpt = load_gpt(store.read_bytes(f"{prefix}/gpt.ckpt")).model
        sovits = load_sovits(store.read_bytes(f"{prefix}/sovits.pth"), with_posterior=True).model
        disc = None
        if store.exists(f"{prefix}/disc.pt"):
            disc = torch.load(io.BytesIO(store.read_bytes(f"{prefix}/disc.pt")), map_location="cpu", weights_only=True)
        sv = None
        if sovits.cfg.is_pro:  # a Pro base without its sv model cannot make the embeddings: an error here
            sv = load_sv(store.read_bytes(f"{prefix}/sv.ckpt"), sv_net_for(sovits.cfg.sv_dim))
        _CACHE[key] = CachedBase(ref, gpt.eval(), sovits.eval(), disc, sv)
        _READS[0] += 1
    return _CACHE[key]


def base_reads() -> int:
    """How many times this process has read a base model from a store."""
    return _READS[0]


def fresh_models(base: CachedBase) -> tuple[Text2SemanticDecoder, SynthesizerTrn]:
    """Independent copies of the base's GPT and SoVITS for one voice (the cache stays pristine)."""
    return clone(base.gpt), clone(base.sovits)
