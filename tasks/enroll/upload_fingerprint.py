"""What decides whether a speaker must be prepared and trained again: a fingerprint of the raw upload
and of everything the voice is made with.

    fingerprint = sha256(pipeline version, base model identity, recipe, QC config,
                         every file of the folder: relative name + raw bytes, in listing order)

It is computed from one listing of the speaker folder and one streamed hash of each file, before
anything is decoded, so an unchanged upload costs no decode, no feature and no training. A new
base model (e.g. `--pretrained DIR` after the tiny demo), a new recipe or QC setting, or a new
pipeline version changes it and the voice is trained again.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from voicefleet.tasks.store.storage import Store

# Bump when ingest, features or training change what a voice is made of.
PIPELINE_VERSION = "enroll-3"  # 3: training clips level-normalised; utterances keep >= 0.1 s of pause
_CHUNK = 1 << 20


@lru_cache(maxsize=8)
def _tree_digest(root: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for rel, size, _ in stamp:
        h.update(f"{rel}\0{size}\0".encode())
        with open(Path(root) / rel, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def base_identity(base_spec: str) -> str:
    """'tiny-random-v1' for the tiny base ('tiny:v2Pro' ...: the spec itself); for a pretrained folder the
    sha256 of every file under it, with the model version read from it unless v2."""
    from voicefleet.tasks.voices.pretrained_layout import parse_spec

    kind, version, root = parse_spec(base_spec)
    if kind == "tiny":
        from voicefleet.tasks.voices.base_model import TINY

        return TINY if base_spec == "tiny" else base_spec
    stamp = tuple(sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in Path(root).rglob("*") if p.is_file()))
    digest = _tree_digest(root, stamp)  # cached per process while files are unchanged
    return f"pretrained:{digest}" if version in (None, "v2") else f"pretrained:{version}:{digest}"


def model_identity(base_spec: str, recipe: dict, qc: dict | None) -> str:
    """One string for everything besides the upload that a voice depends on."""
    return json.dumps({"pipeline": PIPELINE_VERSION, "base": base_identity(base_spec), "recipe": recipe,
                       "qc": qc or {}}, sort_keys=True, default=str)


def upload_fingerprint(src: Store, folder: str, identity: str) -> tuple[str, int]:
    """(hex digest, files hashed) of a speaker folder's raw bytes plus `identity`; decodes nothing."""
    h = hashlib.sha256(identity.encode())
    keys = src.list(folder)
    for key in keys:
        rel = os.path.relpath(key, folder)
        h.update(f"\0{rel}\0".encode())
        with src.open(key, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest(), len(keys)
