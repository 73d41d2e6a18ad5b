"""Attention modules behind one forward contract: the seam the model's attention layer owns.

    forward(q_BHND, k_BGND, v_BGND, rope=None, context=None) -> o_BHND

- q, k, v are the projected heads of one layer, causal, with GQA (H % G == 0).
- q and k arrive *un-rotated*. `rope` is the model's rotary tables `(cos_ND, sin_ND)` for
  positions 0..N-1 (or longer), and each module applies positions its own way: dense
  attention rotates every position; Lighthouse rotates before pooling ("pre-pool") or each
  gathered entry at the end of its window ("window-end"). `rope=None` means q and k carry
  their positions already (for example a Hugging Face model rotated them).
- `context` is whatever the module's scorer needs beyond q, k, v (for example gate inputs).
- No module here has parameters, so replacing one with another (the dense recovery stage,
  a context-parallel version, another backend) changes no weight.

`build_attention(kind, ...)` makes one from configuration; the model calls nothing else.

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim.
"""

from __future__ import annotations

from torch import nn

from ..config import LighthouseConfig
from .dense import DenseAttention
from .lighthouse import ROPE_PLACEMENTS, LighthouseAttention

ATTENTION_KINDS = ("dense", "lighthouse")


def build_attention(kind: str, config: LighthouseConfig | None = None, rope_placement: str = "window-end") -> nn.Module:
    """The attention module of `kind` ("dense" or "lighthouse") for one layer."""
    if kind == "dense":
        return DenseAttention()
    if kind == "lighthouse":
        return LighthouseAttention(config, rope_placement=rope_placement)
    raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")


__all__ = ["ATTENTION_KINDS", "ROPE_PLACEMENTS", "DenseAttention", "LighthouseAttention", "build_attention"]
