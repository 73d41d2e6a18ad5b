"""The Triton fast path against the PyTorch reference, on small shapes.

With a GPU the kernels run compiled on CUDA tensors; without one they run on CPU tensors
under Triton's interpreter (`TRITON_INTERPRET=1`, set here before triton is imported).
scripts/gpu_check.py adds the large shapes on a GPU.
Every tensor allocated with `torch.empty` during a test (every kernel output) is filled with
NaN / a sentinel first, so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import os

import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if ON_GPU else "cpu"

import pytest  # noqa: E402

pytest.importorskip("triton", reason="the Triton kernels need the `triton` package (pip install triton)")
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    # Without a GPU the kernels can only run on CPU tensors under Triton's interpreter.
    pytest.skip("no GPU, and the environment sets TRITON_INTERPRET to something other than 1, which CPU "
                "tensors need", allow_module_level=True)

from lighthouse import LighthouseConfig, lighthouse_attention, rope_tables  # noqa: E402
from lighthouse import reference as R  # noqa: E402
from lighthouse.kernels import fast_path as FP  # noqa: E402
from poison import poison_empty  # noqa: E402


@pytest.fixture(autouse=True)
def poison_outputs():
    with poison_empty():
        yield


def fresh_generator():
    """A generator with a seed drawn from the per-test seeded RNG (see conftest.py)."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return torch.Generator().manual_seed(seed), seed


def randn(*shape, gen, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def rand_qkv(B, H, G, N, D, dtype=torch.float32, gen=None):
    mk = lambda h: randn(B, h, N, D, gen=gen, dtype=dtype).requires_grad_()  # noqa: E731
    return mk(H), mk(G), mk(G)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def fast(q, k, v, cfg, rope=None):
    return lighthouse_attention(q, k, v, levels=cfg.levels, pooling=cfg.pooling, topk=cfg.topk, scorer=cfg.scorer,
                                rope=rope, backend="triton")


def check_plan(plan, cfg, n_pad):
    """The selection's side outputs agree with index_BHS."""
    index, slot, cand, cpos = plan.index_BHS, plan.slot_BHP, plan.cand_BHLK, plan.cpos_BHLK
    assert plan.seq_len == n_pad
    B, H, S = index.shape
    assert S == cfg.sub_seq_len(n_pad)
    idx = index.long()
    pos = torch.arange(S, device=index.device).expand(B, H, S)
    assert torch.equal(slot.long().gather(-1, idx), pos), "slot is not the inverse of index"
    assert int((slot >= 0).sum()) == B * H * S, "slot marks entries that are not kept"
    offs = [cfg.level_offset(n_pad, lv) for lv in range(1, cfg.levels)]
    for lv in range(1, cfg.levels):
        want = cand[:, :, lv - 1].long() + offs[lv - 1]
        assert torch.equal(idx.gather(-1, cpos[:, :, lv - 1].long()), want), f"level {lv} lists disagree with index"


# (N, levels, pooling, topk, H, G): padding, GQA, several tiles, L = 2..4, all coarse selected.
GRID = [
    (1024, 2, 2, 128, 2, 2),
    (1001, 3, 2, 128, 4, 2),  # padded to 1004, GQA
    (2048, 3, 4, 128, 2, 1),  # N = minimum: every coarse entry is selected
    (1537, 3, 2, 256, 2, 2),  # 2 tiles, padded to 1544
    (1100, 4, 2, 128, 2, 1),  # L = 4, padded to 1104
    (2100, 2, 4, 256, 4, 4),  # 2 tiles, p = 4, padded to 2104
]


@pytest.mark.parametrize("N,L,p,K,H,G", GRID)
def test_selection_identical(N, L, p, K, H, G):
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(L, p, K)
    n_pad = cfg.padded_len(N)
    q, k, v = rand_qkv(2, H, G, N, 8, gen=gen)
    plan, (pq, pk, pv) = FP.fast_selection(q, k, v, cfg)
    ref = R.compute_selection(q, k, v, cfg).index_BHS
    assert torch.equal(plan.index_BHS.long(), ref), f"seed {seed}"
    check_plan(plan, cfg, n_pad)
    # Coarsest pooled means as the reference pyramid has them.
    off = cfg.level_offset(n_pad, L)
    for x, px in ((q, pq), (k, pk), (v, pv)):
        want = R.mean_pool_pyramid(R.pad_to(x.detach(), n_pad), cfg)[:, :, off:]
        torch.testing.assert_close(px, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("N,L,p,K", [(1024, 2, 2, 128), (1100, 3, 2, 128)])
def test_scores_and_selection_from_same_scores(N, L, p, K):
    """The kernel's score pyramid matches the reference; selection from it matches exactly."""
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(L, p, K)
    n_pad = cfg.padded_len(N)
    q, k, v = rand_qkv(1, 2, 1, N, 8, gen=gen)
    sq, sk, *_ = FP.norm_scores(q.detach(), k.detach(), v.detach(), L, p, n_pad)
    sq_ref, sk_ref = R.compute_scores(q, k, v, cfg, n_pad)
    levels_q = R.max_pool_pyramid(sq_ref, cfg)[1:]
    levels_k = R.max_pool_pyramid(sk_ref[:, :1], cfg)[1:]
    torch.testing.assert_close(sq, torch.cat(levels_q, -1), rtol=1e-6, atol=0)
    torch.testing.assert_close(sk, torch.cat(levels_k, -1), rtol=1e-6, atol=0)
    # Feed the kernel's own scores to the reference selection: identical, bit for bit.
    offs = [0]
    for lv in range(2, L + 1):
        offs.append(offs[-1] + n_pad // p ** (lv - 1))
    split = lambda s: [torch.zeros(1)] + [s[..., offs[i]:offs[i + 1]] for i in range(L - 1)]  # noqa: E731
    ref = R.select(split(sq), split(sk.expand(-1, 2, -1)), cfg, n_pad).index_BHS
    index, *_ = FP.select(sq, sk, L, p, K, n_pad)
    assert torch.equal(index.long(), ref), f"seed {seed}"


def test_ties_go_to_the_lower_index():
    """Many equal norms (one-hot rows): ties resolved exactly like the reference's stable sort."""
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(3, 2, 128)
    N, D = 1024, 8
    hot = lambda h: torch.nn.functional.one_hot(torch.randint(0, D, (1, h, N), generator=gen), D).float()  # noqa: E731
    scale = lambda h: torch.randint(1, 3, (1, h, N, 1), generator=gen).float()  # noqa: E731
    q, k, v = ((hot(2) * scale(2)).to(DEVICE), (hot(1) * scale(1)).to(DEVICE), randn(1, 1, N, D, gen=gen))
    plan, _ = FP.fast_selection(q, k, v, cfg)
    assert torch.equal(plan.index_BHS.long(), R.compute_selection(q, k, v, cfg).index_BHS), f"seed {seed}"
    check_plan(plan, cfg, N)


@pytest.mark.parametrize("N,L,p,K,H,G", GRID[:5])
def test_forward_backward_fp32(N, L, p, K, H, G):
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(L, p, K)
    q, k, v = rand_qkv(1, H, G, N, 8, gen=gen)
    out = fast(q, k, v, cfg)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "an output element was not written"
    g = randn(*out.shape, gen=gen)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for x, gx in zip((q, k, v), grads):
        assert gx.shape == x.shape and torch.isfinite(gx).all()
    ref = R.lighthouse_reference(q, k, v, cfg)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    assert rel(out, ref) < 1e-5, f"seed {seed}"
    for a, b in zip(grads, ref_grads):
        assert rel(a, b) < 1e-5, f"seed {seed}"
    # Real outputs at positions no entry reaches are exactly zero, as in the reference.
    assert torch.equal(out[..., : cfg.coarsest_factor - 1, :] == 0, ref[..., : cfg.coarsest_factor - 1, :] == 0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_against_float64_reference(dtype, tol):
    """Outputs and gradients against the reference in float64 (same selection)."""
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(3, 2, 128)
    N, H, G = 1001, 4, 2
    q, k, v = rand_qkv(1, H, G, N, 16, dtype=dtype, gen=gen)
    out = fast(q, k, v, cfg)
    g = randn(*out.shape, gen=gen, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), g)
    plan, _ = FP.fast_selection(q, k, v, cfg)
    sel = R.Selection(plan.index_BHS.long(), plan.seq_len)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = R.lighthouse_reference(q64, k64, v64, cfg, selection=sel)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g.double())
    assert rel(out, ref) < tol, f"seed {seed}"
    for a, b in zip(grads, ref_grads):
        assert rel(a, b) < tol, f"seed {seed}"


def test_float64_inputs():
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(2, 2, 128)
    q, k, v = rand_qkv(1, 2, 1, 600, 8, dtype=torch.float64, gen=gen)
    out = fast(q, k, v, cfg)
    ref = R.lighthouse_reference(q, k, v, cfg)
    assert out.dtype == torch.float64 and rel(out, ref) < 1e-6, f"seed {seed}"
    g = randn(*out.shape, gen=gen, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel(a, b) < 1e-6, f"seed {seed}"


@pytest.mark.parametrize("N,L,p,K,H,G", [(1001, 3, 2, 128, 4, 2), (1024, 2, 4, 128, 2, 2)])
def test_window_end_rope(N, L, p, K, H, G):
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(L, p, K)
    q, k, v = rand_qkv(1, H, G, N, 8, gen=gen)
    cos, sin = rope_tables(N + 3, 8, device=DEVICE)
    out = fast(q, k, v, cfg, rope=(cos, sin))
    ref = R.lighthouse_reference(q, k, v, cfg, rope=(cos, sin))
    assert rel(out, ref) < 1e-5, f"seed {seed}"
    g = randn(*out.shape, gen=gen)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel(a, b) < 1e-5, f"seed {seed}"


def test_dilated_scorer_and_noncontiguous_inputs():
    """Non-norm scorers: reference scores, kernels for the rest; inputs in [B, N, H, D] memory."""
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(2, 2, 128, scorer="dilated")
    B, N, H, G, D = 1, 700, 2, 1, 8
    q = randn(B, N, H, D, gen=gen).transpose(1, 2).requires_grad_()
    k = randn(B, N, G, D, gen=gen).transpose(1, 2).requires_grad_()
    v = randn(B, N, G, D, gen=gen).transpose(1, 2).requires_grad_()
    out = fast(q, k, v, cfg)
    ref = R.lighthouse_reference(q, k, v, cfg)
    assert rel(out, ref) < 1e-5, f"seed {seed}"
    g = randn(*out.shape, gen=gen)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel(a, b) < 1e-5, f"seed {seed}"


def test_compile_fullgraph():
    """torch.compile(fullgraph=True) traces the custom ops (aot_eager: no C++ compiler needed)."""
    torch._dynamo.reset()
    gen, seed = fresh_generator()
    q, k, v = rand_qkv(1, 2, 1, 520, 8, gen=gen)

    def layer(q, k, v):
        # check_finite would sync the host; it is off by default on CUDA, on by default on CPU.
        return lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, backend="triton", check_finite=False) * 2.0

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    ref = layer(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = randn(*out.shape, gen=gen)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_coarsest_span_longer_than_a_block(monkeypatch):
    """p^(L-1) larger than the scores kernel's block: levels finished on the host, means by a second kernel."""
    from lighthouse.kernels import scores as KS

    monkeypatch.setattr(KS, "INTERPRET_ROWS", 4)
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(4, 2, 128)  # coarsest span 8 > 4
    q, k, v = rand_qkv(1, 1, 1, 1030, 8, gen=gen)  # one head: the interpreter runs many small programs here
    plans, select = [], FP.fast_selection
    # the plan the fast path itself computes (selecting once: under the interpreter that is most of the time)
    monkeypatch.setattr(FP, "fast_selection", lambda *a, **kw: plans.append(select(*a, **kw)) or plans[-1])
    out = fast(q, k, v, cfg)
    (plan, _), = plans
    assert torch.equal(plan.index_BHS.long(), R.compute_selection(q, k, v, cfg).index_BHS), f"seed {seed}"
    ref = R.lighthouse_reference(q, k, v, cfg)
    assert rel(out, ref) < 1e-5, f"seed {seed}"


@pytest.mark.parametrize("R_, L, p, H, G, rope", [(1, 2, 2, 2, 2, False), (2, 2, 2, 2, 1, True), (1, 3, 2, 2, 1, True)])
def test_context_parallel_chunks_on_the_kernels(R_, L, p, H, G, rope):
    """The context-parallel decomposition with the kernels per chunk (window-end RoPE at global
    positions through tables sliced at the chunk start) equals it with the reference per chunk."""
    from lighthouse.distributed import lighthouse_attention_chunked_reference as chunked

    gen, seed = fresh_generator()
    topk = 2 * R_ * 128
    N = 2 * R_ * p ** (L - 1) * 128
    q, k, v = rand_qkv(1, H, G, N, 8, gen=gen)
    tables = rope_tables(N + 5, 8, device=DEVICE) if rope else None
    out = chunked(q, k, v, LighthouseConfig(L, p, topk, backend="triton"), R_, rope=tables)
    ref = chunked(q, k, v, LighthouseConfig(L, p, topk, backend="reference"), R_, rope=tables)
    assert rel(out, ref) < 1e-5, f"seed {seed}"
    g = randn(*out.shape, gen=gen)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel(a, b) < 1e-5, f"seed {seed}"


# ---------------------------------------------------------------------------------------
# Causal selection on the kernels: the same plans and outputs as the reference
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,L,p,K,H,G", GRID + [(3001, 2, 4, 384, 4, 2)])
def test_causal_selection_identical(N, L, p, K, H, G):
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(L, p, K, selection="causal")
    q, k, v = rand_qkv(2, H, G, N, 8, gen=gen)
    q.data[:, :, : N // 3] *= 4.0  # a loud first third: later tiles' thresholds miss, forced fills happen
    plan, _ = FP.fast_selection(q, k, v, cfg)
    assert torch.equal(plan.index_BHS.long(), R.compute_selection(q, k, v, cfg).index_BHS), f"seed {seed}"
    check_plan(plan, cfg, cfg.padded_len(N))


def test_causal_scores_match_reference():
    gen, seed = fresh_generator()
    N, L, p = 1100, 3, 2
    cfg = LighthouseConfig(L, p, 128, selection="causal")
    n_pad = cfg.padded_len(N)
    q, k, v = rand_qkv(1, 2, 1, N, 8, gen=gen)
    sq, sk, *_ = FP.norm_scores(q.detach(), k.detach(), v.detach(), L, p, n_pad, True)
    sq_ref, sk_ref = R.compute_scores(q, k, v, cfg, n_pad)
    torch.testing.assert_close(sq, torch.cat(R.causal_max_pool_pyramid(sq_ref, cfg)[1:], -1), rtol=1e-6, atol=0)
    torch.testing.assert_close(sk, torch.cat(R.causal_max_pool_pyramid(sk_ref[:, :1], cfg)[1:], -1), rtol=1e-6, atol=0)


def test_causal_ties_go_to_the_lower_index():
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(3, 2, 256, selection="causal")
    N, D = 2048, 8
    hot = lambda h: torch.nn.functional.one_hot(torch.randint(0, D, (1, h, N), generator=gen), D).float()  # noqa: E731
    scale = lambda h: torch.randint(1, 3, (1, h, N, 1), generator=gen).float()  # noqa: E731
    q, k, v = ((hot(2) * scale(2)).to(DEVICE), (hot(1) * scale(1)).to(DEVICE), randn(1, 1, N, D, gen=gen))
    plan, _ = FP.fast_selection(q, k, v, cfg)
    assert torch.equal(plan.index_BHS.long(), R.compute_selection(q, k, v, cfg).index_BHS), f"seed {seed}"


@pytest.mark.parametrize("N,L,p,K,H,G,rope,scorer", [
    (1537, 3, 2, 256, 2, 2, False, "norm"),
    (1001, 3, 2, 128, 4, 2, True, "norm"),
    (1030, 2, 2, 256, 2, 1, False, "dilated"),
])
def test_causal_forward_backward(N, L, p, K, H, G, rope, scorer):
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(L, p, K, scorer=scorer, selection="causal")
    q, k, v = rand_qkv(1, H, G, N, 8, gen=gen)
    tables = rope_tables(N, 8, device=DEVICE) if rope else None
    out = lighthouse_attention(q, k, v, cfg, rope=tables, backend="triton")
    assert torch.isfinite(out).all(), "an output element was not written"
    ref = R.lighthouse_reference(q, k, v, cfg, rope=tables)
    assert rel(out, ref) < 1e-5, f"seed {seed}"
    g = randn(*out.shape, gen=gen)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel(a, b) < 1e-5, f"seed {seed}"


def test_causal_compile_fullgraph_and_long_coarse_span(monkeypatch):
    from lighthouse.kernels import scores as KS

    torch._dynamo.reset()
    gen, seed = fresh_generator()
    q, k, v = rand_qkv(1, 2, 1, 1040, 8, gen=gen)

    def layer(q, k, v):
        return lighthouse_attention(q, k, v, levels=2, pooling=2, topk=256, selection="causal", backend="triton",
                                    check_finite=False) * 2.0

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, ref = compiled(q, k, v), layer(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = randn(*out.shape, gen=gen)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(KS, "INTERPRET_ROWS", 4)  # coarsest span 8 > 4 rows per program
    cfg = LighthouseConfig(4, 2, 128, selection="causal")
    q, k, v = rand_qkv(1, 2, 2, 1030, 8, gen=gen)
    plan, _ = FP.fast_selection(q, k, v, cfg)
    assert torch.equal(plan.index_BHS.long(), R.compute_selection(q, k, v, cfg).index_BHS), f"seed {seed}"


def test_causal_context_parallel_chunks_on_the_kernels():
    from lighthouse.distributed import lighthouse_attention_chunked_reference as chunked

    gen, seed = fresh_generator()
    R_, L, p = 2, 2, 2
    N = 2 * R_ * p ** (L - 1) * 256
    q, k, v = rand_qkv(1, 2, 1, N, 8, gen=gen)
    tables = rope_tables(N, 8, device=DEVICE)
    cfg = dict(levels=L, pooling=p, topk=2 * R_ * 256, selection="causal")
    out = chunked(q, k, v, LighthouseConfig(**cfg, backend="triton"), R_, rope=tables)
    ref = chunked(q, k, v, LighthouseConfig(**cfg, backend="reference"), R_, rope=tables)
    assert rel(out, ref) < 1e-5, f"seed {seed}"


def test_causal_fast_path_is_bitwise_causal():
    """On the kernels too: inputs after t change, outputs at <= t do not (float32)."""
    gen, seed = fresh_generator()
    cfg = LighthouseConfig(3, 2, 256, selection="causal")
    N = 1545
    q, k, v = (x.detach() for x in rand_qkv(1, 2, 1, N, 8, gen=gen))
    base = lighthouse_attention(q, k, v, cfg, backend="triton")
    for t in (700, 1100):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = randn(*x[:, :, t + 1 :].shape, gen=gen) * 3.0
        out = lighthouse_attention(q2, k2, v2, cfg, backend="triton")
        assert torch.equal(out[:, :, : t + 1], base[:, :, : t + 1]), f"seed {seed}, t {t}"
