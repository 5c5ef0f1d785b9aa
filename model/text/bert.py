"""Per-phone BERT features for the GPT stage (chinese-roberta-wwm-ext-large in production).

As upstream: the normalised Chinese text is tokenised character by character, the hidden states of the
third-from-last layer are taken without [CLS]/[SEP], and each character's vector is repeated for its
phones (``word2ph``) -> (hidden, n_phones). Non-Chinese segments get zeros of shape (1024, n_phones).
Without a configured model directory Chinese gets zeros too, and ``BertFeatures.is_zero`` says so.
The model is only ever loaded from a local directory (``local_files_only=True``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

FEATURE_DIM = 1024


@dataclass
class BertFeatures:
    features: torch.Tensor  # (FEATURE_DIM, n_phones) float32
    is_zero: bool  # True when no BERT ran (non-Chinese text, or no model configured)


def zero_features(n_phones: int, dim: int = FEATURE_DIM) -> BertFeatures:
    return BertFeatures(torch.zeros(dim, n_phones, dtype=torch.float32), True)


class BertFeaturizer:
    """``BertFeaturizer(model_dir)(norm_text, word2ph) -> (hidden, sum(word2ph))`` for Chinese text."""

    def __init__(self, model_dir: str, device: str | torch.device = "cpu"):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        self.hidden_size = int(self.model.config.hidden_size)
        self._lock = threading.Lock()

    @torch.no_grad()
    def __call__(self, norm_text: str, word2ph: list[int]) -> torch.Tensor:
        if len(word2ph) != len(norm_text):
            raise ValueError(f"word2ph has {len(word2ph)} entries for {len(norm_text)} characters: {norm_text!r}")
        inputs = self.tokenizer(norm_text, return_tensors="pt").to(self.device)
        with self._lock:
            out = self.model(**inputs, output_hidden_states=True)
        per_char = out.hidden_states[-3][0, 1:-1].float().cpu()
        if per_char.shape[0] != len(norm_text):
            raise ValueError(
                f"the tokenizer made {per_char.shape[0]} tokens of {len(norm_text)} characters: {norm_text!r}"
            )
        repeats = torch.tensor(word2ph, dtype=torch.long)
        return per_char.repeat_interleave(repeats, dim=0).T.contiguous()
