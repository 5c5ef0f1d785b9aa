"""int8 weights for the GPT's transformer layers on CPU (dynamic quantization).

Batch-1 decoding on a CPU streams every weight once per token, so it is bound by memory
bandwidth: int8 weights (per output channel scales) read a quarter of the bytes of float32.
Activations are quantized on the fly per call (torch.ao dynamic quantization, fbgemm/x86 kernels).
The embeddings, the BERT projection and the output layer stay float32 (small, and the logits
decide every token). The packed q/k/v projection is exposed as an `in_proj` Linear first, so it
is quantized like the others; the original module is left untouched.

Speed and token agreement against float32: `benchmarks/vs_reference.py --int8`.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .gpt import Text2SemanticDecoder


def quantize_gpt_int8(gpt: Text2SemanticDecoder) -> Text2SemanticDecoder:
    """A CPU copy of `gpt` whose transformer linears hold int8 weights."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    q = copy.deepcopy(gpt).float().cpu().eval()
    for layer in q.h.layers:
        attn = layer.self_attn
        dim = attn.in_proj_weight.shape[1]
        proj = nn.Linear(dim, 3 * dim)
        proj.weight, proj.bias = attn.in_proj_weight, attn.in_proj_bias
        attn.in_proj = proj  # SelfAttention.project uses it when present
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the kernels are what we use
        quantize_dynamic(q, qconfig_spec={"h": per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return q
