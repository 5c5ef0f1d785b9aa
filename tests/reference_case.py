"""Access to ../shared/reference: manifests, the official-format weight writer, equivalence cases."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

# ../shared/reference beside the checkout; VOICEFLEET_REFERENCE_FACTS names a copy elsewhere (the GPU
# machine, where benchmarks/gpu_check.sh carries one in .gpu/shared-reference)
REFERENCE = Path(os.environ.get("VOICEFLEET_REFERENCE_FACTS")
                 or Path(__file__).resolve().parents[2] / "shared" / "reference")


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


# ---------------------------------------------------------------- v2Pro / v2ProPlus (../shared/reference/v2pro)
V2PRO = REFERENCE / "v2pro"
V2PRO_MANIFESTS = {"v2pro": "gpt_sovits_v2pro_s2_state_dict.json", "v2proplus": "gpt_sovits_v2proplus_s2_state_dict.json",
                   "sv": "sv_eres2netv2w24s4ep4_state_dict.json"}


def v2pro_manifest(kind: str) -> dict:
    """kind: "v2pro" / "v2proplus" (SoVITS) or "sv" (the ERes2NetV2 speaker-verification model)."""
    path = require_reference() / "v2pro" / V2PRO_MANIFESTS[kind]
    if not path.is_file():
        pytest.skip(f"v2Pro reference manifest not found at {path}")
    return json.loads(path.read_text())


def v2pro_case_files() -> list[Path]:
    return sorted(V2PRO.glob("case_*.npz")) if V2PRO.is_dir() else []
