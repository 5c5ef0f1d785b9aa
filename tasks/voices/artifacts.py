"""A voice version's model files: written by a training unit, read by render actors.

Two kinds, told apart by the version's `files`:

- full fine-tune: `gpt` (GPT `.ckpt`) and `sovits` (SoVITS `.pth`), official formats, fp16 — a
  complete copy of both models per voice (~230 MB at v2 size);
- LoRA: `lora` (`lora.safetensors`: the GPT's and SoVITS's adapter factors under `gpt/` and
  `sovits/`, the LoRA config as metadata) plus `base_gpt` / `base_sovits`, the shared base it
  applies to (tasks/voices/base_store.py). A render process reads the base once and merges each voice's
  delta into a copy of it.
"""
from __future__ import annotations

import io
import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from voicefleet.model.checkpoint import load_gpt, load_sovits, save_gpt, save_sovits
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.lora import LoRAConfig, apply_lora
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.tasks.store.storage import Store

from .base_store import BaseRef, cached_base


def save_full(store: Store, prefix: str, gpt: Text2SemanticDecoder, sovits: SynthesizerTrn, info: str) -> dict[str, str]:
    files = {}
    for name, save, model in (("gpt", save_gpt, gpt), ("sovits", save_sovits, sovits)):
        buf = io.BytesIO()
        save(model, buf, info=info)
        key = f"{prefix}/{name}.ckpt" if name == "gpt" else f"{prefix}/{name}.pth"
        store.write_bytes(key, buf.getvalue())
        files[name] = key
    return files


def save_lora(store: Store, prefix: str, deltas: dict, base: BaseRef) -> dict[str, str]:
    """deltas: {"gpt": factors, "sovits": factors, "config": LoRAConfig dict} (finetune's result)."""
    tensors = {f"{part}/{k}": v.to(torch.float16).contiguous() for part in ("gpt", "sovits") for k, v in deltas[part].items()}
    data = st_save(tensors, metadata={"lora": json.dumps(deltas["config"]), "base": base.prefix})
    key = f"{prefix}/lora.safetensors"
    store.write_bytes(key, data)
    return {"lora": key, **base.files()}


def artifact_bytes(store: Store, files: dict[str, str]) -> int:
    """Bytes this version adds to the store (its own model files; the shared base not counted)."""
    return sum(len(store.read_bytes(files[n])) for n in ("gpt", "sovits", "lora") if n in files)


def _base_prefix(files: dict[str, str]) -> str:
    return files["base_gpt"].rsplit("/", 1)[0]


def load_voice_models(store: Store, files: dict[str, str]) -> tuple[Text2SemanticDecoder, SynthesizerTrn]:
    """The (GPT, SoVITS) a version renders with: its full checkpoints, or the shared base + its delta."""
    if "lora" not in files:
        return load_gpt(store.read_bytes(files["gpt"])).model, load_sovits(store.read_bytes(files["sovits"])).model
    data = store.read_bytes(files["lora"])
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    cfg = LoRAConfig(**json.loads(header["__metadata__"]["lora"]))
    tensors = st_load(data)
    parts = {p: {k[len(p) + 1:]: v.float() for k, v in tensors.items() if k.startswith(p + "/")} for p in ("gpt", "sovits")}
    base = cached_base(store, _base_prefix(files))
    gpt = apply_lora(base.gpt, parts["gpt"], cfg.gpt_targets, cfg).eval()
    sovits = apply_lora(base.sovits, parts["sovits"], cfg.sovits_targets, cfg).eval()
    return gpt, sovits
