"""A deliberately plain implementation of the spec, written only for the tests.

It shares no code with the package: float64, Python loops over rows, heads, tiles and
levels, selection by sorting Python lists, the order of spec §3 with exact fractions, and
the gather / scatter written as explicit matrices (pool matrix A [S, N], scatter matrix
Z [N, S]) so autograd gives the gradients.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

W = 128


def plain_scores_norm(q, k):
    """s_q [B, H, N], s_k [B, G, N] as Python floats in nested lists."""
    return q.detach().double().norm(dim=-1).tolist(), k.detach().double().norm(dim=-1).tolist()


def plain_scores_dilated(q, k, v, dilation):
    B, H, N, D = q.shape
    G = k.shape[1]
    q, k, v = q.detach().double(), k.detach().double(), v.detach().double()
    sq = [[[0.0] * N for _ in range(H)] for _ in range(B)]
    sk = [[[0.0] * N for _ in range(H)] for _ in range(B)]
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for t in range(N):
                js = list(range(t % dilation, t + 1, dilation))
                for a, bb, out in ((q[b, h], k[b, g], sq), (k[b, g], q[b, h], sk)):
                    logits = torch.stack([a[t] @ bb[j] for j in js]) / math.sqrt(D)
                    w = torch.softmax(logits, dim=0)
                    o = sum(w[n] * v[b, g, j] for n, j in enumerate(js))
                    out[b][h][t] = float(o.norm())
    return sq, sk


def plain_scores_gla(q, k, v, log_gates, dilation):
    """Gated linear attention in each residue class, written as the explicit sum.

    o_t = sum over j = t, t-d, t-2d, ... >= 0 of exp(sum of log_gates at the class positions
    after j, up to t) * (a_t . b_j) / sqrt(D) * v_j, with (a, b) = (q, k) for s_q and (k, q)
    for s_k. log_gates: [B, H, N], one per query head.
    """
    B, H, N, D = q.shape
    G = k.shape[1]
    q, k, v = q.detach().double(), k.detach().double(), v.detach().double()
    gates = log_gates.detach().double().expand(B, H, N).tolist()
    sq = [[[0.0] * N for _ in range(H)] for _ in range(B)]
    sk = [[[0.0] * N for _ in range(H)] for _ in range(B)]
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for t in range(N):
                js = list(range(t % dilation, t + 1, dilation))
                decay, log_decay = [], 0.0
                for j in reversed(js):  # the decay of j is the gates of the class positions after it
                    decay.append(math.exp(log_decay))
                    log_decay += gates[b][h][j]
                w = torch.tensor(decay[::-1], dtype=torch.float64)
                for a, bb, out in ((q[b, h], k[b, g], sq), (k[b, g], q[b, h], sk)):
                    o = (w * (bb[js] @ a[t]) / math.sqrt(D)) @ v[b, g, js]
                    out[b][h][t] = float(o.norm())
    return sq, sk


def plain_select_row(sq_base, sk_base, n_pad, levels, pooling, topk):
    """Kept entries (level, i, selected) of one (batch, head) row in causal order.

    sq_base / sk_base: lists of base scores of length n_pad (padding = -inf-like).
    """
    L, p = levels, pooling
    T = topk // W
    n_coarse = n_pad // p ** (L - 1)
    per_tile = n_coarse // T

    def pooled(scores, level, i):
        c = p ** (level - 1)
        return max(scores[c * i : c * (i + 1)])

    kept = []
    for tile in range(T):
        cands = list(range(tile * per_tile, (tile + 1) * per_tile))
        for level in range(L, 0, -1):
            if level == 1:
                kept += [(1, i, False) for i in cands]
                break
            # Top W/2 by s_q; ties to the earlier candidate (candidates are in ascending order).
            by_q = sorted(range(len(cands)), key=lambda n: (-pooled(sq_base, level, cands[n]), n))[: W // 2]
            rest = [n for n in range(len(cands)) if n not in set(by_q)]
            by_k = sorted(rest, key=lambda n: (-pooled(sk_base, level, cands[n]), n))[: W // 2]
            chosen = set(by_q) | set(by_k)
            kept += [(level, cands[n], n in chosen) for n in range(len(cands))]
            parents = sorted(cands[n] for n in chosen)
            cands = [par * p + j for par in parents for j in range(p)]

    def key(entry):
        level, i, selected = entry
        c = p ** (level - 1)
        return Fraction(c * (i + 1)) - Fraction(1, 2 ** (level - 1)) if selected else Fraction(c * i)

    return sorted(kept, key=key)


def plain_select_row_causal(sq_base, sk_base, n_pad, levels, pooling, topk):
    """Causal selection of one row, walked entry by entry (docs/design.md, "Causal selection").

    An entry's score is the max of the base scores in [c*i - c + 1, c*i]. Per tile and level,
    candidates are visited in order: a candidate is selected when the places left are no more
    than the candidates left (counting itself), else when fewer than W/2 were taken by s_q and
    its s_q reaches tau_q, else when fewer than W/2 were taken by s_k and its s_k reaches tau_k.
    tau_q, tau_k: the W/2-th largest s_q of the previous tile's candidates at this level, and the
    W/2-th largest s_k of the rest of them (ties to the earlier candidate); -inf in tile 0.
    """
    L, p = levels, pooling
    T = topk // W
    n_coarse = n_pad // p ** (L - 1)
    per_tile = n_coarse // T

    def causal_score(scores, level, i):
        c = p ** (level - 1)
        return max(scores[max(0, c * i - c + 1) : c * i + 1])

    previous = {}  # level -> (s_q list, s_k list) of the previous tile's candidates
    kept = []
    for tile in range(T):
        cands = list(range(tile * per_tile, (tile + 1) * per_tile))
        for level in range(L, 0, -1):
            if level == 1:
                kept += [(1, i, False) for i in cands]
                break
            sqs = [causal_score(sq_base, level, i) for i in cands]
            sks = [causal_score(sk_base, level, i) for i in cands]
            if level in previous:
                psq, psk = previous[level]
                by_q = sorted(range(len(psq)), key=lambda n: (-psq[n], n))
                tau_q = psq[by_q[W // 2 - 1]]
                taken = set(by_q[: W // 2])
                tau_k = sorted((psk[n] for n in range(len(psk)) if n not in taken), reverse=True)[W // 2 - 1]
            else:
                tau_q = tau_k = -math.inf
            previous[level] = (sqs, sks)
            chosen, n_q, n_k = [], 0, 0
            for n in range(len(cands)):
                if W - len(chosen) >= len(cands) - n:
                    chosen.append(n)
                elif n_q < W // 2 and sqs[n] >= tau_q:
                    n_q += 1
                    chosen.append(n)
                elif n_k < W // 2 and sks[n] >= tau_k:
                    n_k += 1
                    chosen.append(n)
            assert len(chosen) == W
            kept += [(level, cands[n], n in set(chosen)) for n in range(len(cands))]
            cands = [cands[n] * p + j for n in chosen for j in range(p)]

    def key(entry):
        level, i, selected = entry
        c = p ** (level - 1)
        return Fraction(c * (i + 1)) - Fraction(1, 2 ** (level - 1)) if selected else Fraction(c * i)

    return sorted(kept, key=key)


def pyramid_index(level, i, n_pad, pooling):
    return sum(n_pad // pooling ** (lv - 1) for lv in range(1, level)) + i


def rotate(x, pos, theta=10000.0):
    """RoPE (rotate_half convention) of a [D] vector at integer position `pos`, float64."""
    D = x.shape[-1]
    inv = [1.0 / theta ** (2 * j / D) for j in range(D // 2)]
    ang = torch.tensor([pos * f for f in inv] * 2, dtype=torch.float64)
    x1, x2 = x[: D // 2], x[D // 2 :]
    return x * ang.cos() + torch.cat([-x2, x1]) * ang.sin()


def plain_lighthouse(q, k, v, levels, pooling, topk, scorer="norm", dilation=4, rope_theta=None, log_gates=None,
                     selection="topk"):
    """Returns (output [B, H, N, D] float64, kept entries per (b, h) in order).

    q, k, v: float64 tensors (may require grad). rope_theta: None for pre-pool inputs, else
    the window-end placement with RoPE of that theta. log_gates: [B, H, N] (or broadcastable)
    log-decays of the `gla` scorer.
    """
    B, H, N, D = q.shape
    G = k.shape[1]
    L, p = levels, pooling
    if L == 1:
        n_pad = N
    else:
        mult = p ** (L - 1) * (topk // W)
        n_pad = math.ceil(N / mult) * mult
    if scorer == "norm":
        sq, sk = plain_scores_norm(q, k)
    elif scorer == "gla":
        sq, sk = plain_scores_gla(q, k, v, log_gates, dilation)
    else:
        sq, sk = plain_scores_dilated(q, k, v, dilation)
    pad_score = -1e300
    out = torch.zeros(B, H, n_pad, D, dtype=torch.float64)
    pad = lambda x: torch.cat([x, torch.zeros(n_pad - N, D, dtype=x.dtype)])  # noqa: E731
    kept_all = {}
    rows = []
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            if L == 1:
                kept = [(1, i, False) for i in range(N)]
            else:
                sq_row = sq[b][h] + [pad_score] * (n_pad - N)
                sk_row = sk[b][g if len(sk[b]) == G else h] + [pad_score] * (n_pad - N)
                select_row = plain_select_row_causal if selection == "causal" else plain_select_row
                kept = select_row(sq_row, sk_row, n_pad, L, p, topk)
            kept_all[(b, h)] = kept
            S = len(kept)
            A = torch.zeros(S, n_pad, dtype=torch.float64)  # mean pooling of each kept entry
            Z = torch.zeros(n_pad, S, dtype=torch.float64)  # scatter: entry -> [c(i+1)-1, c(i+2)-1)
            for s, (level, i, _) in enumerate(kept):
                c = p ** (level - 1)
                A[s, c * i : c * (i + 1)] = 1.0 / c
                Z[c * (i + 1) - 1 : min(c * (i + 2) - 1, n_pad), s] = 1.0
            qs, ks, vs = A @ pad(q[b, h]), A @ pad(k[b, g]), A @ pad(v[b, g])
            if rope_theta is not None:
                pos = [p ** (lv - 1) * (i + 1) - 1 for lv, i, _ in kept]
                qs = torch.stack([rotate(qs[s], pos[s], rope_theta) for s in range(S)])
                ks = torch.stack([rotate(ks[s], pos[s], rope_theta) for s in range(S)])
            logits = qs @ ks.T / math.sqrt(D)
            logits = logits.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
            rows.append(Z @ (torch.softmax(logits, dim=-1) @ vs))
    out = torch.stack(rows).view(B, H, n_pad, D)[:, :, :N]
    return out, kept_all, n_pad
