"""GPU fast path: Triton kernels around the attention call (selection, gather, scatter).

Each kernel module keeps its PyTorch reference next to it (see `lighthouse.reference`).
"""

from __future__ import annotations

import torch

_TRITON_AVAILABLE: bool | None = None


@torch.compiler.assume_constant_result  # torch.compile folds it to a constant instead of tracing the import
def triton_available() -> bool:
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_AVAILABLE = True
        except Exception:
            _TRITON_AVAILABLE = False
    return _TRITON_AVAILABLE
