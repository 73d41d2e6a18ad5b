"""The package against the plain implementation of the spec, plus the spec's properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lighthouse import LighthouseAttention, LighthouseConfig, lighthouse_attention, rope_tables
from lighthouse.reference import attend, compute_selection, pad_to
from plain_reference import plain_lighthouse, pyramid_index


def rand_qkv(B, H, G, N, D, dtype=torch.float64, seed=None, requires_grad=True):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    mk = lambda h: torch.randn(B, h, N, D, dtype=dtype, generator=gen).requires_grad_(requires_grad)  # noqa: E731
    return mk(H), mk(G), mk(G)


# (N, levels, pooling, topk, H, G): odd lengths that need padding, GQA, every coarse entry
# selected (N at the minimum), several tiles, L = 1..4.
GRID = [
    (1024, 2, 2, 128, 2, 2),
    (1001, 3, 2, 128, 4, 2),  # padded to 1004
    (2048, 3, 4, 128, 2, 1),  # N = min: all coarse entries selected
    (2304, 2, 4, 256, 4, 4),  # 2 tiles
    (1537, 3, 2, 256, 2, 2),  # 2 tiles, padded to 1544
    (1100, 4, 2, 128, 2, 1),  # L = 4, padded to 1104
    (777, 1, 4, 128, 4, 2),  # L = 1: dense
]


@pytest.mark.parametrize("N,L,p,K,H,G", GRID)
def test_matches_plain_implementation(N, L, p, K, H, G):
    B, D = 2 if N < 1100 else 1, 8
    q, k, v = rand_qkv(B, H, G, N, D)
    out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref, kept, n_pad = plain_lighthouse(q2, k2, v2, L, p, K)
    assert out.shape == (B, H, N, D) and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    if L > 1:  # the selected entries, in order
        cfg = LighthouseConfig(L, p, K)
        index = compute_selection(q, k, v, cfg).index_BHS
        for (b, h), entries in kept.items():
            want = [pyramid_index(lv, i, n_pad, p) for lv, i, _ in entries]
            assert index[b, h].tolist() == want
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for a, b_ in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b_.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("N,L,p,K,H,G", [(1024, 2, 2, 128, 2, 1), (1001, 3, 2, 128, 2, 2), (777, 1, 2, 128, 2, 1)])
def test_window_end_rope_matches_plain(N, L, p, K, H, G):
    q, k, v = rand_qkv(1, H, G, N, 8)
    cos, sin = rope_tables(N, 8, dtype=torch.float64)
    out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, rope=(cos, sin))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref, _, _ = plain_lighthouse(q2, k2, v2, L, p, K, rope_theta=10000.0)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    out.sum().backward()
    ref.sum().backward()
    for a, b_ in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b_.grad, rtol=1e-9, atol=1e-9)


def test_dilated_scorer_matches_plain():
    from lighthouse import DilatedScorer

    N, H, G = 513, 2, 1  # padded to 516
    q, k, v = rand_qkv(1, H, G, N, 8)
    out = lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, scorer=DilatedScorer(dilation=3))
    ref, _, _ = plain_lighthouse(q.detach(), k.detach(), v.detach(), 2, 2, 128, scorer="dilated", dilation=3)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-9, atol=1e-9)
    out2 = lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, scorer="dilated")
    ref2, _, _ = plain_lighthouse(q.detach(), k.detach(), v.detach(), 2, 2, 128, scorer="dilated", dilation=4)
    torch.testing.assert_close(out2.detach(), ref2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_levels_1_is_dense_sdpa(H, G, dtype):
    q, k, v = rand_qkv(2, H, G, 301, 16, dtype=dtype)
    out = lighthouse_attention(q, k, v, levels=1)
    kk, vv = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
    assert torch.equal(out, F.scaled_dot_product_attention(q, kk, vv, is_causal=True))
    assert torch.equal(LighthouseAttention(levels=1)(q, k, v), out)


@pytest.mark.parametrize(
    "N,L,p,K", [(4096, 3, 4, 256), (1024, 2, 2, 128), (3000, 3, 2, 384), (8192, 4, 2, 256), (1 << 14, 3, 4, 512)]
)
def test_sub_sequence_length(N, L, p, K):
    cfg = LighthouseConfig(L, p, K)
    q, k, v = rand_qkv(1, 2, 1, N, 4, dtype=torch.float32, requires_grad=False)
    index = compute_selection(q, k, v, cfg).index_BHS
    n_pad = cfg.padded_len(N)
    expected = n_pad // p ** (L - 1) + (L - 1) * p * K
    assert index.shape == (1, 2, expected) and cfg.sub_seq_len(N) == expected
    for row in index.view(-1, expected):  # each kept entry appears once
        assert row.unique().numel() == expected


def test_causality_of_gradients():
    """d out[<= t] / d input[> t] is exactly zero (selection recomputed inside)."""
    N, L, p, K = 1024, 3, 2, 128
    q, k, v = rand_qkv(1, 2, 1, N, 8)
    for t in (0, 5, 300, 511, 777, N - 2):
        for x in (q, k, v):
            x.grad = None
        out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K)
        out[:, :, : t + 1].sum().backward()
        for x in (q, k, v):
            assert x.grad[:, :, t + 1 :].abs().max() == 0
        assert q.grad[:, :, : t + 1].abs().sum() + v.grad[:, :, : t + 1].abs().sum() > 0 or t < p ** (L - 1) - 1


def test_causality_with_fixed_selection():
    """With the selection held fixed, changing inputs after t changes no output <= t."""
    N, L, p, K = 1024, 3, 2, 128
    cfg = LighthouseConfig(L, p, K)
    q, k, v = rand_qkv(1, 2, 2, N, 8, requires_grad=False)
    sel = compute_selection(q, k, v, cfg)
    base = attend(q, k, v, sel, cfg)
    for t in (3, 200, 640, 1000):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 5
        out = attend(q2, k2, v2, sel, cfg)
        assert torch.equal(out[:, :, : t + 1], base[:, :, : t + 1])
        assert not torch.equal(out[:, :, t + 1 :], base[:, :, t + 1 :])


def test_selection_is_not_causal():
    """Documented non-causality: later tokens' norms decide which earlier entries get refined."""
    N, L, p, K = 1024, 2, 2, 128  # one tile of 512 coarse entries
    cfg = LighthouseConfig(L, p, K)
    q, k, v = rand_qkv(1, 1, 1, N, 8, requires_grad=False)
    t = 500
    before = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K)
    q2, k2 = q.clone(), k.clone()
    q2[:, :, t + 1 :] *= 100.0  # later tokens now win every query-score slot ...
    k2[:, :, t + 1 :] *= 100.0  # ... and every key-score slot of the tile
    after = lighthouse_attention(q2, k2, v, levels=L, pooling=p, topk=K)
    sel_before = set(compute_selection(q, k, v, cfg).index_BHS[0, 0].tolist())
    sel_after = set(compute_selection(q2, k2, v, cfg).index_BHS[0, 0].tolist())
    assert sel_before != sel_after
    assert not torch.equal(after[:, :, : t + 1], before[:, :, : t + 1])


def test_pad_content_has_no_effect():
    N, L, p, K = 1027, 3, 2, 256  # padded to 1032 (multiple of 4 * 2 tiles)
    cfg = LighthouseConfig(L, p, K)
    n_pad = cfg.padded_len(N)
    assert n_pad == 1032
    q, k, v = rand_qkv(2, 2, 1, N, 8, requires_grad=False)
    sel = compute_selection(q, k, v, cfg)
    zeros = attend(pad_to(q, n_pad), pad_to(k, n_pad), pad_to(v, n_pad), sel, cfg)
    noise = lambda x: torch.cat([x, 1e3 * torch.randn(*x.shape[:2], n_pad - N, x.shape[3], dtype=x.dtype)], 2)  # noqa: E731
    noisy = attend(noise(q), noise(k), noise(v), sel, cfg)
    assert torch.equal(zeros[:, :, :N], noisy[:, :, :N])
    assert torch.equal(lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K), zeros[:, :, :N])


def test_gradcheck_float64():
    N, L, p, K = 256, 2, 2, 128
    q, k, v = rand_qkv(1, 2, 1, N, 4, seed=0)
    cfg = LighthouseConfig(L, p, K)
    sel = compute_selection(q, k, v, cfg)  # fixed, so finite differences cannot flip it
    assert torch.autograd.gradcheck(lambda a, b, c: attend(a, b, c, sel, cfg), (q, k, v), eps=1e-6, atol=1e-6, fast_mode=True)
    cos, sin = rope_tables(N, 4, dtype=torch.float64)
    windowed = lambda a, b, c: attend(a, b, c, sel, cfg, rope=(cos, sin))
    assert torch.autograd.gradcheck(windowed, (q, k, v), eps=1e-6, atol=1e-6, fast_mode=True)


def test_deterministic():
    q, k, v = rand_qkv(1, 4, 2, 1536, 16, dtype=torch.float32)
    outs, grads = [], []
    for _ in range(2):
        for x in (q, k, v):
            x.grad = None
        o = lighthouse_attention(q, k, v, levels=3, pooling=2, topk=128)
        o.square().sum().backward()
        outs.append(o.detach())
        grads.append([x.grad.clone() for x in (q, k, v)])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_bfloat16_close_to_float64():
    q, k, v = (x.bfloat16() for x in rand_qkv(1, 2, 2, 1024, 32, requires_grad=False))
    ref = lighthouse_attention(q.double(), k.double(), v.double(), levels=2, pooling=2, topk=128)
    out = lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128)
    assert out.dtype == torch.bfloat16
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 2e-2, err


def test_module_and_config():
    cfg = LighthouseConfig(levels=3, pooling=4, topk=512)
    assert cfg.sub_seq_len(16384) == 16384 // 16 + 2 * 4 * 512
    assert "S=5120" in cfg.describe(16384)
    m = LighthouseAttention.from_config(LighthouseConfig(2, 2, 128))
    q, k, v = rand_qkv(1, 2, 1, 512, 8, dtype=torch.float32, requires_grad=False)
    assert torch.equal(m(q, k, v), lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128))
    assert "K=128" in repr(m)
    assert list(m.parameters()) == []
