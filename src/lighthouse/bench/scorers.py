"""`python -m lighthouse.bench scorers`: the cost of each scorer.

Times the forward of the score computation alone for the `norm`, `dilated` and `gla` scorers
(`Scorer.score`, no gradient), and next to it the whole Lighthouse layer with each scorer
(forward, and forward+backward with its peak memory: what training at that length needs) and
dense causal SDPA's forward at the same N (N = 32K, 128K, 512K by default, B=1, H=G=8,
D=128, bf16, L=3, p=4, K=2048), and writes JSON. `--no-backward` skips the forward+backward. On CUDA with flash-linear-attention
installed, `gla` uses fla and `gla_torch` times the PyTorch chunked form too. It also runs on
CPU at small N as a smoke test:
`python -m lighthouse.bench scorers --device cpu --seq-lens 4096 --levels 2 --pooling 2 --topk 128`.

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim.
"""

from __future__ import annotations

import sys

import torch

from ..attention import dense_causal_attention, lighthouse_attention
from ..config import LighthouseConfig
from ..gla import fla_available, gla_log_gates, make_gate_projection
from ..scorers import DilatedScorer, GLAScorer, NormScorer
from .timing import K1, length_label, peak_memory, run_info, timed_or_oom, write_result

SCORER_LENGTHS = [32 * K1, 128 * K1, 512 * K1]


def bench_scorers(lengths, levels=3, pooling=4, topk=2048, B=1, H=8, G=8, D=128, dtype=torch.bfloat16,
                  device=None, budget_s=10.0, backward=True, log=print) -> list[dict]:
    """Latency of each scorer's `score` alone, of the Lighthouse layer with it (forward; forward+backward
    and its peak memory unless `backward` is False), and of dense SDPA's forward."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with_fla = device.type == "cuda" and fla_available()
    scorers = {"norm": NormScorer(), "dilated": DilatedScorer(), "gla": GLAScorer()}
    if with_fla:  # "gla" runs fla's chunk_simple_gla; time the PyTorch chunked form as well
        scorers["gla_torch"] = GLAScorer(backend="torch")
    rows = []
    for N in lengths:
        row = {"N": N, "B": B, "H": H, "G": G, "D": D, "dtype": str(dtype), "device": str(device),
               "levels": levels, "pooling": pooling, "topk": topk, "gla_backend": "fla" if with_fla else "torch"}
        row.update(_bench_scorers_at(N, scorers, row, device, dtype, budget_s, backward))
        rows.append(row)
        log(_format_scorer_row(row))
    return rows


def _fwd_bwd_or_oom(fn, q, k, v, device, budget_s) -> dict:
    """Forward+backward of fn(q, k, v) (gradients of q, k, v): timing and, on CUDA, peak memory; or out of memory."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    g = torch.randn_like(q)

    def step():
        torch.autograd.grad(fn(q, k, v), (q, k, v), g)

    with torch.enable_grad():
        result = timed_or_oom(step, device, budget_s)
        if "error" not in result and device.type == "cuda":
            try:
                with peak_memory(device) as peak:
                    step()
                result["peak_gib"] = peak.gib
            except torch.cuda.OutOfMemoryError:
                result = {"error": "OOM"}
    return result


@torch.no_grad()
def _bench_scorers_at(N, scorers, settings, device, dtype, budget_s, backward=True) -> dict:
    """One sequence length (its inputs are freed on return)."""
    B, H, G, D = (settings[key] for key in ("B", "H", "G", "D"))
    L, p, K = settings["levels"], settings["pooling"], settings["topk"]
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, heads, N, D, device=device, dtype=dtype, generator=gen) for heads in (H, G, G))
    # Gates as a gla layer makes them: W_g at its (never trained) init applied to a layer input.
    gate = make_gate_projection(H * D, H, generator=gen, device=device, dtype=dtype)
    log_gates = gla_log_gates(torch.randn(B, N, H * D, device=device, dtype=dtype, generator=gen), gate)
    contexts = {name: log_gates if name.startswith("gla") else None for name in scorers}
    result = {"scores": {}, "lighthouse_fwd": {}, "lighthouse_fwd_bwd": {}}
    for name, scorer in scorers.items():
        result["scores"][name] = timed_or_oom(
            lambda s=scorer, c=contexts[name]: s.score(q, k, v, context=c), device, budget_s)
    min_len = LighthouseConfig(L, p, K).min_seq_len
    if N < min_len:
        result["lighthouse_skipped"] = f"N < min_seq_len = {min_len}"
    for name, scorer in scorers.items():
        if N >= min_len:
            result["lighthouse_fwd"][name] = timed_or_oom(
                lambda s=scorer, c=contexts[name]: lighthouse_attention(
                    q, k, v, levels=L, pooling=p, topk=K, scorer=s, scorer_context=c),
                device, budget_s)
            if backward:
                result["lighthouse_fwd_bwd"][name] = _fwd_bwd_or_oom(
                    lambda a, b, c, s=scorer, ctx=contexts[name]: lighthouse_attention(
                        a, b, c, levels=L, pooling=p, topk=K, scorer=s, scorer_context=ctx),
                    q, k, v, device, budget_s)
    result["dense_fwd"] = timed_or_oom(lambda: dense_causal_attention(q, k, v), device, budget_s)
    return result


def _format_scorer_row(row) -> str:
    f = lambda e: "n/a" if not e else ("OOM" if "error" in e else f"{e['median_ms']:.2f}")  # noqa: E731
    scores = " ".join(f"{name} {f(e)}" for name, e in row["scores"].items())
    if row["lighthouse_fwd"]:
        full = " ".join(f"{name} {f(e)}" for name, e in row["lighthouse_fwd"].items())
    else:
        full = f"skipped ({row.get('lighthouse_skipped')})"
    if row.get("lighthouse_fwd_bwd"):
        peak = lambda e: f" ({e['peak_gib']:.1f} GiB)" if e.get("peak_gib") is not None else ""  # noqa: E731
        full += " | lighthouse fwd+bwd ms: " + " ".join(f"{n} {f(e)}{peak(e)}" for n, e in row["lighthouse_fwd_bwd"].items())
    dense = f(row["dense_fwd"])
    return f"N={length_label(row['N'])}: scores ms: {scores} | lighthouse fwd ms: {full} | dense fwd ms: {dense}"


def print_scorer_table(rows, out=sys.stdout) -> None:
    """Markdown table: forward latencies in ms (median); scores alone and the whole layer."""
    names = list(rows[0]["scores"]) if rows else []
    backward = any(row.get("lighthouse_fwd_bwd") for row in rows)
    cols = ["N"] + [f"{n} scores" for n in names] + [f"lighthouse fwd ({n})" for n in names]
    if backward:
        cols += [f"lighthouse fwd+bwd ({n}), peak GiB" for n in names]
    cols += ["dense fwd"]
    print("| " + " | ".join(cols) + " |", file=out)
    print("|" + "|".join(["---"] * len(cols)) + "|", file=out)
    f = lambda e: "–" if not e else ("OOM" if "error" in e else f"{e['median_ms']:.2f}")  # noqa: E731
    for row in rows:
        cells = [length_label(row["N"])] + [f(row["scores"][n]) for n in names]
        cells += [f(row["lighthouse_fwd"].get(n)) for n in names]
        if backward:
            peak = lambda e: "" if not e or e.get("peak_gib") is None else f", {e['peak_gib']:.1f}"  # noqa: E731
            cells += [f(row["lighthouse_fwd_bwd"].get(n)) + peak(row["lighthouse_fwd_bwd"].get(n)) for n in names]
        cells += [f(row["dense_fwd"])]
        print("| " + " | ".join(cells) + " |", file=out)


def add_parser(sub) -> None:
    sc = sub.add_parser("scorers", help="norm / dilated / gla scores alone, the Lighthouse forward and dense SDPA")
    sc.add_argument("--out", default="bench_results/scorers.json", help="JSON output path")
    sc.add_argument("--seq-lens", type=str, default=None, help="comma-separated N (default 32768,131072,524288)")
    sc.add_argument("--levels", type=int, default=3)
    sc.add_argument("--pooling", type=int, default=4)
    sc.add_argument("--topk", type=int, default=2048)
    sc.add_argument("--heads", type=int, default=8)
    sc.add_argument("--kv-heads", type=int, default=8)
    sc.add_argument("--head-dim", type=int, default=128)
    sc.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    sc.add_argument("--device", default=None, help="cuda (the default when available) or cpu")
    sc.add_argument("--budget", type=float, default=10.0, help="seconds per timed entry (fewer repeats when slow)")
    sc.add_argument("--no-backward", action="store_true", help="skip the layer's forward+backward")


def main(args, argv=None) -> int:
    lengths = SCORER_LENGTHS if not args.seq_lens else [int(x) for x in args.seq_lens.split(",")]
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    rows = bench_scorers(lengths, args.levels, args.pooling, args.topk, H=args.heads, G=args.kv_heads,
                         D=args.head_dim, dtype=dtype, device=args.device, budget_s=args.budget,
                         backward=not args.no_backward)
    result = {
        **run_info(argv),
        "timing": "median of repeats (CUDA events on CUDA, wall clock on CPU), warm-up excluded; 'scores' is "
                  "Scorer.score alone (the PyTorch scorers; the fast path's fused norm kernel is timed by the "
                  "attention benchmark); 'lighthouse_fwd' the layer's forward without gradient; "
                  "'lighthouse_fwd_bwd' its forward+backward (gradients of q, k, v) with the peak memory of one "
                  "(torch.cuda.max_memory_allocated, inputs included)",
        "rows": rows,
    }
    write_result(args.out, result)
    print()
    device = rows[0]["device"] if rows else "?"
    print(f"device: {device} {result['versions'].get('device', '')}  torch {torch.__version__}")
    print_scorer_table(rows)
    print(f"wrote {args.out}")
    return 0
