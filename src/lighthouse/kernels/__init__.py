"""GPU fast path: Triton kernels around the attention call (selection, gather, scatter).

Each kernel module keeps its PyTorch reference next to it (see `lighthouse.reference`).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True
