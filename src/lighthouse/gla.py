"""Gated linear attention (GLA), the operation behind the `gla` scorer (spec §7), and its gates.

With one scalar decay per head and token, in the recurrent form,

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t          (S_0 = 0, a D x D state)
    o_t = scale * q_t S_t                         (scale = 1/sqrt(D))

that is o_t = scale * sum_{j <= t} exp(g_{j+1} + ... + g_t) (q_t . k_j) v_j: the decay of
token t is applied to the state before token t's own k^T v is added, and the scale multiplies
q. These are the semantics of flash-linear-attention's `chunk_simple_gla`, which the
authors call on GPU. The scorer (`lighthouse.scorers.GLAScorer`) runs it inside residue
classes t mod d, with q and k swapped for s_k.

The gate g (log-space, <= 0) comes from the layer input: g = logsigmoid(x W_g^T + b_g) / 16
with one value per *query* head (`gla_log_gates`). Selection is gradient-free, so nothing
ever trains W_g: it keeps its initialization (weight ~ N(0, 0.02), bias 0;
`init_gate_projection`). The model layer owns W_g and passes the computed gates as
`scorer_context`.

Three implementations of the same function:
- `gla_recurrent`: the recurrence above, one step per token (the readable reference; tests).
- `gla_chunked`: the chunked form in PyTorch: exact causal decay-weighted attention inside
  chunks of C tokens plus a state carried across chunks; chunks are handled a block at a
  time, so memory stays bounded at any N. Accumulates in float32 (float64 for float64 input).
- `gla_fla`: flash-linear-attention's `chunk_simple_gla` (CUDA, optional:
  `pip install lighthouse[gla]`).

Legend of shape suffixes: N sequence length, D head dim, E model dim, H query heads, C chunk
size, K chunks in a block. A leading `...` means any batch-like dims, which broadcast between
q, k, v and g (GQA without copying k and v).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

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
def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
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
    acc = accumulate_dtype(q.dtype)
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
    acc = accumulate_dtype(q.dtype)
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
