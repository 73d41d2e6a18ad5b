"""The GPU fast path of `lighthouse_attention`: custom ops around one stock causal SDPA call.

    q, k, v ──norm_scores──▶ s_q, s_k pyramids (levels 2..L), coarsest means of q, k, v  (no grad)
            ──select──────▶ index_BHS, slot_BHP, per-level lists                        (no grad)
            ──gather──────▶ q_sub, k_sub, v_sub [B, H, S, D]      (backward: pool adjoint)
            ──SDPA (causal, FlashAttention / cuDNN)──▶ o_sub
            ──scatter─────▶ o [B, H, N, D]                         (backward: sum over spans)

Every piece is a `torch.library` custom op with a fake (meta) implementation, so
`torch.compile(fullgraph=True)` traces through the function; shapes depend only on
(B, H, G, N, D) and the configuration, and nothing in the hot path syncs the host, so the
whole layer can be captured in a CUDA graph. Non-`norm` scorers compute their scores with the
reference scorer (`reference.compute_scores`) and use the kernels for everything else.

Reference: `lighthouse.reference.lighthouse_reference` (same selection, same outputs).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .. import reference
from ..config import LighthouseConfig
from ..scorers import is_norm_scorer
from . import gather as _gather
from . import scatter as _scatter
from . import scores as _scores
from . import selection as _selection
from .utils import level_offsets

Tensor = torch.Tensor


def _sizes(levels: int, pooling: int, topk: int, n_pad: int):
    n_coarse = n_pad // pooling ** (levels - 1)
    return n_coarse, level_offsets(n_pad, levels, pooling)[-1], n_coarse + (levels - 1) * pooling * topk


# ---------------------------------------------------------------------------------------
# Scores (no grad)
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("lighthouse::norm_scores", mutates_args=())
def norm_scores(
    q: Tensor, k: Tensor, v: Tensor, levels: int, pooling: int, n_pad: int, causal: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`norm` scores of levels 2..L ([B,H,Q], [B,G,Q] float32; the causal pyramid when `causal`)
    and the coarsest means of q, k, v."""
    sq, pq, _, fused = _scores.norm_score_pyramid(q, None, levels, pooling, n_pad, causal)
    sk, pk, pv, _ = _scores.norm_score_pyramid(k, v, levels, pooling, n_pad, causal)
    if not fused:
        pq = _gather.pool_coarse(q, levels, pooling, n_pad)
        pk = _gather.pool_coarse(k, levels, pooling, n_pad)
        pv = _gather.pool_coarse(v, levels, pooling, n_pad)
    return sq, sk, pq, pk, pv


@norm_scores.register_fake
def _(q, k, v, levels, pooling, n_pad, causal=False):
    B, H, _, D = q.shape
    G = k.shape[1]
    n_coarse = n_pad // pooling ** (levels - 1)
    Q = _scores.score_pyramid_len(n_pad, levels, pooling)
    return (
        q.new_empty((B, H, Q), dtype=torch.float32),
        q.new_empty((B, G, Q), dtype=torch.float32),
        q.new_empty((B, H, n_coarse, D)),
        k.new_empty((B, G, n_coarse, D)),
        v.new_empty((B, G, n_coarse, D)),
    )


@torch.library.custom_op("lighthouse::pool_coarse", mutates_args=())
def pool_coarse(q: Tensor, k: Tensor, v: Tensor, levels: int, pooling: int, n_pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Coarsest-level means of q, k, v (used with scorers other than `norm`)."""
    return tuple(_gather.pool_coarse(x, levels, pooling, n_pad) for x in (q, k, v))


@pool_coarse.register_fake
def _(q, k, v, levels, pooling, n_pad):
    n_coarse = n_pad // pooling ** (levels - 1)
    return tuple(x.new_empty((x.shape[0], x.shape[1], n_coarse, x.shape[3])) for x in (q, k, v))


# ---------------------------------------------------------------------------------------
# Selection (no grad)
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("lighthouse::select", mutates_args=())
def select(
    sq: Tensor, sk: Tensor, levels: int, pooling: int, topk: int, n_pad: int, causal: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(index_BHS, slot_BHP, cand_BHLK, cpos_BHLK), int32; see kernels/selection.py."""
    return _selection.select(sq, sk, levels, pooling, topk, n_pad, causal)


@select.register_fake
def _(sq, sk, levels, pooling, topk, n_pad, causal=False):
    B, H, _ = sq.shape
    _, P, S = _sizes(levels, pooling, topk, n_pad)
    lists = sq.new_empty((B, H, levels - 1, pooling * topk), dtype=torch.int32)
    return (
        sq.new_empty((B, H, S), dtype=torch.int32),
        sq.new_empty((B, H, P), dtype=torch.int32),
        lists,
        torch.empty_like(lists),
    )


# ---------------------------------------------------------------------------------------
# Gather (+ window-end RoPE) and its adjoint
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("lighthouse::gather", mutates_args=())
def gather(
    q: Tensor, k: Tensor, v: Tensor, pq: Tensor, pk: Tensor, pv: Tensor,
    slot: Tensor, cand: Tensor, cpos: Tensor, cos: Optional[Tensor], sin: Optional[Tensor],
    levels: int, pooling: int, n_pad: int,
) -> tuple[Tensor, Tensor, Tensor]:
    rope = None if cos is None else (cos, sin)
    return tuple(_gather.gather(q, k, v, pq, pk, pv, slot, cand, cpos, rope, levels, pooling, n_pad))


@gather.register_fake
def _(q, k, v, pq, pk, pv, slot, cand, cpos, cos, sin, levels, pooling, n_pad):
    B, H, _, D = q.shape
    S = n_pad // pooling ** (levels - 1) + (levels - 1) * cand.shape[-1]
    return tuple(q.new_empty((B, H, S, D)) for _ in range(3))


@torch.library.custom_op("lighthouse::gather_backward", mutates_args=())
def gather_backward(
    gq: Tensor, gk: Tensor, gv: Tensor, slot: Tensor, cos: Optional[Tensor], sin: Optional[Tensor],
    levels: int, pooling: int, n_pad: int, n_real: int, kv_heads: int,
) -> tuple[Tensor, Tensor, Tensor]:
    rope = None if cos is None else (cos, sin)
    H = gq.shape[1]
    dq = _gather.gather_backward(gq, slot, rope, levels, pooling, n_pad, n_real, H, gq.dtype)
    dk = _gather.gather_backward(gk, slot, rope, levels, pooling, n_pad, n_real, kv_heads, gk.dtype)
    dv = _gather.gather_backward(gv, slot, None, levels, pooling, n_pad, n_real, kv_heads, gv.dtype)
    return dq, dk, dv


@gather_backward.register_fake
def _(gq, gk, gv, slot, cos, sin, levels, pooling, n_pad, n_real, kv_heads):
    B, H, _, D = gq.shape
    return (
        gq.new_empty((B, H, n_real, D)),
        gk.new_empty((B, kv_heads, n_real, D)),
        gv.new_empty((B, kv_heads, n_real, D)),
    )


def _gather_setup(ctx, inputs, output):
    q, k, v, pq, pk, pv, slot, cand, cpos, cos, sin, levels, pooling, n_pad = inputs
    ctx.save_for_backward(slot, cos, sin)
    ctx.args = (levels, pooling, n_pad, q.shape[2], k.shape[1])


def _gather_bwd(ctx, gq, gk, gv):
    slot, cos, sin = ctx.saved_tensors
    levels, pooling, n_pad, n_real, kv_heads = ctx.args
    dq, dk, dv = gather_backward(gq, gk, gv, slot, cos, sin, levels, pooling, n_pad, n_real, kv_heads)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None


gather.register_autograd(_gather_bwd, setup_context=_gather_setup)


# ---------------------------------------------------------------------------------------
# Scatter back and its adjoint
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("lighthouse::scatter", mutates_args=())
def scatter(o: Tensor, slot: Tensor, cand: Tensor, cpos: Tensor, levels: int, pooling: int, n_pad: int, n_real: int) -> Tensor:
    return _scatter.scatter(o, slot, levels, pooling, n_pad, n_real)


@scatter.register_fake
def _(o, slot, cand, cpos, levels, pooling, n_pad, n_real):
    B, H, _, D = o.shape
    return o.new_empty((B, H, n_real, D))


@torch.library.custom_op("lighthouse::scatter_backward", mutates_args=())
def scatter_backward(g: Tensor, slot: Tensor, cand: Tensor, cpos: Tensor, levels: int, pooling: int, n_pad: int, sub_len: int) -> Tensor:
    return _scatter.scatter_backward(g, slot, cand, cpos, levels, pooling, n_pad, sub_len)


@scatter_backward.register_fake
def _(g, slot, cand, cpos, levels, pooling, n_pad, sub_len):
    B, H, _, D = g.shape
    return g.new_empty((B, H, sub_len, D))


def _scatter_setup(ctx, inputs, output):
    o, slot, cand, cpos, levels, pooling, n_pad, n_real = inputs
    ctx.save_for_backward(slot, cand, cpos)
    ctx.args = (levels, pooling, n_pad, o.shape[2])


def _scatter_bwd(ctx, g):
    slot, cand, cpos = ctx.saved_tensors
    levels, pooling, n_pad, sub_len = ctx.args
    return scatter_backward(g, slot, cand, cpos, levels, pooling, n_pad, sub_len), None, None, None, None, None, None, None


scatter.register_autograd(_scatter_bwd, setup_context=_scatter_setup)


# ---------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------
def fast_selection(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, scorer_context=None):
    """Scores, selection and the pooled coarsest level, no grad: (Selection, (pq, pk, pv))."""
    L, p, K = cfg.levels, cfg.pooling, cfg.topk
    causal = cfg.selection == "causal"
    n_pad = cfg.padded_len(q_BHND.shape[2])
    q, k, v = q_BHND.detach(), k_BGND.detach(), v_BGND.detach()
    if is_norm_scorer(cfg.scorer):  # fused into the scores kernel; any other scorer is scored in PyTorch
        sq, sk, pq, pk, pv = norm_scores(q, k, v, L, p, n_pad, causal)
    else:
        pyramid = _scores.causal_score_pyramid_from_base if causal else _scores.score_pyramid_from_base
        with torch.no_grad():
            sq_BHN, sk_BHN = reference.compute_scores(q, k, v, cfg, n_pad, scorer_context)
            sq = pyramid(sq_BHN, L, p)
            sk = pyramid(sk_BHN, L, p)
        pq, pk, pv = pool_coarse(q, k, v, L, p, n_pad)
    index, slot, cand, cpos = select(sq, sk, L, p, K, n_pad, causal)
    return reference.Selection(index, n_pad, slot, cand, cpos), (pq, pk, pv)


def supported(q_BHND: Tensor) -> bool:
    """Shapes the kernels handle (rows are processed as two halves, so D must be even)."""
    D = q_BHND.shape[-1]
    return D % 2 == 0 and q_BHND.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def gather_sub_sequence(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, rope=None, scorer_context=None):
    """Select and gather: (q_sub, k_sub, v_sub) [B, H, S, D] and the plan `scatter_sub_sequence` needs.

    The first half of `lighthouse_fast`; context parallelism runs it on every chunk, attends
    across chunks, and scatters each chunk back with the second half. With rope tables, the
    gathered entries are rotated at their window-end position as row index of the tables (a
    caller may pass tables sliced to start at a chunk's global offset).
    """
    L, p = cfg.levels, cfg.pooling
    n_pad = cfg.padded_len(q_BHND.shape[2])
    plan, (pq, pk, pv) = fast_selection(q_BHND, k_BGND, v_BGND, cfg, scorer_context)
    cos, sin = (None, None) if rope is None else rope
    subs = gather(q_BHND, k_BGND, v_BGND, pq, pk, pv, plan.slot_BHP, plan.cand_BHLK, plan.cpos_BHLK, cos, sin, L, p, n_pad)
    return (*subs, plan)


def scatter_sub_sequence(o_BHSD, plan, cfg: LighthouseConfig, seq_len: int) -> Tensor:
    """Scatter the sub-sequence's outputs back to [B, H, seq_len, D] (the second half of `lighthouse_fast`)."""
    return scatter(o_BHSD, plan.slot_BHP, plan.cand_BHLK, plan.cpos_BHLK, cfg.levels, cfg.pooling, plan.seq_len, seq_len)


def lighthouse_fast(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, rope=None, scorer_context=None):
    """Lighthouse attention on validated inputs (levels >= 2, N >= cfg.min_seq_len): [B, H, N, D]."""
    if not supported(q_BHND):
        return reference.lighthouse_reference(q_BHND, k_BGND, v_BGND, cfg, rope=rope, scorer_context=scorer_context)
    q_sub, k_sub, v_sub, plan = gather_sub_sequence(q_BHND, k_BGND, v_BGND, cfg, rope, scorer_context)
    o_sub = F.scaled_dot_product_attention(q_sub, k_sub, v_sub, is_causal=True)
    return scatter_sub_sequence(o_sub, plan, cfg, q_BHND.shape[2])
