"""Tiled hierarchical selection: one program per (batch, query head, tile), no global sort.

Reference: `lighthouse.reference.select` (spec §2, §3). Per tile, coarse to fine:
  level L:   candidates = the tile's M coarsest entries;
  level l>1: top W/2 by s_q, then top W/2 of the rest by s_k ("selected"); the children of
             the selected (ascending) are the W*p candidates of level l-1;
  level 1:   every candidate is a leaf.
Ties go to the lower candidate position (the reference's stable descending sort).

How the kernel does it without sorting:
  * top-k by bisection: scores are mapped to order-preserving integer keys in [0, 2^32);
    32 counting passes find the 64th largest key u*; every key > u* is selected, and of the
    keys == u* the first (lowest positions, by a prefix count) fill the remaining places.
    "Already taken" candidates get the key of -inf, as in the reference.
  * compaction of the selected parents into the next candidate list goes through the
    output list itself (scatter to position rank*p + j, barrier, reload).
  * the causal order (spec §3): with the integer keys of `reference._sort_keys`, every
    level's key list is increasing in candidate order, so an entry's place in the tile is
    its position in its own level plus, for every other level, the number of that level's
    keys below its key (a binary search in a list kept in a small scratch buffer).
    Tiles are contiguous spans, so tile t's entries fill [t*S_t, (t+1)*S_t) of the row.

Causal selection (`selection="causal"`, docs/design.md) replaces the pick: a tile's thresholds
are what top-k picked in the previous tile at the same level (the bisection above, on that
tile's candidates), and the tile takes candidates in order while they pass, with prefix sums
as running counts and a forced fill at the end (`reference._pick_tile_causal`). The previous
tile's candidates at level l exist only once its level-(l+1) pick ran, so causal selection runs
one launch per level, coarse to fine, then one launch for the order (shared with top-k).

Outputs per (b, h):
  index_BHS  int32 [B, H, S]      pyramid index of every sub-sequence entry, in causal order
  slot_BHP   int32 [B, H, P]      inverse map: pyramid index -> position in the sub-sequence,
                                  -1 for entries not kept (filled here, -1 elsewhere)
  cand_BHLK  int32 [B, H, L-1, p*K]  within-level index of every kept entry of levels 1..L-1
  cpos_BHLK  int32 [B, H, L-1, p*K]  its position in the sub-sequence
(level L entries are all kept: entry i of level L is at slot[offset_L + i].)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import HALF_TILE, TILE_WIDTH
from .utils import level_offsets, level_start, next_pow2


@triton.jit
def _float_key(s):
    """Order-preserving map of float32 to int64 in [0, 2^32) (-0.0 and +0.0 map together)."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return key.to(tl.int64) + 2147483648


@triton.jit
def _kth_largest_key(u, K: tl.constexpr):
    """The K-th largest of u (int64 keys in [0, 2^32); lanes out of range hold -1), by bisection."""
    prefix = tl.max(u, axis=0) * 0
    for i in tl.static_range(32):
        cand = prefix + (1 << (31 - i))
        cnt = tl.sum((u >= cand).to(tl.int32), axis=0)
        prefix = tl.where(cnt >= K, cand, prefix)
    return prefix


@triton.jit
def _top_k_mask(u, K: tl.constexpr):
    """Mask of the K largest entries of u (int64; lanes out of range hold -1), ties to lower lanes."""
    prefix = _kth_largest_key(u, K)
    gt = u > prefix
    need = K - tl.sum(gt.to(tl.int32), axis=0)
    eq = u == prefix
    eq_rank = tl.cumsum(eq.to(tl.int32), axis=0)
    return gt | (eq & (eq_rank <= need))


@triton.jit
def _pick(sq, sk, valid, HALF: tl.constexpr):
    """Top HALF by sq, then top HALF of the rest by sk (spec §2 step 2)."""
    NEG_INF_KEY: tl.constexpr = 8388607  # _float_key(-inf)
    uq = tl.where(valid, _float_key(sq), -1)
    by_q = _top_k_mask(uq, HALF)
    uk = tl.where(by_q, NEG_INF_KEY, _float_key(sk))
    uk = tl.where(valid, uk, -1)
    by_k = _top_k_mask(uk, HALF)
    return by_q | by_k


@triton.jit
def _count_less(base_ptr, x, n, LOG: tl.constexpr):
    """For every x: how many entries of the increasing list base_ptr[0:n] are < x."""
    lo = tl.zeros(x.shape, tl.int32)
    hi = lo + n
    for _ in tl.static_range(LOG + 1):
        active = lo < hi
        mid = (lo + hi) // 2
        a = tl.load(base_ptr + mid, mask=active, other=0, cache_modifier=".cg")
        less = a < x
        lo = tl.where(active & less, mid + 1, lo)
        hi = tl.where(active & (~less), mid, hi)
    return lo


@triton.jit
def _place_tile(keys, cand, cpos, index_ptr, slot_ptr, tile, bh, N_pad, P_len, S_len, M, list_len,
                L: tl.constexpr, POOL: tl.constexpr, BLOCK_M: tl.constexpr, LOG_M: tl.constexpr,
                WP: tl.constexpr, LOG_WP: tl.constexpr, KSTRIDE: tl.constexpr):
    """Write one tile's entries in causal order (spec §3) into index, slot and cpos.

    keys holds every level's sort keys (increasing in candidate order), so an entry's place in
    the tile is its position in its own level plus, for every other level, the number of that
    level's keys below its key. keys, cand and cpos point at this tile's part; the level lists
    are list_len apart. Tiles are contiguous spans, so tile t fills [t*S_t, (t+1)*S_t) of the row.
    """
    m = tl.arange(0, BLOCK_M)
    mvalid = m < M
    w = tl.arange(0, WP)
    i_top = (tile * M + m).to(tl.int64)
    tile_base = tile * (M + (L - 1) * WP)
    row_index = index_ptr + bh.to(tl.int64) * S_len
    row_slot = slot_ptr + bh.to(tl.int64) * P_len
    key = tl.load(keys + (L - 1) * KSTRIDE + m, mask=mvalid, other=0, cache_modifier=".cg")
    place = m
    for lv in tl.static_range(1, L):
        place += _count_less(keys + (lv - 1) * KSTRIDE, key, WP, LOG_WP)
    pos = tile_base + place
    pidx = (level_start(N_pad, L, POOL) + i_top).to(tl.int32)
    tl.store(row_index + pos, pidx, mask=mvalid)
    tl.store(row_slot + pidx, pos, mask=mvalid)
    for lv in tl.static_range(1, L):
        key = tl.load(keys + (lv - 1) * KSTRIDE + w, cache_modifier=".cg")
        ci = tl.load(cand + (lv - 1) * list_len + w, cache_modifier=".cg")
        place = w + _count_less(keys + (L - 1) * KSTRIDE, key, M, LOG_M)
        for lv2 in tl.static_range(1, L):
            if lv2 != lv:
                place += _count_less(keys + (lv2 - 1) * KSTRIDE, key, WP, LOG_WP)
        pos = tile_base + place
        pidx = level_start(N_pad, lv, POOL) + ci
        tl.store(row_index + pos, pidx)
        tl.store(row_slot + pidx, pos)
        tl.store(cpos + (lv - 1) * list_len + w, pos)


@triton.jit
def _select_kernel(
    sq_ptr, sk_ptr, index_ptr, slot_ptr, cand_ptr, cpos_ptr, keys_ptr,
    H, SK_REP, N_pad, Q_len, P_len, S_len, M, T,
    L: tl.constexpr,
    POOL: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    LOG_M: tl.constexpr,
    WP: tl.constexpr,
    LOG_WP: tl.constexpr,
    KSTRIDE: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    X = H // SK_REP
    sq_row = sq_ptr + bh.to(tl.int64) * Q_len
    sk_row = sk_ptr + (b * X + h // SK_REP).to(tl.int64) * Q_len
    keys = keys_ptr + (bh * T + tile).to(tl.int64) * (L * KSTRIDE)
    list_len = T * WP
    cand = cand_ptr + bh.to(tl.int64) * ((L - 1) * list_len) + tile * WP
    cpos = cpos_ptr + bh.to(tl.int64) * ((L - 1) * list_len) + tile * WP
    SCALE: tl.constexpr = 2 ** (L - 1)

    # ---- level L: the tile's M coarsest entries
    m = tl.arange(0, BLOCK_M)
    mvalid = m < M
    i_top = (tile * M + m).to(tl.int64)
    q_off = level_start(N_pad, L, POOL) - N_pad
    sq = tl.load(sq_row + q_off + i_top, mask=mvalid, other=0.0)
    sk = tl.load(sk_row + q_off + i_top, mask=mvalid, other=0.0)
    sel = _pick(sq, sk, mvalid, HALF) & mvalid
    C_TOP: tl.constexpr = POOL ** (L - 1)
    key = tl.where(sel, SCALE * C_TOP * (i_top + 1) - 1, SCALE * C_TOP * i_top)
    tl.store(keys + (L - 1) * KSTRIDE + m, key, mask=mvalid)
    rank = tl.cumsum(sel.to(tl.int32), axis=0) - 1
    for j in tl.static_range(POOL):
        tl.store(cand + (L - 2) * list_len + rank * POOL + j, (i_top * POOL + j).to(tl.int32), mask=sel)
    tl.debug_barrier()

    # ---- levels L-1 .. 2: the children of the selected entries
    w = tl.arange(0, WP)
    for lv in tl.static_range(L - 1, 1, -1):
        ci = tl.load(cand + (lv - 1) * list_len + w, cache_modifier=".cg").to(tl.int64)
        q_off = level_start(N_pad, lv, POOL) - N_pad
        sq = tl.load(sq_row + q_off + ci)
        sk = tl.load(sk_row + q_off + ci)
        sel = _pick(sq, sk, w < WP, HALF)
        key = tl.where(sel, SCALE * POOL ** (lv - 1) * (ci + 1) - 2 ** (L - lv), SCALE * POOL ** (lv - 1) * ci)
        tl.store(keys + (lv - 1) * KSTRIDE + w, key)
        rank = tl.cumsum(sel.to(tl.int32), axis=0) - 1
        for j in tl.static_range(POOL):
            tl.store(cand + (lv - 2) * list_len + rank * POOL + j, (ci * POOL + j).to(tl.int32), mask=sel)
        tl.debug_barrier()

    # ---- level 1: every candidate is a leaf
    ci = tl.load(cand + w, cache_modifier=".cg").to(tl.int64)
    tl.store(keys + w, SCALE * ci)
    tl.debug_barrier()

    # ---- causal order
    _place_tile(keys, cand, cpos, index_ptr, slot_ptr, tile, bh, N_pad, P_len, S_len, M, list_len,
                L, POOL, BLOCK_M, LOG_M, WP, LOG_WP, KSTRIDE)


# ---------------------------------------------------------------------------------------
# Causal selection (reference: `reference._pick_tile_causal`, `reference._previous_tile_thresholds`)
# ---------------------------------------------------------------------------------------
@triton.jit
def _causal_pick_kernel(
    sq_ptr, sk_ptr, cand_ptr, keys_ptr,
    H, SK_REP, N_pad, Q_len, M, T,
    LV: tl.constexpr,
    L: tl.constexpr,
    POOL: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK: tl.constexpr,
    WP: tl.constexpr,
    KSTRIDE: tl.constexpr,
):
    """One level LV of causal selection for one tile: thresholds from the previous tile's
    candidates at this level, then the in-order pick with forced fill.

    A launch per level (coarse to fine), because a tile's thresholds at level LV come from the
    previous tile's level-LV candidates, which that tile's level-(LV+1) pick wrote in the
    launch before. Writes the level's sort keys and the next level's candidates.
    """
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    X = H // SK_REP
    sq_row = sq_ptr + bh.to(tl.int64) * Q_len
    sk_row = sk_ptr + (b * X + h // SK_REP).to(tl.int64) * Q_len
    list_len = T * WP
    lists = cand_ptr + bh.to(tl.int64) * ((L - 1) * list_len)
    keys = keys_ptr + (bh * T + tile).to(tl.int64) * (L * KSTRIDE)
    SCALE: tl.constexpr = 2 ** (L - 1)
    C: tl.constexpr = POOL ** (LV - 1)
    NEG_INF_KEY: tl.constexpr = 8388607  # _float_key(-inf)
    q_off = level_start(N_pad, LV, POOL) - N_pad

    r = tl.arange(0, BLOCK)
    if LV == L:
        count = M
        valid = r < M
        i_cur = (tile * M + r).to(tl.int64)
        i_prev = ((tile - 1) * M + r).to(tl.int64)
    else:
        count = WP
        valid = r < WP
        i_cur = tl.load(lists + (LV - 1) * list_len + tile * WP + r, cache_modifier=".cg").to(tl.int64)
        i_prev = tl.load(lists + (LV - 1) * list_len + (tile - 1) * WP + r, mask=tile > 0, other=0,
                         cache_modifier=".cg").to(tl.int64)

    # Thresholds: the previous tile's top W/2 by s_q, then top W/2 of the rest by s_k (tile 0: none).
    has_past = valid & (tile > 0)
    uq_prev = tl.where(has_past, _float_key(tl.load(sq_row + q_off + i_prev, mask=has_past, other=0.0)), -1)
    uk_prev = tl.where(has_past, _float_key(tl.load(sk_row + q_off + i_prev, mask=has_past, other=0.0)), -1)
    tau_q = _kth_largest_key(uq_prev, HALF)
    uk_prev = tl.where(_top_k_mask(uq_prev, HALF), NEG_INF_KEY, uk_prev)
    tau_k = _kth_largest_key(tl.where(has_past, uk_prev, -1), HALF)
    tau_q = tl.where(tile > 0, tau_q, 0)  # key 0 is below every float's key: everything passes
    tau_k = tl.where(tile > 0, tau_k, 0)

    # The in-order pick: running counts are prefix sums over the candidates before.
    uq = _float_key(tl.load(sq_row + q_off + i_cur, mask=valid, other=0.0))
    uk = _float_key(tl.load(sk_row + q_off + i_cur, mask=valid, other=0.0))
    q_pass = valid & (uq >= tau_q)
    by_q = q_pass & (tl.cumsum(q_pass.to(tl.int32), axis=0) <= HALF)
    k_pass = valid & (~by_q) & (uk >= tau_k)
    by_k = k_pass & (tl.cumsum(k_pass.to(tl.int32), axis=0) <= HALF)
    picked = (by_q | by_k).to(tl.int32)
    picked_before = tl.cumsum(picked, axis=0) - picked
    forced = valid & ((2 * HALF - picked_before) >= (count - r))
    sel = (picked > 0) | forced

    key = tl.where(sel, SCALE * C * (i_cur + 1) - 2 ** (L - LV), SCALE * C * i_cur)
    tl.store(keys + (LV - 1) * KSTRIDE + r, key, mask=valid)
    rank = tl.cumsum(sel.to(tl.int32), axis=0) - 1
    children = lists + (LV - 2) * list_len + tile * WP
    for j in tl.static_range(POOL):
        tl.store(children + rank * POOL + j, (i_cur * POOL + j).to(tl.int32), mask=sel)


@triton.jit
def _causal_place_kernel(
    index_ptr, slot_ptr, cand_ptr, cpos_ptr, keys_ptr,
    N_pad, P_len, S_len, M, T,
    L: tl.constexpr,
    POOL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    LOG_M: tl.constexpr,
    WP: tl.constexpr,
    LOG_WP: tl.constexpr,
    KSTRIDE: tl.constexpr,
):
    """After the picks: level-1 keys (every candidate is a leaf), then the causal order."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    keys = keys_ptr + (bh * T + tile).to(tl.int64) * (L * KSTRIDE)
    list_len = T * WP
    cand = cand_ptr + bh.to(tl.int64) * ((L - 1) * list_len) + tile * WP
    cpos = cpos_ptr + bh.to(tl.int64) * ((L - 1) * list_len) + tile * WP
    SCALE: tl.constexpr = 2 ** (L - 1)
    w = tl.arange(0, WP)
    ci = tl.load(cand + w, cache_modifier=".cg").to(tl.int64)
    tl.store(keys + w, SCALE * ci)
    tl.debug_barrier()
    _place_tile(keys, cand, cpos, index_ptr, slot_ptr, tile, bh, N_pad, P_len, S_len, M, list_len,
                L, POOL, BLOCK_M, LOG_M, WP, LOG_WP, KSTRIDE)


def select(sq_BHQ: torch.Tensor, sk_BXQ: torch.Tensor, levels: int, pooling: int, topk: int, n_pad: int,
           causal: bool = False):
    """Run the selection kernels. sq: [B, H, Q] float32, sk: [B, G or H, Q] float32 (levels 2..L;
    for causal selection, the causal score pyramid).

    Returns (index_BHS, slot_BHP, cand_BHLK, cpos_BHLK), all int32 (see the module docstring).
    Top-k selection is one launch; causal selection a launch per level, then one that orders.
    """
    B, H, Q = sq_BHQ.shape
    X = sk_BXQ.shape[1]
    device = sq_BHQ.device
    T = topk // TILE_WIDTH
    offs = level_offsets(n_pad, levels, pooling)
    P = offs[-1]
    n_coarse = n_pad // pooling ** (levels - 1)
    M = n_coarse // T
    WP = TILE_WIDTH * pooling
    S = n_coarse + (levels - 1) * pooling * topk
    block_m = next_pow2(M)
    kstride = max(block_m, WP)
    index = torch.empty((B, H, S), dtype=torch.int32, device=device)
    slot = torch.full((B, H, P), -1, dtype=torch.int32, device=device)
    cand = torch.empty((B, H, levels - 1, pooling * topk), dtype=torch.int32, device=device)
    cpos = torch.empty((B, H, levels - 1, pooling * topk), dtype=torch.int32, device=device)
    keys = torch.empty((B * H * T, levels, kstride), dtype=torch.int64, device=device)
    if causal:
        for lv in range(levels, 1, -1):
            width = block_m if lv == levels else WP
            _causal_pick_kernel[(T, B * H)](
                sq_BHQ, sk_BXQ, cand, keys, H, H // X, n_pad, Q, M, T,
                LV=lv, L=levels, POOL=pooling, HALF=HALF_TILE, BLOCK=width, WP=WP, KSTRIDE=kstride,
                num_warps=max(4, min(16, width // 256)),
            )
        _causal_place_kernel[(T, B * H)](
            index, slot, cand, cpos, keys, n_pad, P, S, M, T,
            L=levels, POOL=pooling, BLOCK_M=block_m, LOG_M=block_m.bit_length() - 1,
            WP=WP, LOG_WP=WP.bit_length() - 1, KSTRIDE=kstride, num_warps=max(4, min(16, max(block_m, WP) // 256)),
        )
        return index, slot, cand, cpos
    _select_kernel[(T, B * H)](
        sq_BHQ, sk_BXQ, index, slot, cand, cpos, keys,
        H, H // X, n_pad, Q, P, S, M, T,
        L=levels, POOL=pooling, HALF=HALF_TILE, BLOCK_M=block_m, LOG_M=block_m.bit_length() - 1,
        WP=WP, LOG_WP=WP.bit_length() - 1, KSTRIDE=kstride,
        num_warps=max(4, min(16, max(block_m, WP) // 256)),
    )
    return index, slot, cand, cpos
