"""Distributed training of Lighthouse models on torch.distributed.

This package holds what spreads one model over several processes, and knows nothing of the
trainer: the process group and device mesh (`mesh`), FSDP2 sharding of the model (`fsdp`), the
sharding of the sequence dimension, and context parallelism (CP) for the attention layers, where
the ranks of a process group each hold a load-balanced pair of sequence chunks
(`context_parallel`). The trainer's multi-process parts are built on it
(lighthouse/trainer/parallel.py, trainer/checkpoint/sharded.py). Everything here runs on NCCL (GPU)
and gloo (CPU).
"""

from .context_parallel import (
    ContextParallelDense,
    ContextParallelLighthouse,
    all_gather_with_grad,
    check_context_parallel,
    chunk_config,
    context_parallel_dense_attention,
    context_parallel_lighthouse_attention,
    lighthouse_attention_chunked_reference,
    shard_positions,
    shard_rope,
    shard_sequence,
    unshard_sequence,
)

__all__ = [
    "ContextParallelDense",
    "ContextParallelLighthouse",
    "all_gather_with_grad",
    "check_context_parallel",
    "chunk_config",
    "context_parallel_dense_attention",
    "context_parallel_lighthouse_attention",
    "lighthouse_attention_chunked_reference",
    "shard_positions",
    "shard_rope",
    "shard_sequence",
    "unshard_sequence",
]
