"""CUDA memory at long context: let PyTorch's allocator grow segments instead of splitting them.

At a million tokens a training step allocates and frees tensors of several GiB in a pattern that
changes from layer to layer; the caching allocator's fixed segments fragment, and a step that
needs 103 GiB ran out of memory on a 139 GiB H200 (the paper's 30-layer shape, Lighthouse in every
layer, block recomputation, bf16 parameters: `python -m lighthouse.bench train ... --seq-lens 1M`).
With `expandable_segments:True` the same step ran, peaking at 103.2 GiB (2026-12-01).

The allocator reads PYTORCH_CUDA_ALLOC_CONF when CUDA is first used, so every `lighthouse`
command and `python -m lighthouse.bench` call `prefer_expandable_segments()` before that. A
setting the user made wins; nothing changes on a machine without CUDA.
"""

from __future__ import annotations

import os
import sys

SETTING = "expandable_segments:True"


def prefer_expandable_segments() -> bool:
    """Set PYTORCH_CUDA_ALLOC_CONF for this process unless the user chose or CUDA is in use; True if set."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return False
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = SETTING
    return True
