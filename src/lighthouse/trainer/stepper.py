"""The stepper: one optimizer step (learning rate, gradient accumulation, clipping, AdamW).

Nothing here reads a value back to the host: the loss and the gradient norm stay on the
device as tensors, so on a GPU the next step is queued while this one runs. The trainer reads
them where it logs.

Legend: B micro-batch, N seq_len.
"""

from __future__ import annotations

import math

import torch

from ..evals.common import autocast
from .config import Config


def lr_at(cfg: Config, step: int) -> float:
    """Learning rate of step `step` (0-based): linear warm-up, then the schedule to the last step;
    a stage with `warmup_steps` ramps the scheduled rate up again over its first steps."""
    stage, into = cfg.step_in_stage(step)
    ramp = (into + 1) / stage.warmup_steps if into < stage.warmup_steps else 1.0
    return ramp * _scheduled_lr(cfg, step)


def _scheduled_lr(cfg: Config, step: int) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.total_steps - 1 - o.warmup_steps))
    floor = o.lr * o.min_lr_ratio
    if o.schedule == "linear":
        return o.lr - (o.lr - floor) * progress
    return floor + (o.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(cfg: Config, model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings, not on norm weights. Fused on CUDA."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:  # frozen weights (the gla gates) are not optimized, nor decayed
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **extra)


class Stepper:
    """Takes optimizer steps of `cfg.training.batch_size` sequences from `batches`.

    forward:  the (possibly compiled) model, called as forward(inputs_BN, targets_BN) -> mean loss.
    batches:  next_batch(n) -> ids [n, N + 1] (inputs and next-token targets).
    """

    def __init__(self, cfg: Config, model: torch.nn.Module, forward, optimizer, batches, device, amp_dtype):
        self.cfg, self.model, self.forward, self.optimizer = cfg, model, forward, optimizer
        self.batches, self.device, self.amp_dtype = batches, device, amp_dtype
        self.accum = cfg.training.batch_size // cfg.micro_batch
        # inf: clip_grad_norm_ then only measures the norm
        self.max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimizer step number `step` (0-based); returns (mean loss, grad norm) as device tensors."""
        lr = lr_at(self.cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.accum):
            x_BN, y_BN = self.next_micro_batch()
            with autocast(self.device, self.amp_dtype):
                loss = self.forward(x_BN, y_BN)
            (loss / self.accum).backward()
            loss_sum += loss.detach()
        grad_norm = self.clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / self.accum, grad_norm

    def next_micro_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_BN, targets_BN) of the next micro-batch, on the device."""
        w_BN1 = self.batches.next_batch(self.cfg.micro_batch).to(self.device, non_blocking=True)
        return w_BN1[:, :-1], w_BN1[:, 1:]

    def clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm to `optim.grad_clip`; returns the norm before clipping."""
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
