"""Poisoned allocation for kernel tests: `torch.empty` returns NaN (floats) or -7 (integers).

A kernel output that is allocated with `torch.empty` and not fully written then fails the
comparison with the reference instead of passing on leftover memory.
"""

from __future__ import annotations

import contextlib

import torch

INT_POISON = -7


@contextlib.contextmanager
def poison_empty():
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else INT_POISON)

    torch.empty = poisoned
    try:
        yield
    finally:
        torch.empty = real_empty
