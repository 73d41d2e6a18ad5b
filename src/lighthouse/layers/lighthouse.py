"""`LighthouseAttention`: the module form of `lighthouse_attention`, with its RoPE placement.

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import lighthouse_attention
from ..config import LighthouseConfig
from ..rope import apply_rotary_dense

# "window-end": q, k go in un-rotated with the tables and every gathered entry is rotated at the
# last position it covers (spec §4b, the default); "pre-pool": q, k are rotated at every
# position first and pooled entries are means of rotated vectors (the paper's runs).
ROPE_PLACEMENTS = ("window-end", "pre-pool")


class LighthouseAttention(nn.Module):
    """Causal Lighthouse attention over projected heads; no parameters.

    forward(q [B, H, N, D], k [B, G, N, D], v [B, G, N, D], rope=None, context=None) -> [B, H, N, D]

    `LighthouseAttention(config)` or `LighthouseAttention(levels=3, pooling=4, topk=512)`;
    the keywords replace fields of `config` (defaults: `LighthouseConfig()`).
    """

    kind = "lighthouse"

    def __init__(self, config: LighthouseConfig | None = None, *, rope_placement: str = "window-end", **settings):
        super().__init__()
        if rope_placement not in ROPE_PLACEMENTS:
            raise ValueError(f"rope_placement must be one of {ROPE_PLACEMENTS}, got {rope_placement!r}")
        self.config = LighthouseConfig.resolve(config, **settings)
        self.rope_placement = rope_placement

    @classmethod
    def from_config(cls, config: LighthouseConfig, rope_placement: str = "window-end") -> LighthouseAttention:
        return cls(config, rope_placement=rope_placement)

    def forward(self, q_BHND: torch.Tensor, k_BGND: torch.Tensor, v_BGND: torch.Tensor, rope=None, context=None):
        if rope is not None and self.rope_placement == "pre-pool":
            cos_ND, sin_ND = rope
            q_BHND = apply_rotary_dense(q_BHND, cos_ND, sin_ND)
            k_BGND = apply_rotary_dense(k_BGND, cos_ND, sin_ND)
            rope = None
        return lighthouse_attention(q_BHND, k_BGND, v_BGND, self.config, rope=rope, scorer_context=context)

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, rope={self.rope_placement}"
