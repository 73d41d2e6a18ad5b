"""Benchmarks: `python -m lighthouse.bench attention [--out results.json] [--quick]`.

`attention` times, on one CUDA device, forward and forward+backward latency (median over
repeats, CUDA events, warm-up excluded) and the peak memory of forward+backward for
  (a) dense causal SDPA on the whole sequence,
  (b) the PyTorch reference (`backend="reference"`),
  (c) the Triton fast path (`backend="triton"`),
  (floor) dense causal SDPA on a sequence of the sub-sequence length S alone,
at N = 32K .. 512K, B=1, H=8, G=8, D=128, bf16, for (L=3, p=4, K=2048) and (L=4, p=4, K=4096).
It prints a table with the ratios against dense SDPA and against the floor, the selection
time alone, and writes everything (command, device, date, versions) to JSON.

`profile` prints the per-kernel CUDA time of one fast-path forward+backward (torch.profiler).

`scorers` times the forward of the score computation alone for the `norm`, `dilated` and
`gla` scorers (`Scorer.score`, no gradient), and next to it the whole Lighthouse forward with
each scorer and dense causal SDPA's forward at the same N (N = 32K, 128K, 512K by default,
B=1, H=G=8, D=128, bf16, L=3, p=4, K=2048), and writes JSON. On CUDA with
flash-linear-attention installed, `gla` uses fla and `gla_torch` times the PyTorch chunked
form too. It also runs on CPU at small N as a smoke test:
`python -m lighthouse.bench scorers --device cpu --seq-lens 4096 --levels 2 --pooling 2 --topk 128`.

`hf` trains a ~135M-parameter Hugging Face Llama at N=64K with attn_implementation "sdpa" vs
"lighthouse" (whole steps: tokens/s, peak memory; see `lighthouse.bench_hf`).

`cp` (under torchrun) times whole training steps of one long sequence split over the
processes by context parallelism, Lighthouse or dense, with peak memory per GPU (`lighthouse.bench_cp`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from .bench_cp import add_parser as add_cp_parser
from .bench_cp import main_cp
from .bench_hf import add_parser as add_hf_parser
from .bench_hf import main_hf
from .bench_train import add_parser as add_train_parser
from .bench_train import main_train

K1 = 1024
LENGTHS = [32 * K1, 64 * K1, 128 * K1, 256 * K1, 512 * K1]
CONFIGS = [(3, 4, 2048), (4, 4, 4096)]


def _versions() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def time_cuda(fn, *, warmup: int = 3, reps: int = 20, budget_s: float = 10.0) -> dict:
    """Median (and min/max) milliseconds of fn() with CUDA events; warm-up runs excluded.

    The timed runs are issued back to back (one event pair each, one synchronisation at the
    end), as in a training loop where the host runs ahead of the device. The repeat count
    shrinks for slow functions (at least 3 timed runs) so that one entry takes about budget_s.
    """
    fn()  # first call: compilation, autotuning, allocator growth (not timed, not used to size the run)
    torch.cuda.synchronize()
    for i in range(warmup):
        t0 = torch.cuda.Event(enable_timing=True)
        t1 = torch.cuda.Event(enable_timing=True)
        t0.record()
        fn()
        t1.record()
        torch.cuda.synchronize()
        if i == 0 and t0.elapsed_time(t1) * (warmup + reps) > budget_s * 1e3:  # slow entry: fewer runs
            reps = max(3, int(budget_s * 1e3 / max(t0.elapsed_time(t1), 1e-3)) - 1)
            break
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    torch.cuda.synchronize()
    for t0, t1 in events:
        t0.record()
        fn()
        t1.record()
    torch.cuda.synchronize()
    times = [t0.elapsed_time(t1) for t0, t1 in events]
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": len(times)}


def peak_memory(fn) -> float:
    """Peak allocated GiB during fn() (everything alive counts, inputs included)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def _inputs(B, H, G, N, D, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(B, G, N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(B, G, N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    g = torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, g


def _measure(fwd, q, k, v, g, budget_s) -> dict:
    """Forward, forward+backward latency and peak memory of out = fwd(q, k, v)."""

    def fwd_only():
        fwd(q, k, v)

    def fwd_bwd():
        out = fwd(q, k, v)
        torch.autograd.grad(out, (q, k, v), g)

    res = {}
    try:
        res["fwd"] = time_cuda(fwd_only, budget_s=budget_s)
        res["fwd_bwd"] = time_cuda(fwd_bwd, budget_s=budget_s)
        res["peak_gib"] = peak_memory(fwd_bwd)
    except torch.cuda.OutOfMemoryError:
        res = {"error": "OOM"}
    torch.cuda.empty_cache()
    return res


def bench_attention(lengths, configs, B=1, H=8, G=8, D=128, dtype=torch.bfloat16, budget_s=10.0, reference=True,
                    log=print) -> list[dict]:
    """All measurements; per N the fast path and the floor first, then the reference, then dense
    SDPA last (its long runs heat the card, and a hot card clocks lower for what follows)."""
    from lighthouse import LighthouseConfig, lighthouse_attention
    from lighthouse.attention import dense_causal_attention
    from lighthouse.kernels import fast_path as FP

    rows = []
    floor_cache: dict[int, dict] = {}
    for N in lengths:
        q, k, v, g = _inputs(B, H, G, N, D, dtype)
        n_rows = []
        for L, p, K in configs:
            cfg = LighthouseConfig(L, p, K)
            row = {"levels": L, "pooling": p, "topk": K, "N": N, "B": B, "H": H, "G": G, "D": D, "dtype": str(dtype)}
            n_rows.append(row)
            if N < cfg.min_seq_len:
                row["skipped"] = f"N < min_seq_len = {cfg.min_seq_len}"
                continue
            S = row["S"] = cfg.sub_seq_len(N)
            kw = dict(levels=L, pooling=p, topk=K)
            row["fast"] = _measure(lambda a, b, c: lighthouse_attention(a, b, c, backend="triton", **kw), q, k, v, g,
                                   budget_s)
            # Causal selection (selection="causal"): the same path with another pick.
            row["causal"] = _measure(lambda a, b, c: lighthouse_attention(a, b, c, backend="triton", selection="causal", **kw),
                                     q, k, v, g, budget_s)
            n_pad = cfg.padded_len(N)
            with torch.no_grad():
                sq, sk, *_ = FP.norm_scores(q, k, v, L, p, n_pad)
                row["scores"] = time_cuda(lambda: FP.norm_scores(q, k, v, L, p, n_pad), budget_s=budget_s)
                row["selection"] = time_cuda(lambda: FP.select(sq, sk, L, p, K, n_pad), budget_s=budget_s)
                csq, csk, *_ = FP.norm_scores(q, k, v, L, p, n_pad, True)
                row["scores_causal"] = time_cuda(lambda: FP.norm_scores(q, k, v, L, p, n_pad, True), budget_s=budget_s)
                row["selection_causal"] = time_cuda(lambda: FP.select(csq, csk, L, p, K, n_pad, True), budget_s=budget_s)
            if S not in floor_cache:
                qs, ks, vs, gs = _inputs(B, H, G, S, D, dtype, seed=1)
                floor_cache[S] = _measure(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                                          qs, ks, vs, gs, budget_s)
                del qs, ks, vs, gs
                torch.cuda.empty_cache()
            row["floor"] = floor_cache[S]
        if reference:
            for row in n_rows:
                if "skipped" not in row:
                    kw = dict(levels=row["levels"], pooling=row["pooling"], topk=row["topk"])
                    row["reference"] = _measure(
                        lambda a, b, c: lighthouse_attention(a, b, c, backend="reference", **kw), q, k, v, g, budget_s)
        dense = _measure(lambda a, b, c: dense_causal_attention(a, b, c), q, k, v, g, budget_s)
        for row in n_rows:
            if "skipped" not in row:
                row["dense"] = dense
            rows.append(row)
            log(_format_row(row) if "skipped" not in row else
                f"L={row['levels']} K={row['topk']} N={N}: skipped ({row['skipped']})")
        q = k = v = g = None  # free this length's inputs before the next one is allocated
        torch.cuda.empty_cache()
        if dense.get("fwd_bwd", {}).get("median_ms", 0) > 500:
            time.sleep(5)  # let the card cool down after long dense runs
    return rows


def _ms(entry, key):
    if not entry or "error" in entry:
        return None
    return entry[key]["median_ms"]


def _format_row(row) -> str:
    f = lambda x: "n/a" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")  # noqa: E731
    d, fa, fl, r = row.get("dense"), row.get("fast"), row.get("floor"), row.get("reference")
    dfb, ffb, flfb = _ms(d, "fwd_bwd"), _ms(fa, "fwd_bwd"), _ms(fl, "fwd_bwd")
    df, ff = _ms(d, "fwd"), _ms(fa, "fwd")
    ratio = lambda a, b: "n/a" if (a is None or b is None) else f"{a / b:.2f}x"  # noqa: E731
    ref = "OOM" if (r and "error" in r) else f(_ms(r, "fwd_bwd"))
    return (f"L={row['levels']} K={row['topk']:5d} N={row['N'] // K1:4d}K S={row['S']:6d} | "
            f"dense fwd {f(df)} fb {f(dfb)} | ref fb {ref} | fast fwd {f(ff)} fb {f(ffb)} "
            f"scores {f(row['scores']['median_ms'])} select {f(row['selection']['median_ms'])} | floor fb {f(flfb)} | "
            f"dense/fast fb {ratio(dfb, ffb)} fwd {ratio(df, ff)} | fast/floor {ratio(ffb, flfb)} | "
            f"peak GiB dense {f(d.get('peak_gib') if d else None)} fast {f(fa.get('peak_gib') if fa else None)} | "
            f"causal fb {f(_ms(row.get('causal'), 'fwd_bwd'))} = {ratio(_ms(row.get('causal'), 'fwd_bwd'), ffb)} top-k, "
            f"dense/causal {ratio(dfb, _ms(row.get('causal'), 'fwd_bwd'))}")


def print_table(rows, out=sys.stdout) -> None:
    """Markdown table: latencies in ms (median), ratios, peak GiB of forward+backward."""
    cols = ["L,p,K", "N", "S", "dense fwd", "dense fwd+bwd", "reference fwd+bwd", "fast fwd", "fast fwd+bwd",
            "scores pass", "select", "floor fwd+bwd", "dense/fast fwd+bwd", "dense/fast fwd", "fast/floor", "peak GiB dense/ref/fast",
            "causal fwd+bwd", "causal select", "causal/top-k fwd+bwd", "dense/causal fwd+bwd"]
    print("| " + " | ".join(cols) + " |", file=out)
    print("|" + "|".join(["---"] * len(cols)) + "|", file=out)
    fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    ratio = lambda a, b: "–" if (a is None or b is None) else f"{a / b:.2f}×"  # noqa: E731
    peak = lambda e: "–" if not e else ("OOM" if "error" in e else f"{e['peak_gib']:.1f}")  # noqa: E731
    for row in rows:
        cfg = f"{row['levels']},{row['pooling']},{row['topk']}"
        if "skipped" in row:
            cells = [cfg, f"{row['N'] // K1}K", "–", f"({row['skipped']})"] + ["–"] * (len(cols) - 4)
            print("| " + " | ".join(cells) + " |", file=out)
            continue
        d, fa, fl, r = row["dense"], row["fast"], row["floor"], row.get("reference")
        ref = "–" if not r else ("OOM" if "error" in r else fmt(_ms(r, "fwd_bwd")))
        cells = [
            cfg, f"{row['N'] // K1}K", str(row["S"]), fmt(_ms(d, "fwd")), fmt(_ms(d, "fwd_bwd")), ref,
            fmt(_ms(fa, "fwd")), fmt(_ms(fa, "fwd_bwd")), fmt(row["scores"]["median_ms"]), fmt(row["selection"]["median_ms"]),
            fmt(_ms(fl, "fwd_bwd")),
            ratio(_ms(d, "fwd_bwd"), _ms(fa, "fwd_bwd")), ratio(_ms(d, "fwd"), _ms(fa, "fwd")),
            ratio(_ms(fa, "fwd_bwd"), _ms(fl, "fwd_bwd")), f"{peak(d)} / {peak(r)} / {peak(fa)}",
            fmt(_ms(row.get("causal"), "fwd_bwd")),
            fmt(row["selection_causal"]["median_ms"]) if "selection_causal" in row else "–",
            ratio(_ms(row.get("causal"), "fwd_bwd"), _ms(fa, "fwd_bwd")), ratio(_ms(d, "fwd_bwd"), _ms(row.get("causal"), "fwd_bwd")),
        ]
        print("| " + " | ".join(cells) + " |", file=out)


def crossover(rows) -> list[str]:
    """Per configuration: the shortest measured N at which the fast path beats dense SDPA (fwd+bwd)."""
    lines = []
    for cfg in sorted({(r["levels"], r["pooling"], r["topk"]) for r in rows}):
        measured = [r for r in rows if (r["levels"], r["pooling"], r["topk"]) == cfg and "skipped" not in r]
        wins = [r["N"] for r in measured if _ms(r["fast"], "fwd_bwd") and _ms(r["fast"], "fwd_bwd") < _ms(r["dense"], "fwd_bwd")]
        losses = [r["N"] for r in measured if r["N"] not in wins]
        if not measured:
            continue
        if not losses:
            lines.append(f"L={cfg[0]} p={cfg[1]} K={cfg[2]}: fast path faster than dense at every measured N "
                         f"(shortest valid N = {cfg[2] * cfg[1] ** (cfg[0] - 1)}); no crossover in range")
        else:
            lines.append(f"L={cfg[0]} p={cfg[1]} K={cfg[2]}: dense faster at N = {[n // K1 for n in losses]}K, "
                         f"fast faster from N = {min(wins) // K1 if wins else 'never'}K")
    return lines


def _kernel_times(step, reps=5) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None)
        if t is None:
            t = getattr(evt, "cuda_time_total", 0.0)
        if t > 0:
            totals[evt.key] = totals.get(evt.key, 0.0) + t / reps / 1e3
    return totals


def profile_fast(N: int, levels: int, pooling: int, topk: int, B=1, H=8, G=8, D=128, dtype=torch.bfloat16, log=print):
    """Per-kernel CUDA time (ms per call, torch.profiler) of the fast path's forward and forward+backward."""
    from lighthouse import lighthouse_attention

    q, k, v, g = _inputs(B, H, G, N, D, dtype)
    kw = dict(levels=levels, pooling=pooling, topk=topk, backend="triton")

    def fwd():
        lighthouse_attention(q, k, v, **kw)

    def fwd_bwd():
        out = lighthouse_attention(q, k, v, **kw)
        torch.autograd.grad(out, (q, k, v), g)

    result = {"N": N, "levels": levels, "pooling": pooling, "topk": topk}
    for name, step in (("forward", fwd), ("forward+backward", fwd_bwd)):
        totals = _kernel_times(step)
        total = sum(totals.values())
        log(f"fast path {name}, N={N}, L={levels}, p={pooling}, K={topk}: per-kernel CUDA time (ms per call)")
        for kname, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
            log(f"  {ms:8.3f} ms  {100 * ms / total:5.1f}%  {kname[:110]}")
        log(f"  {total:8.3f} ms  total kernel time")
        result[name] = {"kernels_ms": totals, "total_ms": total}
    return result


SCORER_LENGTHS = [32 * K1, 128 * K1, 512 * K1]


def time_any(fn, device: torch.device, budget_s: float = 10.0) -> dict:
    """`time_cuda` on CUDA; on CPU the same statistics from wall-clock time (for smoke tests)."""
    if device.type == "cuda":
        return time_cuda(fn, budget_s=budget_s)
    fn()  # warm-up
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (len(times) < 20 and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": len(times)}


def _timed_or_oom(fn, device, budget_s) -> dict:
    try:
        return time_any(fn, device, budget_s)
    except torch.cuda.OutOfMemoryError:
        return {"error": "OOM"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


@torch.no_grad()
def bench_scorers(lengths, levels=3, pooling=4, topk=2048, B=1, H=8, G=8, D=128, dtype=torch.bfloat16,
                  device=None, budget_s=10.0, log=print) -> list[dict]:
    """Forward latency of each scorer's `score` alone, of the Lighthouse forward with it, and of dense SDPA."""
    from lighthouse.gla import GLAScorer, fla_available
    from lighthouse.scorers import DilatedScorer, NormScorer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with_fla = device.type == "cuda" and fla_available()
    scorers = {"norm": NormScorer(), "dilated": DilatedScorer(), "gla": GLAScorer()}
    if with_fla:  # "gla" runs fla's chunk_simple_gla; time the PyTorch chunked form as well
        scorers["gla_torch"] = GLAScorer(backend="torch")
    rows = []
    for N in lengths:
        row = {"N": N, "B": B, "H": H, "G": G, "D": D, "dtype": str(dtype), "device": str(device),
               "levels": levels, "pooling": pooling, "topk": topk, "gla_backend": "fla" if with_fla else "torch"}
        row.update(_bench_scorers_at(N, scorers, row, device, dtype, budget_s))
        rows.append(row)
        log(_format_scorer_row(row))
    return rows


def _bench_scorers_at(N, scorers, settings, device, dtype, budget_s) -> dict:
    """One sequence length (its inputs are freed on return)."""
    from lighthouse import LighthouseConfig, lighthouse_attention
    from lighthouse.attention import dense_causal_attention
    from lighthouse.gla import gla_log_gates, make_gate_projection

    B, H, G, D = (settings[key] for key in ("B", "H", "G", "D"))
    L, p, K = settings["levels"], settings["pooling"], settings["topk"]
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, heads, N, D, device=device, dtype=dtype, generator=gen) for heads in (H, G, G))
    # Gates as a gla layer makes them: W_g at its (never trained) init applied to a layer input.
    gate = make_gate_projection(H * D, H, generator=gen, device=device, dtype=dtype)
    log_gates = gla_log_gates(torch.randn(B, N, H * D, device=device, dtype=dtype, generator=gen), gate)
    contexts = {name: log_gates if name.startswith("gla") else None for name in scorers}
    result = {"scores": {}, "lighthouse_fwd": {}}
    for name, scorer in scorers.items():
        result["scores"][name] = _timed_or_oom(
            lambda s=scorer, c=contexts[name]: s.score(q, k, v, context=c), device, budget_s)
    min_len = LighthouseConfig(L, p, K).min_seq_len
    if N < min_len:
        result["lighthouse_skipped"] = f"N < min_seq_len = {min_len}"
    for name, scorer in scorers.items():
        if N >= min_len:
            result["lighthouse_fwd"][name] = _timed_or_oom(
                lambda s=scorer, c=contexts[name]: lighthouse_attention(
                    q, k, v, levels=L, pooling=p, topk=K, scorer=s, scorer_context=c),
                device, budget_s)
    result["dense_fwd"] = _timed_or_oom(lambda: dense_causal_attention(q, k, v), device, budget_s)
    return result


def _len_label(N: int) -> str:
    return f"{N // K1}K" if N % K1 == 0 else str(N)


def _format_scorer_row(row) -> str:
    f = lambda e: "n/a" if not e else ("OOM" if "error" in e else f"{e['median_ms']:.2f}")  # noqa: E731
    scores = " ".join(f"{name} {f(e)}" for name, e in row["scores"].items())
    if row["lighthouse_fwd"]:
        full = " ".join(f"{name} {f(e)}" for name, e in row["lighthouse_fwd"].items())
    else:
        full = f"skipped ({row.get('lighthouse_skipped')})"
    dense = f(row["dense_fwd"])
    return f"N={_len_label(row['N'])}: scores ms: {scores} | lighthouse fwd ms: {full} | dense fwd ms: {dense}"


def print_scorer_table(rows, out=sys.stdout) -> None:
    """Markdown table: forward latencies in ms (median); scores alone and the whole layer."""
    names = list(rows[0]["scores"]) if rows else []
    cols = ["N"] + [f"{n} scores" for n in names] + [f"lighthouse fwd ({n})" for n in names] + ["dense fwd"]
    print("| " + " | ".join(cols) + " |", file=out)
    print("|" + "|".join(["---"] * len(cols)) + "|", file=out)
    f = lambda e: "–" if not e else ("OOM" if "error" in e else f"{e['median_ms']:.2f}")  # noqa: E731
    for row in rows:
        cells = [_len_label(row["N"])] + [f(row["scores"][n]) for n in names]
        cells += [f(row["lighthouse_fwd"].get(n)) for n in names] + [f(row["dense_fwd"])]
        print("| " + " | ".join(cells) + " |", file=out)


def main_scorers(args, argv) -> int:
    lengths = SCORER_LENGTHS if not args.seq_lens else [int(x) for x in args.seq_lens.split(",")]
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    rows = bench_scorers(lengths, args.levels, args.pooling, args.topk, H=args.heads, G=args.kv_heads,
                         D=args.head_dim, dtype=dtype, device=args.device, budget_s=args.budget)
    result = {
        "command": "python -m lighthouse.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        "timing": "forward only, no gradient; median of repeats (CUDA events on CUDA, wall clock on CPU), "
                  "warm-up excluded; 'scores' is Scorer.score alone (the PyTorch scorers; the fast path's fused "
                  "norm kernel is timed by the attention benchmark)",
        "rows": rows,
    }
    import os

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print()
    device = rows[0]["device"] if rows else "?"
    print(f"device: {device} {result['versions'].get('device', '')}  torch {torch.__version__}")
    print_scorer_table(rows)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lighthouse.bench", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("attention", help="dense SDPA vs reference vs fast path vs floor")
    a.add_argument("--out", default="bench_results/attention.json", help="JSON output path")
    a.add_argument("--quick", action="store_true", help="N = 32K and 64K only, first configuration, no reference")
    a.add_argument("--lengths", type=str, default=None, help="comma-separated N values (e.g. 32768,65536)")
    a.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    a.add_argument("--budget", type=float, default=10.0, help="seconds per timed entry (fewer repeats when slow)")
    a.add_argument("--profile-n", type=int, default=0, help="also profile the fast path at this N (first config)")
    pr = sub.add_parser("profile", help="per-kernel CUDA times of one fast-path forward+backward")
    pr.add_argument("--n", type=int, default=512 * K1)
    pr.add_argument("--levels", type=int, default=3)
    pr.add_argument("--pooling", type=int, default=4)
    pr.add_argument("--topk", type=int, default=2048)
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
    add_train_parser(sub)
    add_hf_parser(sub)
    add_cp_parser(sub)
    args = ap.parse_args(argv)
    if args.what == "hf":
        return main_hf(args, argv)
    if args.what == "scorers":
        return main_scorers(args, argv)
    if args.what == "train":
        return main_train(args)
    if args.what == "cp":
        return main_cp(args)
    if not torch.cuda.is_available():
        print("the benchmarks need a CUDA device", file=sys.stderr)
        return 2
    if args.what == "profile":
        profile_fast(args.n, args.levels, args.pooling, args.topk)
        return 0
    lengths = LENGTHS if not args.lengths else [int(x) for x in args.lengths.split(",")]
    configs = CONFIGS
    reference = not args.no_reference
    if args.quick:
        lengths, configs, reference = [n for n in lengths if n <= 64 * K1], CONFIGS[:1], False
    rows = bench_attention(lengths, configs, budget_s=args.budget, reference=reference)
    result = {
        "command": "python -m lighthouse.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        "timing": "median of repeats, CUDA events, warm-up excluded; peak = torch.cuda.max_memory_allocated "
                  "during one forward+backward (inputs and output gradient included)",
        "rows": rows,
        "crossover": crossover(rows),
    }
    if args.profile_n:
        L, p, K = configs[0]
        result["profile"] = profile_fast(args.profile_n, L, p, K)
    import os

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print()
    print(f"device: {result['versions'].get('device')}  torch {torch.__version__}  triton {result['versions']['triton']}")
    print_table(rows)
    for line in result["crossover"]:
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
