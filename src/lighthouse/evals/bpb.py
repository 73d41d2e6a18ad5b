"""Validation bits-per-byte: the metric the trainer reports at every evaluation.

Legend: W windows, N window length (inputs).
"""

from __future__ import annotations

import torch

from .common import bits_per_byte, eval_mode, nats_totals, target_nats, window_batches


@torch.no_grad()
def evaluate(model, windows_WN1: torch.Tensor, micro_batch: int, device, amp_dtype=None) -> dict:
    """Validation loss (nats/token, all targets) and bits-per-byte (byte targets only).

    `windows_WN1` holds windows of N + 1 ids: inputs `[:, :-1]`, next-token targets `[:, 1:]`.
    """
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    with eval_mode(model):
        for x_BN, y_BN in window_batches(windows_WN1, micro_batch, device):
            totals += nats_totals(*target_nats(model, x_BN, y_BN, device, amp_dtype))
    return bits_per_byte(totals)
