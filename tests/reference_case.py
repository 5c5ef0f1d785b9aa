"""Access to ../shared/reference: manifests, the official-format weight writer, equivalence cases."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def require_reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"shared reference folder not found at {REFERENCE}")
    return REFERENCE


def manifest(kind: str) -> dict:
    return json.loads((require_reference() / f"gpt_sovits_v2_{kind}_state_dict.json").read_text())


def ref_weights():
    spec = importlib.util.spec_from_file_location("ref_weights", require_reference() / "ref_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def case_files() -> list[Path]:
    return sorted(REFERENCE.glob("case_*.npz")) if REFERENCE.is_dir() else []
