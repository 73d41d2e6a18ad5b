"""Poisoned allocation for kernel tests: `torch.empty` returns NaN (floats) or -7 (integers).

A kernel output that is allocated with `torch.empty` and not fully written then fails the
comparison with the reference instead of passing on leftover memory.
"""

from __future__ import annotations

import contextlib

import torch

INT_POISON = -7

# PyTorch's device context (`with torch.device("meta")`) lists the factory functions it redirects
# once, on its first use in the process, and keeps that list. Were that first use to happen while
# torch.empty is replaced below, the list would hold the replacement, and `torch.device("meta")`
# would leave the real torch.empty on the CPU for the rest of the process (it did: a model meant to
# be built on the meta device was built on the CPU). Use the context once now, unpatched.
with torch.device("meta"):
    torch.empty(0)


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
