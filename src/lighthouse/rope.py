"""Rotary position embedding at arbitrary positions (for the window-end placement, spec §4b).

Convention (the one of Hugging Face Llama): tables `cos`, `sin` of shape [N_table, D] with
cos[t] = cos(t * inv_freq) repeated twice (cat(freqs, freqs)), and
    rotate(x, t) = x * cos[t] + rotate_half(x) * sin[t],   rotate_half(x) = cat(-x2, x1).
`rope_tables` builds such tables; a model that already has them passes its own.
"""

from __future__ import annotations

import torch


def rope_tables(seq_len: int, head_dim: int, theta: float = 10000.0, device=None, dtype=torch.float32):
    """cos, sin tables [seq_len, head_dim] in the rotate_half convention."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float64), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x_BHSD: torch.Tensor, pos_BHS: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate every vector x[b, h, s] at position pos[b, h, s] (computed in float32 or wider).

    Positions past the end of the tables are clamped: only right-padding entries, whose
    outputs are cropped, can have them.
    """
    pos = pos_BHS.clamp(max=cos_TD.shape[0] - 1)
    acc = torch.promote_types(x_BHSD.dtype, torch.float32)
    cos = cos_TD.to(acc)[pos]
    sin = sin_TD.to(acc)[pos]
    xf = x_BHSD.to(acc)
    return (xf * cos + rotate_half(xf) * sin).to(x_BHSD.dtype)


def apply_rotary_dense(x_BHND: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Ordinary RoPE at positions 0..N-1."""
    N = x_BHND.shape[2]
    acc = torch.promote_types(x_BHND.dtype, torch.float32)
    xf = x_BHND.to(acc)
    return (xf * cos_TD[:N].to(acc) + rotate_half(xf) * sin_TD[:N].to(acc)).to(x_BHND.dtype)
