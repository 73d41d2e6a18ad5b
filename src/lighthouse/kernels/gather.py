"""Gather of pooled Q/K/V straight from the base tensors, and its adjoint (the pool adjoint).

Reference (spec §1, §4b; `reference.gather_pyramid` + `rope.apply_rotary`):
    x_sub[b, h, s] = mean(x[b, h // rep, c*i : c*(i+1)])  cast to x.dtype,   (l, i) = entry s
    with window-end RoPE: x_sub[b, h, s] = rotate(x_sub[b, h, s], c*(i+1) - 1)   (q and k)
No pyramid is materialised: a level-l entry averages its c = p^(l-1) base rows on the fly;
the coarsest level (all of it is kept) is read from the means `scores.py` made in its pass.

Forward: one launch per level; a program takes BLOCK_R entries of that level (from the
selection's per-level lists) and writes their rows at their sub-sequence positions.

Backward (adjoint of pooling + gather, deterministic, no atomics): every base position t is
covered by exactly one entry per level, (l, t // c_l); with the inverse map slot_BHP
    grad_x[b, x, t] = sum_{h of group x} sum_l grad_sub[b, h, slot[b, h, l, t // c_l]] / c_l
(terms with slot = -1 are absent; with RoPE each term is first rotated back).
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
def _rope_tables(cos_ptr, sin_ptr, scn, scd, tpos, rmask, cols, cmask, HALF, ACC: tl.constexpr):
    m2 = rmask[:, None] & cmask[None, :]
    base = tpos.to(tl.int64)[:, None] * scn
    c_lo = tl.load(cos_ptr + base + cols[None, :] * scd, mask=m2, other=0.0).to(ACC)
    c_hi = tl.load(cos_ptr + base + (cols + HALF)[None, :] * scd, mask=m2, other=0.0).to(ACC)
    s_lo = tl.load(sin_ptr + base + cols[None, :] * scd, mask=m2, other=0.0).to(ACC)
    s_hi = tl.load(sin_ptr + base + (cols + HALF)[None, :] * scd, mask=m2, other=0.0).to(ACC)
    return c_lo, c_hi, s_lo, s_hi


@triton.jit
def _gather_fwd_kernel(
    q_ptr, sqb, sqh, sqn, sqd,
    k_ptr, skb, skh, skn, skd,
    v_ptr, svb, svh, svn, svd,
    pq_ptr, pk_ptr, pv_ptr,
    qo_ptr, ko_ptr, vo_ptr,
    slot_ptr, cand_ptr, cpos_ptr,
    cos_ptr, sin_ptr, scn, scd, TAB_LEN,
    H, REP, N_real, N_pad, N_coarse, S_len, P_len, LIST_LEN, D, n_rows,
    LEVEL: tl.constexpr,
    L: tl.constexpr,
    POOL: tl.constexpr,
    TOP_POOLED: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    OUT: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    g = h // REP
    HALF = D // 2
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < n_rows
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < HALF
    C: tl.constexpr = POOL ** (LEVEL - 1)
    i, pos = level_entries(slot_ptr, cand_ptr, cpos_ptr, bh, r, rmask, N_pad, P_len, LIST_LEN, LEVEL, L, POOL)
    dst_off = (bh.to(tl.int64) * S_len + pos) * D

    if ROPE:
        tpos = tl.minimum(i * C + (C - 1), TAB_LEN - 1)
        c_lo, c_hi, s_lo, s_hi = _rope_tables(cos_ptr, sin_ptr, scn, scd, tpos, rmask, cols, cmask, HALF, ACC)

    FROM_POOLED: tl.constexpr = TOP_POOLED and LEVEL == L
    kv_row = (b * (H // REP) + g).to(tl.int64)
    # q (one tensor at a time keeps register use low)
    if FROM_POOLED:  # coarsest level: rows of the means made by the scores pass ([B, X, N_coarse, D])
        lo, hi = pooled_rows(pq_ptr, bh.to(tl.int64) * N_coarse * D, D, 1, i, rmask, cols, cmask, HALF,
                              N_coarse, 1, 0, False, OUT, ACC)
    else:
        lo, hi = pooled_rows(q_ptr, b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, sqn, sqd, i, rmask, cols, cmask,
                              HALF, N_real, C, 0, True, OUT, ACC)
    if ROPE:
        lo, hi = lo * c_lo - hi * s_lo, hi * c_hi + lo * s_hi
    store_rows(qo_ptr, dst_off, lo, hi, rmask, cols, cmask, HALF, OUT)
    # k
    if FROM_POOLED:
        lo, hi = pooled_rows(pk_ptr, kv_row * N_coarse * D, D, 1, i, rmask, cols, cmask, HALF, N_coarse, 1, 0,
                              False, OUT, ACC)
    else:
        lo, hi = pooled_rows(k_ptr, b.to(tl.int64) * skb + g.to(tl.int64) * skh, skn, skd, i, rmask, cols, cmask,
                              HALF, N_real, C, 0, True, OUT, ACC)
    if ROPE:
        lo, hi = lo * c_lo - hi * s_lo, hi * c_hi + lo * s_hi
    store_rows(ko_ptr, dst_off, lo, hi, rmask, cols, cmask, HALF, OUT)
    # v (no rotation)
    if FROM_POOLED:
        lo, hi = pooled_rows(pv_ptr, kv_row * N_coarse * D, D, 1, i, rmask, cols, cmask, HALF, N_coarse, 1, 0,
                              False, OUT, ACC)
    else:
        lo, hi = pooled_rows(v_ptr, b.to(tl.int64) * svb + g.to(tl.int64) * svh, svn, svd, i, rmask, cols, cmask,
                              HALF, N_real, C, 0, True, OUT, ACC)
    store_rows(vo_ptr, dst_off, lo, hi, rmask, cols, cmask, HALF, OUT)


@triton.jit
def _pool_coarse_kernel(
    x_ptr, sxb, sxh, sxn, sxd, out_ptr,
    X, N_real, N_coarse, D,
    C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, OUT: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    bx = tl.program_id(1)
    b = bx // X
    xh = bx % X
    HALF = D // 2
    i = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = i < N_coarse
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < HALF
    lo, hi = pooled_rows(x_ptr, b.to(tl.int64) * sxb + xh.to(tl.int64) * sxh, sxn, sxd, i, rmask, cols, cmask,
                          HALF, N_real, C, 0, True, OUT, ACC)
    store_rows(out_ptr, (bx.to(tl.int64) * N_coarse + i) * D, lo, hi, rmask, cols, cmask, HALF, OUT)


@triton.jit
def _gather_bwd_kernel(
    g_ptr, sgb, sgh, sgs, sgd,
    dx_ptr, slot_ptr,
    cos_ptr, sin_ptr, scn, scd, TAB_LEN,
    X, REP, N_real, N_pad, P_len, D,
    L: tl.constexpr,
    POOL: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    OUT: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    bx = tl.program_id(1)
    b = bx // X
    xh = bx % X
    H = X * REP
    HALF = D // 2
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < N_real
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < HALF
    lo = tl.zeros([BLOCK_T, BLOCK_H], ACC)
    hi = tl.zeros([BLOCK_T, BLOCK_H], ACC)
    for rr in range(REP):
        h = xh * REP + rr
        bh = b * H + h
        row_slot = slot_ptr + bh.to(tl.int64) * P_len
        g_base = g_ptr + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh
        c = 1
        for lv in tl.static_range(1, L + 1):
            e = t // c
            s = tl.load(row_slot + level_start(N_pad, lv, POOL) + e, mask=tmask, other=-1)
            ok = s >= 0
            m2 = ok[:, None] & cmask[None, :]
            ptr = g_base + s.to(tl.int64)[:, None] * sgs
            g_lo = tl.load(ptr + cols[None, :] * sgd, mask=m2, other=0.0).to(ACC)
            g_hi = tl.load(ptr + (cols + HALF)[None, :] * sgd, mask=m2, other=0.0).to(ACC)
            if ROPE:
                tpos = tl.minimum(e * c + (c - 1), TAB_LEN - 1)
                c_lo, c_hi, s_lo, s_hi = _rope_tables(cos_ptr, sin_ptr, scn, scd, tpos, ok, cols, cmask, HALF, ACC)
                g_lo, g_hi = g_lo * c_lo + g_hi * s_hi, g_hi * c_hi - g_lo * s_lo
            if c == 1:
                lo += g_lo
                hi += g_hi
            else:
                lo += g_lo * (1.0 / c)
                hi += g_hi * (1.0 / c)
            c = c * POOL
    store_rows(dx_ptr, (bx.to(tl.int64) * N_real + t) * D, lo, hi, tmask, cols, cmask, HALF, OUT)


def _rope_args(rope, like: torch.Tensor):
    if rope is None:
        return like, like, 0, 0, 1, False
    cos, sin = rope
    if cos.stride() != sin.stride():
        sin = sin.contiguous()
        cos = cos.contiguous()
    return cos, sin, cos.stride(0), cos.stride(1), cos.shape[0], True


def pool_coarse(x_BXND: torch.Tensor, levels: int, pooling: int, n_pad: int) -> torch.Tensor:
    """Means of the coarsest level, [B, X, N_pad / p^(L-1), D] in x's dtype."""
    B, X, N, D = x_BXND.shape
    c = pooling ** (levels - 1)
    n_coarse = n_pad // c
    out = torch.empty((B, X, n_coarse, D), dtype=x_BXND.dtype, device=x_BXND.device)
    block_r = block(BLOCK_R, 128)
    grid = (triton.cdiv(n_coarse, block_r), B * X)
    _pool_coarse_kernel[grid](
        x_BXND, *x_BXND.stride(), out, X, N, n_coarse, D,
        C=c, BLOCK_R=block_r, BLOCK_H=next_pow2(D // 2), OUT=tl_dtype(x_BXND.dtype), ACC=acc_dtype(x_BXND.dtype),
    )
    return out


def gather(q, k, v, pq, pk, pv, slot, cand, cpos, rope, levels: int, pooling: int, n_pad: int):
    """Pooled (and window-end rotated) q, k, v of the sub-sequence: three [B, H, S, D] tensors."""
    B, H, N, D = q.shape
    G = k.shape[1]
    offs = level_offsets(n_pad, levels, pooling)
    n_coarse = n_pad // pooling ** (levels - 1)
    list_len = cand.shape[-1]
    S = n_coarse + (levels - 1) * list_len
    outs = [torch.empty((B, H, S, D), dtype=q.dtype, device=q.device) for _ in range(3)]
    cos, sin, scn, scd, tab_len, has_rope = _rope_args(rope, q)
    block_r = block(BLOCK_R, 128)
    for level in range(levels, 0, -1):
        n_rows = n_coarse if level == levels else list_len
        grid = (triton.cdiv(n_rows, block_r), B * H)
        _gather_fwd_kernel[grid](
            q, *q.stride(), k, *k.stride(), v, *v.stride(),
            pq, pk, pv, *outs, slot, cand, cpos,
            cos, sin, scn, scd, tab_len,
            H, H // G, N, n_pad, n_coarse, S, offs[-1], list_len, D, n_rows,
            LEVEL=level, L=levels, POOL=pooling, TOP_POOLED=True, ROPE=has_rope,
            BLOCK_R=block_r, BLOCK_H=next_pow2(D // 2), OUT=tl_dtype(q.dtype), ACC=acc_dtype(q.dtype),
        )
    return outs


def gather_backward(g_BHSD, slot, rope, levels: int, pooling: int, n_pad: int, n_real: int, num_x: int, dtype):
    """Adjoint of pooling + gather for one base tensor with `num_x` heads: [B, X, n_real, D]."""
    B, H, S, D = g_BHSD.shape
    offs = level_offsets(n_pad, levels, pooling)
    out = torch.empty((B, num_x, n_real, D), dtype=dtype, device=g_BHSD.device)
    cos, sin, scn, scd, tab_len, has_rope = _rope_args(rope, g_BHSD)
    block_t = block(BLOCK_T // 2 if has_rope else BLOCK_T, 256)
    grid = (triton.cdiv(n_real, block_t), B * num_x)
    _gather_bwd_kernel[grid](
        g_BHSD, *g_BHSD.stride(), out, slot,
        cos, sin, scn, scd, tab_len,
        num_x, H // num_x, n_real, n_pad, offs[-1], D,
        L=levels, POOL=pooling, ROPE=has_rope, BLOCK_T=block_t, BLOCK_H=next_pow2(D // 2),
        OUT=tl_dtype(dtype), ACC=acc_dtype(dtype),
    )
    return out
