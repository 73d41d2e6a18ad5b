"""FSDP2 for the Lighthouse Transformer: every block and the root sharded over the data ranks.

`shard_model` and `mixed_precision` are the pieces; the trainer's `build_sharded_model`
(lighthouse/trainer/parallel.py) puts them together on every rank:

1. Build the model on the meta device (no memory); with cp > 1 its attention modules are the
   context-parallel ones (`parallelize.use_context_parallel`, through `Transformer.attention_builder`).
2. `fully_shard` each block, then the root (embeddings, final norm, output head; tied
   embedding and output weights are one parameter of the root group). Parameters, gradients
   and optimizer state are sharded over the "dp" ranks; with cp > 1 over the flattened dp x cp
   ranks, so the ranks of a context-parallel group hold different shards (nothing is
   replicated) and the gradient average runs over dp x cp ranks. That average is the gradient
   of the global mean loss: every rank's loss is a mean over equally many tokens.
3. Allocate the shards on this rank's device (`to_empty`) and fill them from rank 0, which
   builds the model exactly as a single process does (`build_model(cfg, device)` right after
   the same seed). `Transformer.materialize` also works on the sharded model, but DTensor
   initialization draws from other random streams than an eager build; the broadcast makes
   the initial weights bitwise those of a one-process run, so data parallelism repeats it.
   Rank 0 holds one full copy of the model for a moment.

Mixed precision: on CUDA with bf16 autocast (the default `training.dtype`) FSDP all-gathers the
weights in bf16 and reduces gradients in fp32 (`MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)`); the sharded weights and the optimizer state stay fp32. Autocast stays on
as in the single-process trainer (the ops it runs in fp32 stay fp32). One difference: FSDP casts
each block's inputs to bf16, so the residual stream between blocks is bf16, where a single GPU
under autocast keeps it fp32. On CPU everything is fp32.
"""

from __future__ import annotations

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..model import Transformer
from .mesh import ParallelState


def mixed_precision(device: torch.device, amp_dtype: torch.dtype | None) -> MixedPrecisionPolicy:
    """bf16 weights in compute with fp32 gradient reduction on CUDA; fp32 throughout elsewhere."""
    if device.type == "cuda" and amp_dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: Transformer, parallel: ParallelState, policy: MixedPrecisionPolicy) -> Transformer:
    """`fully_shard` every block, then the root, over the parallel state's shard mesh."""
    for block in model.layers:
        fully_shard(block, mesh=parallel.shard_mesh, mp_policy=policy)
    fully_shard(model, mesh=parallel.shard_mesh, mp_policy=policy)
    return model
