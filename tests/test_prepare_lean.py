"""Lean prepare (issue 24): enrollment's prepare step loads HuBERT and the generator's token path only (no GPT, no
decoder, no discriminator, no BERT), and makes the very tokens the whole base makes. Peak memory per task:
benchmarks/prepare_memory.py, figures in benchmarks/README.md."""
from __future__ import annotations

import shutil

import pytest
import torch
from test_pretrained_strict import official  # noqa: F401 — a fixture: tiny models under the official names

from voicefleet.model.checkpoint import sovits_checkpoint
from voicefleet.model.config import SoVITSConfig
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.tasks.enroll.prepare import feature_models
from voicefleet.tasks.voices.base_model import FeatureBase, SemanticEncoder, load_base, load_feature_base
from voicefleet.tasks.voices.pretrained_layout import SOVITS_FILE, PretrainedMismatch


def tokens(base, wav: torch.Tensor) -> torch.Tensor:
    return base.sovits.extract_latent(base.ssl(wav))


@pytest.mark.parametrize("kind", ["tiny", "pretrained"])
def test_the_lean_base_makes_the_tokens_of_the_whole_base(kind, official) -> None:  # noqa: F811
    spec = "tiny" if kind == "tiny" else f"pretrained:{official}"
    lean, whole = load_feature_base(spec), load_base(spec)
    assert isinstance(lean, FeatureBase) and isinstance(lean.sovits, SemanticEncoder)
    assert not hasattr(lean, "gpt") and not hasattr(lean.sovits, "dec") and not hasattr(lean.sovits, "enc_q")
    assert (lean.name, lean.untrained) == (whole.name, whole.untrained)
    wav = torch.randn(2, 16000 * 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens(lean, wav), tokens(whole, wav))
    kept = sum(p.numel() for p in lean.sovits.parameters())
    assert kept == sum(p.numel() for n, p in whole.sovits.named_parameters() if n.startswith(("ssl_proj", "quantizer")))
    assert kept < sum(p.numel() for p in whole.sovits.parameters()) / 10


def test_prepare_loads_no_bert_even_when_the_folder_has_one(official) -> None:  # noqa: F811
    assert load_base(f"pretrained:{official}").bert_dir is not None
    base, frontend = feature_models(f"pretrained:{official}")
    assert frontend.bert is None and isinstance(base, FeatureBase)
    assert list(frontend.phonemize("你好", "zh").ids)  # phones need no BERT


def test_a_generator_without_its_token_path_is_refused_naming_the_file(official, tmp_path) -> None:  # noqa: F811
    folder = shutil.copytree(official, tmp_path / "pretrained")
    ckpt = sovits_checkpoint(SynthesizerTrn(SoVITSConfig.tiny()), with_posterior=True)
    dropped = [k for k in ckpt["weight"] if k.startswith("quantizer.")]
    for k in dropped:
        del ckpt["weight"][k]
    torch.save(ckpt, folder / SOVITS_FILE)
    with pytest.raises(PretrainedMismatch, match=r"s2G2333k\.pth: its semantic token path .* does not load: .*missing keys .*quantizer"):
        load_feature_base(f"pretrained:{folder}")
