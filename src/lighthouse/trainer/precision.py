"""bf16 parameters with fp32 master weights, for one process.

`MasterWeights(model, make_optimizer)` casts the model's parameters to bf16 (what the forward
and backward compute with, so activations, saved block inputs and gradients are bf16: half the
memory of fp32 parameters under autocast) and keeps an fp32 copy of every trainable parameter,
which the optimizer updates. Each bf16 gradient is added to its master's fp32 gradient as soon
as autograd has accumulated it (`register_post_accumulate_grad_hook`), and the bf16 gradient is
dropped, so gradient accumulation over micro-batches sums in fp32. After the optimizer step the
masters are rounded back into the bf16 parameters.

This is the precision of the multi-GPU trainer (FSDP2 with `param_dtype=bf16`, fp32 sharded
weights and optimizer state; lighthouse/distributed/fsdp.py) on a single device, where FSDP
is not used. Memory per parameter: 2 (bf16) + 4 (master) + 4 (master gradient) + 8 (AdamW).

The interface is the optimizer's as the training step uses it: `step()`, `zero_grad()`,
`param_groups`, plus `master_parameters()` for clipping.
"""

from __future__ import annotations

import torch


class MasterWeights:
    """Wraps `make_optimizer(fp32 master params) -> torch.optim.Optimizer` around a model cast to `dtype`."""

    def __init__(self, model: torch.nn.Module, make_optimizer, dtype: torch.dtype = torch.bfloat16):
        params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))  # a tied weight once
        self.pairs = [(p, p.detach().float().clone()) for p in params]
        model.to(dtype)  # parameters keep their identity (and ties); frozen ones are cast too
        for p, master in self.pairs:
            p.register_post_accumulate_grad_hook(self._move_grad(master))
        self.optimizer = make_optimizer([master for _, master in self.pairs])

    @staticmethod
    def _move_grad(master: torch.Tensor):
        def hook(p: torch.Tensor) -> None:
            if master.grad is None:
                master.grad = p.grad.float()
            else:
                master.grad.add_(p.grad)
            p.grad = None

        return hook

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def master_parameters(self) -> list[torch.Tensor]:
        return [master for _, master in self.pairs]

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        for p, master in self.pairs:
            p.copy_(master)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
