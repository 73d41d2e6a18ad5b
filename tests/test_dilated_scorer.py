"""The `dilated` scorer without quadratic memory, against the plain spec and its dense form.

`DilatedScorer.score` runs the residue-class attentions per (batch, key/value head) chunk with
a kernel that never forms the [M, M] scores; `dilated_scores_dense` is the same computation as
one SDPA call over all classes (the math kernel: [M, M] per class). They must agree in value
(float tolerance) and in the selection they lead to (exactly), and the scorer's largest
intermediate must grow linearly in N.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from lighthouse import LighthouseConfig, lighthouse_attention
from lighthouse import scorers as S
from lighthouse.reference import compute_selection
from memory_meter import largest_tensor
from plain_reference import plain_scores_dilated


def rand_qkv(B, H, G, N, D, dtype=torch.float32):
    return torch.randn(B, H, N, D, dtype=dtype), torch.randn(B, G, N, D, dtype=dtype), torch.randn(B, G, N, D, dtype=dtype)


class DenseDilated(S.Scorer):
    """The dense form as a scorer, to compare selections."""

    def __init__(self, dilation=4):
        self.dilation = dilation

    def score(self, q, k, v, context=None):
        return S.dilated_scores_dense(q, k, v, self.dilation)


@pytest.mark.parametrize("B,H,G,N,D,d", [(2, 4, 2, 101, 8, 3), (1, 2, 1, 64, 16, 4), (1, 4, 1, 37, 8, 5), (1, 2, 2, 9, 4, 1)])
@pytest.mark.parametrize("chunk_elems", [1, 1 << 26])  # one query head per chunk; every head of a group at once
def test_scores_match_plain_and_dense(B, H, G, N, D, d, chunk_elems):
    q, k, v = rand_qkv(B, H, G, N, D)
    sq, sk = S.DilatedScorer(d, chunk_elems=chunk_elems).score(q, k, v)
    assert sq.shape == sk.shape == (B, H, N) and sq.dtype == sk.dtype == torch.float32
    plain_q, plain_k = plain_scores_dilated(q, k, v, d)
    dense_q, dense_k = S.dilated_scores_dense(q, k, v, d)
    for ours, plain, dense in ((sq, plain_q, dense_q), (sk, plain_k, dense_k)):
        torch.testing.assert_close(ours.double(), torch.tensor(plain, dtype=torch.float64), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("M,block", [(300, 64), (64, 64), (65, 64), (7, 1024)])
def test_blocked_attention_is_causal_sdpa(M, block):
    q, k, v = (torch.randn(3, M, 8, dtype=torch.float64) for _ in range(3))
    out = S.blocked_causal_attention(q, k, v, block=block)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-12, atol=1e-12)


def test_falls_back_to_blocked_form_when_no_fused_kernel(monkeypatch):
    """Where no fused SDPA kernel takes the inputs, the blocked form gives the same scores."""
    q, k, v = rand_qkv(1, 2, 1, 203, 8)
    expected = S.DilatedScorer(3).score(q, k, v)

    def no_kernel(*args, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(S, "_fused_rejects", set())
    monkeypatch.setattr(S.F, "scaled_dot_product_attention", no_kernel)
    got = S.DilatedScorer(3).score(q, k, v)
    assert S._fused_rejects == {("cpu", torch.float32, 8)}
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("selection", ["topk", "causal"])
@pytest.mark.parametrize("seed", range(3))
def test_selection_identical_to_dense_form(selection, seed):
    gen = torch.Generator().manual_seed(seed)
    N, H, G, D = 1500, 4, 2, 8  # padded to 1536; 2 tiles of the coarsest level
    q, k, v = (torch.randn(1, h, N, D, generator=gen) for h in (H, G, G))
    cfg = LighthouseConfig(3, 2, 256, scorer=S.DilatedScorer(3), selection=selection)
    ours = compute_selection(q, k, v, cfg)
    dense = compute_selection(q, k, v, dataclasses.replace(cfg, scorer=DenseDilated(3)))
    assert torch.equal(ours.index_BHS, dense.index_BHS)


def test_layer_forward_backward_matches_dense_form():
    q, k, v = (t.requires_grad_() for t in rand_qkv(1, 2, 1, 700, 8))
    outs, grads = [], []
    for scorer in (S.DilatedScorer(), DenseDilated()):
        out = lighthouse_attention(q, k, v, levels=2, pooling=2, topk=128, scorer=scorer)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_memory_is_linear_in_n():
    """No intermediate grows faster than N: 4x the length, at most 4x the largest tensor.

    The dense form at the shorter length already creates a tensor of d * M^2 elements (the
    meter sees quadratic intermediates), more than the scorer needs at 4x the length.
    """
    H, G, D, d, N1 = 2, 1, 8, 4, 2048
    small, large = rand_qkv(1, H, G, N1, D), rand_qkv(1, H, G, 4 * N1, D)
    scorer = S.DilatedScorer(d)
    at_n1 = largest_tensor(lambda: scorer.score(*small))
    at_4n1 = largest_tensor(lambda: scorer.score(*large))
    assert at_4n1 <= 4 * at_n1
    assert at_4n1 <= H * 4 * N1 * D  # the rows of one group's query heads, nothing per pair of tokens
    M = N1 // d
    dense_at_n1 = largest_tensor(lambda: S.dilated_scores_dense(*small, d))
    assert dense_at_n1 >= d * M * M > at_4n1


def test_scorer_benchmark_runs_on_cpu():
    """`python -m lighthouse.bench scorers` at a tiny size: every scorer, forward and forward+backward."""
    from lighthouse.bench.scorers import bench_scorers, print_scorer_table

    rows = bench_scorers([512], levels=2, pooling=2, topk=128, H=2, G=1, D=8, dtype=torch.float32, device="cpu",
                         budget_s=1e-3, log=lambda line: None)
    (row,) = rows
    for entry in ("scores", "lighthouse_fwd", "lighthouse_fwd_bwd"):
        assert set(row[entry]) == {"norm", "dilated", "gla"}
        assert all(e["median_ms"] > 0 for e in row[entry].values())
    out = io.StringIO()
    print_scorer_table(rows, out=out)
    assert "lighthouse fwd+bwd (dilated), peak GiB" in out.getvalue()
