"""Voices for render tests without fine-tuning: the tiny base model registered as a version.

    from render_voices import register_tiny_voices
    register_tiny_voices(store, ["ann", "bob"], owner="user:demo")

Each voice gets the deterministic tiny GPT/SoVITS checkpoints, a 4 s reference clip (a different
pitch per voice) and its semantic prompt tokens, exactly the files an enrollment registers.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from voicefleet.model.checkpoint import save_gpt, save_sovits
from voicefleet.model.synthesizer import prompt_tokens
from voicefleet.tasks.measure.audio import encode_wav
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.base_model import tiny_base
from voicefleet.tasks.voices.registry import VoiceRegistry


def _bytes(save, model) -> bytes:
    buf = io.BytesIO()
    save(model, buf)
    return buf.getvalue()


def register_tiny_voices(store: Store, names: list[str], owner: str, sharing: str = "private") -> None:
    base = tiny_base()
    gpt, sovits = _bytes(save_gpt, base.gpt), _bytes(save_sovits, base.sovits)
    registry = VoiceRegistry(store)
    t = np.arange(32000 * 4) / 32000
    for i, name in enumerate(names):
        ref = (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
        with torch.no_grad():
            tokens = prompt_tokens(base.ssl, base.sovits, ref[::2].copy())
        prefix = f"voices/{name}/files"
        store.write_bytes(f"{prefix}/gpt.ckpt", gpt)
        store.write_bytes(f"{prefix}/sovits.pth", sovits)
        store.write_bytes(f"{prefix}/ref.wav", encode_wav(ref, 32000))
        registry.ensure_voice(name, owner, sharing)
        registry.add_version(name, {"base_model": "tiny-random-v1", "untrained": True,
                                    "files": {"gpt": f"{prefix}/gpt.ckpt", "sovits": f"{prefix}/sovits.pth",
                                              "ref_wav": f"{prefix}/ref.wav"},
                                    "ref_text": "A short reference sentence.", "ref_language": "en",
                                    "prompt_tokens": [int(x) for x in tokens]})


def register_tiny_lora_voices(store: Store, names: list[str], owner: str) -> None:
    """LoRA voices over the tiny base, published once in `store`: each its own random GPT factors
    (tests/lora_voices.py) and peft's initial SoVITS factors, the files an enrollment with
    `--lora-rank` registers (`lora.safetensors` + the shared base)."""
    from lora_voices import random_lora_state

    from voicefleet.model.lora import LoRAConfig, add_lora, clone, lora_state
    from voicefleet.tasks.voices.artifacts import save_lora
    from voicefleet.tasks.voices.base_store import publish_base

    cfg = LoRAConfig(rank=4, alpha=8.0)
    base, ref_base = tiny_base(), publish_base(store, "tiny")
    sovits = clone(base.sovits)
    add_lora(sovits, cfg.sovits_targets, cfg)
    sovits_state = lora_state(sovits)
    registry = VoiceRegistry(store)
    t = np.arange(32000 * 4) / 32000
    for i, name in enumerate(names):
        ref = (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
        with torch.no_grad():
            tokens = prompt_tokens(base.ssl, base.sovits, ref[::2].copy())
        prefix = f"voices/{name}/files"
        files = save_lora(store, prefix, {"gpt": random_lora_state(base.gpt, cfg, 100 + i, 0.3),
                                          "sovits": sovits_state, "config": cfg.to_dict()}, ref_base)
        store.write_bytes(f"{prefix}/ref.wav", encode_wav(ref, 32000))
        registry.ensure_voice(name, owner, "private")
        registry.add_version(name, {"base_model": "tiny-random-v1", "untrained": True,
                                    "files": {**files, "ref_wav": f"{prefix}/ref.wav"},
                                    "ref_text": "A short reference sentence.", "ref_language": "en",
                                    "prompt_tokens": [int(x) for x in tokens]})
