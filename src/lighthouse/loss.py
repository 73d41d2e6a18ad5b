"""The language-model loss in chunks of positions: never all [T, V] logits at once.

`cross_entropy(h_BNE, head, targets_BN)` is the plain form: logits = head(h) for every
position, then the mean cross-entropy in float32. At N = 1M it holds the logits, their float32
copy, the log-softmax and their gradients at once, all [T, V].

`chunked_cross_entropy(..., chunk)` computes the same mean `chunk` positions at a time. Each
chunk's head and loss run under `torch.utils.checkpoint`, so the backward pass recomputes that
chunk's logits instead of keeping them: the logits of one chunk exist at a time, forward and
backward, and autograd derives the gradient of h and of the head's weights. It equals the
plain form up to the order of the float32 sum (tested, values and gradients).

`head` maps [..., E] to [..., V] logits position by position (the model's final norm and output
projection), which is what makes chunking over positions exact.

Legend: B batch, N sequence length, T = B * N positions, E model dim, V vocabulary size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def cross_entropy(h_BNE: torch.Tensor, head, targets_BN: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per position, float32) of head(h_BNE) against targets_BN."""
    logits_BNV = head(h_BNE)
    return F.cross_entropy(logits_BNV.float().flatten(0, 1), targets_BN.flatten())


def _summed_loss(head, h_TE: torch.Tensor, targets_T: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h_TE).float(), targets_T, reduction="sum")


def chunked_cross_entropy(h_BNE: torch.Tensor, head, targets_BN: torch.Tensor, chunk: int) -> torch.Tensor:
    """`cross_entropy` computed `chunk` positions at a time (see the module docstring)."""
    if chunk < 1:
        raise ValueError(f"loss chunk must be >= 1 positions, got {chunk}")
    h_TE, targets_T = h_BNE.flatten(0, 1), targets_BN.flatten()
    T = targets_T.shape[0]
    total = None
    for i in range(0, T, chunk):
        part = checkpoint(_summed_loss, head, h_TE[i : i + chunk], targets_T[i : i + chunk], use_reentrant=False)
        total = part if total is None else total + part
    return total / T
