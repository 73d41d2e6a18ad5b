"""Lighthouse Attention: selection-based hierarchical attention for long-context pre-training."""

from .attention import dense_causal_attention, lighthouse_attention
from .config import TILE_WIDTH, LighthouseConfig, LighthouseConfigError
from .layers import DenseAttention, LighthouseAttention
from .rope import rope_tables
from .scorers import DilatedScorer, GLAScorer, NormScorer, Scorer, available_scorers, get_scorer, register_scorer

__all__ = [
    "lighthouse_attention",
    "dense_causal_attention",
    "LighthouseAttention",
    "LighthouseConfig",
    "LighthouseConfigError",
    "DenseAttention",
    "TILE_WIDTH",
    "Scorer",
    "NormScorer",
    "DilatedScorer",
    "GLAScorer",
    "register_scorer",
    "get_scorer",
    "available_scorers",
    "rope_tables",
]
__version__ = "0.1.0"
