"""Validation bits-per-byte: the metric the trainer reports at every evaluation.

Legend: W windows, B micro-batch, N window length (inputs), V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..tokenizer import BYTE_VOCAB
from .common import autocast, eval_mode


@torch.no_grad()
def evaluate(model, windows_WN1: torch.Tensor, micro_batch: int, device, amp_dtype=None) -> dict:
    """Validation loss (nats/token, all targets) and bits-per-byte (byte targets only).

    `windows_WN1` holds windows of N + 1 ids: inputs `[:, :-1]`, next-token targets `[:, 1:]`.
    """
    nats_bytes, n_bytes, nats_all, n_all = 0.0, 0, 0.0, 0
    with eval_mode(model):
        for i in range(0, len(windows_WN1), micro_batch):
            w_BN1 = windows_WN1[i : i + micro_batch].to(device)
            x_BN, y_BN = w_BN1[:, :-1], w_BN1[:, 1:]
            with autocast(torch.device(device), amp_dtype):
                logits_BNV = model(x_BN)
            nats_BN = F.cross_entropy(logits_BNV.float().flatten(0, 1), y_BN.flatten(), reduction="none").view_as(y_BN)
            is_byte = y_BN < BYTE_VOCAB
            nats_bytes += float(nats_BN[is_byte].double().sum())
            n_bytes += int(is_byte.sum())
            nats_all += float(nats_BN.double().sum())
            n_all += y_BN.numel()
    return {"val_bpb": nats_bytes / max(1, n_bytes) / math.log(2), "val_loss": nats_all / max(1, n_all)}
