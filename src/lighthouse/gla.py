"""The `gla` scorer: gated linear attention inside residue classes (spec §7).

Like `dilated`, the sequence is split by residue t mod d (dilation, default 4) and each class
is processed causally on its own; softmax attention is replaced by gated linear attention
(GLA) with one scalar decay per head and token. Per class and head, in the recurrent form,

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t          (S_0 = 0, a D x D state)
    o_t = scale * q_t S_t                         (scale = 1/sqrt(D))

that is o_t = scale * sum_{j <= t} exp(g_{j+1} + ... + g_t) (q_t . k_j) v_j: the decay of
token t is applied to the state before token t's own k^T v is added, and the scale multiplies
q. These are the semantics of flash-linear-attention's `chunk_simple_gla`, which the
authors call on GPU. The scores are s_q = ||o|| with (q, k, v) and s_k = ||o|| with q and k
swapped (same v, same gates); the pyramid max-pools them like every other score.

The gate g (log-space, <= 0) comes from the layer input: g = logsigmoid(x W_g^T + b_g) / 16
with one value per *query* head (`gla_log_gates`). Selection is gradient-free, so nothing
ever trains W_g: it keeps its initialization (weight ~ N(0, 0.02), bias 0;
`init_gate_projection`). The model layer owns W_g and passes the computed gates as
`scorer_context`; without them the scorer needs a fixed decay (`fixed_log_decay`).

Three implementations of the same function:
- `gla_recurrent`: the recurrence above, one step per token (the readable reference; tests).
- `gla_chunked`: the chunked form in PyTorch: exact causal decay-weighted attention inside
  chunks of C tokens plus a state carried across chunks; chunks are handled a block at a
  time, so memory stays bounded at any N. Accumulates in float32 (float64 for float64 input).
- `gla_fla`: flash-linear-attention's `chunk_simple_gla` (CUDA, optional:
  `pip install lighthouse[gla]`).

Legend of shape suffixes: B batch, H query heads, G key/value heads, R = H / G query heads
per key/value head, d dilation, M = ceil(N / d) tokens per residue class, N sequence length,
D head dim, E model dim, C chunk size, K chunks in a block. A leading `...` means any
batch-like dims, which broadcast between q, k, v and g (GQA without copying k and v).
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from .scorers import Scorer

GATE_LOGIT_NORMALIZER = 16.0  # g = logsigmoid(x W_g^T + b_g) / 16, as in the authors' code
GATE_INIT_STD = 0.02  # W_g ~ N(0, 0.02), b_g = 0; never trained (selection has no gradient)
GLA_BACKENDS = ("auto", "torch", "fla")
CHUNK_SIZE = 64
BLOCK_CHUNKS = 32  # chunks per block of `gla_chunked`: bounds the per-block state tensors


# ---------------------------------------------------------------------------------------
# The gate (computed by the model layer, which owns W_g)
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def init_gate_projection(gate: nn.Linear, generator: torch.Generator | None = None) -> nn.Linear:
    """The authors' init of W_g: normal with std 0.02 (truncated at +-2, which never binds) and zero bias."""
    nn.init.trunc_normal_(gate.weight, mean=0.0, std=GATE_INIT_STD, generator=generator)
    if gate.bias is not None:
        nn.init.zeros_(gate.bias)
    return gate


def make_gate_projection(dim: int, n_heads: int, generator: torch.Generator | None = None, **factory) -> nn.Linear:
    """W_g: model dim -> one log-gate per query head, with bias; initialized and frozen (it is never trained).

    `factory`: device / dtype keywords of `nn.Linear`.
    """
    gate = init_gate_projection(nn.Linear(dim, n_heads, bias=True, **factory), generator)
    return gate.requires_grad_(False)


@torch.no_grad()
def gla_log_gates(x_BNE: torch.Tensor, gate: nn.Linear) -> torch.Tensor:
    """g_BHN = logsigmoid(gate(x)) / 16 in float32: the `scorer_context` of `GLAScorer`.

    No gradient: selection is gradient-free, so the gate's weights never learn.
    """
    logits_BNH = gate(x_BNE).float()
    return (F.logsigmoid(logits_BNH) / GATE_LOGIT_NORMALIZER).transpose(1, 2)


# ---------------------------------------------------------------------------------------
# Gated linear attention: three forms of one function
# ---------------------------------------------------------------------------------------
def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _lead_shape(q, k, v, g) -> torch.Size:
    """The broadcast batch-like dims of q, k, v [..., N, D] and g [..., N]."""
    return torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], g.shape[:-1])


def gla_recurrent(q, k, v, g, scale: float | None = None) -> torch.Tensor:
    """The recurrence, one token at a time: o [..., N, D] in float32 (float64 for float64 input).

    q, k [..., N, D], v [..., N, Dv], g [..., N] log-decays; leading dims broadcast.
    """
    N, D = q.shape[-2:]
    scale = D**-0.5 if scale is None else scale
    acc = _accumulate_dtype(q.dtype)
    q, k, v, g = (t.to(acc) for t in (q, k, v, g))
    lead = _lead_shape(q, k, v, g)
    state = q.new_zeros(*lead, D, v.shape[-1])
    out = []
    for t in range(N):
        kv = k[..., t, :, None] * v[..., t, None, :]  # k_t^T v_t
        state = g[..., t, None, None].exp() * state + kv  # decay first, then add token t
        out.append(scale * (q[..., t, None, :] @ state).squeeze(-2))
    return torch.stack(out, dim=-2)


def _chunks(x_ND, K: int, C: int, acc: torch.dtype):
    """[..., n, D] -> [..., K, C, D] in the accumulate dtype, right-padded with zeros to K * C tokens.

    Only a block's tail is padded, and zero k, v and a zero log-decay there change no earlier output.
    """
    x_ND = F.pad(x_ND.to(acc), (0, 0, 0, K * C - x_ND.shape[-2]))
    return x_ND.unflatten(-2, (K, C))


def gla_chunked(q, k, v, g, scale: float | None = None, *, chunk_size: int = CHUNK_SIZE,
                block_chunks: int = BLOCK_CHUNKS) -> torch.Tensor:
    """The same function, chunked: o [..., N, Dv] in float32 (float64 for float64 input).

    Inside a chunk: o_i = scale * sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j, with G the
    cumulative log-decay from the chunk start; plus the state entering the chunk, decayed by
    exp(G_i). The states entering the chunks of a block come from one decay-weighted sum over
    the block's chunk summaries, and the state at the block's end is carried to the next
    block. All exponents are <= 0 (sums of log-decays), so nothing overflows.
    """
    if chunk_size < 1 or block_chunks < 1:
        raise ValueError(f"chunk_size and block_chunks must be >= 1, got {chunk_size} and {block_chunks}")
    N, D = q.shape[-2:]
    Dv = v.shape[-1]
    scale = D**-0.5 if scale is None else scale
    acc = _accumulate_dtype(q.dtype)
    lead = _lead_shape(q, k, v, g)
    C = chunk_size
    causal_CC = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    out = q.new_empty(*lead, N, Dv, dtype=acc)
    state_DD = q.new_zeros(*lead, D, Dv, dtype=acc)  # state entering the current block
    block_len = C * block_chunks
    for start in range(0, N, block_len):
        stop = min(start + block_len, N)
        n = stop - start
        K = -(-n // C)
        q_KCD, k_KCD, v_KCD = (_chunks(x[..., start:stop, :], K, C, acc) for x in (q, k, v))
        g_KC = _chunks(g[..., start:stop, None], K, C, acc).squeeze(-1)
        G_KC = g_KC.cumsum(-1)  # log-decay from the chunk start up to and including token i
        chunk_decay_K = G_KC[..., -1]

        # Intra-chunk: causal attention weighted by exp(G_i - G_j), masked before exp.
        log_decay_KCC = (G_KC[..., :, None] - G_KC[..., None, :]).masked_fill(~causal_CC, float("-inf"))
        scores_KCC = (q_KCD @ k_KCD.transpose(-1, -2)) * log_decay_KCC.exp()
        o_KCD = scores_KCC @ v_KCD

        # Each chunk's contribution to the state at its end: sum_j exp(G_last - G_j) k_j^T v_j.
        summary_KDD = (k_KCD * (chunk_decay_K[..., None] - G_KC).exp()[..., None]).transpose(-1, -2) @ v_KCD
        # Log-decay from the block start to the start of chunk c (c = K: the block's end).
        start_decay = F.pad(chunk_decay_K.cumsum(-1), (1, 0))  # [..., K + 1]
        # State entering chunk c: exp(start_decay[c]) * state
        #                         + sum_{c' < c} exp(start_decay[c] - start_decay[c' + 1]) * summary[c'].
        log_w = start_decay[..., :, None] - start_decay[..., None, 1:]  # [..., K + 1, K]
        later = torch.ones(K + 1, K, dtype=torch.bool, device=q.device).tril(-1)
        weight = log_w.masked_fill(~later, float("-inf")).exp()
        carried = (weight @ summary_KDD.flatten(-2)).unflatten(-1, (D, Dv))
        states = start_decay.exp()[..., None, None] * state_DD.unsqueeze(-3) + carried  # [..., K + 1, D, Dv]

        o_KCD = o_KCD + G_KC.exp()[..., None] * (q_KCD @ states[..., :K, :, :])
        out[..., start:stop, :] = (scale * o_KCD).flatten(-3, -2)[..., :n, :]
        state_DD = states[..., K, :, :]
    return out


@functools.cache
def fla_available() -> bool:
    """Whether flash-linear-attention's `chunk_simple_gla` can be imported."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken install (fla imports triton kernels on import)
        return False
    return True


def gla_fla(q, k, v, g, scale: float | None = None) -> torch.Tensor:
    """The same function by flash-linear-attention's `chunk_simple_gla` (CUDA): o [..., N, Dv] in float32.

    q, k, v run in their dtype (bfloat16/float16/float32) with float32 gates; fla accumulates
    in float32 and rounds its output to q's dtype, so this is less exact than `gla_chunked`.
    """
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as e:
        raise RuntimeError(
            "the gla scorer's fla backend needs flash-linear-attention (pip install 'lighthouse[gla]')"
        ) from e
    N, D = q.shape[-2:]
    Dv = v.shape[-1]
    scale = D**-0.5 if scale is None else scale
    lead = _lead_shape(q, k, v, g)

    def heads_last(x, width):  # [..., N, width] -> [1, N, L, width]: every leading index is one fla head
        return x.expand(*lead, N, width).reshape(-1, N, width).transpose(0, 1).unsqueeze(0)

    gates = g.float().expand(*lead, N).reshape(-1, N).transpose(0, 1).unsqueeze(0)
    kwargs = {"scale": scale}
    if "head_first" in inspect.signature(chunk_simple_gla).parameters:
        kwargs["head_first"] = False  # older fla versions default to [B, H, T, D]
    o, _ = chunk_simple_gla(heads_last(q, D), heads_last(k, D), heads_last(v, Dv), g=gates, **kwargs)
    return o.squeeze(0).transpose(0, 1).reshape(*lead, N, Dv).float()


def gated_linear_attention(q, k, v, g, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Dispatch: "auto" uses fla on CUDA when it is installed (and the dtype is not float64), else `gla_chunked`."""
    if backend not in GLA_BACKENDS:
        raise ValueError(f"backend must be one of {GLA_BACKENDS}, got {backend!r}")
    if backend == "auto":
        use_fla = q.is_cuda and q.dtype != torch.float64 and fla_available()
        backend = "fla" if use_fla else "torch"
    if backend == "fla":
        if not q.is_cuda:
            raise ValueError("the gla scorer's fla backend runs on CUDA tensors; use backend='torch' on CPU")
        return gla_fla(q, k, v, g, scale)
    return gla_chunked(q, k, v, g, scale)


# ---------------------------------------------------------------------------------------
# The scorer
# ---------------------------------------------------------------------------------------
def _by_residue(x, d: int):
    """[B, X, N, ...] -> [B, X, d, M, ...]: class r holds positions r, r + d, r + 2d, ... (a view when d | N)."""
    N = x.shape[2]
    M = -(-N // d)
    # Right-padding adds only later positions, which a causal recurrence never lets reach earlier ones.
    x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, M * d - N))
    return x.unflatten(2, (M, d)).transpose(2, 3)


def _from_residue(s_BXdM, N: int):
    """[B, X, d, M] -> [B, X, N] (inverse of `_by_residue` for per-token values)."""
    return s_BXdM.transpose(2, 3).flatten(2)[..., :N]


class GLAScorer(Scorer):
    """`gla`: gated linear attention inside each residue class t mod d (spec §7).

    s_q = ||GLA(q, k, v; g)||, s_k = ||GLA(k, q, v; g)|| per token and query head (with GQA
    every query head uses the key/value head it shares, so both scores have H rows).

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
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation must be a positive int, got {dilation!r}")
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
            return q_BHND.new_full((1, 1, N), self.fixed_log_decay, dtype=_accumulate_dtype(q_BHND.dtype))
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
        q = _by_residue(q_BHND, d).unflatten(1, (G, H // G))
        k = _by_residue(k_BGND, d).unsqueeze(2)
        v = _by_residue(v_BGND, d).unsqueeze(2)
        g = _by_residue(g_BHN.expand(B, H, N), d).unflatten(1, (G, H // G))
        scores = []
        for queries, keys in ((q, k), (k, q)):  # (q, k, v) for s_q; q and k swapped for s_k
            o = gated_linear_attention(queries, keys, v, g, scale=D**-0.5, backend=self.backend)
            scores.append(_from_residue(o.norm(dim=-1).flatten(1, 2), N).float())
        return scores[0], scores[1]
