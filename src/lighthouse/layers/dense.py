"""Dense causal attention (SDPA / FlashAttention) with ordinary RoPE at every position.

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..rope import apply_rotary_dense


class DenseAttention(nn.Module):
    """Causal SDPA; the attention of dense layers, of the recovery stage and of inference."""

    kind = "dense"

    def forward(self, q_BHND: torch.Tensor, k_BGND: torch.Tensor, v_BGND: torch.Tensor, rope=None, context=None):
        if rope is not None:
            cos_ND, sin_ND = rope
            q_BHND = apply_rotary_dense(q_BHND, cos_ND, sin_ND)
            k_BGND = apply_rotary_dense(k_BGND, cos_ND, sin_ND)
        gqa = q_BHND.shape[1] != k_BGND.shape[1]
        return F.scaled_dot_product_attention(q_BHND, k_BGND, v_BGND, is_causal=True, enable_gqa=gqa)
