"""The `gla` scorer: its GLA forms against each other, the scorer against the plain spec,
causality, the gate contract and its errors.

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim, E model dim.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from lighthouse import LighthouseConfig, available_scorers, get_scorer, lighthouse_attention
from lighthouse.gla import (
    fla_available,
    gated_linear_attention,
    gla_chunked,
    gla_fla,
    gla_log_gates,
    gla_recurrent,
    make_gate_projection,
)
from lighthouse.reference import compute_selection
from lighthouse.scorers import GLAScorer
from plain_reference import plain_lighthouse, plain_scores_gla, pyramid_index
from test_attention import rand_qkv

# As in test_kernels.py: with a GPU the Triton backend runs compiled on CUDA tensors; without
# one, on CPU tensors under Triton's interpreter, chosen when the kernels are first imported
# (lazily, by the first backend="triton" call).
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def rand_gates(shape, seed, spread=2.0, dtype=torch.float64):
    """Log-decays logsigmoid(spread * z): varied enough that a misplaced gate changes the scores."""
    gen = torch.Generator().manual_seed(seed)
    return F.logsigmoid(spread * torch.randn(*shape, dtype=dtype, generator=gen))


def rand(shape, seed, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------
# Gated linear attention: chunked form == recurrence, and the recurrence's semantics
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "N,chunk_size,block_chunks",
    [(13, 1, 1), (77, 4, 3), (130, 16, 2), (77, 64, 32), (64, 7, 1), (200, 8, 100)],
)
def test_chunked_matches_recurrent(N, chunk_size, block_chunks):
    # Leading dims as the scorer uses them with GQA: q [B, G, R, d], k and v [B, G, 1, d].
    q, k = rand((2, 2, 3, 1, N, 8), 1), rand((2, 2, 1, 1, N, 8), 2)
    v, g = rand((2, 2, 1, 1, N, 5), 3), rand_gates((2, 2, 3, 1, N), 4)
    ref = gla_recurrent(q, k, v, g)
    out = gla_chunked(q, k, v, g, chunk_size=chunk_size, block_chunks=block_chunks)
    assert out.shape == (2, 2, 3, 1, N, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_chunked_strong_and_zero_decay():
    """Decays down to exp(-50) per token stay finite; a zero log-decay is plain causal linear attention."""
    N, D = 150, 8
    q, k, v = rand((1, 2, N, D), 5), rand((1, 2, N, D), 6), rand((1, 2, N, D), 7)
    g = -50.0 * torch.rand(1, 2, N, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(gla_chunked(q, k, v, g, chunk_size=16, block_chunks=2), gla_recurrent(q, k, v, g),
                               rtol=1e-12, atol=1e-12)
    zero = torch.zeros(1, 2, N, dtype=torch.float64)
    linear = ((q @ k.transpose(-1, -2)).tril() @ v) / math.sqrt(D)
    torch.testing.assert_close(gla_chunked(q, k, v, zero, chunk_size=16), linear, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gla_recurrent(q, k, v, zero), linear, rtol=1e-12, atol=1e-12)


def test_decay_applies_before_the_token_is_added():
    """fla's `chunk_simple_gla` semantics: S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t.

    A gate of -1e4 (a decay of exp(-1e4) = 0) at t wipes everything before t but keeps token t itself.
    """
    N, D, t = 40, 4, 23
    q, k, v = rand((1, 1, N, D), 9), rand((1, 1, N, D), 10), rand((1, 1, N, D), 11)
    g = torch.zeros(1, 1, N, dtype=torch.float64)
    g[..., t] = -1e4
    out = gla_chunked(q, k, v, g, chunk_size=8, scale=0.5)
    own = 0.5 * (q[0, 0, t] @ k[0, 0, t]) * v[0, 0, t]
    torch.testing.assert_close(out[0, 0, t], own, rtol=1e-12, atol=1e-12)
    later = 0.5 * ((q[0, 0, t:] @ k[0, 0, t:].T).tril() @ v[0, 0, t:])
    torch.testing.assert_close(out[0, 0, t:], later, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# The scorer against the plain implementation of the spec
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,H,G,dilation", [(61, 4, 2, 4), (50, 2, 1, 3), (23, 2, 2, 1), (3, 2, 1, 4)])
def test_scores_match_plain(N, H, G, dilation):
    q, k, v = rand_qkv(2, H, G, N, 8, seed=12, requires_grad=False)
    g = rand_gates((2, H, N), 13)
    sq, sk = GLAScorer(dilation=dilation).score(q, k, v, context=g)
    want_q, want_k = plain_scores_gla(q, k, v, g, dilation)
    assert sq.shape == sk.shape == (2, H, N) and sq.dtype == sk.dtype == torch.float32
    torch.testing.assert_close(sq, torch.tensor(want_q, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sk, torch.tensor(want_k, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    # A fixed decay is the same as a constant gate tensor.
    fixed_q, fixed_k = GLAScorer(dilation=dilation, fixed_log_decay=-0.3).score(q, k, v)
    const_q, const_k = plain_scores_gla(q, k, v, torch.full((1, 1, N), -0.3, dtype=torch.float64), dilation)
    torch.testing.assert_close(fixed_q, torch.tensor(const_q, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fixed_k, torch.tensor(const_k, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def test_bfloat16_scores_close_to_float64():
    q, k, v = rand_qkv(1, 4, 2, 301, 32, seed=14, requires_grad=False)
    g = rand_gates((1, 4, 301), 15)
    ref_q, ref_k = GLAScorer().score(q, k, v, context=g)
    sq, sk = GLAScorer().score(q.bfloat16(), k.bfloat16(), v.bfloat16(), context=g.bfloat16())
    assert sq.dtype == torch.float32
    for a, b in ((sq, ref_q), (sk, ref_k)):
        assert ((a - b).norm() / b.norm()).item() < 2e-2


@pytest.mark.parametrize("N,H,G,seed", [(513, 2, 1, 16), (777, 4, 2, 17)])
def test_selection_and_output_match_plain(N, H, G, seed):
    """lighthouse_attention(scorer="gla") == the plain spec with the plain gla scorer (padding, GQA)."""
    L, p, K = 2, 2, 128
    q, k, v = rand_qkv(1, H, G, N, 8, seed=seed)
    g = rand_gates((1, H, N), seed + 100)
    out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, scorer="gla", scorer_context=g,
                               backend="reference")
    ref, kept, n_pad = plain_lighthouse(q.detach(), k.detach(), v.detach(), L, p, K, scorer="gla", log_gates=g)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-9, atol=1e-9)
    cfg = LighthouseConfig(L, p, K, scorer="gla")
    index = compute_selection(q, k, v, cfg, context=g).index_BHS
    for (b, h), entries in kept.items():
        assert index[b, h].tolist() == [pyramid_index(lv, i, n_pad, p) for lv, i, _ in entries]
    # The gates matter: the norm and dilated scorers select differently on the same q, k, v.
    for other in ("norm", "dilated"):
        assert not torch.equal(compute_selection(q, k, v, LighthouseConfig(L, p, K, scorer=other)).index_BHS, index)


def test_fixed_decay_scorer_matches_plain():
    N, H, G = 515, 2, 2  # padded to 516, dilation 3 does not divide N
    q, k, v = rand_qkv(1, H, G, N, 8, seed=18, requires_grad=False)
    scorer = GLAScorer(dilation=3, fixed_log_decay=-0.05)
    out = lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, scorer=scorer)
    ref, _, _ = plain_lighthouse(q, k, v, 2, 2, 128, scorer="gla", dilation=3,
                                 log_gates=torch.full((1, 1, N), -0.05, dtype=torch.float64))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------
# Causality
# ---------------------------------------------------------------------------------------
def test_scores_are_causal():
    """The score of token t depends on tokens <= t only: later tokens (and their gates) change nothing."""
    N, H, G = 300, 2, 1
    q, k, v = rand_qkv(1, H, G, N, 8, seed=19, requires_grad=False)
    g = rand_gates((1, H, N), 20)
    full_q, full_k = GLAScorer(backend="torch").score(q, k, v, context=g)
    noise = rand((1, H, N, 8), 21)
    for t in (0, 3, 64, 129, 250):
        q2, k2, v2, g2 = q.clone(), k.clone(), v.clone(), g.clone()
        q2[:, :, t + 1 :] = 1e3 * noise[:, :, t + 1 :]
        k2[:, :, t + 1 :] = 1e3 * noise[:, :1, t + 1 :]
        v2[:, :, t + 1 :] = -1e3 * noise[:, :1, t + 1 :]
        g2[:, :, t + 1 :] = -7.0
        s_q, s_k = GLAScorer(backend="torch").score(q2, k2, v2, context=g2)
        torch.testing.assert_close(s_q[..., : t + 1], full_q[..., : t + 1], rtol=1e-6, atol=0)
        torch.testing.assert_close(s_k[..., : t + 1], full_k[..., : t + 1], rtol=1e-6, atol=0)
        assert not torch.equal(s_q[..., t + 1 :], full_q[..., t + 1 :])
        # The prefix alone scores the same (no padding or chunk effect).
        p_q, p_k = GLAScorer(backend="torch").score(q[:, :, : t + 1], k[:, :, : t + 1], v[:, :, : t + 1],
                                                    context=g[:, :, : t + 1])
        torch.testing.assert_close(p_q, full_q[..., : t + 1], rtol=1e-6, atol=0)
        torch.testing.assert_close(p_k, full_k[..., : t + 1], rtol=1e-6, atol=0)


def test_causality_of_gradients_and_no_gate_gradient():
    """d out[<= t] / d input[> t] is exactly zero (selection recomputed inside); the gates get no gradient."""
    N, L, p, K = 1024, 3, 2, 128
    q, k, v = rand_qkv(1, 2, 1, N, 8, seed=22)
    g = rand_gates((1, 2, N), 23).requires_grad_()
    for t in (0, 5, 300, 777, N - 2):
        for x in (q, k, v):
            x.grad = None
        out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, scorer="gla", scorer_context=g)
        out[:, :, : t + 1].sum().backward()
        for x in (q, k, v):
            assert x.grad[:, :, t + 1 :].abs().max() == 0
        assert q.grad[:, :, : t + 1].abs().sum() + v.grad[:, :, : t + 1].abs().sum() > 0 or t < p ** (L - 1) - 1
        assert g.grad is None  # selection is gradient-free: W_g would never be trained


# ---------------------------------------------------------------------------------------
# Through lighthouse_attention: reference and Triton backends
# ---------------------------------------------------------------------------------------
def test_forward_backward_reference_and_triton():
    pytest.importorskip("triton", reason="the Triton backend needs the `triton` package")
    device = "cuda" if ON_GPU else "cpu"
    N, H, G, E = 700, 4, 2, 32
    q, k, v = (x.detach().to(device).requires_grad_() for x in rand_qkv(1, H, G, N, 8, dtype=torch.float32, seed=24))
    x = rand((1, N, E), 25, dtype=torch.float32).to(device)
    gate = make_gate_projection(E, H, generator=torch.Generator().manual_seed(26)).to(device)
    g = gla_log_gates(x, gate)
    kw = {"levels": 2, "pooling": 2, "topk": 128, "scorer": "gla", "scorer_context": g}
    grad_out = rand((1, H, N, 8), 27, dtype=torch.float32).to(device)
    results = {}
    for backend in ("reference", "triton"):
        out = lighthouse_attention(q, k, v, backend=backend, **kw)
        results[backend] = (out, torch.autograd.grad(out, (q, k, v), grad_out))
    (ref, ref_grads), (fast, fast_grads) = results["reference"], results["triton"]
    assert ref.shape == (1, H, N, 8) and torch.isfinite(ref).all()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(fast, ref) < 1e-5
    for a, b in zip(fast_grads, ref_grads):
        assert torch.isfinite(b).all() and rel(a, b) < 1e-5
    # The gla scorer is what ran: the norm scorer's output differs.
    assert not torch.equal(lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, backend="reference"), ref)


# ---------------------------------------------------------------------------------------
# Gate helpers, registry, errors
# ---------------------------------------------------------------------------------------
def test_gate_projection_and_log_gates():
    E, H, N = 256, 8, 50
    gate = make_gate_projection(E, H, generator=torch.Generator().manual_seed(28))
    assert gate.weight.shape == (H, E) and not gate.weight.requires_grad and not gate.bias.requires_grad
    assert torch.equal(gate.bias, torch.zeros(H))
    assert 0.018 < gate.weight.std().item() < 0.022 and gate.weight.mean().abs().item() < 2e-3
    x = rand((2, N, E), 29, dtype=torch.float32).requires_grad_()
    g = gla_log_gates(x, gate)
    assert g.shape == (2, H, N) and g.dtype == torch.float32 and not g.requires_grad
    want = F.logsigmoid(x.detach() @ gate.weight.T + gate.bias).transpose(1, 2) / 16
    torch.testing.assert_close(g, want)
    assert (g < 0).all()


def test_registered_by_name():
    assert "gla" in available_scorers()
    scorer = get_scorer("gla")
    assert isinstance(scorer, GLAScorer) and scorer.name == "gla"
    assert (scorer.dilation, scorer.fixed_log_decay, scorer.backend) == (4, None, "auto")
    assert LighthouseConfig(2, 2, 128, scorer="gla").scorer == "gla"


@pytest.mark.parametrize(
    "context,exc,match",
    [
        (None, ValueError, r"needs its gates: pass scorer_context=g_BHN.*\[1, 4, 1024\]"),
        ("kv-heads", ValueError, r"scorer_context must have shape \[B, H, N\] = \[1, 4, 1024\].*got \(1, 2, 1024\)"),
        ("tokens-first", ValueError, r"scorer_context must have shape .*got \(1, 1024, 4\)"),
        ("padded", ValueError, r"scorer_context must have shape .*no padding.*got \(1, 4, 1028\)"),
        ("int", ValueError, r"scorer_context must be a floating-point tensor"),
        ("tuple", TypeError, r"expects scorer_context to be a tensor g_BHN"),
    ],
)
def test_bad_gate_input(context, exc, match):
    q, k, v = rand_qkv(1, 4, 2, 1024, 8, dtype=torch.float32, seed=30, requires_grad=False)
    g = rand_gates((1, 4, 1028), 31, dtype=torch.float32)
    bad = {
        None: None,
        "kv-heads": g[:, :2, :1024],
        "tokens-first": g[..., :1024].transpose(1, 2),
        "padded": g,
        "int": torch.zeros(1, 4, 1024, dtype=torch.int64),
        "tuple": (q, g),
    }[context]
    with pytest.raises(exc, match=match):
        lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, scorer="gla", scorer_context=bad)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"dilation": 0}, ValueError, r"dilation must be a positive int"),
        ({"dilation": 2.0}, ValueError, r"dilation must be a positive int"),
        ({"fixed_log_decay": 0.5}, ValueError, r"fixed_log_decay is a log-decay and must be finite and <= 0"),
        ({"fixed_log_decay": float("nan")}, ValueError, r"must be finite and <= 0"),
        ({"fixed_log_decay": "-0.1"}, TypeError, r"fixed_log_decay must be None or a float"),
        ({"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'torch', 'fla'\)"),
    ],
)
def test_bad_scorer_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GLAScorer(**kwargs)


def test_fla_backend_needs_cuda():
    q = rand((1, 1, 8, 4), 32, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"fla backend runs on CUDA tensors"):
        gated_linear_attention(q, q, q, torch.zeros(1, 1, 8), backend="fla")


# ---------------------------------------------------------------------------------------
# flash-linear-attention (GPU only)
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available() or not fla_available(),
                    reason="needs a CUDA device and flash-linear-attention (pip install 'lighthouse[gla]')")
def test_fla_matches_recurrent():
    N = 333
    q, k = rand((1, 2, 3, 4, N, 64), 33, dtype=torch.float32), rand((1, 2, 1, 4, N, 64), 34, dtype=torch.float32)
    v, g = rand((1, 2, 1, 4, N, 64), 35, dtype=torch.float32), rand_gates((1, 2, 3, 4, N), 36, dtype=torch.float32)
    ref = gla_recurrent(q.double(), k.double(), v.double(), g.double())
    out = gla_fla(*(x.cuda() for x in (q, k, v, g))).cpu()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert ((out.double() - ref).norm() / ref.norm()).item() < 5e-3
    qh, kh, vh = (rand((1, 4, 4096, 128), s, dtype=torch.float32).cuda().bfloat16() for s in (37, 38, 39))
    gh = rand_gates((1, 4, 4096), 40, dtype=torch.float32).cuda() / 16
    for a, b in zip(GLAScorer(backend="fla").score(qh, kh, vh, context=gh),
                    GLAScorer(backend="torch").score(qh, kh, vh, context=gh)):
        assert ((a - b).norm() / b.norm()).item() < 2e-2
