"""What every evaluation needs: autocast by dtype, eval mode, and the one window -> nats core.

The core, shared by bits-per-byte (bpb.py), bits-per-byte by position (position.py), the leak
meter (leak.py: `target_nats` of perturbed copies) and the trainer's sharded evaluator
(trainer/parallel.py):

    windows [W, N + 1] --window_batches--> inputs x_BN, next-token targets y_BN (on the device)
            --target_nats--> cross-entropy of every target (nats_BN, float32) and is_byte_BN
            --nats_totals--> four float64 sums, added up on the device
            --bits_per_byte--> val_bpb (byte targets only) and val_loss (all targets)

Nothing reads a value back to the host before the end: a caller adds `nats_totals` of every
micro-batch into one device tensor (and a multi-process caller all-reduces it), then calls
`bits_per_byte` once.

Legend: W windows, B micro-batch, N window length (inputs), V vocabulary.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from ..tokenizer import BYTE_VOCAB


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`, or nothing for None (plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model):
    """nn.Modules in eval mode for the duration (restored after); plain callables as they are."""
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        yield
    finally:
        if was_training is not None:
            model.train(was_training)


def window_batches(windows_WN1: torch.Tensor, micro_batch: int, device):
    """(inputs x_BN, targets y_BN) on `device` for each micro-batch of windows of N + 1 ids."""
    for i in range(0, len(windows_WN1), micro_batch):
        w_BN1 = windows_WN1[i : i + micro_batch].to(device)
        yield w_BN1[:, :-1], w_BN1[:, 1:]


@torch.no_grad()
def target_nats(model, x_BN: torch.Tensor, y_BN: torch.Tensor, device, amp_dtype=None):
    """(nats_BN, is_byte_BN): the cross-entropy of every target (float32) and which targets are bytes.

    `model(x_BN) -> logits_BNV`, run under autocast to `amp_dtype`; the loss is taken in float32.
    """
    with autocast(device, amp_dtype):
        logits_BNV = model(x_BN)
    nats_BN = F.cross_entropy(logits_BNV.float().flatten(0, 1), y_BN.flatten(), reduction="none").view_as(y_BN)
    return nats_BN, y_BN < BYTE_VOCAB


def nats_totals(nats_BN: torch.Tensor, is_byte_BN: torch.Tensor) -> torch.Tensor:
    """[4] float64 on the device: nats of the byte targets, their count, nats of all targets, their count."""
    return torch.stack([
        nats_BN[is_byte_BN].double().sum(), is_byte_BN.sum().double(), nats_BN.double().sum(),
        nats_BN.new_full((), nats_BN.numel(), dtype=torch.float64),  # a fill on the device, no copy from the host
    ])


def bits_per_byte(totals: torch.Tensor) -> dict:
    """{"val_bpb": bits per byte target, "val_loss": nats per target} from summed `nats_totals` (one read-back)."""
    nats_bytes, n_bytes, nats_all, n_all = totals.tolist()
    return {"val_bpb": nats_bytes / max(1.0, n_bytes) / math.log(2), "val_loss": nats_all / max(1.0, n_all)}
