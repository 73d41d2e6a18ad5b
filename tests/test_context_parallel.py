"""Context parallelism: sharding, the single-process decomposition, and the gloo runs of R = 2 and 4 ranks.

The multi-process tests spawn R processes once per R (a module fixture); each process runs
every case on its local shard and saves its outputs and input gradients, and the checks
run here in the parent against single-process computations of the same inputs.

Legend: B batch, H query heads, G key/value heads, N full length, C chunk length N/(2R), D head dim.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lighthouse import LighthouseConfig, dense_causal_attention, lighthouse_attention, rope_tables
from lighthouse.distributed import (
    ContextParallelDense,
    ContextParallelLighthouse,
    all_gather_with_grad,
    check_context_parallel,
    chunk_config,
    lighthouse_attention_chunked_reference,
    shard_positions,
    shard_rope,
    shard_sequence,
    unshard_sequence,
)
from lighthouse.distributed.mesh import leave_process_group

D = 8
SPAWN_TIMEOUT_S = 150  # for the whole group of ranks, start-up included
TOL = {"rtol": 1e-11, "atol": 1e-11}  # float64 throughout


@dataclass(frozen=True)
class Case:
    """One attention layer under CP. Lighthouse sizes: topk = 2R*128*tiles, C = p^(L-1)*128*tiles."""

    name: str
    kind: str  # "lighthouse" | "dense"
    H: int
    G: int
    rope: bool
    levels: int = 2
    pooling: int = 2
    tiles: int = 1  # tiles per chunk
    dense_chunk_len: int = 32
    B: int = 1
    seed: int = 0
    backend: str = "auto"  # "triton": the ranks run the chunks on the kernels (Triton's interpreter on CPU)

    def config(self, cp_degree: int, backend: str | None = None) -> LighthouseConfig:
        return LighthouseConfig(self.levels, self.pooling, 2 * cp_degree * 128 * self.tiles, backend=backend or self.backend)

    def seq_len(self, cp_degree: int) -> int:
        if self.kind == "dense" or self.levels == 1:
            return 2 * cp_degree * self.dense_chunk_len
        return 2 * cp_degree * self.pooling ** (self.levels - 1) * 128 * self.tiles

    def inputs(self, cp_degree: int):
        """Full-length q, k, v, the upstream gradient g and the rope tables (longer than N on purpose)."""
        N = self.seq_len(cp_degree)
        gen = torch.Generator().manual_seed(self.seed)
        q, g = (torch.randn(self.B, self.H, N, D, dtype=torch.float64, generator=gen) for _ in range(2))
        k, v = (torch.randn(self.B, self.G, N, D, dtype=torch.float64, generator=gen) for _ in range(2))
        rope = rope_tables(N + 16, D, dtype=torch.float64) if self.rope else None
        return q, k, v, g, rope


def cp_cases(cp_degree: int) -> list[Case]:
    cases = [
        Case("lighthouse_prepool", "lighthouse", H=2, G=2, rope=False, seed=1),
        Case("lighthouse_rope_gqa", "lighthouse", H=2, G=1, rope=True, seed=2),
        Case("lighthouse_levels1_is_dense", "lighthouse", H=2, G=1, rope=True, levels=1, seed=3),
        Case("dense", "dense", H=2, G=2, rope=False, seed=4),
        Case("dense_rope_gqa", "dense", H=4, G=2, rope=True, B=2, seed=5),
    ]
    if cp_degree == 2:  # the larger sub-sequences only where they stay cheap
        cases += [
            Case("lighthouse_L3_rope_gqa", "lighthouse", H=2, G=1, rope=True, levels=3, B=2, seed=6),
            Case("lighthouse_two_tiles_per_chunk", "lighthouse", H=2, G=2, rope=False, tiles=2, seed=7),
            Case("lighthouse_L3_rope_gqa_kernels", "lighthouse", H=2, G=1, rope=True, levels=3, seed=8, backend="triton"),
        ]
    return cases


def chunked_or_dense_reference(case: Case, cp_degree: int, q, k, v, rope):
    if case.kind == "dense":
        return dense_causal_attention(q, k, v, rope)
    return lighthouse_attention_chunked_reference(q, k, v, case.config(cp_degree, "reference"), cp_degree, rope=rope)


# ---------------------------------------------------------------------------------------
# Spawned ranks
# ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, cp_degree: int, port: int, out_dir: str) -> None:
    """One CP rank: every case on the local shard, plus the all-gather adjoint; results saved to out_dir."""
    torch.set_num_threads(1)  # R processes share the machine's cores
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels' cases run on CPU tensors (read when triton loads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=cp_degree, timeout=timedelta(seconds=90)
    )
    try:
        for case in cp_cases(cp_degree):
            q, k, v, g, rope = case.inputs(cp_degree)
            q, k, v = (shard_sequence(t, 2, rank, cp_degree).requires_grad_() for t in (q, k, v))
            if case.kind == "dense":
                layer = ContextParallelDense()
            else:
                layer = ContextParallelLighthouse(case.config(cp_degree))
            o = layer(q, k, v, rope=rope)
            (o * shard_sequence(g, 2, rank, cp_degree)).sum().backward()
            torch.save({"o": o.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}, f"{out_dir}/{case.name}.{rank}.pt")
        # The adjoint of the all-gather, with both backward collectives: rank r's x gets sum_r' w_r'[r].
        x = torch.full((3, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
        weight = torch.randn(cp_degree, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + rank))
        grads = {}
        for use_reduce_scatter in (True, False):
            x.grad = None
            gathered = all_gather_with_grad(x, use_reduce_scatter=use_reduce_scatter)
            (gathered * weight).sum().backward()
            grads[use_reduce_scatter] = (gathered.detach(), x.grad.clone())
        torch.save(grads, f"{out_dir}/all_gather.{rank}.pt")
    finally:
        # the trainer's way out: destroy, then let gloo's threads finish before the interpreter does
        # (a rank that exited at once aborted with "terminate called without an active exception")
        leave_process_group()


def run_ranks(cp_degree: int, out_dir: str) -> None:
    """Spawn the ranks; raise on a rank's error or after SPAWN_TIMEOUT_S; never leave a process behind."""
    context = mp.start_processes(
        _rank_main, args=(cp_degree, _free_port(), out_dir), nprocs=cp_degree, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):  # raises ProcessRaisedException with the rank's traceback
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cp_degree} CP ranks did not finish within {SPAWN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda r: f"R{r}")
def cp_run(request, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f"cp{request.param}")
    run_ranks(request.param, str(out_dir))
    return request.param, out_dir


def load_unsharded(out_dir, name: str, cp_degree: int) -> dict[str, torch.Tensor]:
    per_rank = [torch.load(out_dir / f"{name}.{r}.pt") for r in range(cp_degree)]
    return {key: unshard_sequence([p[key] for p in per_rank], dim=2) for key in per_rank[0]}


def test_cp_matches_single_process(cp_run):
    """Every case: outputs and q/k/v gradients of the R ranks, unsharded, equal the single-process result.

    Lighthouse: the chunked reference (same decomposition); dense and levels=1: dense attention
    on the full sequence.
    """
    cp_degree, out_dir = cp_run
    for case in cp_cases(cp_degree):
        q, k, v, g, rope = case.inputs(cp_degree)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        want = chunked_or_dense_reference(case, cp_degree, q, k, v, rope)
        (want * g).sum().backward()
        got = load_unsharded(out_dir, case.name, cp_degree)
        for key, expected in (("o", want.detach()), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
            torch.testing.assert_close(got[key], expected, **TOL, msg=lambda m, c=case, k_=key: f"{c.name} {k_}: {m}")


def test_all_gather_adjoint(cp_run):
    """Forward gathers in rank order; backward (reduce-scatter or all-to-all) sums every rank's gradient."""
    cp_degree, out_dir = cp_run
    results = [torch.load(out_dir / f"all_gather.{r}.pt") for r in range(cp_degree)]
    weights = [
        torch.randn(cp_degree, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + r))
        for r in range(cp_degree)
    ]
    expected_gathered = torch.stack([torch.full((3, 2), float(r + 1), dtype=torch.float64) for r in range(cp_degree)])
    for rank, result in enumerate(results):
        for use_reduce_scatter in (True, False):
            gathered, grad = result[use_reduce_scatter]
            assert torch.equal(gathered, expected_gathered)
            torch.testing.assert_close(grad, sum(w[rank] for w in weights), rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------
# Single process: sharding, the decomposition against independent computations, errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cp_degree", [1, 2, 3, 4])
def test_shard_layout_and_inverse(cp_degree):
    N = 2 * cp_degree * 5
    x = torch.arange(N).view(1, N) * 10 + torch.arange(3).view(3, 1)  # [3, N]: a row index and a position
    shards = []
    for rank in range(cp_degree):
        shard = shard_sequence(x, 1, rank, cp_degree)
        first = list(range(5 * rank, 5 * rank + 5))
        second = list(range(5 * (2 * cp_degree - 1 - rank), 5 * (2 * cp_degree - rank)))
        assert shard_positions(N, rank, cp_degree).tolist() == first + second
        assert torch.equal(shard, x[:, first + second])
        shards.append(shard)
    assert torch.equal(unshard_sequence(shards, dim=1), x)
    cos, sin = rope_tables(N + 3, 4, dtype=torch.float64)
    cos_local, sin_local = shard_rope((cos, sin), N, cp_degree - 1, cp_degree)
    positions = shard_positions(N, cp_degree - 1, cp_degree)
    assert torch.equal(cos_local, cos[positions]) and torch.equal(sin_local, sin[positions])


def rand_qkv(H, G, N, seed, rope):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, N, D, dtype=torch.float64, generator=gen).requires_grad_()
    k, v = (torch.randn(1, G, N, D, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(2))
    return q, k, v, (rope_tables(N, D, dtype=torch.float64) if rope else None)


# (R, L, p, tiles per chunk, coarse multiple m, H, G, rope): C = p^(L-1)*128*tiles*m.
# m = 2 leaves unselected coarsest entries; L = 3 selects at level 2; R = 1 has 2 chunks.
DECOMPOSITION_GRID = [
    (1, 2, 2, 1, 2, 2, 1, False),
    (1, 2, 4, 2, 1, 2, 2, True),
    (2, 3, 2, 1, 1, 2, 1, True),
    (4, 2, 2, 1, 1, 2, 2, False),
]


@pytest.mark.parametrize("R,L,p,tiles,m,H,G,rope", DECOMPOSITION_GRID)
def test_decomposition_is_global_function_except_clipped_scatter(R, L, p, tiles, m, H, G, rope):
    """norm scorer: the chunked decomposition equals lighthouse_attention (same K) except at the
    first p^(L-1)-1 positions of every chunk after the first, whose contributions from the
    previous chunk's last entries are clipped. With the upstream gradient zero there, the
    q/k/v gradients are equal too.
    """
    chunk_len = p ** (L - 1) * 128 * tiles * m
    N, K = 2 * R * chunk_len, 2 * R * 128 * tiles
    q, k, v, rope_tabs = rand_qkv(H, G, N, seed=10 + R + L, rope=rope)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    chunked = lighthouse_attention_chunked_reference(q, k, v, LighthouseConfig(L, p, K), R, rope=rope_tabs)
    whole = lighthouse_attention(q2, k2, v2, levels=L, pooling=p, topk=K, rope=rope_tabs)

    clipped = torch.zeros(N, dtype=torch.bool)
    for j in range(1, 2 * R):
        clipped[j * chunk_len : j * chunk_len + p ** (L - 1) - 1] = True
    torch.testing.assert_close(chunked[:, :, ~clipped], whole[:, :, ~clipped], rtol=1e-12, atol=1e-12)
    assert (chunked[:, :, clipped] - whole[:, :, clipped]).abs().amax() > 1e-3  # the clipping is real

    g = torch.randn(chunked.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g[:, :, clipped] = 0
    (chunked * g).sum().backward()
    (whole * g).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("R,L,m,rope", [(2, 3, 2, True), (4, 2, 1, False)])
def test_first_chunk_is_lighthouse_on_the_chunk_alone(R, L, m, rope):
    """Chunk 0 has no earlier context: its outputs are lighthouse_attention on chunk 0 with budget K/(2R),
    and later inputs get no gradient from them."""
    p = 2
    chunk_len, K = p ** (L - 1) * 128 * m, 2 * R * 128  # m coarsest entries per selected one
    N = 2 * R * chunk_len
    q, k, v, rope_tabs = rand_qkv(2, 1, N, seed=20 + R, rope=rope)
    chunked = lighthouse_attention_chunked_reference(q, k, v, LighthouseConfig(L, p, K), R, rope=rope_tabs)
    q0, k0, v0 = (t[:, :, :chunk_len].detach().clone().requires_grad_() for t in (q, k, v))
    alone = lighthouse_attention(q0, k0, v0, levels=L, pooling=p, topk=K // (2 * R), rope=rope_tabs)
    torch.testing.assert_close(chunked[:, :, :chunk_len], alone, rtol=1e-12, atol=1e-12)
    g = torch.randn(alone.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    (chunked[:, :, :chunk_len] * g).sum().backward()
    (alone * g).sum().backward()
    for full, part in ((q, q0), (k, k0), (v, v0)):
        torch.testing.assert_close(full.grad[:, :, :chunk_len], part.grad, rtol=1e-12, atol=1e-12)
        assert full.grad[:, :, chunk_len:].abs().amax() == 0


@pytest.mark.parametrize(
    "cfg,N,R,match",
    [
        (LighthouseConfig(2, 2, 128), 1024, 1, r"topk=128 must be a multiple of 2R\*128 = 256.*try topk=256"),
        (LighthouseConfig(2, 2, 512), 4096, 4, r"topk=512 must be a multiple of 2R\*128 = 1024"),
        (LighthouseConfig(2, 2, 256), 1023, 1, r"N=1023 must be a positive multiple of 2R = 2"),
        (LighthouseConfig(2, 2, 512), 512, 2, r"too short.*N >= 1024"),
        (LighthouseConfig(3, 2, 512), 2056, 2, r"must be a multiple of 16 .*chunks are not padded"),
        (LighthouseConfig(2, 2, 256, scorer="dilated"), 1024, 1, r"only the 'norm' scorer, got 'dilated'"),
        (LighthouseConfig(1, 2, 128), 30, 4, r"N=30 must be a positive multiple of 2R = 8"),
    ],
)
def test_bad_sizes_raise(cfg, N, R, match):
    with pytest.raises(ValueError, match=match):
        check_context_parallel(cfg, N, R)
    q, k, v, _ = rand_qkv(2, 1, N, seed=0, rope=False)
    with pytest.raises(ValueError, match=match):
        lighthouse_attention_chunked_reference(q, k, v, cfg, R)


def test_one_norm_scorer_predicate(monkeypatch):
    """A registered alias of the norm scorer runs fused on one GPU and is accepted under CP alike; a subclass is neither."""
    from lighthouse import scorers
    from lighthouse.scorers import NormScorer, is_norm_scorer

    class Renamed(NormScorer):
        pass

    monkeypatch.setitem(scorers._REGISTRY, "norm_alias", NormScorer)
    assert is_norm_scorer("norm") and is_norm_scorer("norm_alias") and is_norm_scorer(NormScorer())
    assert not is_norm_scorer("dilated") and not is_norm_scorer(Renamed())
    assert chunk_config(LighthouseConfig(2, 2, 512, scorer="norm_alias"), 2).topk == 128
    with pytest.raises(ValueError, match=r"only the 'norm' scorer, got 'Renamed'"):
        chunk_config(LighthouseConfig(2, 2, 512, scorer=Renamed()), 2)


def test_accepted_sizes_and_other_errors():
    assert check_context_parallel(LighthouseConfig(3, 2, 512), 2048, 2) == LighthouseConfig(3, 2, 128)
    assert check_context_parallel(LighthouseConfig(1, 2, 128), 24, 3) is None
    assert chunk_config(LighthouseConfig(2, 4, 3072), 3).topk == 512  # R = 3 works: 3072 = 6 * 512
    with pytest.raises(ValueError, match=r"CP degree R must be a positive int"):
        chunk_config(LighthouseConfig(), 0)
    with pytest.raises(ValueError, match=r"not a multiple of 2R = 4"):
        shard_sequence(torch.zeros(2, 6), 1, 0, 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        shard_sequence(torch.zeros(2, 8), 1, 2, 2)
    q, k, v, _ = rand_qkv(2, 1, 1024, seed=0, rope=False)
    short_tables = rope_tables(1000, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"rope tables must cover the full sequence"):
        lighthouse_attention_chunked_reference(q, k, v, LighthouseConfig(2, 2, 256), 1, rope=short_tables)
