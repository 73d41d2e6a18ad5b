"""The largest tensor an operation creates: a memory check that needs no GPU.

`largest_tensor(fn)` runs `fn` under a dispatch mode that sees every op's outputs and returns the
element count of the largest one, so a test can say "nothing grows faster than N" on a CPU.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any op creates."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def largest_tensor(fn) -> int:
    with LargestTensor() as meter:
        fn()
    return meter.numel
