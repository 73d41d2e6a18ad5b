"""Context parallelism (CP) for the attention layers: the sequence is split over the ranks of a group.

Load balancing (spec §8). A sequence of length N is cut into 2R equal chunks of length
C = N / (2R), R being the CP degree (size of the process group). Rank r holds chunk r and
chunk 2R-1-r, concatenated in that order ("the local shard", 2C positions). Causal
attention costs grow with the position, so every rank gets one cheap and one expensive
chunk. `shard_sequence` / `unshard_sequence` do this split and its inverse for any tensor
(inputs, targets, RoPE tables).

Lighthouse layers. Every chunk is treated as its own sequence for selection: pyramid,
scores and hierarchical selection run locally with budget K/(2R) per chunk
(`check_context_parallel` returns that per-chunk config). Each chunk then gathers its
sub-sequence (q/k/v mean-pooled at the selected entries; with rope tables, rotated at the
window-end position c*(i+1)-1 counted from the start of the FULL sequence). The 2R
sub-sequences, each already in causal order and of the same length S_c, are concatenated in
chunk order (chunk 0 first) and attend causally: a query of chunk j sees every entry of the
chunks before j and the entries of chunk j up to itself. The attention outputs are
scattered back inside their own chunk: an entry's output window [c*(i+1)-1, c*(i+2)-1) is
clipped to the end of its chunk. That clipping is the only difference from the non-CP
function with the same K and the `norm` scorer (see `lighthouse_attention_chunked_reference`).
Per chunk, selection, gather and scatter run on the fast path's kernels for CUDA tensors
(`kernels.fast_path.gather_sub_sequence` / `scatter_sub_sequence`) and on the PyTorch
reference otherwise (the layer's `backend` decides, as in `lighthouse_attention`).

Across ranks, the gathered K/V of every rank are all-gathered (autograd-aware: their
gradients return to their owners by a reduce-scatter) and each local query chunk attends to
the prefix of chunks it may see, with a bottom-right-aligned causal mask. Spec §8 (the
authors' code) runs ring attention over the concatenated sub-sequences instead; the result
is the same, and the sub-sequences are short (S_total = N/p^(L-1) + (L-1)*p*K in all).

Dense layers. Ordinary causal attention over the full sequence: K/V of every rank are
all-gathered the same way and each local chunk attends to the prefix of the sequence that
ends with it. RoPE is applied at the global positions of the local shard.

Legend: B batch, H query heads, G key/value heads, X either H or G, D head dim, N sequence
length, C chunk length N/(2R), R CP degree, S sub-sequence length of one chunk (S_c),
T length of the RoPE tables (>= the full N), s and t query and key lengths of one SDPA call.
Suffixes give shapes: q_BHND is [B, H, N, D], q_BHCD one chunk, kv_R2BHSD is
[R, 2, B, H, S, D] (R ranks, k and v stacked). In the functions that run on a rank,
q_BHND, k_BGND, v_BGND are the local shard (N there is 2C); the reference takes the full N.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import reference
from ..attention import dense_causal_attention, resolve_backend
from ..config import TILE_WIDTH, LighthouseConfig
from ..rope import apply_rotary, apply_rotary_dense
from ..scorers import is_norm_scorer

__all__ = [
    "ContextParallelDense",
    "ContextParallelLighthouse",
    "all_gather_with_grad",
    "check_context_parallel",
    "chunk_config",
    "context_parallel_dense_attention",
    "context_parallel_lighthouse_attention",
    "lighthouse_attention_chunked_reference",
    "shard_positions",
    "shard_rope",
    "shard_sequence",
    "unshard_sequence",
]


# ---------------------------------------------------------------------------------------
# Load-balanced sharding of the sequence dimension
# ---------------------------------------------------------------------------------------
def _check_degree(cp_degree: int) -> None:
    if isinstance(cp_degree, bool) or not isinstance(cp_degree, int) or cp_degree < 1:
        raise ValueError(f"CP degree R must be a positive int, got {cp_degree!r}")


def shard_sequence(x: torch.Tensor, dim: int, rank: int, cp_degree: int) -> torch.Tensor:
    """The local shard of rank `rank`: chunks `rank` and `2R-1-rank` of 2R along `dim`, concatenated.

    x.shape[dim] must be a multiple of 2R. Works for any tensor (token ids [B, N], targets,
    q [B, H, N, D], RoPE tables [N, D] with dim=0).
    """
    _check_degree(cp_degree)
    if not 0 <= rank < cp_degree:
        raise ValueError(f"rank must be in [0, {cp_degree}), got {rank}")
    n = x.shape[dim]
    if n % (2 * cp_degree):
        raise ValueError(f"length {n} along dim {dim} is not a multiple of 2R = {2 * cp_degree} (R = CP degree)")
    chunks = x.chunk(2 * cp_degree, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * cp_degree - 1 - rank]], dim=dim)


def unshard_sequence(shards: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """Inverse of `shard_sequence`: the full tensor from the R local shards listed in rank order."""
    cp_degree = len(shards)
    _check_degree(cp_degree)
    halves = [s.chunk(2, dim=dim) for s in shards]
    if any(len(h) != 2 or h[0].shape != h[1].shape for h in halves):
        raise ValueError("every shard must have an even length along `dim` (two equal chunks)")
    # Chunks 0..R-1 are the first halves in rank order; chunks R..2R-1 the second halves, last rank first.
    return torch.cat([h[0] for h in halves] + [h[1] for h in reversed(halves)], dim=dim)


def shard_positions(seq_len: int, rank: int, cp_degree: int, device=None) -> torch.Tensor:
    """Global positions [2C] of the local shard: what RoPE (or anything positional) must use."""
    return shard_sequence(torch.arange(seq_len, device=device), 0, rank, cp_degree)


def shard_rope(rope, seq_len: int, rank: int, cp_degree: int):
    """(cos, sin) rows at the local shard's global positions, for rotating an already-sharded q/k.

    `apply_rotary_dense(x_local, *shard_rope(rope, N, rank, R))` rotates every local position at
    its global position: what a model needs for the pre-pool placement under CP.
    """
    cos_TD, sin_TD = rope
    return shard_sequence(cos_TD[:seq_len], 0, rank, cp_degree), shard_sequence(sin_TD[:seq_len], 0, rank, cp_degree)


# ---------------------------------------------------------------------------------------
# Autograd-aware all-gather
# ---------------------------------------------------------------------------------------
class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather into [R, *x.shape]. Backward: the adjoint, a reduce-scatter (sum).

    Every rank's gathered copy feeds that rank's loss, so the gradient of a rank's input is
    the sum over ranks of the gradients of its copy.
    """

    @staticmethod
    def forward(ctx, x, group, use_reduce_scatter: bool):
        ctx.group, ctx.use_reduce_scatter = group, use_reduce_scatter
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad_RX):
        grad_RX = grad_RX.contiguous()
        if ctx.use_reduce_scatter:
            grad_x = torch.empty_like(grad_RX[0])
            dist.reduce_scatter(grad_x, list(grad_RX.unbind(0)), op=dist.ReduceOp.SUM, group=ctx.group)
        else:
            # Backends without reduce-scatter (older gloo): all-to-all, then a local sum.
            received_RX = torch.empty_like(grad_RX)
            dist.all_to_all_single(received_RX, grad_RX, group=ctx.group)
            grad_x = received_RX.sum(dim=0)
        return grad_x, None, None


def _backend_has_reduce_scatter(group) -> bool:
    # The backends torch's own autograd collectives trust with reduce-scatter; gloo gained it late.
    return dist.get_backend(group) in ("nccl", "xccl")


def all_gather_with_grad(x: torch.Tensor, group=None, use_reduce_scatter: bool | None = None) -> torch.Tensor:
    """[R, *x.shape]: x of every rank of `group` in rank order; gradients flow back to their owners.

    use_reduce_scatter: None picks reduce-scatter on NCCL (and XCCL), all-to-all + sum on other
    backends (gloo). Both give the same gradient.
    """
    if use_reduce_scatter is None:
        use_reduce_scatter = _backend_has_reduce_scatter(group)
    return _AllGatherWithGrad.apply(x, group, use_reduce_scatter)


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def chunk_config(cfg: LighthouseConfig, cp_degree: int) -> LighthouseConfig:
    """The per-chunk config of a Lighthouse layer (levels >= 2) under CP of degree R: budget K/(2R)."""
    _check_degree(cp_degree)
    if not is_norm_scorer(cfg.scorer):
        raise ValueError(
            f"context parallelism supports only the 'norm' scorer, got {cfg.scorer_name!r}: other scorers "
            "(dilated, gla) look across chunk boundaries, which per-chunk selection cannot do"
        )
    step = 2 * cp_degree * TILE_WIDTH
    if cfg.topk % step:
        raise ValueError(
            f"topk={cfg.topk} must be a multiple of 2R*128 = {step} under context parallelism of degree "
            f"R={cp_degree}: each of the 2R chunks selects with budget topk/(2R), a multiple of 128; "
            f"try topk={max(step, round(cfg.topk / step) * step)}"
        )
    return dataclasses.replace(cfg, topk=cfg.topk // (2 * cp_degree))


def check_context_parallel(cfg: LighthouseConfig, seq_len: int, cp_degree: int) -> LighthouseConfig | None:
    """Validate a layer under CP of degree R for the full length N; return the per-chunk config.

    Returns None for levels=1 (dense attention, which only needs N to be a multiple of 2R).
    Raises ValueError naming what to change.
    """
    _check_degree(cp_degree)
    chunks = 2 * cp_degree
    chunk_cfg = None if cfg.is_dense else chunk_config(cfg, cp_degree)
    if seq_len < 1 or seq_len % chunks:
        raise ValueError(f"sequence length N={seq_len} must be a positive multiple of 2R = {chunks} (R = CP degree)")
    if chunk_cfg is None:
        return None
    chunk_len = seq_len // chunks
    if chunk_len < chunk_cfg.min_seq_len:
        raise ValueError(
            f"sequence length N={seq_len} is too short for context parallelism of degree R={cp_degree} with "
            f"levels={cfg.levels}, pooling={cfg.pooling}, topk={cfg.topk}: each of the {chunks} chunks needs "
            f">= pooling**(levels-1) * topk/(2R) = {chunk_cfg.min_seq_len} tokens, "
            f"so N >= {chunks * chunk_cfg.min_seq_len}"
        )
    if chunk_len % chunk_cfg.length_multiple:
        # No padding under CP: padding a chunk would put padding entries in the middle of the sequence.
        multiple = chunks * chunk_cfg.length_multiple
        raise ValueError(
            f"sequence length N={seq_len} must be a multiple of {multiple} under context parallelism of degree "
            f"R={cp_degree} (2R chunks, each a multiple of pooling**(levels-1) * topk/(2R*128)); chunks are not padded"
        )
    return chunk_cfg


def _check_inputs(q_BHND, k_BGND, v_BGND, rope, seq_len: int) -> None:
    """Shapes of the (local or full) q, k, v and of full-length rope tables."""
    if q_BHND.dim() != 4 or k_BGND.dim() != 4 or k_BGND.shape != v_BGND.shape:
        raise ValueError(
            f"expected q [B, H, N, D] and k, v [B, G, N, D], got {tuple(q_BHND.shape)}, "
            f"{tuple(k_BGND.shape)}, {tuple(v_BGND.shape)}"
        )
    B, H, N, D = q_BHND.shape
    G = k_BGND.shape[1]
    if (k_BGND.shape[0], k_BGND.shape[2], k_BGND.shape[3]) != (B, N, D) or H % G:
        raise ValueError(
            f"k/v shape {tuple(k_BGND.shape)} does not fit q shape {tuple(q_BHND.shape)}: batch, length and head "
            "dim must agree and H must be a multiple of G"
        )
    if rope is not None:
        if not (isinstance(rope, (tuple, list)) and len(rope) == 2):
            raise TypeError("rope must be None or a (cos, sin) pair of tables [T, D] for the FULL sequence")
        cos_TD, sin_TD = rope
        if cos_TD.shape != sin_TD.shape or cos_TD.dim() != 2 or cos_TD.shape[1] != D or cos_TD.shape[0] < seq_len:
            raise ValueError(
                f"rope tables must cover the full sequence: shape [T >= N={seq_len}, D={D}], "
                f"got {tuple(cos_TD.shape)} and {tuple(sin_TD.shape)}"
            )


# ---------------------------------------------------------------------------------------
# Per-chunk building blocks (shared by the single-process reference and the CP layer)
# ---------------------------------------------------------------------------------------
def _gather_chunk(q_BHCD, k_BGCD, v_BGCD, chunk_cfg: LighthouseConfig, chunk_start: int, rope, backend: str):
    """Select on one chunk and gather its sub-sequence: (q, k, v) [B, H, S, D] and the chunk's plan.

    Window-end RoPE rotates at global positions: the chunk-local window end plus chunk_start.
    backend "triton": the fast path's kernels (`gather_sub_sequence`), with the tables sliced
    to start at chunk_start; "reference": the PyTorch reference. Same selection, same values.
    """
    chunk_len = q_BHCD.shape[2]
    if backend == "triton":
        from ..kernels.fast_path import gather_sub_sequence

        chunk_rope = None if rope is None else (rope[0][chunk_start:], rope[1][chunk_start:])
        return gather_sub_sequence(q_BHCD, k_BGCD, v_BGCD, chunk_cfg, chunk_rope)
    plan = reference.compute_selection(q_BHCD, k_BGCD, v_BGCD, chunk_cfg)
    q_BHSD = reference.gather_pyramid(q_BHCD, plan.index_BHS, chunk_cfg)
    k_BHSD = reference.gather_pyramid(k_BGCD, plan.index_BHS, chunk_cfg)
    v_BHSD = reference.gather_pyramid(v_BGCD, plan.index_BHS, chunk_cfg)
    if rope is not None:
        pos_BHS = reference.window_end_positions(plan.index_BHS, chunk_cfg, chunk_len) + chunk_start
        q_BHSD = apply_rotary(q_BHSD, pos_BHS, *rope)
        k_BHSD = apply_rotary(k_BHSD, pos_BHS, *rope)
    return q_BHSD, k_BHSD, v_BHSD, plan


def _scatter_chunk(o_BHSD, plan, chunk_cfg: LighthouseConfig, chunk_len: int, backend: str) -> torch.Tensor:
    """The chunk's sub-sequence outputs back to its positions [B, H, C, D], windows clipped at its end."""
    if backend == "triton":
        from ..kernels.fast_path import scatter_sub_sequence

        return scatter_sub_sequence(o_BHSD, plan, chunk_cfg, chunk_len)
    return reference.scatter_back(o_BHSD, plan.index_BHS, chunk_cfg, chunk_len)


def _chunk_backend(cfg: LighthouseConfig, q_BHND: torch.Tensor) -> str:
    """The layer's backend ("auto": the Triton kernels on CUDA) for the chunks of q."""
    backend = resolve_backend(cfg.backend, q_BHND)
    if backend == "triton":
        from ..kernels.fast_path import supported

        return "triton" if supported(q_BHND) else "reference"
    return backend


def _attend_prefix(q_BHsD, k_BXtD, v_BXtD) -> torch.Tensor:
    """Queries that are the last s of t key positions: causal, aligned at the bottom right.

    Query i sees keys [0, t - s + i]. causal_lower_right lets SDPA use its fused kernels on GPU
    instead of a materialized [s, t] mask (the mask is built only on the math fallback).
    """
    s, t = q_BHsD.shape[2], k_BXtD.shape[2]
    gqa = q_BHsD.shape[1] != k_BXtD.shape[1]
    if s == t:
        return F.scaled_dot_product_attention(q_BHsD, k_BXtD, v_BXtD, is_causal=True, enable_gqa=gqa)
    # Imported here: torch.nn.attention.bias loads torch._dynamo, over a second of start-up for the commands
    # that never come here (eval, sample, export build no optimizer, which would load it anyway).
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q_BHsD, k_BXtD, v_BXtD, attn_mask=causal_lower_right(s, t), enable_gqa=gqa)


# ---------------------------------------------------------------------------------------
# Single-process reference of the decomposition
# ---------------------------------------------------------------------------------------
def lighthouse_attention_chunked_reference(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, cp_degree: int, rope=None):
    """The CP decomposition of degree R computed in one process, on the FULL sequence: o_BHND.

    2R chunks select with budget K/(2R) each; their gathered sub-sequences, concatenated in
    chunk order, go through one causal SDPA; every chunk scatters back inside itself.

    Relation to the non-CP function (norm scorer, same K, no padding): the per-chunk tiles are
    exactly the global tiles (T = K/128 tiles of N/(p^(L-1) T) coarsest entries each, chunk j
    owning tiles j*T/(2R) ...), and norm scores are per token, so selection, order, pooled
    vectors and window-end positions are identical and the concatenated sub-sequence is the
    global one. The outputs differ only at the first p^(L-1)-1 positions of every chunk after
    the first, which lose the output of the previous chunk's last entries (clipped scatter).

    levels=1 is dense causal attention (ordinary RoPE when tables are given).
    """
    N = q_BHND.shape[2]
    _check_inputs(q_BHND, k_BGND, v_BGND, rope, N)
    chunk_cfg = check_context_parallel(cfg, N, cp_degree)
    if chunk_cfg is None:
        return dense_causal_attention(q_BHND, k_BGND, v_BGND, rope)
    chunk_len = N // (2 * cp_degree)
    backend = _chunk_backend(cfg, q_BHND)
    gathered = [
        _gather_chunk(q_BHCD, k_BGCD, v_BGCD, chunk_cfg, j * chunk_len, rope, backend)
        for j, (q_BHCD, k_BGCD, v_BGCD) in enumerate(
            zip(q_BHND.split(chunk_len, 2), k_BGND.split(chunk_len, 2), v_BGND.split(chunk_len, 2))
        )
    ]
    q_BHSD, k_BHSD, v_BHSD = (torch.cat([g[i] for g in gathered], dim=2) for i in range(3))
    o_BHSD = F.scaled_dot_product_attention(q_BHSD, k_BHSD, v_BHSD, is_causal=True)
    sub_len = gathered[0][0].shape[2]  # the same for every chunk: C/p^(L-1) + (L-1)*p*K/(2R)
    return torch.cat(
        [
            _scatter_chunk(o_BHsD, g[3], chunk_cfg, chunk_len, backend)
            for o_BHsD, g in zip(o_BHSD.split(sub_len, dim=2), gathered)
        ],
        dim=2,
    )


# ---------------------------------------------------------------------------------------
# Context-parallel attention (on the local shard)
# ---------------------------------------------------------------------------------------
def _local_chunks(group) -> tuple[int, int, tuple[int, int]]:
    rank, cp_degree = dist.get_rank(group), dist.get_world_size(group)
    return rank, cp_degree, (rank, 2 * cp_degree - 1 - rank)


def _shard_lengths(q_BHND, cp_degree: int) -> tuple[int, int]:
    """(chunk length C, full length N) from the local shard, which holds two equal chunks."""
    if q_BHND.dim() != 4 or q_BHND.shape[2] % 2:
        raise ValueError(f"q must be the local shard [B, H, 2C, D] (two equal chunks), got shape {tuple(q_BHND.shape)}")
    chunk_len = q_BHND.shape[2] // 2
    return chunk_len, 2 * cp_degree * chunk_len


def context_parallel_dense_attention(q_BHND, k_BGND, v_BGND, group=None, rope=None) -> torch.Tensor:
    """Causal attention over the full sequence, computed on the local shard [B, H, 2C, D] of every rank.

    rope: None when q/k are already rotated at their global positions, else (cos, sin) tables
    [T >= N, D] for the FULL sequence; the local shard is rotated at its global positions.
    Equals `dense_causal_attention` on the full sequence, sharded.
    """
    rank, cp_degree, local_chunks = _local_chunks(group)
    chunk_len, seq_len = _shard_lengths(q_BHND, cp_degree)
    _check_inputs(q_BHND, k_BGND, v_BGND, rope, seq_len)
    if rope is not None:
        local_rope = shard_rope(rope, seq_len, rank, cp_degree)
        q_BHND = apply_rotary_dense(q_BHND, *local_rope)
        k_BGND = apply_rotary_dense(k_BGND, *local_rope)
    kv_R2BGND = all_gather_with_grad(torch.stack([k_BGND, v_BGND]), group)
    k_BGND_full, v_BGND_full = unshard_sequence(list(kv_R2BGND.unbind(0)), dim=3).unbind(0)
    outputs = [
        _attend_prefix(q_BHCD, k_BGND_full[:, :, : (j + 1) * chunk_len], v_BGND_full[:, :, : (j + 1) * chunk_len])
        for j, q_BHCD in zip(local_chunks, q_BHND.chunk(2, dim=2))
    ]
    return torch.cat(outputs, dim=2)


def context_parallel_lighthouse_attention(
    q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, group=None, rope=None
) -> torch.Tensor:
    """Lighthouse attention under CP, on the local shard [B, H, 2C, D] of every rank: o_BHND (local).

    rope: None for the pre-pool placement (q/k already rotated at their global positions, see
    `shard_rope`), or (cos, sin) tables [T >= N, D] for the FULL sequence: window-end RoPE at
    global positions. Equals `lighthouse_attention_chunked_reference` on the full sequence, sharded.
    """
    _, cp_degree, local_chunks = _local_chunks(group)
    chunk_len, seq_len = _shard_lengths(q_BHND, cp_degree)
    _check_inputs(q_BHND, k_BGND, v_BGND, rope, seq_len)
    chunk_cfg = check_context_parallel(cfg, seq_len, cp_degree)
    if chunk_cfg is None:
        return context_parallel_dense_attention(q_BHND, k_BGND, v_BGND, group, rope)
    backend = _chunk_backend(cfg, q_BHND)
    gathered = [
        _gather_chunk(q_BHCD, k_BGCD, v_BGCD, chunk_cfg, j * chunk_len, rope, backend)
        for j, q_BHCD, k_BGCD, v_BGCD in zip(
            local_chunks, q_BHND.chunk(2, dim=2), k_BGND.chunk(2, dim=2), v_BGND.chunk(2, dim=2)
        )
    ]
    sub_len = gathered[0][0].shape[2]
    # Only the gathered sub-sequences travel: S_total = N/p^(L-1) + (L-1)*p*K entries per query head in all.
    kv_2BHSD = torch.stack([torch.cat([g[1] for g in gathered], dim=2), torch.cat([g[2] for g in gathered], dim=2)])
    kv_R2BHSD = all_gather_with_grad(kv_2BHSD, group)
    k_BHSD_all, v_BHSD_all = unshard_sequence(list(kv_R2BHSD.unbind(0)), dim=3).unbind(0)  # chunk order
    outputs = []
    for j, (q_BHSD, _, _, plan) in zip(local_chunks, gathered):
        visible = (j + 1) * sub_len  # chunks 0..j
        o_BHSD = _attend_prefix(q_BHSD, k_BHSD_all[:, :, :visible], v_BHSD_all[:, :, :visible])
        outputs.append(_scatter_chunk(o_BHSD, plan, chunk_cfg, chunk_len, backend))
    return torch.cat(outputs, dim=2)


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------
class ContextParallelLighthouse(nn.Module):
    """Lighthouse attention under CP over `group` (None: the default group). No parameters.

    forward(q [B, H, 2C, D], k [B, G, 2C, D], v [B, G, 2C, D], rope=None) -> [B, H, 2C, D],
    all on the local shard (chunks r and 2R-1-r). rope: (cos, sin) tables for the FULL length
    (window-end placement at global positions) or None (q/k already rotated: pre-pool).
    """

    def __init__(self, cfg: LighthouseConfig, group=None):
        super().__init__()
        self.config, self.group = cfg, group
        if not cfg.is_dense:  # fail at construction on what does not depend on N (scorer, topk)
            chunk_config(cfg, dist.get_world_size(group))

    def forward(self, q_BHND, k_BGND, v_BGND, rope=None) -> torch.Tensor:
        return context_parallel_lighthouse_attention(q_BHND, k_BGND, v_BGND, self.config, self.group, rope)

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, cp_degree={dist.get_world_size(self.group)}"


class ContextParallelDense(nn.Module):
    """Dense causal attention under CP over `group` (None: the default group). No parameters.

    forward(q [B, H, 2C, D], k [B, G, 2C, D], v [B, G, 2C, D], rope=None) -> [B, H, 2C, D] on
    the local shard. rope: (cos, sin) tables for the FULL length (ordinary RoPE at global
    positions) or None (q/k already rotated).
    """

    def __init__(self, group=None):
        super().__init__()
        self.group = group

    def forward(self, q_BHND, k_BGND, v_BGND, rope=None) -> torch.Tensor:
        return context_parallel_dense_attention(q_BHND, k_BGND, v_BGND, self.group, rope)

    def extra_repr(self) -> str:
        return f"cp_degree={dist.get_world_size(self.group)}"
