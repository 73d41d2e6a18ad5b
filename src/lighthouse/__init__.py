"""Lighthouse Attention: selection-based hierarchical attention for long-context pre-training.

The public names below are imported on first use (PEP 562), so that `import lighthouse` does
not load torch by itself: the `lighthouse` command sets the CPU threads' wait policy first
(`lighthouse.cpu_threads`), which OpenMP reads only when torch loads.
"""

import importlib

_EXPORTS = {
    "lighthouse_attention": "attention",
    "dense_causal_attention": "attention",
    "LighthouseAttention": "layers",
    "LighthouseConfig": "config",
    "LighthouseConfigError": "config",
    "DenseAttention": "layers",
    "TILE_WIDTH": "config",
    "Scorer": "scorers",
    "NormScorer": "scorers",
    "DilatedScorer": "scorers",
    "GLAScorer": "scorers",
    "register_scorer": "scorers",
    "get_scorer": "scorers",
    "available_scorers": "scorers",
    "rope_tables": "rope",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lighthouse' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
