"""Neural grapheme-to-phoneme fallback for words no dictionary knows.

The trained weights are the ones g2p_en ships (``g2p_en/checkpoint20.npz``): a one-layer GRU encoder
over letters and a GRU decoder that emits ARPAbet greedily. Importing ``g2p_en`` itself would try to
download NLTK data, so we locate its folder without importing it and run the small network in numpy.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

GRAPHEMES = ("<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz")
# fmt: off
PHONEMES = (
    "<pad>", "<unk>", "<s>", "</s>",
    "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2", "AO0", "AO1", "AO2", "AW0", "AW1", "AW2",
    "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0", "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2",
    "F", "G", "HH", "IH0", "IH1", "IH2", "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1",
    "OW2", "OY0", "OY1", "OY2", "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2",
    "V", "W", "Y", "Z", "ZH",
)
# fmt: on
BOS, EOS = 2, 3
MAX_PHONES = 20


def g2p_en_dir() -> Path:
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the g2p-en package (for its trained weights and homograph list) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """One PyTorch-layout GRU step: gates ordered (reset, update, new)."""
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    n = gi.shape[-1] // 3
    r = 1.0 / (1.0 + np.exp(-(gi[..., :n] + gh[..., :n])))
    z = 1.0 / (1.0 + np.exp(-(gi[..., n : 2 * n] + gh[..., n : 2 * n])))
    cand = np.tanh(gi[..., 2 * n :] + r * gh[..., 2 * n :])
    return (1.0 - z) * cand + z * h


class NeuralG2p:
    """``NeuralG2p()("blorpify") -> ["B", "L", "AO1", ...]`` (lower-case letters; others count as unknown)."""

    def __init__(self, weights: str | Path | None = None):
        w = np.load(weights or g2p_en_dir() / "checkpoint20.npz")
        self.enc = (w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])
        self.dec = (w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
        self.enc_emb, self.dec_emb = w["enc_emb"], w["dec_emb"]
        self.fc_w, self.fc_b = w["fc_w"], w["fc_b"]
        self.g2i = {g: i for i, g in enumerate(GRAPHEMES)}

    def __call__(self, word: str) -> list[str]:
        return list(self._predict(word.lower()))

    @lru_cache(maxsize=4096)
    def _predict(self, word: str) -> tuple[str, ...]:
        ids = [self.g2i.get(c, 1) for c in word] + [self.g2i["</s>"]]
        h = np.zeros((1, self.enc[1].shape[1]), np.float32)
        for i in ids:
            h = _gru_step(self.enc_emb[i][None], h, *self.enc)
        out, prev = [], BOS
        for _ in range(MAX_PHONES):
            h = _gru_step(self.dec_emb[prev][None], h, *self.dec)
            prev = int((h @ self.fc_w.T + self.fc_b).argmax())
            if prev == EOS:
                break
            out.append(PHONEMES[prev])
        return tuple(out)
