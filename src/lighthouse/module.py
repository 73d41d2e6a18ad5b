"""`LighthouseAttention`: an nn.Module wrapping `lighthouse_attention` (no parameters)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import lighthouse_attention
from .config import LighthouseConfig


class LighthouseAttention(nn.Module):
    """Causal Lighthouse attention over already-projected heads.

    forward(q [B, H, N, D], k [B, G, N, D], v [B, G, N, D], rope=None) -> [B, H, N, D]
    """

    def __init__(self, levels: int = 3, pooling: int = 4, topk: int = 2048, scorer="norm", backend: str = "auto"):
        super().__init__()
        self.config = LighthouseConfig(levels=levels, pooling=pooling, topk=topk, scorer=scorer)
        self.backend = backend

    @classmethod
    def from_config(cls, config: LighthouseConfig, backend: str = "auto") -> "LighthouseAttention":
        return cls(config.levels, config.pooling, config.topk, config.scorer, backend)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope=None, scorer_context=None) -> torch.Tensor:
        c = self.config
        return lighthouse_attention(
            q, k, v, levels=c.levels, pooling=c.pooling, topk=c.topk, scorer=c.scorer,
            rope=rope, backend=self.backend, scorer_context=scorer_context,
        )

    def extra_repr(self) -> str:
        return self.config.describe()
