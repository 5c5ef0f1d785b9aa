"""SSL content features: HuBERT (chinese-hubert-base in production) at 50 Hz from 16 kHz audio.

The official pipeline feeds raw 16 kHz samples (no feature-extractor normalisation) to the model
and takes `last_hidden_state`. Weights come from a local directory only (`transformers`,
`local_files_only=True`); `tiny()` builds a randomly initialised HuBERT of the same architecture
(hop 320 samples) for tests and the demo, since no HuBERT weights can be downloaded here.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.utils import logging as hf_logging

SSL_SAMPLE_RATE = 16000
SSL_HOP = 320  # 16 kHz / 320 = 50 Hz
# the reference appends 0.3 * 32000 zero samples (0.6 s at 16 kHz) to the reference clip
PROMPT_TAIL_SAMPLES = 9600


class SSLExtractor(nn.Module):
    def __init__(self, hubert: HubertModel):
        super().__init__()
        self.model = hubert.eval()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SSLExtractor":
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no HuBERT model at {path} (expected config.json and weights)")
        return cls(HubertModel.from_pretrained(str(path), local_files_only=True))

    @classmethod
    def tiny(cls, dim: int = 32, seed: int = 0) -> "SSLExtractor":
        cfg = HubertConfig(
            hidden_size=dim, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * dim,
            conv_dim=(dim,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group",
            do_stable_layer_norm=False,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(HubertModel(cfg))

    def save_pretrained(self, path: str | Path) -> None:
        hf_logging.disable_progress_bar()
        self.model.save_pretrained(str(path), safe_serialization=True)

    @torch.no_grad()
    def forward(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k (B, T) float -> features (B, dim, ~T / 320)."""
        return self.model(wav16k)["last_hidden_state"].transpose(1, 2)
