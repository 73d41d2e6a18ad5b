"""Small helpers shared by the kernel modules: sizes, launch settings, output allocation.

Legend: B batch, H query heads, G key/value heads, X either, N padded length, D head dim,
S sub-sequence length, P concatenated pyramid length, Q score-pyramid length (levels 2..L).
"""

from __future__ import annotations

import os

import torch

import triton
import triton.language as tl

# Tests set this to True: every kernel output is then allocated filled with NaN (floats) or a
# sentinel (integers) instead of left uninitialised, so an element a kernel forgets to write
# shows up as a failure.
POISON_OUTPUTS = False
INT_POISON = -7


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def block(gpu: int, interpreter: int) -> int:
    """Block size: the GPU one, or a larger one under the interpreter (fewer, slower programs)."""
    return interpreter if interpreting() else gpu


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def empty(shape, dtype, device) -> torch.Tensor:
    """Uninitialised output (or a poisoned one when POISON_OUTPUTS is set)."""
    if POISON_OUTPUTS:
        fill = float("nan") if dtype.is_floating_point else INT_POISON
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


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
