"""`python -m lighthouse.bench attention`: one attention layer, dense SDPA vs reference vs fast path.

On one CUDA device, forward and forward+backward latency (median over repeats, CUDA events,
warm-up excluded; timing.py) and the peak memory of forward+backward for
  (a) dense causal SDPA on the whole sequence,
  (b) the PyTorch reference (`backend="reference"`),
  (c) the Triton fast path (`backend="triton"`),
  (floor) dense causal SDPA on a sequence of the sub-sequence length S alone,
  (authors, with `--authors DIR`) the paper authors' implementation from a checkout at DIR
  (bench/authors.py: imported at run time, never copied; its float32 output is checked against
  ours once per configuration, at the shortest length it accepts),
at N = 32K .. 512K, B=1, H=8, G=8, D=128, bf16, for (L=3, p=4, K=2048) and (L=4, p=4, K=4096).
It prints a table with the ratios against dense SDPA, the floor and the authors' code, the
selection time alone, and writes everything (command, device, date, versions) to JSON.

`python -m lighthouse.bench profile` prints the per-kernel CUDA time of one fast-path
forward+backward (torch.profiler).

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim, S sub-sequence length.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from ..attention import dense_causal_attention, lighthouse_attention
from ..config import LighthouseConfig
from ..eval_tasks import parse_lengths
from . import authors as A
from .timing import K1, peak_memory, run_info, time_fn, write_result

LENGTHS = [32 * K1, 64 * K1, 128 * K1, 256 * K1, 512 * K1]
CONFIGS = [(3, 4, 2048), (4, 4, 4096)]
CUDA = torch.device("cuda")


def _inputs(B, H, G, N, D, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(B, G, N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(B, G, N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    g = torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, g


def _measure(fwd, q, k, v, g, budget_s, device=CUDA) -> dict:
    """Forward, forward+backward latency and peak memory of out = fwd(q, k, v)."""

    def fwd_only():
        fwd(q, k, v)

    def fwd_bwd():
        out = fwd(q, k, v)
        torch.autograd.grad(out, (q, k, v), g)

    res = {}
    try:
        res["fwd"] = time_fn(fwd_only, device, budget_s=budget_s)
        res["fwd_bwd"] = time_fn(fwd_bwd, device, budget_s=budget_s)
        with peak_memory(device) as peak:
            fwd_bwd()
        res["peak_gib"] = peak.gib
    except torch.cuda.OutOfMemoryError:
        res = {"error": "OOM"}
    torch.cuda.empty_cache()
    return res


def _authors_entries(module, n_rows, q, k, v, g, budget_s, checked: set, device=CUDA) -> None:
    """The authors' layer on this N's inputs (in their [B, N, H, D] layout) for every configuration row,
    and, the first time a configuration runs, the float32 check of their output against ours."""
    q_BNHD, k_BNHD, v_BNHD = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    for row in n_rows:
        if "skipped" in row:
            continue
        cfg = LighthouseConfig(row["levels"], row["pooling"], row["topk"])
        reason = A.check_supported(cfg, row["N"], row["H"], row["G"])
        if reason:
            row["authors"] = {"skipped": reason}
            continue
        layer = A.authors_layer(module, cfg.levels, cfg.pooling, cfg.topk)
        try:
            row["authors"] = _measure(lambda a, b, c: layer(a, b, c), q_BNHD, k_BNHD, v_BNHD, g, budget_s, device)
        except Exception as e:  # their code failing at one length is a result, not the end of the run
            row["authors"] = {"error": f"{type(e).__name__}: {e}"}
        key = (cfg.levels, cfg.pooling, cfg.topk)
        if key not in checked and row["N"] <= 1 << 20:  # their float32 sort keys are exact up to here
            checked.add(key)
            try:
                row["authors_check"] = A.compare_with_authors(module, cfg, row["N"], row["B"], row["H"], row["D"], device)
            except Exception as e:
                row["authors_check"] = {"N": row["N"], "error": f"{type(e).__name__}: {e}", "agree": False}
            torch.cuda.empty_cache()


def bench_attention(lengths, configs, B=1, H=8, G=8, D=128, dtype=torch.bfloat16, budget_s=10.0, reference=True,
                    authors=None, log=print) -> list[dict]:
    """All measurements; per N the fast path and the floor first, then the authors' code (`authors`: their
    module from `authors.load_authors`), the reference, then dense SDPA last (its long runs heat the
    card, and a hot card clocks lower for what follows)."""
    from ..kernels import fast_path as FP  # Triton: imported when a GPU run needs it

    rows = []
    floor_cache: dict[int, dict] = {}
    authors_checked: set = set()
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
                row["scores"] = time_fn(lambda: FP.norm_scores(q, k, v, L, p, n_pad), CUDA, budget_s=budget_s)
                row["selection"] = time_fn(lambda: FP.select(sq, sk, L, p, K, n_pad), CUDA, budget_s=budget_s)
                csq, csk, *_ = FP.norm_scores(q, k, v, L, p, n_pad, True)
                row["scores_causal"] = time_fn(lambda: FP.norm_scores(q, k, v, L, p, n_pad, True), CUDA, budget_s=budget_s)
                row["selection_causal"] = time_fn(lambda: FP.select(csq, csk, L, p, K, n_pad, True), CUDA, budget_s=budget_s)
            if S not in floor_cache:
                qs, ks, vs, gs = _inputs(B, H, G, S, D, dtype, seed=1)
                floor_cache[S] = _measure(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                                          qs, ks, vs, gs, budget_s)
                del qs, ks, vs, gs
                torch.cuda.empty_cache()
            row["floor"] = floor_cache[S]
        if authors is not None:
            _authors_entries(authors, n_rows, q, k, v, g, budget_s, authors_checked)
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
    if not entry or "error" in entry or key not in entry:
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
            f"dense/causal {ratio(dfb, _ms(row.get('causal'), 'fwd_bwd'))}"
            + (f" | authors fb {f(_ms(row['authors'], 'fwd_bwd'))} = {ratio(_ms(row['authors'], 'fwd_bwd'), ffb)} fast"
               if "authors" in row else ""))


def print_table(rows, out=sys.stdout) -> None:
    """Markdown table: latencies in ms (median), ratios, peak GiB of forward+backward."""
    cols = ["L,p,K", "N", "S", "dense fwd", "dense fwd+bwd", "reference fwd+bwd", "fast fwd", "fast fwd+bwd",
            "scores pass", "select", "floor fwd+bwd", "dense/fast fwd+bwd", "dense/fast fwd", "fast/floor", "peak GiB dense/ref/fast",
            "causal fwd+bwd", "causal select", "causal/top-k fwd+bwd", "dense/causal fwd+bwd"]
    with_authors = any("authors" in row for row in rows)
    if with_authors:
        cols += ["authors fwd", "authors fwd+bwd", "authors/fast fwd+bwd", "dense/authors fwd+bwd", "peak GiB authors"]
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
        if with_authors:
            au = row.get("authors")
            cells += [fmt(_ms(au, "fwd")), fmt(_ms(au, "fwd_bwd")), ratio(_ms(au, "fwd_bwd"), _ms(fa, "fwd_bwd")),
                      ratio(_ms(d, "fwd_bwd"), _ms(au, "fwd_bwd")), "–" if not au or "peak_gib" not in au else f"{au['peak_gib']:.1f}"]
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


def add_parser(sub) -> None:
    a = sub.add_parser("attention", help="dense SDPA vs reference vs fast path vs floor")
    a.add_argument("--out", default="bench_results/attention.json", help="JSON output path")
    a.add_argument("--quick", action="store_true", help="N = 32K and 64K only, first configuration, no reference")
    a.add_argument("--lengths", type=str, default=None, help="comma-separated N values (e.g. 32768,65536 or 32K,128K)")
    a.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    a.add_argument("--budget", type=float, default=10.0, help="seconds per timed entry (fewer repeats when slow)")
    a.add_argument("--profile-n", type=int, default=0, help="also profile the fast path at this N (first config)")
    a.add_argument("--configs", nargs="+", metavar="L,p,K", help="configurations (default: 3,4,2048 4,4,4096)")
    a.add_argument("--authors", metavar="DIR",
                   help="also time the authors' implementation from a checkout of github.com/ighoshsubho/lighthouse-attention "
                        "at DIR, and check its float32 output against ours")
    pr = sub.add_parser("profile", help="per-kernel CUDA times of one fast-path forward+backward")
    pr.add_argument("--n", type=int, default=512 * K1)
    pr.add_argument("--levels", type=int, default=3)
    pr.add_argument("--pooling", type=int, default=4)
    pr.add_argument("--topk", type=int, default=2048)


def main(args, argv=None) -> int:
    """`attention` and `profile`."""
    if not torch.cuda.is_available():
        print("the benchmarks need a CUDA device", file=sys.stderr)
        return 2
    if args.what == "profile":
        profile_fast(args.n, args.levels, args.pooling, args.topk)
        return 0
    lengths = LENGTHS if not args.lengths else parse_lengths(args.lengths)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs] if args.configs else CONFIGS
    reference = not args.no_reference
    if args.quick:
        lengths, configs, reference = [n for n in lengths if n <= 64 * K1], configs[:1], False
    authors = None
    if args.authors:
        try:
            authors = A.load_authors(args.authors)
        except A.AuthorsCodeError as e:
            print(f"--authors: {e}", file=sys.stderr)
            return 2
    rows = bench_attention(lengths, configs, budget_s=args.budget, reference=reference, authors=authors)
    result = {
        **run_info(argv),
        "timing": "median of repeats, CUDA events, warm-up excluded; peak = torch.cuda.max_memory_allocated "
                  "during one forward+backward (inputs and output gradient included)",
        "rows": rows,
        "crossover": crossover(rows),
    }
    if authors is not None:
        result["authors"] = {"checkout": authors.checkout, "commit": _git_commit(authors.checkout),
                             "checks": [dict(r["authors_check"], levels=r["levels"], pooling=r["pooling"], topk=r["topk"])
                                        for r in rows if "authors_check" in r]}
    if args.profile_n:
        L, p, K = configs[0]
        result["profile"] = profile_fast(args.profile_n, L, p, K)
    write_result(args.out, result)
    print()
    print(f"device: {result['versions'].get('device')}  torch {torch.__version__}  triton {result['versions']['triton']}")
    print_table(rows)
    for line in result["crossover"]:
        print(line)
    for check in result.get("authors", {}).get("checks", []):
        print(authors_check_line(check))
    print(f"wrote {args.out}")
    return 0


def authors_check_line(check: dict) -> str:
    """One line per configuration: do the authors' float32 outputs agree with ours?"""
    where = f"L={check['levels']} p={check['pooling']} K={check['topk']} N={check['N'] // K1}K"
    if "error" in check:
        return f"authors vs ours, float32, {where}: not compared ({check['error']})"
    verdict = "agree" if check["agree"] else f"DIFFER (more than {A.AGREE_RTOL:g} relative)"
    if "selection_rows" in check:
        selection = f"selection differs in {check['selection_rows_differ']} of {check['selection_rows']} rows"
    else:
        selection = f"selection {check.get('selection', 'not compared')}"
    return (f"authors vs ours, float32, {where}: relative error {check['rel_err']:.2e}, "
            f"max abs {check['max_abs']:.2e}: {verdict}; {selection}")


def _git_commit(path: str) -> str | None:
    """The commit of a git checkout (provenance of the authors' code), or None."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
