"""Activation memory of training: what each block keeps for the backward pass, and where.

At long context the activations are the memory: the paper's 30-layer shape at N = 1M keeps
some 40 GiB per block (an estimate, bf16 autocast), so a step needs recomputation, and the block inputs
that recomputation keeps (one [B, N, E] tensor per block, 4 GiB at 1M in float32) may need
host memory too. Everything here is PyTorch's own machinery, chosen per block:

  policy (`Transformer.activation_checkpointing`)
    "none" (or False)  keep every activation: the fastest, the most memory.
    "block" (or True)  keep each block's input, recompute the block in the backward pass
                       (`torch.utils.checkpoint`): about a third more compute.
    "selective"        as "block", but keep the outputs of the attention kernels (SDPA) instead
                       of recomputing them (selective activation checkpointing,
                       `create_selective_checkpoint_contexts`): one output and its log-sum-exp
                       per layer ([B, H, N, D] in a dense layer, [B, H, S, D] in a Lighthouse
                       one), and a dense layer's quadratic forward is not run twice.

  (Recomputing only the feed-forward half would keep the attention half's activations, about
  20 GiB per block at 1M: it does not fit where recomputation is needed, so it is not offered.)

  offload (`Transformer.offload_layers` = n, with the "block" policy): the saved input of the
    first n blocks lives in host memory (`torch.autograd.graph.save_on_cpu`, pinned on CUDA)
    and comes back for its block's recomputation. The first blocks' inputs are the ones needed
    last. The hook can move the input only when it is a saved tensor, which is what the
    reentrant form of `checkpoint` makes it (the non-reentrant form holds its inputs by reference).

`run_block` applies a policy to one `model.Block`; `model.Transformer.forward` calls it for every block.

Legend: B batch, N sequence length, S Lighthouse sub-sequence length, E model dim, H heads, D head dim.
"""

from __future__ import annotations

import torch
from torch.autograd.graph import save_on_cpu
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

POLICIES = ("none", "block", "selective")

_aten = torch.ops.aten
# The attention kernels SDPA dispatches to (CUDA flash, memory-efficient, cuDNN; CPU flash): what
# "selective" keeps. The math fallback decomposes into matmuls and is recomputed like everything else.
SAVED_OPS = frozenset(
    getattr(_aten, name).default
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(_aten, name)
)


def checkpoint_policy(value) -> str:
    """The policy named by `value`: one of POLICIES, or a bool (False: "none", True: "block")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "block"
    if isinstance(value, str) and value in POLICIES:
        return value
    raise ValueError(f"activation checkpointing must be true, false or one of {POLICIES}, got {value!r}")


def _keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_keep_attention)


def run_block(block, x_BNE: torch.Tensor, rope, start: int, cache, policy: str, offload: bool = False) -> torch.Tensor:
    """block(x_BNE, rope, start, cache), keeping for the backward pass what `policy` says (see the module docstring)."""
    if offload:
        if policy != "block":
            raise ValueError(f"offloading block inputs to host memory needs the 'block' policy, got {policy!r}")
        with save_on_cpu(pin_memory=x_BNE.is_cuda):
            return checkpoint(block, x_BNE, rope, start, cache, use_reentrant=True)
    if policy == "none":
        return block(x_BNE, rope, start, cache)
    if policy == "block":
        return checkpoint(block, x_BNE, rope, start, cache, use_reentrant=False)
    if policy == "selective":
        return checkpoint(block, x_BNE, rope, start, cache, use_reentrant=False, context_fn=_selective_contexts)
    raise ValueError(f"unknown activation checkpointing policy {policy!r}; one of {POLICIES}")
