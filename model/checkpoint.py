"""Checkpoint I/O in the official GPT-SoVITS formats, plus safetensors.

- GPT `.ckpt`: {"weight": state dict with keys prefixed `model.` (fp16), "config": s1 yaml dict, "info"}.
- SoVITS `.pth`: {"weight": state dict without `enc_q.*` (fp16), "config": s2 json, "info"}. Files
  written by the reference trainer pickle the config as a `utils.HParams` object; v2Pro/v3/v4 files
  replace the zip's leading `PK` with a two-byte version tag (v2Pro `05`, v2ProPlus `06`; we write it too).
- discriminator `s2D*.pth`: {"weight": state dict}; sv model (v2Pro): a bare ERes2NetV2 state dict.

Loading never unpickles arbitrary objects: `torch.load(weights_only=True)` with exactly one extra
class allowed, `utils.HParams`, mapped to a plain attribute bag. Every key must load with its exact
shape and nothing may be left over; only the training-only posterior encoder (`enc_q`) may be
absent from a SoVITS file.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import PRO_VERSIONS, SOVITS_VERSIONS, GPTConfig, SoVITSConfig
from .discriminator import MultiPeriodDiscriminator
from .gpt import Text2SemanticDecoder
from .sovits import SynthesizerTrn
from .sv import ERes2NetV2

GPT_PREFIX = "model."
# two-byte tags that replace "PK" at the start of newer SoVITS files (reference: process_ckpt.py)
SOVITS_TAGS = {b"00": "v1", b"01": "v2", b"02": "v3", b"03": "v3-lora", b"04": "v4-lora",
               b"05": "v2Pro", b"06": "v2ProPlus"}
VERSION_TAGS = {v: k for k, v in SOVITS_TAGS.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong format, wrong version, or keys/shapes that don't match."""


class HParamsStandIn:
    """Harmless stand-in for the reference trainer's `utils.HParams`: a bag of attributes."""

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)


MAX_CONFIG_DEPTH = 32  # official configs nest 3 levels; deeper is a crafted file


def _to_plain(obj: Any, path: str = "checkpoint", ancestors: tuple[int, ...] = ()) -> Any:
    """HParams -> dicts, all the way down; a config that contains itself or nests absurdly is refused."""
    if not isinstance(obj, (HParamsStandIn, dict, list, tuple)):
        return obj
    if id(obj) in ancestors:
        raise CheckpointError(f"refused to load checkpoint: {path} refers back to a value that contains it "
                              "(a self-referencing config)")
    if len(ancestors) >= MAX_CONFIG_DEPTH:
        raise CheckpointError(f"refused to load checkpoint: {path} nests deeper than {MAX_CONFIG_DEPTH} levels")
    inner = (*ancestors, id(obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v, f"{path}[{i}]", inner) for i, v in enumerate(obj))
    items = vars(obj).items() if isinstance(obj, HParamsStandIn) else obj.items()
    return {k: _to_plain(v, f"{path}.{k}", inner) for k, v in items}


Source = str | os.PathLike | bytes | BinaryIO


def _read(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    if hasattr(source, "read"):
        return source.read()
    with open(source, "rb") as f:
        return f.read()


def _weights_only_load(data: bytes, allowed: list) -> Any:
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError on a bad zip, ...
        raise CheckpointError(f"refused to load checkpoint: {str(e).splitlines()[0]}") from e


def safe_torch_load(data: bytes) -> tuple[dict, str | None]:
    """Load a torch zip checkpoint with weights_only=True; returns (object, version tag or None)."""
    tag = None
    if data[:2] != b"PK":
        if data[:2] not in SOVITS_TAGS:
            raise CheckpointError(f"not a torch checkpoint (starts with {data[:2]!r}, expected b'PK' or a version tag)")
        tag = SOVITS_TAGS[data[:2]]
        data = b"PK" + data[2:]
    obj = _weights_only_load(data, [(HParamsStandIn, "utils.HParams")])
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
    state = {k.removeprefix(GPT_PREFIX): v for k, v in ckpt["weight"].items()}
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
    """Load a SoVITS `.pth` (v2, v2Pro or v2ProPlus). `with_posterior=None` builds `enc_q` only if the
    file has it. The version comes from the file's two-byte tag, else from its weights and config."""
    ckpt, tag = safe_torch_load(_read(source))
    return sovits_from_checkpoint(ckpt, tag, with_posterior)


def _sovits_version(ckpt: dict, tag: str | None) -> str:
    weight, config = ckpt["weight"], ckpt.get("config") or {}
    emb = weight.get("enc_p.text_embedding.weight")
    if tag == "v1" or (emb is not None and emb.shape[0] != 732):
        n = "" if emb is None else f" (text embedding of {emb.shape[0]} symbols; v2 has 732)"
        raise CheckpointError(f"SoVITS v1 checkpoint{n}: not supported (voicefleet implements {', '.join(SOVITS_VERSIONS)})")
    if tag is not None and tag not in SOVITS_VERSIONS:
        raise CheckpointError(f"SoVITS {tag} checkpoints are not supported (voicefleet implements {', '.join(SOVITS_VERSIONS)})")
    has_sv = any(k.startswith(("sv_emb.", "ge_to512.", "prelu.")) for k in weight)
    said = config.get("version") or (config.get("model") or {}).get("version")
    if tag is None:  # untagged: a v2 file, or a pretrained base (the reference knows those by md5)
        if not has_sv:
            tag = "v2"
        elif said in PRO_VERSIONS:
            tag = said
        else:
            pre = weight.get("dec.conv_pre.weight")
            tag = "v2ProPlus" if pre is not None and pre.shape[0] == SoVITSConfig.v2proplus().upsample_initial_channel \
                else "v2Pro"
    if said in SOVITS_VERSIONS and said != tag and (said in PRO_VERSIONS or tag in PRO_VERSIONS):
        raise CheckpointError(f"SoVITS file is tagged {tag} but its config says {said}")
    if has_sv != (tag in PRO_VERSIONS):
        held = "v2Pro weights (sv_emb/prelu/ge_to512)" if has_sv else "weights without the v2Pro speaker-embedding layers"
        raise CheckpointError(f"SoVITS file says {tag} but holds {held}")
    return tag


def sovits_from_checkpoint(ckpt: dict, version: str | None = None, with_posterior: bool | None = None) -> Loaded:
    """`version`: the file's tag (None: untagged, read from the weights and config)."""
    version = _sovits_version(ckpt, version)
    weight = ckpt["weight"]
    config = ckpt.get("config")
    cfg = SoVITSConfig.from_official(config) if config else SoVITSConfig.for_version(version)
    cfg = dataclasses.replace(cfg, version=version)
    has_q = any(k.startswith("enc_q.") for k in weight)
    model = SynthesizerTrn(cfg, with_posterior=has_q if with_posterior is None else with_posterior)
    _load_strict(model, weight, optional_prefix="enc_q.")
    return Loaded(model.eval(), cfg, ckpt.get("info"), version)


def sovits_checkpoint(model: SynthesizerTrn, info: str = "voicefleet", dtype: torch.dtype | None = torch.float16,
                      with_posterior: bool = False) -> dict:
    weight = {k: (v if dtype is None or not v.is_floating_point() else v.to(dtype)).detach().cpu().contiguous()
              for k, v in model.state_dict().items() if with_posterior or not k.startswith("enc_q.")}
    return {"weight": weight, "config": model.cfg.to_official(), "info": info}


def sovits_bytes(ckpt: dict) -> bytes:
    """The file the reference exporter writes: a torch zip; for v2Pro/v2ProPlus its leading `PK`
    replaced by the version tag (`05` / `06`), which the official loaders read to pick the model."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    version = ckpt["config"].get("version", "v2")
    return VERSION_TAGS[version] + data[2:] if version in PRO_VERSIONS else data


def save_sovits(model: SynthesizerTrn, path_or_file, info: str = "voicefleet",
                dtype: torch.dtype | None = torch.float16, with_posterior: bool = False) -> None:
    """Official layout with a plain-dict config (the reference loaders accept both)."""
    data = sovits_bytes(sovits_checkpoint(model, info, dtype, with_posterior))
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)
    else:
        with open(path_or_file, "wb") as f:
            f.write(data)


# ---------------------------------------------------------------- discriminator
def load_discriminator(source: Source, version: str = "v2", channels_div: int = 1) -> dict[str, torch.Tensor]:
    """A pretrained `s2D*.pth` ({"weight": state dict}) checked key by key and shape by shape against
    the discriminator `version` fine-tunes with (v2Pro/v2ProPlus add periods 17 and 23)."""
    ckpt, _ = safe_torch_load(_read(source))
    periods = dataclasses.replace(SoVITSConfig(), version=version).disc_periods
    _load_strict(MultiPeriodDiscriminator(channels_div, periods=periods), ckpt["weight"])
    return ckpt["weight"]


# ---------------------------------------------------------------- speaker verification (v2Pro)
def load_sv(source: Source, model: ERes2NetV2 | None = None) -> ERes2NetV2:
    """The v2Pro speaker-verification model (`sv/pretrained_eres2netv2w24s4ep4.ckpt`): a bare state dict,
    loaded with weights_only into the official ERes2NetV2 (w24 s4 e4) or `model`, every key with its
    exact shape (BatchNorm counters included), nothing left over."""
    state = _weights_only_load(_read(source), [])
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("speaker-verification checkpoint is not a bare state dict of tensors")
    model = model if model is not None else ERes2NetV2()
    _load_strict(model, state)
    return model.float().eval()


def save_sv(model: ERes2NetV2, path_or_file) -> None:
    """The official layout: the bare float32 state dict."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path_or_file)


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
    return sovits_from_checkpoint(from_safetensors(data), None, with_posterior)
