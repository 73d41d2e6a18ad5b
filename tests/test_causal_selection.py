"""Causal selection (`selection="causal"`): the rule against a plain walk, and exact causality.

The property the mode exists for: change q, k, v (and the gla gates) at every position after t,
and every output at positions <= t stays bitwise equal. The same test fails for the paper's
top-k selection, which shows the test can tell the two apart.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lighthouse import LighthouseAttention, LighthouseConfig, lighthouse_attention, rope_tables
from lighthouse.config import LighthouseConfigError
from lighthouse.reference import compute_selection
from lighthouse.scorers import DilatedScorer, GLAScorer
from plain_reference import plain_lighthouse, pyramid_index

W = 128


def rand_qkv(B, H, G, N, D, dtype=torch.float64, requires_grad=True):
    mk = lambda h: torch.randn(B, h, N, D, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    return mk(H), mk(G), mk(G)


# (N, L, p, K, H, G): several tiles (so thresholds come from a previous tile), odd lengths that
# need padding, GQA, L = 2..4, N at the minimum (one tile of exactly W coarse entries).
GRID = [
    (1024, 2, 2, 256, 2, 1),  # 2 tiles of 256 coarse entries
    (1545, 3, 2, 256, 2, 2),  # padded to 1552, 2 tiles
    (2048, 3, 4, 128, 2, 1),  # N = min: one tile, every coarse entry selected
    (3001, 2, 4, 384, 4, 2),  # padded to 3012, 3 tiles
    (1100, 4, 2, 128, 1, 1),  # L = 4
]


@pytest.mark.parametrize("N,L,p,K,H,G", GRID)
def test_causal_matches_plain_walk(N, L, p, K, H, G):
    """Output, kept entries in order, and every gradient against the entry-by-entry walk."""
    q, k, v = rand_qkv(1, H, G, N, 8)
    out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, selection="causal")
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref, kept, n_pad = plain_lighthouse(q2, k2, v2, L, p, K, selection="causal")
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    index = compute_selection(q, k, v, LighthouseConfig(L, p, K, selection="causal")).index_BHS
    for (b, h), entries in kept.items():
        assert index[b, h].tolist() == [pyramid_index(lv, i, n_pad, p) for lv, i, _ in entries]
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for a, b_ in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b_.grad, rtol=1e-9, atol=1e-9)


def test_causal_window_end_and_dilated_match_plain():
    N, L, p, K = 1031, 3, 2, 256  # padded to 1032, 2 tiles
    q, k, v = rand_qkv(1, 2, 1, N, 8, requires_grad=False)
    cos, sin = rope_tables(N, 8, dtype=torch.float64)
    out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, rope=(cos, sin), selection="causal")
    ref, _, _ = plain_lighthouse(q, k, v, L, p, K, rope_theta=10000.0, selection="causal")
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    N, L = 530, 2  # the plain dilated scorer loops over positions: a short sequence, still 2 tiles
    q, k, v = (x[:, :, :N] for x in (q, k, v))
    out = lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, scorer=DilatedScorer(3), selection="causal")
    ref, _, _ = plain_lighthouse(q, k, v, L, p, K, scorer="dilated", dilation=3, selection="causal")
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_every_tile_selects_exactly_w_per_level():
    """S is the same as top-k's, and every kept entry appears once (forced fill closes each tile)."""
    N, L, p, K = 4096, 3, 2, 256
    cfg = LighthouseConfig(L, p, K, selection="causal")
    q, k, v = rand_qkv(2, 2, 1, N, 8, requires_grad=False)
    q[:, :, : N // 2] *= 10.0  # tile 1's thresholds come from a louder tile 0: it picks few, then is forced
    index = compute_selection(q, k, v, cfg).index_BHS
    assert index.shape[-1] == cfg.sub_seq_len(N)
    for row in index.view(-1, index.shape[-1]):
        assert row.unique().numel() == row.numel()
        for lv in range(1, L):  # every finer level keeps the p children of W entries per tile: p * K
            lo, hi = cfg.level_offset(N, lv), cfg.level_offset(N, lv + 1)
            assert ((row >= lo) & (row < hi)).sum().item() == p * K


def _perturbed_after(t, tensors):
    out = []
    for x in tensors:
        y = x.detach().clone()
        y[..., t + 1 :, :] = torch.randn_like(y[..., t + 1 :, :]) * 3.0
        out.append(y)
    return out


CAUSALITY_GRID = [
    # (N, L, p, K, H, G, rope, scorer)
    (1024, 2, 2, 256, 2, 1, "pre-pool", "norm"),
    (1545, 3, 2, 256, 2, 2, "window-end", "norm"),
    (3001, 2, 4, 384, 4, 2, "pre-pool", "norm"),
    (1100, 4, 2, 128, 2, 1, "window-end", "norm"),
    (1031, 3, 2, 256, 2, 1, "pre-pool", "dilated"),
    (1031, 3, 2, 256, 4, 2, "window-end", "gla"),
]


@pytest.mark.parametrize("N,L,p,K,H,G,rope,scorer", CAUSALITY_GRID)
def test_causal_selection_is_exactly_causal_and_topk_is_not(N, L, p, K, H, G, rope, scorer):
    """Change every input after t: outputs at <= t are bitwise equal (causal), and not for top-k."""
    q, k, v = rand_qkv(1, H, G, N, 8, requires_grad=False)
    tables = rope_tables(N, 8, dtype=torch.float64) if rope == "window-end" else None
    gates = -F.softplus(torch.randn(1, H, N, dtype=torch.float64)) if scorer == "gla" else None
    scorer_obj = GLAScorer() if scorer == "gla" else scorer
    c_top = p ** (L - 1)
    tile_len = LighthouseConfig(L, p, K).padded_len(N) // (K // W)
    ts = sorted(t for t in {c_top * 5, tile_len // 2 + 1, tile_len - 1, tile_len + 37, N - 200, N - 2} if t < N - 1)

    def run(selection, q, k, v, g):
        return lighthouse_attention(q, k, v, levels=L, pooling=p, topk=K, scorer=scorer_obj, rope=tables,
                                    selection=selection, scorer_context=g)

    topk_changed, later_changed = [], []
    for selection in ("causal", "topk"):
        base = run(selection, q, k, v, gates)
        for t in ts:
            q2, k2, v2 = _perturbed_after(t, (q, k, v))
            g2 = None
            if gates is not None:
                g2 = gates.clone()
                g2[..., t + 1 :] = -F.softplus(torch.randn_like(g2[..., t + 1 :]))
            out = run(selection, q2, k2, v2, g2)
            same = torch.equal(out[:, :, : t + 1], base[:, :, : t + 1])
            if selection == "causal":
                assert same, f"causal selection: output at <= {t} changed when inputs after {t} changed"
                later_changed.append(not torch.equal(out[:, :, t + 1 :], base[:, :, t + 1 :]))
            else:
                topk_changed.append(not same)
    assert sum(later_changed) >= len(ts) - 1, "the perturbation must reach the later outputs"
    assert any(topk_changed), "the test cannot tell: top-k selection passed it too"


def test_causal_gradients_vanish_after_t():
    q, k, v = rand_qkv(1, 2, 1, 1545, 8)
    for t in (0, 400, 777, 1543):
        for x in (q, k, v):
            x.grad = None
        out = lighthouse_attention(q, k, v, levels=3, pooling=2, topk=256, selection="causal")
        out[:, :, : t + 1].sum().backward()
        for x in (q, k, v):
            assert x.grad[:, :, t + 1 :].abs().max() == 0


def test_levels_1_is_dense_and_selection_is_validated():
    q, k, v = rand_qkv(1, 2, 2, 333, 8, requires_grad=False)
    out = lighthouse_attention(q, k, v, levels=1, selection="causal")
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    with pytest.raises(LighthouseConfigError) as e:
        LighthouseConfig(selection="lookahead")
    assert e.value.key == "selection"
    assert LighthouseConfig(selection="causal").is_causal and not LighthouseConfig().is_causal
    assert "selection=causal" in LighthouseConfig(selection="causal").describe(1 << 20)
    module = LighthouseAttention(levels=2, pooling=2, topk=256, selection="causal")
    q, k, v = rand_qkv(1, 2, 1, 1024, 8, requires_grad=False)
    torch.testing.assert_close(module(q, k, v), lighthouse_attention(q, k, v, module.config), rtol=0, atol=0)
