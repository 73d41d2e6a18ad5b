"""Scorers: parameter-free per-token scores that drive the hierarchical selection (spec §1, §7).

A scorer maps the base q, k, v of one layer to two scores per base token:
  s_q  [B, H, N]     the "query" score, one row per query head;
  s_k  [B, G|H, N]   the "key" score, one row per key/value head (broadcast over the query
                     heads that share it) or one row per query head.
Scores are computed without gradient (selection is gradient-free) and returned as float32.
The pyramid max-pools them (spec §1), so a scorer only ever sees base tokens.

`gla` (lighthouse/gla.py) needs gates computed from the layer input, passed as context.
To add a scorer, subclass
`Scorer`, implement `score`, and either pass an instance as `scorer=` or call
`register_scorer("name", factory)`. Anything extra the scorer needs arrives through the
`context` argument of `lighthouse_attention(..., scorer_context=...)`.

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F


class Scorer:
    """Base class: `score(q_BHND, k_BGND, v_BGND, context=None) -> (s_q_BHN, s_k_BXN)`."""

    name = "scorer"

    def score(self, q_BHND, k_BGND, v_BGND, context=None):  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NormScorer(Scorer):
    """`norm` (default): s_q = ||q||_2, s_k = ||k||_2 per token and head."""

    name = "norm"

    def score(self, q_BHND, k_BGND, v_BGND, context=None):
        return q_BHND.float().norm(dim=-1), k_BGND.float().norm(dim=-1)


class DilatedScorer(Scorer):
    """`dilated`: causal softmax attention inside each residue class t mod d (spec §7).

    s_q = ||softmax(Q K^T) V||, s_k = the same with Q and K swapped. With GQA the query
    heads of one group share K and V, and the swapped attention (K as queries, Q as keys)
    is per query head, so s_k has one row per query head.
    """

    name = "dilated"

    def __init__(self, dilation: int = 4):
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation must be a positive int, got {dilation!r}")
        self.dilation = dilation

    def __repr__(self) -> str:
        return f"DilatedScorer(dilation={self.dilation})"

    def _by_residue(self, x_BXND):
        """[B, X, N, D] -> [B, X, d, ceil(N/d), D]: class r holds positions r, r+d, r+2d, ..."""
        B, X, N, D = x_BXND.shape
        d = self.dilation
        n_pad = -(-N // d) * d
        # Right-padding only adds later positions; causal attention never lets them reach earlier ones.
        x_BXND = F.pad(x_BXND, (0, 0, 0, n_pad - N))
        return x_BXND.view(B, X, n_pad // d, d, D).transpose(2, 3)

    def _from_residue(self, s_BXdM, N):
        B, X = s_BXdM.shape[:2]
        return s_BXdM.transpose(2, 3).reshape(B, X, -1)[..., :N]

    def score(self, q_BHND, k_BGND, v_BGND, context=None):
        B, H, N, D = q_BHND.shape
        G = k_BGND.shape[1]
        rep = H // G
        q = self._by_residue(q_BHND.float())
        k = self._by_residue(k_BGND.float()).repeat_interleave(rep, dim=1)
        v = self._by_residue(v_BGND.float()).repeat_interleave(rep, dim=1)
        out_qk = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out_kq = F.scaled_dot_product_attention(k, q, v, is_causal=True)
        return self._from_residue(out_qk.norm(dim=-1), N), self._from_residue(out_kq.norm(dim=-1), N)


def _gla_scorer() -> Scorer:
    from .gla import GLAScorer  # imported on use: lighthouse.gla imports this module

    return GLAScorer()


_REGISTRY: dict[str, Callable[[], Scorer]] = {
    "norm": NormScorer,
    "dilated": DilatedScorer,
    "gla": _gla_scorer,
}


def register_scorer(name: str, factory: Callable[[], Scorer]) -> None:
    """Make `scorer=name` available (a factory called with no arguments)."""
    _REGISTRY[name] = factory


def available_scorers() -> list[str]:
    return sorted(_REGISTRY)


def get_scorer(scorer) -> Scorer:
    """Resolve a scorer name or instance."""
    if isinstance(scorer, Scorer):
        return scorer
    if isinstance(scorer, str):
        if scorer not in _REGISTRY:
            raise ValueError(f"unknown scorer {scorer!r}; available: {', '.join(available_scorers())}")
        return _REGISTRY[scorer]()
    raise TypeError(f"scorer must be a name ({', '.join(available_scorers())}) or a Scorer instance, got {type(scorer).__name__}")
