"""Helpers shared by the kernel modules: sizes, launch settings, and the row loads/stores of
gather and scatter. Kernel modules import from here only, never from each other.

Legend: B batch, H query heads, G key/value heads, X either, N padded length, D head dim,
S sub-sequence length, P concatenated pyramid length, Q score-pyramid length (levels 2..L).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_R = 32  # entries per program (forward; 128 under the interpreter)
BLOCK_T = 64  # base positions per program (backward; 256 under the interpreter)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def block(gpu: int, interpreter: int) -> int:
    """Block size: the GPU one, or a larger one under the interpreter (fewer, slower programs)."""
    return interpreter if interpreting() else gpu


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def level_offsets(n_pad: int, levels: int, pooling: int) -> list[int]:
    """Start of every level (1..L) in the concatenated pyramid layout, plus its total length."""
    offs, total = [], 0
    for lv in range(1, levels + 1):
        offs.append(total)
        total += n_pad // pooling ** (lv - 1)
    return offs + [total]


def acc_dtype(dtype: torch.dtype):
    """Triton accumulator type: float64 for float64 inputs, float32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def tl_dtype(dtype: torch.dtype):
    return {
        torch.float32: tl.float32,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
        torch.float64: tl.float64,
    }[dtype]


@triton.jit
def level_start(n, LEVEL: tl.constexpr, POOL: tl.constexpr):
    """Offset of level LEVEL (1-based) in the concatenated pyramid of padded length n."""
    off = n * 0
    c = 1
    for _lv in tl.static_range(1, LEVEL):
        off += n // c
        c = c * POOL
    return off


@triton.jit
def level_entries(slot_ptr, cand_ptr, cpos_ptr, bh, r, rmask, N_pad, P_len, LIST_LEN,
                  LEVEL: tl.constexpr, L: tl.constexpr, POOL: tl.constexpr):
    """Rows r of the kept entries of one level: (index i within the level, position in S).

    The coarsest level keeps every entry (i = r; its position comes from the inverse map);
    finer levels keep the p*K entries listed by the selection kernel in cand / cpos.
    """
    if LEVEL == L:
        i = r
        pos = tl.load(slot_ptr + bh.to(tl.int64) * P_len + level_start(N_pad, L, POOL) + r, mask=rmask, other=0)
    else:
        lst = bh.to(tl.int64) * ((L - 1) * LIST_LEN) + (LEVEL - 1) * LIST_LEN + r
        i = tl.load(cand_ptr + lst, mask=rmask, other=0)
        pos = tl.load(cpos_ptr + lst, mask=rmask, other=0)
    return i, pos


@triton.jit
def pooled_rows(src_ptr, row0, sn, sd, i, rmask, cols, cmask, HALF, N_real,
                 C: tl.constexpr, SHIFT: tl.constexpr, MEAN: tl.constexpr, OUT: tl.constexpr, ACC: tl.constexpr):
    """Sum (or mean, rounded to OUT like the reference) of rows c*i + SHIFT + j, j < C, rows >= N_real are zero.

    Returns the two halves [R, BLOCK_H] of the row in ACC precision.
    """
    first = i.to(tl.int64) * C + SHIFT
    lo = tl.zeros([i.shape[0], cols.shape[0]], ACC)
    hi = tl.zeros([i.shape[0], cols.shape[0]], ACC)
    for j in range(C):
        t = first + j
        ok = rmask & (t < N_real)
        m2 = ok[:, None] & cmask[None, :]
        ptr = src_ptr + row0 + t[:, None] * sn
        lo += tl.load(ptr + cols[None, :] * sd, mask=m2, other=0.0).to(ACC)
        hi += tl.load(ptr + (cols + HALF)[None, :] * sd, mask=m2, other=0.0).to(ACC)
    if MEAN:
        if C > 1:
            lo = (lo / C).to(OUT).to(ACC)
            hi = (hi / C).to(OUT).to(ACC)
    return lo, hi


@triton.jit
def store_rows(dst_ptr, row_off, lo, hi, rmask, cols, cmask, HALF, OUT: tl.constexpr):
    m2 = rmask[:, None] & cmask[None, :]
    tl.store(dst_ptr + row_off[:, None] + cols[None, :], lo.to(OUT), mask=m2)
    tl.store(dst_ptr + row_off[:, None] + (cols + HALF)[None, :], hi.to(OUT), mask=m2)
