"""`lighthouse_attention`: the public function (a drop-in for causal SDPA), input checks and dispatch.

Legend: B batch, H query heads, G key/value heads (H % G == 0), N sequence length, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference
from .config import LighthouseConfig
from .rope import apply_rotary_dense


def _check_tensors(q, k, v, rope, check_finite: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            want = "[B, H, N, D]" if name == "q" else "[B, G, N, D]"
            raise ValueError(f"{name} must have 4 dims {want}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32, bfloat16, float16, float64), got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, G, N, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, N, D = q.shape
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(
            f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}: batch, sequence length and "
            "head dim must agree (q [B, H, N, D], k/v [B, G, N, D])"
        )
    G = k.shape[1]
    if min(B, H, G, N, D) < 1:
        raise ValueError(f"empty input: q shape {tuple(q.shape)}, k/v shape {tuple(k.shape)}; every dim must be >= 1")
    if H % G != 0:
        raise ValueError(f"query heads H={H} must be a multiple of key/value heads G={G} (GQA)")
    if rope is not None:
        if not (isinstance(rope, (tuple, list)) and len(rope) == 2 and all(isinstance(t, torch.Tensor) for t in rope)):
            raise TypeError("rope must be None or a (cos, sin) pair of tensors of shape [N_table, D]")
        cos, sin = rope
        if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != D or cos.shape[0] < N:
            raise ValueError(
                f"rope tables must both have shape [N_table >= N={N}, D={D}], got {tuple(cos.shape)} and {tuple(sin.shape)}"
            )
        if cos.device != q.device:
            raise ValueError(f"rope tables are on {cos.device} but q is on {q.device}")
    if check_finite:
        for name, t in (("q", q), ("k", k), ("v", v)):
            # One min/max pass instead of an elementwise mask: NaN propagates into both, and an
            # Inf is the min or the max; unlike a sum, large finite values cannot overflow it.
            lo, hi = torch.aminmax(t)
            if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
                raise ValueError(f"{name} contains NaN or Inf; Lighthouse selection needs finite inputs")


def _autocast_inputs(q, k, v):
    """Under autocast, cast q, k, v to its dtype as autocast does for SDPA (a drop-in must behave alike).

    Inside an autocast region a model's projections come out in bf16 while anything multiplied by
    float32 tables (a rotary embedding, say) comes out in float32; SDPA casts them all, and so do we.
    float64 stays as it is, as autocast leaves it.
    """
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or not torch.is_autocast_enabled(q.device.type):
        return q, k, v
    dtype = torch.get_autocast_dtype(q.device.type)
    cast = lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t  # noqa: E731
    return cast(q), cast(k), cast(v)


def dense_causal_attention(q_BHND, k_BGND, v_BGND, rope=None) -> torch.Tensor:
    """Ordinary causal SDPA (with RoPE at every position when tables are given): the levels=1 case."""
    if rope is not None:
        q_BHND = apply_rotary_dense(q_BHND, *rope)
        k_BGND = apply_rotary_dense(k_BGND, *rope)
    rep = q_BHND.shape[1] // k_BGND.shape[1]
    if rep > 1:
        k_BGND = k_BGND.repeat_interleave(rep, dim=1)
        v_BGND = v_BGND.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q_BHND, k_BGND, v_BGND, is_causal=True)


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """"auto" -> "triton" for CUDA tensors (when Triton is there), else "reference"; checks an explicit "triton"."""
    if backend == "auto":
        if q.is_cuda:
            from .kernels import triton_available

            return "triton" if triton_available() else "reference"
        return "reference"
    if backend == "triton":
        from .kernels import triton_available

        if not triton_available():
            raise RuntimeError("backend='triton' needs the `triton` package (bundled with CUDA builds of PyTorch)")
        if not q.is_cuda:
            import os

            if os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError("backend='triton' runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1)")
    return backend


def lighthouse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: LighthouseConfig | None = None,
    *,
    levels: int | None = None,
    pooling: int | None = None,
    topk: int | None = None,
    scorer=None,
    backend: str | None = None,
    selection: str | None = None,
    rope=None,
    scorer_context=None,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Causal Lighthouse attention; a drop-in for `F.scaled_dot_product_attention(q, k, v, is_causal=True)`.

    The settings come from `config` (a `LighthouseConfig`; its defaults when omitted), and any
    of `levels`, `pooling`, `topk`, `scorer`, `backend`, `selection` given as keywords replace its values.

    Args:
        q: [B, H, N, D] queries. k, v: [B, G, N, D] keys and values, H % G == 0 (GQA).
        config: the settings; see `LighthouseConfig` for the defaults.
        levels: L pyramid levels; 1 is exactly dense causal SDPA.
        pooling: p, a power of two >= 2.
        topk: K, a positive multiple of 128. Needs N >= K * p**(L-1).
        scorer: "norm", "dilated", or a `lighthouse.scorers.Scorer` instance.
        backend: "auto" (CUDA -> Triton fast path, CPU -> reference), "reference" or "triton".
        selection: "topk" (the paper's; which entries a position sees depends on the norms of
            later tokens in its tile) or "causal" (the output at t never depends on inputs after t).
        rope: None when q and k are already rotated ("pre-pool" placement), or a (cos, sin)
            pair of tables [N_table >= N, D] in the rotate_half convention; q and k then arrive
            un-rotated and every gathered entry is rotated at the last position it covers
            ("window-end" placement).
        scorer_context: passed to the scorer (for scorers that need the layer input).
        check_finite: raise on NaN/Inf inputs. Default: on for CPU tensors; off on CUDA, where
            the check would sync the host (NaN/Inf there is the caller's to avoid).

    Returns [B, H, N, D] in q's dtype. When N is not a multiple of K/128 * p**(L-1), the
    inputs are right-padded to the next multiple, run, and the output cropped: padding never
    changes which real entries are selected nor the outputs of real positions.
    """
    cfg = LighthouseConfig.resolve(
        config, levels=levels, pooling=pooling, topk=topk, scorer=scorer, backend=backend, selection=selection
    )
    q, k, v = _autocast_inputs(q, k, v)
    if check_finite is None:
        check_finite = isinstance(q, torch.Tensor) and not q.is_cuda
    _check_tensors(q, k, v, rope, check_finite)
    if cfg.is_dense:
        return dense_causal_attention(q, k, v, rope)
    cfg.validate_seq_len(q.shape[2])
    if resolve_backend(cfg.backend, q) == "triton":
        from .kernels.fast_path import lighthouse_fast

        return lighthouse_fast(q, k, v, cfg, rope=rope, scorer_context=scorer_context)
    return reference.lighthouse_reference(q, k, v, cfg, rope=rope, scorer_context=scorer_context)
