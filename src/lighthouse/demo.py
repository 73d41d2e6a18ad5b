"""Lighthouse vs dense causal SDPA on one layer: sub-sequence length, time, and the levels=1 check.

    python -m lighthouse.demo                       # small, a few seconds on a laptop CPU
    python -m lighthouse.demo --seq-len 16384 --heads 8 --head-dim 64 --levels 3 --pooling 4 --topk 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from . import LighthouseConfig, lighthouse_attention


def _time_fwd_bwd(fn, inputs, repeats: int) -> float:
    """Median wall time (s) of forward + backward; synchronizes CUDA around each run."""
    times = []
    for i in range(repeats + 1):  # the first run is a warm-up
        for x in inputs:
            x.grad = None
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*inputs).sum().backward()
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--pooling", type=int, default=4)
    ap.add_argument("--topk", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    B, H, N, D = args.batch, args.heads, args.seq_len, args.head_dim
    G = args.kv_heads or H
    cfg = LighthouseConfig(args.levels, args.pooling, args.topk)
    mk = lambda h: torch.randn(B, h, N, D, device=args.device, dtype=dtype, requires_grad=True)  # noqa: E731
    q, k, v = mk(H), mk(G), mk(G)

    def dense(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=G != H)

    def lighthouse(q, k, v):
        return lighthouse_attention(q, k, v, levels=cfg.levels, pooling=cfg.pooling, topk=cfg.topk)

    print(f"device={args.device} dtype={args.dtype} B={B} H={H} G={G} N={N} D={D} threads={torch.get_num_threads()}")
    print(cfg.describe(N))
    t_dense = _time_fwd_bwd(dense, (q, k, v), args.repeats)
    t_lh = _time_fwd_bwd(lighthouse, (q, k, v), args.repeats)
    with torch.no_grad():
        diff = (lighthouse_attention(q, k, v, levels=1) - dense(q, k, v)).abs().max().item()
    print(f"{'':24s}{'fwd+bwd (ms)':>14s}")
    print(f"{'dense causal SDPA':24s}{t_dense * 1e3:14.1f}")
    print(f"{'lighthouse':24s}{t_lh * 1e3:14.1f}   ({t_dense / t_lh:.2f}x vs dense)")
    print(f"max |lighthouse(levels=1) - SDPA| = {diff:.3g}")


if __name__ == "__main__":
    main()
