"""A voice version's model files: written by a training unit, read by render actors.

Two kinds, told apart by the version's `files`:

- full fine-tune: `gpt` (GPT `.ckpt`) and `sovits` (SoVITS `.pth`), official formats, fp16 — a
  complete copy of both models per voice (~230 MB at v2 size);
- LoRA: `lora` (`lora.safetensors`: the GPT's and SoVITS's adapter factors under `gpt/` and
  `sovits/`, the LoRA config as metadata) plus `base_gpt` / `base_sovits`, the shared base it
  applies to (tasks/voices/base_store.py). A render process reads the base once; each voice's SoVITS
  delta is merged into a copy of it, and its GPT factors stay apart (`load_voice_for_batching`), so
  the lines of many LoRA voices decode in one batch, each row with its own adapter.

A v2Pro / v2ProPlus voice also has `sv_emb` (`sv_emb.npy`): the speaker-verification embedding of its
reference clip, computed once at enrollment (float32, the generator's `sv_dim` wide, ~80 KB). Render actors
read it with the clip (`load_sv_emb`), so they never load the 53.6 M-parameter sv model.
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from voicefleet.model.checkpoint import load_gpt, load_sovits, save_gpt, save_sovits
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.lora import LoRAConfig, apply_lora
from voicefleet.model.multi_lora import AdapterError, GPTAdapter
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.tasks.store.storage import Store

from .base_store import BaseRef, cached_base
from .records import base_prefix


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


def save_sv_emb(store: Store, prefix: str, emb: np.ndarray) -> dict[str, str]:
    """The voice's speaker embedding (sv_dim,) as a float32 .npy; {"sv_emb": key}."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(emb, dtype=np.float32).reshape(-1), allow_pickle=False)
    key = f"{prefix}/sv_emb.npy"
    store.write_bytes(key, buf.getvalue())
    return {"sv_emb": key}


def load_sv_emb(store: Store, files: dict[str, str]) -> np.ndarray | None:
    """The voice's stored speaker embedding, or None (a v2 voice has none)."""
    if "sv_emb" not in files:
        return None
    return np.load(io.BytesIO(store.read_bytes(files["sv_emb"])), allow_pickle=False)


def artifact_bytes(store: Store, files: dict[str, str]) -> int:
    """Bytes this version adds to the store (its own model files; the shared base not counted)."""
    return sum(len(store.read_bytes(files[n])) for n in ("gpt", "sovits", "lora", "sv_emb") if n in files)


def _lora(store: Store, files: dict[str, str]) -> tuple[LoRAConfig, dict[str, dict[str, torch.Tensor]]]:
    data = store.read_bytes(files["lora"])
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    cfg = LoRAConfig(**json.loads(header["__metadata__"]["lora"]))
    tensors = st_load(data)
    return cfg, {p: {k[len(p) + 1:]: v.float() for k, v in tensors.items() if k.startswith(p + "/")}
                 for p in ("gpt", "sovits")}


def load_voice_models(store: Store, files: dict[str, str]) -> tuple[Text2SemanticDecoder, SynthesizerTrn]:
    """The (GPT, SoVITS) a version renders with: its full checkpoints, or the shared base + its delta."""
    if "lora" not in files:
        return load_gpt(store.read_bytes(files["gpt"])).model, load_sovits(store.read_bytes(files["sovits"])).model
    cfg, parts = _lora(store, files)
    base = cached_base(store, base_prefix(files))
    gpt = apply_lora(base.gpt, parts["gpt"], cfg.gpt_targets, cfg).eval()
    sovits = apply_lora(base.sovits, parts["sovits"], cfg.sovits_targets, cfg).eval()
    return gpt, sovits


def load_voice_for_batching(store: Store, files: dict[str, str]
                            ) -> tuple[Text2SemanticDecoder, SynthesizerTrn, GPTAdapter | None]:
    """(GPT, SoVITS, adapter) for decode batches shared across voices: a LoRA voice's GPT is the shared
    base itself (the same object for every voice over it, unmerged) with its factors as `adapter`, its
    SoVITS the base with its delta merged; a full fine-tune, or LoRA factors outside the layers that
    decode per row, as `load_voice_models` (adapter None)."""
    if "lora" not in files:
        return (*load_voice_models(store, files), None)
    cfg, parts = _lora(store, files)
    base = cached_base(store, base_prefix(files))
    sovits = apply_lora(base.sovits, parts["sovits"], cfg.sovits_targets, cfg).eval()
    try:
        return base.gpt, sovits, GPTAdapter.from_state(parts["gpt"], cfg)
    except AdapterError:  # factors this engine cannot apply per row: the voice decodes alone, merged
        return apply_lora(base.gpt, parts["gpt"], cfg.gpt_targets, cfg).eval(), sovits, None
