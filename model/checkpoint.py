"""Checkpoint I/O in the official GPT-SoVITS formats, plus safetensors.

- GPT `.ckpt`: {"weight": state dict with keys prefixed `model.` (fp16), "config": s1 yaml dict, "info"}.
- SoVITS `.pth`: {"weight": state dict without `enc_q.*` (fp16), "config": s2 json, "info"}. Files
  written by the reference trainer pickle the config as a `utils.HParams` object; v2Pro/v3/v4 files
  replace the zip's leading `PK` with a two-byte version tag.

Loading never unpickles arbitrary objects: `torch.load(weights_only=True)` with exactly one extra
class allowed, `utils.HParams`, mapped to a plain attribute bag. Every key must load with its exact
shape and nothing may be left over; only the training-only posterior encoder (`enc_q`) may be
absent from a SoVITS file.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import GPTConfig, SoVITSConfig
from .gpt import Text2SemanticDecoder
from .sovits import SynthesizerTrn

GPT_PREFIX = "model."
# two-byte tags that replace "PK" at the start of newer SoVITS files (reference: process_ckpt.py)
SOVITS_TAGS = {b"00": "v1", b"01": "v2", b"02": "v3", b"03": "v3-lora", b"04": "v4-lora",
               b"05": "v2Pro", b"06": "v2ProPlus"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong format, wrong version, or keys/shapes that don't match."""


class HParamsStandIn:
    """Harmless stand-in for the reference trainer's `utils.HParams`: a bag of attributes."""

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, HParamsStandIn):
        return {k: _to_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


Source = str | os.PathLike | bytes | BinaryIO


def _read(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    if hasattr(source, "read"):
        return source.read()
    with open(source, "rb") as f:
        return f.read()


def safe_torch_load(data: bytes) -> tuple[dict, str | None]:
    """Load a torch zip checkpoint with weights_only=True; returns (object, version tag or None)."""
    tag = None
    if data[:2] != b"PK":
        if data[:2] not in SOVITS_TAGS:
            raise CheckpointError(f"not a torch checkpoint (starts with {data[:2]!r}, expected b'PK' or a version tag)")
        tag = SOVITS_TAGS[data[:2]]
        data = b"PK" + data[2:]
    try:
        with torch.serialization.safe_globals([(HParamsStandIn, "utils.HParams")]):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError on a bad zip, ...
        raise CheckpointError(f"refused to load checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(obj, dict) or "weight" not in obj:
        raise CheckpointError("checkpoint has no 'weight' entry (expected {'weight', 'config', 'info'})")
    return _to_plain(obj), tag


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], optional_prefix: str | None = None) -> list[str]:
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    allowed_missing = [k for k in missing if optional_prefix and k.startswith(optional_prefix)]
    missing = [k for k in missing if k not in allowed_missing]
    bad_shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if unexpected or missing or bad_shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if bad_shapes:
            parts.append(f"{len(bad_shapes)} shape mismatches (e.g. {bad_shapes[:3]})")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return allowed_missing


@dataclass
class Loaded:
    model: torch.nn.Module
    config: Any
    info: Any
    version: str = "v2"


# ---------------------------------------------------------------- GPT
def load_gpt(source: Source) -> Loaded:
    ckpt, _ = safe_torch_load(_read(source))
    return gpt_from_checkpoint(ckpt)


def gpt_from_checkpoint(ckpt: dict) -> Loaded:
    cfg = GPTConfig.from_official(ckpt["config"])
    state = {k[len(GPT_PREFIX):] if k.startswith(GPT_PREFIX) else k: v for k, v in ckpt["weight"].items()}
    model = Text2SemanticDecoder(cfg)
    _load_strict(model, state)
    return Loaded(model.eval(), cfg, ckpt.get("info"))


def gpt_checkpoint(model: Text2SemanticDecoder, info: str = "voicefleet", dtype: torch.dtype | None = torch.float16) -> dict:
    weight = {GPT_PREFIX + k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
              for k, v in model.state_dict().items()}
    return {"weight": weight, "config": model.cfg.to_official(), "info": info}


def save_gpt(model: Text2SemanticDecoder, path_or_file, info: str = "voicefleet",
             dtype: torch.dtype | None = torch.float16) -> None:
    torch.save(gpt_checkpoint(model, info, dtype), path_or_file)


# ---------------------------------------------------------------- SoVITS
def load_sovits(source: Source, with_posterior: bool | None = None) -> Loaded:
    """Load a SoVITS `.pth`. `with_posterior=None` builds `enc_q` only if the file has it."""
    ckpt, tag = safe_torch_load(_read(source))
    return sovits_from_checkpoint(ckpt, tag or "v2", with_posterior)


def sovits_from_checkpoint(ckpt: dict, version: str = "v2", with_posterior: bool | None = None) -> Loaded:
    weight = ckpt["weight"]
    if version != "v2":
        raise CheckpointError(f"SoVITS {version} checkpoints are not supported (voicefleet implements v2)")
    emb = weight.get("enc_p.text_embedding.weight")
    if emb is not None and emb.shape[0] != 732:
        raise CheckpointError(f"SoVITS v1 checkpoint (text embedding of {emb.shape[0]} symbols); v2 has 732")
    if any(k.startswith(("sv_emb.", "ge_to512.")) for k in weight):
        raise CheckpointError("SoVITS v2Pro checkpoints are not supported (voicefleet implements v2)")
    cfg = SoVITSConfig.from_official(ckpt["config"])
    has_q = any(k.startswith("enc_q.") for k in weight)
    model = SynthesizerTrn(cfg, with_posterior=has_q if with_posterior is None else with_posterior)
    _load_strict(model, weight, optional_prefix="enc_q.")
    return Loaded(model.eval(), cfg, ckpt.get("info"), version)


def sovits_checkpoint(model: SynthesizerTrn, info: str = "voicefleet", dtype: torch.dtype | None = torch.float16,
                      with_posterior: bool = False) -> dict:
    weight = {k: (v if dtype is None or not v.is_floating_point() else v.to(dtype)).detach().cpu().contiguous()
              for k, v in model.state_dict().items() if with_posterior or not k.startswith("enc_q.")}
    return {"weight": weight, "config": model.cfg.to_official(), "info": info}


def save_sovits(model: SynthesizerTrn, path_or_file, info: str = "voicefleet",
                dtype: torch.dtype | None = torch.float16, with_posterior: bool = False) -> None:
    """Official layout with a plain-dict config (the reference loaders accept both)."""
    torch.save(sovits_checkpoint(model, info, dtype, with_posterior), path_or_file)


# ---------------------------------------------------------------- safetensors
def to_safetensors(ckpt: dict) -> bytes:
    """A checkpoint dict -> safetensors bytes; config and info travel as JSON metadata."""
    meta = {"config": json.dumps(ckpt["config"]), "info": json.dumps(ckpt.get("info"))}
    return st_save({k: v.contiguous() for k, v in ckpt["weight"].items()}, metadata=meta)


def from_safetensors(data: bytes) -> dict:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + header_len])
    meta = header.get("__metadata__", {})
    return {"weight": st_load(data), "config": json.loads(meta["config"]), "info": json.loads(meta.get("info", "null"))}


def load_gpt_safetensors(data: bytes) -> Loaded:
    return gpt_from_checkpoint(from_safetensors(data))


def load_sovits_safetensors(data: bytes, with_posterior: bool | None = None) -> Loaded:
    return sovits_from_checkpoint(from_safetensors(data), "v2", with_posterior)
