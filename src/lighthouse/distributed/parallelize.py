"""The model's context-parallel transform: every attention module becomes a context-parallel one.

`use_context_parallel(model, parallel)` replaces `Transformer.attention_builder` (the model's
one seam for attention modules), so the modules of every layer, now and at each stage switch,
are the context-parallel ones of context_parallel.py over the run's CP group, wrapped in
`ContextParallelAttention`, which gives them the RoPE tables of the whole sequence. The trainer
calls it on the meta-built model before sharding it (trainer/parallel.py).

Legend: B batch, H query heads, G key/value heads, n local (sharded) length, N = n * cp the
whole sequence, D head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import RopeTables, Transformer
from ..rope import apply_rotary_dense
from .context_parallel import ContextParallelDense, ContextParallelLighthouse, shard_rope
from .mesh import ParallelState


class ContextParallelAttention(nn.Module):
    """A context-parallel attention module behind the model's attention contract (`lighthouse.layers`).

    The model runs on local shards [B, n] and hands its attention RoPE tables for positions
    0..n-1. Context-parallel attention rotates every local position at its global position, so
    it needs the tables of the whole sequence (N = n * cp): made here and passed on. With the
    pre-pool placement a Lighthouse layer gets q and k rotated here (`shard_rope`) instead.
    """

    def __init__(self, kind: str, inner: nn.Module, parallel: ParallelState, rope_placement: str,
                 tables: RopeTables):
        super().__init__()
        self.kind, self.inner, self.rope_placement, self.tables = kind, inner, rope_placement, tables
        self.cp_rank, self.cp = parallel.cp_rank, parallel.cp

    def forward(self, q_BHnD, k_BGnD, v_BGnD, rope=None, context=None) -> torch.Tensor:
        if rope is None:  # q and k carry their positions already
            return self.inner(q_BHnD, k_BGnD, v_BGnD, rope=None)
        seq_len = q_BHnD.shape[2] * self.cp
        rope_ND = self.tables(seq_len, q_BHnD.device)
        if self.kind == "lighthouse" and self.rope_placement == "pre-pool":
            local_nD = shard_rope(rope_ND, seq_len, self.cp_rank, self.cp)
            q_BHnD, k_BGnD = apply_rotary_dense(q_BHnD, *local_nD), apply_rotary_dense(k_BGnD, *local_nD)
            return self.inner(q_BHnD, k_BGnD, v_BGnD, rope=None)
        return self.inner(q_BHnD, k_BGnD, v_BGnD, rope=rope_ND)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, cp={self.cp}, rope={self.rope_placement}"


def use_context_parallel(model: Transformer, parallel: ParallelState) -> None:
    """Make every attention module of `model`, now and at each stage switch, context-parallel over the CP group."""
    tables = RopeTables(model.args.head_dim, model.args.rope_theta)  # of the whole sequence, shared by the layers
    group = parallel.cp_group

    def build(kind: str, layer: int) -> nn.Module:
        if kind == "lighthouse":
            inner = ContextParallelLighthouse(model.lighthouse, group)
        else:
            inner = ContextParallelDense(group)
        return ContextParallelAttention(kind, inner, parallel, model.args.rope, tables)

    model.attention_builder = build
    model.set_attention("dense")  # the modules made with the model are not context-parallel yet
