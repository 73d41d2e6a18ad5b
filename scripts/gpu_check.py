"""GPU check of the Triton fast path at large shapes (run on a CUDA machine).

    PYTHONPATH=src python scripts/gpu_check.py [--out DIR] [--quick]

Checks, each printed as one line and summarised in a table at the end:
  * selection: fast-path indices identical to the reference (bf16 and fp32, up to N = 256K);
    where a row differs, whether the reference selection computed from the kernel's own
    scores matches (the only difference allowed: last-bit differences of the fp32 norms);
  * outputs and q/k/v gradients against the reference at the same selection, in fp32, and
    against a float64 reference at a moderate size (fp32 and bf16 inputs);
  * every output element written (outputs allocated as NaN), bitwise determinism;
  * no host synchronisation in forward+backward (torch.cuda.set_sync_debug_mode("error"));
  * CUDA graph capture and replay of forward+backward;
  * torch.compile(fullgraph=True) (inductor) of a small attention block, forward+backward.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))  # poison helper

from lighthouse import LighthouseConfig, lighthouse_attention, rope_tables  # noqa: E402
from lighthouse import reference as R  # noqa: E402
from lighthouse.kernels import fast_path as FP  # noqa: E402
from poison import poison_empty  # noqa: E402

RESULTS: list[dict] = []


def record(name, ok, **info):
    RESULTS.append({"check": name, "ok": bool(ok), **info})
    extra = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
    print(f"[{'PASS' if ok else 'FAIL'}] {name} {extra}", flush=True)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(B, H, G, N, D, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda h: torch.randn(B, h, N, D, device="cuda", generator=gen).to(dtype).requires_grad_()  # noqa: E731
    return mk(H), mk(G), mk(G), torch.randn(B, H, N, D, device="cuda", generator=gen).to(dtype)


def run_fast(q, k, v, cfg, rope=None):
    return lighthouse_attention(q, k, v, levels=cfg.levels, pooling=cfg.pooling, topk=cfg.topk, rope=rope,
                                selection=cfg.selection, scorer=cfg.scorer, backend="triton")


def check_selection(name, q, k, v, cfg):
    index = FP.fast_selection(q, k, v, cfg)[0].index_BHS
    ref = R.compute_selection(q, k, v, cfg).index_BHS
    rows_differ = (index.long() != ref).any(-1)
    n_diff = int(rows_differ.sum())
    info = {"rows": rows_differ.numel(), "rows_differ": n_diff}
    if n_diff:
        # Same selection from the kernel's own scores?
        n_pad = cfg.padded_len(q.shape[2])
        causal = cfg.selection == "causal"
        sq, sk, *_ = FP.norm_scores(q.detach(), k.detach(), v.detach(), cfg.levels, cfg.pooling, n_pad, causal)
        H = q.shape[1]
        offs = [0]
        for lv in range(2, cfg.levels + 1):
            offs.append(offs[-1] + n_pad // cfg.pooling ** (lv - 1))
        split = lambda s: [s[..., :1]] + [s[..., offs[i]:offs[i + 1]] for i in range(cfg.levels - 1)]  # noqa: E731
        sk_h = sk.repeat_interleave(H // sk.shape[1], dim=1)
        own = R.select(split(sq), split(sk_h), cfg, n_pad).index_BHS
        info["same_as_reference_on_kernel_scores"] = bool(torch.equal(own, index.long()))
        sq_ref, _ = R.compute_scores(q, k, v, cfg, n_pad)
        pyramid = R.causal_max_pool_pyramid if causal else R.max_pool_pyramid
        info["max_rel_score_diff"] = rel(torch.cat(pyramid(sq_ref, cfg)[1:], -1), sq)
        ok = info["same_as_reference_on_kernel_scores"]
    else:
        ok = True
    record(f"selection {name}", ok, **info)
    return index


def check_values(name, q, k, v, g, cfg, rope=None, ref_dtype=torch.float32, tol=1e-5):
    """Fast path (inputs' dtype) vs reference in ref_dtype at the fast path's selection."""
    with poison_empty():
        out = run_fast(q, k, v, cfg, rope)
        grads = torch.autograd.grad(out, (q, k, v), g)
    written = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(x).all()) for x in grads)
    plan, _ = FP.fast_selection(q, k, v, cfg)
    sel = R.Selection(plan.index_BHS.long(), plan.seq_len)
    qr, kr, vr = (x.detach().to(ref_dtype).requires_grad_() for x in (q, k, v))
    rope_r = None if rope is None else tuple(t.to(ref_dtype) for t in rope)
    ref = R.lighthouse_reference(qr, kr, vr, cfg, rope=rope_r, selection=sel)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), g.to(ref_dtype))
    errs = {"out": rel(out, ref), "dq": rel(grads[0], ref_grads[0]), "dk": rel(grads[1], ref_grads[1]),
            "dv": rel(grads[2], ref_grads[2])}
    ok = written and all(e < tol for e in errs.values())
    record(f"values {name}", ok, written=written, tol=tol, **errs)
    del ref, ref_grads, qr, kr, vr
    torch.cuda.empty_cache()


def check_determinism_and_syncs(q, k, v, g, cfg):
    # Our kernels are deterministic (no atomics): forward outputs and the kernels' backward
    # (scatter adjoint, pool adjoint) must repeat bit for bit. SDPA's own backward (FlashAttention /
    # cuDNN) accumulates dq with atomics, so full gradients may differ in the last bits.
    out1 = run_fast(q, k, v, cfg)
    out2 = run_fast(q, k, v, cfg)
    record("bitwise deterministic forward", torch.equal(out1, out2))
    L, p, n_pad, N = cfg.levels, cfg.pooling, cfg.padded_len(q.shape[2]), q.shape[2]
    plan, _ = FP.fast_selection(q, k, v, cfg)
    slot, cand, cpos = plan.slot_BHP, plan.cand_BHLK, plan.cpos_BHLK
    S = plan.index_BHS.shape[-1]
    gs = [FP.scatter_backward(g, slot, cand, cpos, L, p, n_pad, S) for _ in range(2)]
    sub = torch.randn(q.shape[0], q.shape[1], S, q.shape[3], device="cuda", dtype=q.dtype)
    gb = [FP.gather_backward(sub, sub, sub, slot, None, None, L, p, n_pad, N, k.shape[1]) for _ in range(2)]
    same = torch.equal(gs[0], gs[1]) and all(torch.equal(a, b) for a, b in zip(gb[0], gb[1]))
    record("bitwise deterministic kernel backward (scatter + pool adjoints)", same)
    g1 = torch.autograd.grad(run_fast(q, k, v, cfg), (q, k, v), g)
    g2 = torch.autograd.grad(run_fast(q, k, v, cfg), (q, k, v), g)
    diffs = [rel(a, b) for a, b in zip(g1, g2)]
    record("fwd+bwd repeat (SDPA backward may use atomics)", max(diffs) < 1e-2, max_rel_diff=max(diffs),
           bitwise=all(d == 0 for d in diffs))
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        out = run_fast(q, k, v, cfg)
        torch.autograd.grad(out, (q, k, v), g)
        ok, msg = True, ""
    except Exception as e:  # a synchronising call raises
        ok, msg = False, f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    record("no host sync in fwd+bwd (sync debug mode 'error')", ok, **({"error": msg} if msg else {}))


def check_cuda_graph(q, k, v, g, cfg):
    qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q, k, v))

    def step():
        out = run_fast(qs, ks, vs, cfg)
        return (out, *torch.autograd.grad(out, (qs, ks, vs), g))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    with torch.no_grad():
        qs.copy_(torch.randn_like(qs))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    errs = [rel(a, b) for a, b in zip(static, eager)]
    record("CUDA graph capture + replay of fwd+bwd (new inputs)", errs[0] == 0.0 and max(errs) < 1e-2,
           out_rel_err=errs[0], max_grad_rel_err=max(errs[1:]))
    t = time.perf_counter()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    graph_ms = (time.perf_counter() - t) / 10 * 1e3
    t = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    eager_ms = (time.perf_counter() - t) / 10 * 1e3
    record("CUDA graph replay time vs eager (fwd+bwd)", True, graph_ms=graph_ms, eager_ms=eager_ms)


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kv_heads, head_dim, cfg):
        super().__init__()
        self.h, self.g, self.d, self.cfg = heads, kv_heads, head_dim, cfg
        self.qkv = torch.nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.o = torch.nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.d, self.g * self.d, self.g * self.d], dim=-1)
        q = q.view(B, N, self.h, self.d).transpose(1, 2)
        k = k.view(B, N, self.g, self.d).transpose(1, 2)
        v = v.view(B, N, self.g, self.d).transpose(1, 2)
        c = self.cfg
        o = lighthouse_attention(q, k, v, levels=c.levels, pooling=c.pooling, topk=c.topk, rope=(cos, sin))
        return self.o(o.transpose(1, 2).reshape(B, N, self.h * self.d))


def check_compile(cfg, N=16384):
    torch.manual_seed(0)
    block = Block(512, 4, 2, 64, cfg).cuda().to(torch.bfloat16)
    x = torch.randn(1, N, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rope_tables(N, 64, device="cuda")
    compiled = torch.compile(block, fullgraph=True)
    try:
        y_c = compiled(x, cos, sin)
        gx_c, gw_c = torch.autograd.grad(y_c.float().square().mean(), (x, block.qkv.weight))
        y_e = block(x, cos, sin)
        gx_e, gw_e = torch.autograd.grad(y_e.float().square().mean(), (x, block.qkv.weight))
        errs = {"out": rel(y_c, y_e), "dx": rel(gx_c, gx_e), "dW": rel(gw_c, gw_e)}
        record(f"torch.compile(fullgraph=True) block fwd+bwd vs eager ({cfg.selection})",
               all(e < 2e-2 for e in errs.values()), **errs)
    except Exception as e:
        traceback.print_exc()
        record(f"torch.compile(fullgraph=True) block fwd+bwd vs eager ({cfg.selection})", False,
               error=f"{type(e).__name__}: {str(e)[:300]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="directory for the JSON summary")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    import triton

    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    B, D = 1, 128
    big = LighthouseConfig(3, 4, 2048)

    def guarded(fn, *a, **kw):
        try:
            fn(*a, **kw)
        except Exception as e:
            traceback.print_exc()
            record(f"{fn.__name__} raised", False, error=f"{type(e).__name__}: {str(e)[:300]}")
        torch.cuda.empty_cache()

    # 1. fp32 at 32K (H=G=8)
    q, k, v, g = inputs(B, 8, 8, 32768, D, torch.float32, 1)
    guarded(check_selection, "fp32 N=32K L=3 p=4 K=2048", q, k, v, big)
    guarded(check_values, "fp32 N=32K vs fp32 reference", q, k, v, g, big, tol=1e-5)
    del q, k, v, g
    # 2. bf16 at 128K, odd length (padding)
    q, k, v, g = inputs(B, 8, 8, 131072 - 77, D, torch.bfloat16, 2)
    guarded(check_selection, "bf16 N=128K-77 L=3 p=4 K=2048", q, k, v, big)
    guarded(check_values, "bf16 N=128K-77 vs fp32 reference", q, k, v, g, big, tol=1e-2)
    guarded(check_determinism_and_syncs, q, k, v, g, big)
    guarded(check_cuda_graph, q, k, v, g, big)
    del q, k, v, g
    # 3. GQA + window-end RoPE, bf16 at 64K
    cfg = LighthouseConfig(3, 4, 1024)
    q, k, v, g = inputs(B, 8, 2, 65536, D, torch.bfloat16, 3)
    cos, sin = rope_tables(65536, D, device="cuda")
    guarded(check_selection, "bf16 GQA H=8 G=2 N=64K L=3 p=4 K=1024", q, k, v, cfg)
    guarded(check_values, "bf16 GQA + window-end RoPE N=64K vs fp32 reference", q, k, v, g, cfg, rope=(cos, sin), tol=1e-2)
    del q, k, v, g
    if not args.quick:
        # 4. L=4 at 256K, bf16
        cfg4 = LighthouseConfig(4, 4, 4096)
        q, k, v, g = inputs(B, 8, 8, 262144, D, torch.bfloat16, 4)
        guarded(check_selection, "bf16 N=256K L=4 p=4 K=4096", q, k, v, cfg4)
        guarded(check_values, "bf16 N=256K L=4 vs fp32 reference", q, k, v, g, cfg4, tol=1e-2)
        del q, k, v, g
    # 5. float64 reference at a moderate size
    cfg_s = LighthouseConfig(3, 4, 512)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        q, k, v, g = inputs(B, 4, 2, 8192 + 5, D, dtype, 5)
        guarded(check_values, f"{str(dtype)[6:]} N=8K GQA vs float64 reference", q, k, v, g, cfg_s,
                ref_dtype=torch.float64, tol=tol)
        del q, k, v, g
    # 6. torch.compile
    guarded(check_compile, LighthouseConfig(3, 4, 1024))
    # 7. causal selection: plans identical to the reference's, values, at long and odd lengths
    causal = LighthouseConfig(3, 4, 2048, selection="causal")
    q, k, v, g = inputs(B, 8, 2, 131072 - 77, D, torch.bfloat16, 7)
    guarded(check_selection, "causal: bf16 GQA N=128K-77 L=3 p=4 K=2048", q, k, v, causal)
    cos, sin = rope_tables(131072, D, device="cuda")
    guarded(check_values, "causal: bf16 GQA + window-end RoPE N=128K-77 vs fp32 reference", q, k, v, g, causal,
            rope=(cos, sin), tol=1e-2)
    del q, k, v, g
    if not args.quick:
        q, k, v, g = inputs(B, 8, 8, 524288, D, torch.bfloat16, 8)
        guarded(check_selection, "causal: bf16 N=512K L=3 p=4 K=2048", q, k, v, causal)
        del q, k, v, g
    guarded(check_compile, LighthouseConfig(3, 4, 1024, selection="causal"))

    print("\n| check | result |\n|---|---|")
    for r in RESULTS:
        print(f"| {r['check']} | {'PASS' if r['ok'] else 'FAIL'} |")
    n_fail = sum(not r["ok"] for r in RESULTS)
    print(f"{len(RESULTS) - n_fail}/{len(RESULTS)} checks passed")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "results": RESULTS}, fh, indent=1)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
