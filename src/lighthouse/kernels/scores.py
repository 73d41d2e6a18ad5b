"""Scores: fused `norm` scorer, max-pooled score pyramid and mean-pooled coarsest level.

One pass over a base tensor computes, per block of ROWS base rows:
  * the norm of every row (s = ||x||_2 in float32; right-padding rows get PAD_SCORE),
  * the max-pooled scores of levels 2..L_FIT (every level whose span fits in the block),
  * optionally the mean of every coarsest-level span of x and of a second tensor y
    (the kernel reads k and v together, so the coarsest pooled K and V cost no extra pass).

Levels that do not fit in one block (p^(l-1) > ROWS) are finished on the host from the
finest level computed here (max is associative), and their pooled means by
`gather.pool_coarse`.

Reference (what the kernel computes), per row-block:
    s_BXN       = F.pad(x.float().norm(dim=-1), (0, pad), value=PAD_SCORE)
    s_levels    = reference.max_pool_pyramid(s_BXN, cfg)[1:]        # concatenated -> [B, X, Q]
    pooled_BXnD = reference.mean_pool_pyramid(x_pad, cfg)[level L]   # [B, X, N/p^(L-1), D]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import PAD_SCORE
from .utils import acc_dtype, block, level_offsets, level_start, next_pow2, tl_dtype

ROWS = 64  # base rows per program
INTERPRET_ROWS = 256  # under the interpreter (fewer, larger programs)


@triton.jit
def _norm_pool_kernel(
    x_ptr, sxb, sxh, sxn, sxd,
    y_ptr, syb, syh, syn, syd,
    s_ptr, px_ptr, py_ptr, base_ptr,
    X, N_real, N_pad, Q_len, N_coarse, D,
    PAD: tl.constexpr,
    L_FIT: tl.constexpr,
    POOL: tl.constexpr,
    E: tl.constexpr,
    SPAN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    POOL_MEANS: tl.constexpr,
    HAS_Y: tl.constexpr,
    OUT: tl.constexpr,
    ACC: tl.constexpr,
    STORE_BASE: tl.constexpr,
):
    """A program takes E groups of SPAN consecutive base rows, loaded as one [E, SPAN, D] tile.

    SPAN is the coarsest span p^(L-1) when POOL_MEANS (then group e is coarsest entry
    pid*E + e), else a block of rows whose levels 2..L_FIT fit inside it.
    """
    pid = tl.program_id(0)
    bx = tl.program_id(1)
    b = bx // X
    xh = bx % X
    e = pid * E + tl.arange(0, E)  # group index
    j = tl.arange(0, SPAN)
    cols = tl.arange(0, BLOCK_D)
    t = e[:, None] * SPAN + j[None, :]  # [E, SPAN] base rows
    tmask = t < N_real
    m3 = tmask[:, :, None] & (cols < D)[None, None, :]
    row3 = t.to(tl.int64)[:, :, None]
    col3 = cols[None, None, :]

    x_base = x_ptr + b.to(tl.int64) * sxb + xh.to(tl.int64) * sxh
    x = tl.load(x_base + row3 * sxn + col3 * sxd, mask=m3, other=0.0).to(ACC)
    xf = x.to(tl.float32)
    nrm = tl.sqrt_rn(tl.sum(xf * xf, axis=2))  # [E, SPAN]
    nrm = tl.where(tmask, nrm, PAD)
    if STORE_BASE:  # the base scores themselves (causal selection pools them over other windows)
        tl.store(base_ptr + bx.to(tl.int64) * N_pad + t, nrm, mask=t < N_pad)

    # Max-pool level by level (level l = max over p entries of level l-1) inside each group.
    cur = nrm
    s_row = s_ptr + bx.to(tl.int64) * Q_len
    for lv in tl.static_range(2, L_FIT + 1):
        # level lv has SPAN // p^(lv-1) entries per group
        cur = tl.max(tl.reshape(cur, [E, SPAN // POOL ** (lv - 1), POOL]), axis=2)
        i = e[:, None] * (SPAN // POOL ** (lv - 1)) + tl.arange(0, SPAN // POOL ** (lv - 1))[None, :]
        q_off = level_start(N_pad, lv, POOL) - N_pad
        tl.store(s_row + q_off + i, cur, mask=i < N_pad // POOL ** (lv - 1))

    if POOL_MEANS:
        emask = e < N_coarse
        out_off = (bx.to(tl.int64) * N_coarse + e.to(tl.int64))[:, None] * D + cols[None, :]
        omask = emask[:, None] & (cols < D)[None, :]
        mx = tl.sum(x, axis=1) / SPAN
        tl.store(px_ptr + out_off, mx.to(OUT), mask=omask)
        if HAS_Y:
            y_base = y_ptr + b.to(tl.int64) * syb + xh.to(tl.int64) * syh
            y = tl.load(y_base + row3 * syn + col3 * syd, mask=m3, other=0.0).to(ACC)
            my = tl.sum(y, axis=1) / SPAN
            tl.store(py_ptr + out_off, my.to(OUT), mask=omask)


def score_pyramid_len(n_pad: int, levels: int, pooling: int) -> int:
    """Q: entries of levels 2..L together."""
    offs = level_offsets(n_pad, levels, pooling)
    return offs[-1] - n_pad


def _finish_levels(s_BXQ: torch.Tensor, n_pad: int, levels: int, pooling: int, l_fit: int) -> None:
    """Fill levels l_fit+1..L of the score pyramid from level l_fit (in place, max-pooling)."""
    offs = level_offsets(n_pad, levels, pooling)
    for lv in range(l_fit + 1, levels + 1):
        prev = s_BXQ[:, :, offs[lv - 2] - n_pad : offs[lv - 1] - n_pad]
        B, X, n = prev.shape
        s_BXQ[:, :, offs[lv - 1] - n_pad : offs[lv] - n_pad] = prev.view(B, X, n // pooling, pooling).amax(-1)


def norm_score_pyramid(x_BXND: torch.Tensor, y_BXND: torch.Tensor | None, levels: int, pooling: int, n_pad: int,
                       causal: bool = False):
    """Scores of levels 2..L of ||x|| ([B, X, Q] float32) and the coarsest means of x and y.

    Returns (s_BXQ, px_BXnD, py_BXnD or None, fused) where `fused` says whether the means were
    computed here (False when a coarsest span is longer than one block: the caller pools them).
    With `causal`, s_BXQ is the causal score pyramid (`causal_score_pyramid_from_base` of the
    base norms, which the kernel then writes instead of finishing the max-pooled levels).
    """
    B, X, N, D = x_BXND.shape
    rows = max(block(ROWS, INTERPRET_ROWS), pooling)
    c_top = pooling ** (levels - 1)
    pool_means = c_top <= rows
    span = c_top if pool_means else rows
    l_fit = 1
    while l_fit < levels and pooling**l_fit <= span:
        l_fit += 1
    groups = rows // span
    n_coarse = n_pad // c_top
    q_len = score_pyramid_len(n_pad, levels, pooling)
    s = None if causal else torch.empty((B, X, q_len), dtype=torch.float32, device=x_BXND.device)
    px = torch.empty((B, X, n_coarse, D), dtype=x_BXND.dtype, device=x_BXND.device) if pool_means else None
    py = torch.empty((B, X, n_coarse, D), dtype=x_BXND.dtype, device=x_BXND.device) if (pool_means and y_BXND is not None) else None
    base = torch.empty((B, X, n_pad), dtype=torch.float32, device=x_BXND.device) if causal else None
    s_or_base = base if causal else s
    block_d = next_pow2(D)
    y = y_BXND if y_BXND is not None else x_BXND
    grid = (triton.cdiv(n_pad, rows), B * X)
    _norm_pool_kernel[grid](
        x_BXND, *x_BXND.stride(),
        y, *y.stride(),
        s_or_base, s_or_base if px is None else px, s_or_base if py is None else py, s_or_base,
        X, N, n_pad, q_len, n_coarse, D,
        PAD=PAD_SCORE, L_FIT=1 if causal else l_fit, POOL=pooling, E=groups, SPAN=span, BLOCK_D=block_d,
        POOL_MEANS=pool_means, HAS_Y=y_BXND is not None and pool_means,
        OUT=tl_dtype(x_BXND.dtype), ACC=acc_dtype(x_BXND.dtype), STORE_BASE=causal,
        num_warps=4 if rows * block_d <= 8192 else 8,
    )
    if causal:
        return causal_score_pyramid_from_base(base, levels, pooling), px, py, pool_means
    if l_fit < levels:
        _finish_levels(s, n_pad, levels, pooling, l_fit)
    return s, px, py, pool_means


def causal_score_pyramid_from_base(s_BXN: torch.Tensor, levels: int, pooling: int) -> torch.Tensor:
    """Levels 2..L of the causal score pyramid, concatenated [B, X, Q]: level l entry i is the
    max of the padded base scores in [c*i - c + 1, c*i] (`reference.causal_max_pool_pyramid`)."""
    B, X, N = s_BXN.shape
    out = []
    for lv in range(2, levels + 1):
        c = pooling ** (lv - 1)
        shifted = torch.nn.functional.pad(s_BXN, (c - 1, 0), value=float("-inf"))[..., :N]
        out.append(shifted.view(B, X, N // c, c).amax(-1))
    return torch.cat(out, dim=-1).contiguous()


def score_pyramid_from_base(s_BXN: torch.Tensor, levels: int, pooling: int) -> torch.Tensor:
    """Levels 2..L of the max-pooled pyramid of padded base scores, concatenated: [B, X, Q]."""
    B, X, N = s_BXN.shape
    out = []
    cur = s_BXN
    for _ in range(2, levels + 1):
        cur = cur.view(B, X, -1, pooling).amax(-1)
        out.append(cur)
    return torch.cat(out, dim=-1).contiguous()
