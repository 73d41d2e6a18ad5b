"""Scorers: parameter-free per-token scores that drive the hierarchical selection (spec §1, §7).

A scorer maps the base q, k, v of one layer to two scores per base token:
  s_q  [B, H, N]     the "query" score, one row per query head;
  s_k  [B, G|H, N]   the "key" score, one row per key/value head (broadcast over the query
                     heads that share it) or one row per query head.
Scores are computed without gradient (selection is gradient-free) and returned as float32.
The pyramid max-pools them (spec §1), so a scorer only ever sees base tokens.

Every scorer lives here, with the registry of names:
  norm     ||q||, ||k||: the default, fused into the fast path's score kernel (`is_norm_scorer`);
  dilated  causal softmax attention inside each residue class t mod d;
  gla      gated linear attention inside each residue class (the operation: `lighthouse.gla`);
           its per-head gates come from the layer input, passed as context.
To add a scorer, subclass `Scorer`, implement `score`, and either pass an instance as
`scorer=` or call `register_scorer("name", factory)`. Anything extra the scorer needs arrives
through the `context` argument of `lighthouse_attention(..., scorer_context=...)`.

Legend: B batch, H query heads, G key/value heads, X either, R = H / G query heads per
key/value head, N sequence length, D head dim, d dilation, M = ceil(N / d) tokens per
residue class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .gla import GLA_BACKENDS, accumulate_dtype, gated_linear_attention


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


# ---- residue classes (dilated and gla) -------------------------------------------------------
def check_dilation(dilation) -> int:
    """d, the number of residue classes: a positive int."""
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    return dilation


def by_residue(x_BXN, d: int):
    """[B, X, N, ...] -> [B, X, d, M, ...]: class r holds positions r, r + d, r + 2d, ... (a view when d | N)."""
    N = x_BXN.shape[2]
    M = -(-N // d)
    # Right-padding adds only later positions, which causal attention never lets reach earlier ones.
    x_BXN = F.pad(x_BXN, (0, 0) * (x_BXN.dim() - 3) + (0, M * d - N))
    return x_BXN.unflatten(2, (M, d)).transpose(2, 3)


def from_residue(s_BXdM, N: int):
    """[B, X, d, M] -> [B, X, N] (inverse of `by_residue` for per-token values)."""
    return s_BXdM.transpose(2, 3).flatten(2)[..., :N]


class DilatedScorer(Scorer):
    """`dilated`: causal softmax attention inside each residue class t mod d (spec §7).

    s_q = ||softmax(Q K^T) V||, s_k = the same with Q and K swapped. With GQA the query
    heads of one group share K and V, and the swapped attention (K as queries, Q as keys)
    is per query head, so s_k has one row per query head.
    """

    name = "dilated"

    def __init__(self, dilation: int = 4):
        self.dilation = check_dilation(dilation)

    def __repr__(self) -> str:
        return f"DilatedScorer(dilation={self.dilation})"

    def score(self, q_BHND, k_BGND, v_BGND, context=None):
        B, H, N, D = q_BHND.shape
        G = k_BGND.shape[1]
        rep = H // G
        d = self.dilation
        q = by_residue(q_BHND.float(), d)
        k = by_residue(k_BGND.float(), d).repeat_interleave(rep, dim=1)
        v = by_residue(v_BGND.float(), d).repeat_interleave(rep, dim=1)
        out_qk = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out_kq = F.scaled_dot_product_attention(k, q, v, is_causal=True)
        return from_residue(out_qk.norm(dim=-1), N), from_residue(out_kq.norm(dim=-1), N)


class GLAScorer(Scorer):
    """`gla`: gated linear attention inside each residue class t mod d (spec §7).

    s_q = ||GLA(q, k, v; g)||, s_k = ||GLA(k, q, v; g)|| per token and query head (with GQA
    every query head uses the key/value head it shares, so both scores have H rows); GLA is
    `lighthouse.gla.gated_linear_attention`.

    The gate: `score(..., context=g_BHN)` with g_BHN [B, H, N] the per-query-head log-decays
    (finite, <= 0) of the layer's tokens, computed by the model layer as `gla_log_gates(x_BNE, W_g)`
    (g = logsigmoid(x W_g^T + b_g) / 16). W_g belongs to the layer; because selection is
    gradient-free it never receives a gradient and stays at its initialization (weight
    N(0, 0.02), bias 0), exactly as in the authors' training runs. Pass it as
    `lighthouse_attention(..., scorer="gla", scorer_context=g_BHN)`.

    Without a context the scorer uses the constant log-decay `fixed_log_decay` (<= 0; 0.0 is
    plain causal linear attention); with neither it raises.

    dilation: d, the number of residue classes (default 4, as `dilated`).
    backend: "auto" (fla's `chunk_simple_gla` on CUDA when installed, else the PyTorch
        chunked form), "torch" or "fla". fla rounds outputs to the input dtype, so near-ties
        between scores may be broken differently than by the float32 PyTorch form.
    """

    name = "gla"

    def __init__(self, dilation: int = 4, fixed_log_decay: float | None = None, backend: str = "auto"):
        check_dilation(dilation)
        if fixed_log_decay is not None:
            if isinstance(fixed_log_decay, bool) or not isinstance(fixed_log_decay, (int, float)):
                raise TypeError(f"fixed_log_decay must be None or a float <= 0, got {fixed_log_decay!r}")
            if not (math.isfinite(fixed_log_decay) and fixed_log_decay <= 0):
                raise ValueError(f"fixed_log_decay is a log-decay and must be finite and <= 0, got {fixed_log_decay!r}")
            fixed_log_decay = float(fixed_log_decay)
        if backend not in GLA_BACKENDS:
            raise ValueError(f"backend must be one of {GLA_BACKENDS}, got {backend!r}")
        self.dilation = dilation
        self.fixed_log_decay = fixed_log_decay
        self.backend = backend

    def __repr__(self) -> str:
        return f"GLAScorer(dilation={self.dilation}, fixed_log_decay={self.fixed_log_decay}, backend={self.backend!r})"

    def log_gates(self, q_BHND: torch.Tensor, context) -> torch.Tensor:
        """The validated g_BHN: the context, or the fixed log-decay when there is none."""
        B, H, N, _ = q_BHND.shape
        if context is None:
            if self.fixed_log_decay is None:
                raise ValueError(
                    "scorer 'gla' needs its gates: pass scorer_context=g_BHN, the per-query-head log-decays "
                    f"[B, H, N] = [{B}, {H}, {N}] (lighthouse.gla.gla_log_gates(x_BNE, W_g) computes them from "
                    "the layer input), or use GLAScorer(fixed_log_decay=...) for a constant decay"
                )
            return q_BHND.new_full((1, 1, N), self.fixed_log_decay, dtype=accumulate_dtype(q_BHND.dtype))
        if not isinstance(context, torch.Tensor):
            raise TypeError(
                f"scorer 'gla' expects scorer_context to be a tensor g_BHN of log-decays [B, H, N], got "
                f"{type(context).__name__}"
            )
        if tuple(context.shape) != (B, H, N):
            raise ValueError(
                f"scorer 'gla': scorer_context must have shape [B, H, N] = [{B}, {H}, {N}] (one log-decay per query "
                f"head and real token, no padding), got {tuple(context.shape)}"
            )
        if not context.is_floating_point():
            raise ValueError(f"scorer 'gla': scorer_context must be a floating-point tensor, got {context.dtype}")
        if context.device != q_BHND.device:
            raise ValueError(f"scorer 'gla': scorer_context is on {context.device} but q is on {q_BHND.device}")
        return context.detach()

    @torch.no_grad()
    def score(self, q_BHND, k_BGND, v_BGND, context=None):
        B, H, N, D = q_BHND.shape
        G = k_BGND.shape[1]
        g_BHN = self.log_gates(q_BHND, context)
        d = self.dilation
        # GQA by broadcasting: query heads [B, G, R, ...], key/value heads [B, G, 1, ...].
        q = by_residue(q_BHND, d).unflatten(1, (G, H // G))
        k = by_residue(k_BGND, d).unsqueeze(2)
        v = by_residue(v_BGND, d).unsqueeze(2)
        g = by_residue(g_BHN.expand(B, H, N), d).unflatten(1, (G, H // G))
        scores = []
        for queries, keys in ((q, k), (k, q)):  # (q, k, v) for s_q; q and k swapped for s_k
            o = gated_linear_attention(queries, keys, v, g, scale=D**-0.5, backend=self.backend)
            scores.append(from_residue(o.norm(dim=-1).flatten(1, 2), N).float())
        return scores[0], scores[1]


# ---- the registry -------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[[], Scorer]] = {
    "norm": NormScorer,
    "dilated": DilatedScorer,
    "gla": GLAScorer,
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


def is_norm_scorer(scorer) -> bool:
    """Whether `scorer` (a name or an instance) is the built-in `norm` scorer, under any registered name.

    The fast path fuses exactly this scorer into its score kernel, and context parallelism
    supports exactly this one (its scores are per token, so per-chunk selection sees what
    the whole sequence would); a subclass may score differently and is not it.
    """
    return type(get_scorer(scorer)) is NormScorer
