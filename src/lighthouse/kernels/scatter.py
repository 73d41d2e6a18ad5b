"""Scatter back (decompression, spec §5) and its adjoint, deterministic and without atomics.

Reference (`reference.scatter_back`): entry (l, i) of size c adds its output to base positions
[c(i+1) - 1, c(i+2) - 1), accumulated in float32 and cast.

Forward, gather formulation: output position t receives from level l exactly one candidate
entry, e = floor((t+1)/c_l) - 1, so with the inverse map slot_BHP
    out[b, h, t] = sum_l o_sub[b, h, slot[b, h, l, e_l(t)]]      (absent when e < 0 or slot = -1)
summed level 1 first, as the reference does.

Backward (adjoint): an entry's gradient is the sum of the output gradients over its c positions
    grad_o_sub[b, h, s] = sum_{j < c} grad_out[b, h, c(i+1) - 1 + j]     (positions >= N are 0)
computed per level from the selection's lists, one row per kept entry.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (
    BLOCK_R,
    BLOCK_T,
    acc_dtype,
    block,
    level_entries,
    level_offsets,
    level_start,
    next_pow2,
    pooled_rows,
    store_rows,
    tl_dtype,
)


@triton.jit
def _scatter_fwd_kernel(
    o_ptr, sob, soh, sos, sod,
    out_ptr, slot_ptr,
    H, N_real, N_pad, P_len, D,
    L: tl.constexpr,
    POOL: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    OUT: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    HALF = D // 2
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < N_real
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < HALF
    row_slot = slot_ptr + bh.to(tl.int64) * P_len
    o_base = o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh
    lo = tl.zeros([BLOCK_T, BLOCK_H], ACC)
    hi = tl.zeros([BLOCK_T, BLOCK_H], ACC)
    c = 1
    for lv in tl.static_range(1, L + 1):
        e = (t + 1) // c - 1
        ok = tmask & (e >= 0)
        s = tl.load(row_slot + level_start(N_pad, lv, POOL) + e, mask=ok, other=-1)
        ok = s >= 0
        m2 = ok[:, None] & cmask[None, :]
        ptr = o_base + s.to(tl.int64)[:, None] * sos
        lo += tl.load(ptr + cols[None, :] * sod, mask=m2, other=0.0).to(ACC)
        hi += tl.load(ptr + (cols + HALF)[None, :] * sod, mask=m2, other=0.0).to(ACC)
        c = c * POOL
    store_rows(out_ptr, (bh.to(tl.int64) * N_real + t) * D, lo, hi, tmask, cols, cmask, HALF, OUT)


@triton.jit
def _scatter_bwd_kernel(
    g_ptr, sgb, sgh, sgn, sgd,
    out_ptr, slot_ptr, cand_ptr, cpos_ptr,
    H, N_real, N_pad, S_len, P_len, LIST_LEN, D, n_rows,
    LEVEL: tl.constexpr,
    L: tl.constexpr,
    POOL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    OUT: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    HALF = D // 2
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < n_rows
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < HALF
    C: tl.constexpr = POOL ** (LEVEL - 1)
    i, pos = level_entries(slot_ptr, cand_ptr, cpos_ptr, bh, r, rmask, N_pad, P_len, LIST_LEN, LEVEL, L, POOL)
    lo, hi = pooled_rows(g_ptr, b.to(tl.int64) * sgb + h.to(tl.int64) * sgh, sgn, sgd, i, rmask, cols, cmask, HALF,
                          N_real, C, C - 1, False, OUT, ACC)
    store_rows(out_ptr, (bh.to(tl.int64) * S_len + pos) * D, lo, hi, rmask, cols, cmask, HALF, OUT)


def scatter(o_BHSD: torch.Tensor, slot, levels: int, pooling: int, n_pad: int, n_real: int) -> torch.Tensor:
    """Scatter the sub-sequence outputs back to [B, H, n_real, D] (summed, shifted by c - 1)."""
    B, H, S, D = o_BHSD.shape
    offs = level_offsets(n_pad, levels, pooling)
    out = torch.empty((B, H, n_real, D), dtype=o_BHSD.dtype, device=o_BHSD.device)
    block_t = block(BLOCK_T, 256)
    grid = (triton.cdiv(n_real, block_t), B * H)
    _scatter_fwd_kernel[grid](
        o_BHSD, *o_BHSD.stride(), out, slot,
        H, n_real, n_pad, offs[-1], D,
        L=levels, POOL=pooling, BLOCK_T=block_t, BLOCK_H=next_pow2(D // 2),
        OUT=tl_dtype(o_BHSD.dtype), ACC=acc_dtype(o_BHSD.dtype),
    )
    return out


def scatter_backward(g_BHND: torch.Tensor, slot, cand, cpos, levels: int, pooling: int, n_pad: int, sub_len: int):
    """Adjoint of `scatter`: [B, H, S, D] gradient of the sub-sequence outputs."""
    B, H, N, D = g_BHND.shape
    offs = level_offsets(n_pad, levels, pooling)
    n_coarse = n_pad // pooling ** (levels - 1)
    list_len = cand.shape[-1]
    out = torch.empty((B, H, sub_len, D), dtype=g_BHND.dtype, device=g_BHND.device)
    block_r = block(BLOCK_R, 128)
    for level in range(levels, 0, -1):
        n_rows = n_coarse if level == levels else list_len
        grid = (triton.cdiv(n_rows, block_r), B * H)
        _scatter_bwd_kernel[grid](
            g_BHND, *g_BHND.stride(), out, slot, cand, cpos,
            H, N, n_pad, sub_len, offs[-1], list_len, D, n_rows,
            LEVEL=level, L=levels, POOL=pooling, BLOCK_R=block_r, BLOCK_H=next_pow2(D // 2),
            OUT=tl_dtype(g_BHND.dtype), ACC=acc_dtype(g_BHND.dtype),
        )
    return out
