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

Legend: B batch, H query heads, G key/value heads, X either (or rows of a batch of attentions),
R = H / G query heads per key/value head, N sequence length, D head dim, d dilation,
M = ceil(N / d) tokens per residue class, b / c a block of queries / keys.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

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


def dilated_scores_dense(q_BHND, k_BGND, v_BGND, dilation: int):
    """The `dilated` scores written plainly: one causal SDPA over every residue class at once.

    The readable form of `DilatedScorer.score` (what the tests compare it with). Its five-dimensional
    float32 SDPA runs on the math kernel, which materializes the [M, M] scores of every class: it
    needs B * H * d * M^2 * 4 bytes (128 GiB at N = 128K, H = 8), so use it at small N only.
    """
    B, H, N, D = q_BHND.shape
    rep = H // k_BGND.shape[1]
    q = by_residue(q_BHND.float(), dilation)
    k = by_residue(k_BGND.float(), dilation).repeat_interleave(rep, dim=1)
    v = by_residue(v_BGND.float(), dilation).repeat_interleave(rep, dim=1)
    out_qk = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out_kq = F.scaled_dot_product_attention(k, q, v, is_causal=True)
    return from_residue(out_qk.norm(dim=-1), N), from_residue(out_kq.norm(dim=-1), N)


def blocked_causal_attention(q_XMD, k_XMD, v_XMD, block: int = 1024):
    """Causal softmax attention, [X, M, D] -> [X, M, D], one [block, block] tile of scores at a time.

    Query blocks against the key blocks at or before them, with a running maximum and sum
    (the online softmax), so memory is O(X * block^2 + X * M * D) at any M. The fallback of
    `causal_attention` where no fused SDPA kernel takes the inputs (e.g. float64 on CUDA).
    """
    X, M, D = q_XMD.shape
    out_XMD = torch.empty_like(q_XMD)
    scale = D**-0.5
    for i0 in range(0, M, block):
        i1 = min(i0 + block, M)
        q_XbD = q_XMD[:, i0:i1] * scale
        max_Xb = q_XbD.new_full((X, i1 - i0), -math.inf)
        sum_Xb = q_XbD.new_zeros(X, i1 - i0)
        acc_XbD = torch.zeros_like(q_XbD)
        for j0 in range(0, i1, block):
            j1 = min(j0 + block, i1)
            s_Xbc = q_XbD @ k_XMD[:, j0:j1].transpose(1, 2)
            if j1 > i0:  # the diagonal tile: key j is visible to query i when j <= i
                future = torch.arange(j0, j1, device=s_Xbc.device) > torch.arange(i0, i1, device=s_Xbc.device)[:, None]
                s_Xbc = s_Xbc.masked_fill(future, -math.inf)
            new_max_Xb = torch.maximum(max_Xb, s_Xbc.amax(-1))
            p_Xbc = torch.exp(s_Xbc - new_max_Xb[..., None])
            rescale_Xb = torch.exp(max_Xb - new_max_Xb)
            sum_Xb = sum_Xb * rescale_Xb + p_Xbc.sum(-1)
            acc_XbD = acc_XbD * rescale_Xb[..., None] + p_Xbc @ v_XMD[:, j0:j1]
            max_Xb = new_max_Xb
        out_XMD[:, i0:i1] = acc_XbD / sum_Xb[..., None]
    return out_XMD


_FUSED_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
_fused_rejects: set = set()  # (device type, dtype, D) that no fused kernel took: go to the blocked form at once


def causal_attention(q_XMD, k_XMD, v_XMD, block: int = 1024):
    """Causal softmax attention [X, M, D] without an [M, M] matrix in memory.

    A fused SDPA kernel when one takes the inputs (flash on CPU, memory-efficient on CUDA for
    float32: both keep O(M) memory); never SDPA's math kernel, which materializes [X, M, M];
    else `blocked_causal_attention`.
    """
    key = (q_XMD.device.type, q_XMD.dtype, q_XMD.shape[-1])
    if key not in _fused_rejects:
        try:
            with warnings.catch_warnings(), sdpa_kernel(_FUSED_SDPA):
                warnings.simplefilter("ignore")  # SDPA warns per backend it rules out before it raises
                return F.scaled_dot_product_attention(q_XMD[None], k_XMD[None], v_XMD[None], is_causal=True)[0]
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:  # "No available kernel": the blocked form below, from now on
            _fused_rejects.add(key)
    return blocked_causal_attention(q_XMD, k_XMD, v_XMD, block)


class DilatedScorer(Scorer):
    """`dilated`: causal softmax attention inside each residue class t mod d (spec §7).

    s_q = ||softmax(Q K^T) V||, s_k = the same with Q and K swapped. With GQA the query
    heads of one group share K and V, and the swapped attention (K as queries, Q as keys)
    is per query head, so s_k has one row per query head.

    Memory is linear in N: the attentions run per (batch, key/value head) and over at most
    `chunk_elems` elements of float32 rows at a time (query heads x classes x M x D), with a
    kernel that never forms the [M, M] scores (`causal_attention`). Float32 throughout, as the
    spec asks of scores; `dilated_scores_dense` is the same computation written plainly.
    """

    name = "dilated"

    def __init__(self, dilation: int = 4, chunk_elems: int = 1 << 26):
        self.dilation = check_dilation(dilation)
        self.chunk_elems = chunk_elems

    def __repr__(self) -> str:
        return f"DilatedScorer(dilation={self.dilation})"

    @torch.no_grad()
    def score(self, q_BHND, k_BGND, v_BGND, context=None):
        B, H, N, D = q_BHND.shape
        G = k_BGND.shape[1]
        R, d = H // G, self.dilation
        q_BHdMD = by_residue(q_BHND, d)  # views (a padded copy in the input dtype when d does not divide N)
        k_BGdMD, v_BGdMD = by_residue(k_BGND, d), by_residue(v_BGND, d)
        M = q_BHdMD.shape[3]
        heads = max(1, min(R, self.chunk_elems // (d * M * D)))  # query heads of one group per chunk
        sq_BHdM = q_BHND.new_empty(B, H, d, M, dtype=torch.float32)
        sk_BHdM = torch.empty_like(sq_BHdM)
        for b in range(B):
            for g in range(G):
                k_dMD, v_dMD = k_BGdMD[b, g].float(), v_BGdMD[b, g].float()
                for h0 in range(g * R, (g + 1) * R, heads):
                    h1 = min(h0 + heads, (g + 1) * R)
                    q_XMD = q_BHdMD[b, h0:h1].float().flatten(0, 1)  # rows (head, class)
                    k_XMD = k_dMD.expand(h1 - h0, d, M, D).flatten(0, 1)
                    v_XMD = v_dMD.expand(h1 - h0, d, M, D).flatten(0, 1)
                    sq_BHdM[b, h0:h1] = causal_attention(q_XMD, k_XMD, v_XMD).norm(dim=-1).view(h1 - h0, d, M)
                    sk_BHdM[b, h0:h1] = causal_attention(k_XMD, q_XMD, v_XMD).norm(dim=-1).view(h1 - h0, d, M)
        return from_residue(sq_BHdM, N), from_residue(sk_BHdM, N)


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
