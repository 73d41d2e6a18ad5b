"""The trainer's parts for a multi-process run: what differs from one process.

- `build_sharded_model`: the model built on meta, made context-parallel with cp > 1
  (lighthouse/distributed/parallelize.py), sharded with FSDP2 (lighthouse/distributed/fsdp.py),
  and filled with the weights a single process would start from.

- `DistributedStepper`: the rows of each global micro-batch are split over the data-parallel
  ranks, and with cp > 1 every sequence over the context-parallel ranks; FSDP averages the
  gradients; the gradient norm it clips by is the global one.
- `DistributedEvaluator`: the validation windows are split the same way and the sums
  (lighthouse/evals/common.py) all-reduced, so the bits-per-byte are those of one process.

Data. Every rank runs the same deterministic stream (`trainer/data/`, untouched) and reads
every row; rank r of dp keeps rows [r*b, (r+1)*b) of each global micro-batch of dp*b rows
(b = `micro_batch_per_rank`), so the ranks' rows are exactly the one-process batch, without
overlap or gap. The stream's position is therefore the same on all ranks, and a checkpoint
saves it once. With cp > 1 the ranks of a CP group keep the same rows, and each its
load-balanced pair of sequence chunks (`shard_sequence`), cut after the targets are made.

Legend: B rows of one rank's micro-batch, R rows of a global micro-batch (dp * B), N window
length, n local length (N / cp).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor

from ..distributed.context_parallel import shard_sequence
from ..distributed.fsdp import mixed_precision, shard_model
from ..distributed.mesh import ParallelState
from ..distributed.parallelize import use_context_parallel
from ..evals.common import bits_per_byte, eval_mode, nats_totals, target_nats
from ..model import Transformer
from .build import Evaluator, build_model
from .config import Config, ConfigError, micro_batch_per_rank
from .stepper import Stepper


def inputs_and_targets(w_BN1: torch.Tensor, parallel: ParallelState) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_Bn, targets_Bn) of windows on this rank: with cp > 1 its chunks of every sequence."""
    w_BN1 = w_BN1.to(parallel.device, non_blocking=True)
    x_BN, y_BN = w_BN1[:, :-1], w_BN1[:, 1:]
    if parallel.cp == 1:
        return x_BN, y_BN
    # Both cut alike after the shift: the target at a local position is the next byte of the full window.
    rank, degree = parallel.cp_rank, parallel.cp
    return shard_sequence(x_BN, 1, rank, degree), shard_sequence(y_BN, 1, rank, degree)


class DistributedStepper(Stepper):
    """The Stepper on one rank: its rows of every micro-batch; `micro_batch_per_rank` rows per forward."""

    def __init__(self, cfg: Config, model, forward, optimizer, batches, parallel: ParallelState, amp_dtype):
        super().__init__(cfg, model, forward, optimizer, batches, parallel.device, amp_dtype)
        self.parallel = parallel
        self.rows = micro_batch_per_rank(cfg, parallel.dp)
        self.accum = cfg.training.batch_size // (self.rows * parallel.dp)

    def next_micro_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        w_RN1 = self.batches.next_batch(self.rows * self.parallel.dp)  # the same rows on every rank
        first = self.parallel.dp_rank * self.rows
        return inputs_and_targets(w_RN1[first : first + self.rows], self.parallel)

    def clip_gradients(self) -> torch.Tensor:
        norm = super().clip_gradients()  # clip_grad_norm_ over sharded gradients: the global norm
        return norm.full_tensor() if isinstance(norm, DTensor) else norm


@torch.no_grad()
def evaluate_sharded(model, windows_WN1: torch.Tensor, micro_batch: int, parallel: ParallelState,
                     amp_dtype=None) -> dict:
    """`evals.bpb.evaluate` over the ranks: micro-batches of windows dealt out round-robin to the dp ranks.

    A rank left without a micro-batch in the last round runs the first one again and does not
    count it: FSDP all-gathers weights in every forward, so every rank must run each one.
    """
    p = parallel
    batches = windows_WN1.split(micro_batch)
    totals = torch.zeros(4, dtype=torch.float64, device=p.device)
    with eval_mode(model):
        for first in range(0, len(batches), p.dp):
            index = first + p.dp_rank
            counted = index < len(batches)
            x_Bn, y_Bn = inputs_and_targets(batches[index if counted else 0], p)
            nats_Bn, is_byte_Bn = target_nats(model, x_Bn, y_Bn, p.device, amp_dtype)
            if counted:
                totals += nats_totals(nats_Bn, is_byte_Bn)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return bits_per_byte(totals)


class DistributedEvaluator(Evaluator):
    """Validation bits-per-byte with the windows split over the ranks (see `evaluate_sharded`)."""

    def __init__(self, cfg: Config, model: Transformer, forward, windows_WN1, parallel: ParallelState, amp_dtype):
        micro_batch = micro_batch_per_rank(cfg, parallel.dp)
        super().__init__(model, forward, windows_WN1, micro_batch, parallel.device, amp_dtype)
        self.parallel = parallel

    def score(self) -> dict:
        return evaluate_sharded(self.forward, self.windows, self.micro_batch, self.parallel, self.amp_dtype)


def build_sharded_model(cfg: Config, parallel: ParallelState, amp_dtype: torch.dtype | None) -> Transformer:
    """The model of `cfg` sharded over the ranks, with the weights a single process would start from.

    Call it right after seeding the RNGs, as `build_model` in a single process.
    """
    if cfg.training.offload_layers:  # its reentrant recomputation does not run under FSDP2's hooks
        raise ConfigError("'training.offload_layers' is for one process; set it to 0 under torchrun")
    model = build_model(cfg, "meta")
    if parallel.cp > 1:
        use_context_parallel(model, parallel)
    shard_model(model, parallel, mixed_precision(parallel.device, amp_dtype))
    model.to_empty(device=parallel.device)
    # Rank 0 draws the initial weights as a one-process run would; the others receive their shards.
    full = build_model(cfg, parallel.device).state_dict() if parallel.is_main else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model
