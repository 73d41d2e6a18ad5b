"""Training throughput: tokens/s of whole optimizer steps, dense vs Lighthouse, on one GPU.

    python -m lighthouse.bench train --config configs/recipe-64k.toml --seq-lens 16K,32K,64K,128K,256K
    python -m lighthouse.bench train --config configs/paper-530m.toml --seq-lens 32K,64K,98K,128K

One step = forward, backward and a fused AdamW update of the config's model (bf16 autocast,
batch 1), on random tokens. Each (length, attention) pair is warmed up (Triton compilation,
allocator growth) and then timed over several steps (CUDA events, timing.py); the median step
time gives tokens/s. Dense and Lighthouse run in the same process on the same
card, so their ratio is meaningful; the crossover is the shortest length where Lighthouse is
faster. A pair that does not fit is retried with activation checkpointing (recorded), and
one that still does not fit is reported as out of memory.

At a length shorter than the config's Lighthouse minimum (topk * pooling**(levels-1)) the
top-k budget is lowered to the largest multiple of 128 that fits, and the row says so.
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from ..config import TILE_WIDTH, LighthouseConfig
from ..eval_tasks import parse_lengths
from ..evals.common import autocast
from ..model import Transformer
from ..tokenizer import VOCAB_SIZE
from .timing import peak_memory, run_info, summarize, time_runs, write_result

CUDA = torch.device("cuda")


def fitted_lighthouse(cfg: LighthouseConfig, seq_len: int) -> LighthouseConfig:
    """`cfg`, with topk lowered to the largest multiple of 128 that `seq_len` admits when needed."""
    if seq_len >= cfg.min_seq_len:
        return cfg
    topk = (seq_len // cfg.coarsest_factor) // TILE_WIDTH * TILE_WIDTH
    if topk < TILE_WIDTH:
        raise ValueError(f"N={seq_len} is too short for any top-k budget at L={cfg.levels}, p={cfg.pooling}")
    return dataclasses.replace(cfg, topk=topk)


def time_steps(model, optimizer, tokens_BN1, steps: int, warmup: int) -> list[float]:
    """Milliseconds of `steps` timed optimizer steps (timing.py), after `warmup` untimed ones."""

    def step():
        with autocast(CUDA, torch.bfloat16):
            loss = model(tokens_BN1[:, :-1], tokens_BN1[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_runs(step, CUDA, warmup=max(0, warmup - 1), reps=steps)  # the first call is one of the warm-up


def measure(model_args, lighthouse: LighthouseConfig, kind: str, seq_len: int, steps: int, warmup: int) -> dict:
    row = {"attention": kind, "N": seq_len}
    for recompute in (False, True):
        model = optimizer = None
        torch.cuda.empty_cache()
        try:
            torch.manual_seed(0)
            model = Transformer(model_args, lighthouse).cuda()
            model.set_attention(kind)
            model.activation_checkpointing = recompute
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            tokens = torch.randint(0, VOCAB_SIZE, (1, seq_len + 1), device="cuda")
            with peak_memory(CUDA) as peak:
                timing = summarize(time_steps(model, optimizer, tokens, steps, warmup))
            if recompute:  # it fits only this way: say so instead of out of memory
                row["note_memory"] = f"{row.pop('oom')}; fits with activation checkpointing"
            row.update(step_ms=timing["median_ms"], min_ms=timing["min_ms"], max_ms=timing["max_ms"], steps=timing["reps"],
                       tok_s=seq_len / (timing["median_ms"] / 1e3), peak_gib=peak.gib, activation_checkpointing=recompute)
            return row
        except torch.OutOfMemoryError:
            row["oom"] = f"out of memory{' with activation checkpointing' if recompute else ''}"
        finally:
            del model, optimizer
            torch.cuda.empty_cache()
    return row


def bench_train(model_args, lighthouse: LighthouseConfig, lengths, steps=4, warmup=2, kinds=("dense", "lighthouse"),
                log=print) -> list[dict]:
    rows = []
    for N in lengths:
        lh = fitted_lighthouse(lighthouse, N)
        pair = {}
        for kind in kinds:
            row = measure(model_args, lh, kind, N, steps, warmup)
            row.update(levels=lh.levels, pooling=lh.pooling, topk=lh.topk, sub_seq_len=lh.sub_seq_len(N))
            if lh.topk != lighthouse.topk:
                row["note"] = f"topk lowered to {lh.topk} (N < {lighthouse.min_seq_len})"
            pair[kind] = row
            rows.append(row)
            log(format_row(row))
        if "tok_s" in pair.get("dense", {}) and "tok_s" in pair.get("lighthouse", {}):
            pair["lighthouse"]["speedup_vs_dense"] = pair["lighthouse"]["tok_s"] / pair["dense"]["tok_s"]
    return rows


def format_row(r: dict) -> str:
    if "tok_s" not in r:
        return f"N={r['N']:>7} {r['attention']:<10} {r.get('oom', 'failed')}"
    ac = " (activation checkpointing)" if r["activation_checkpointing"] else ""
    return (f"N={r['N']:>7} {r['attention']:<10} {r['step_ms']:9.1f} ms/step  {r['tok_s']:>10,.0f} tok/s  "
            f"peak {r['peak_gib']:5.1f} GiB{ac}")


def table(rows: list[dict], title: str) -> str:
    by_n: dict[int, dict] = {}
    for r in rows:
        by_n.setdefault(r["N"], {})[r["attention"]] = r
    lines = [f"### {title}", "",
             "| N | K | S | dense tok/s | Lighthouse tok/s | Lighthouse / dense | peak GiB dense / LH | note |",
             "|---|---|---|---|---|---|---|---|"]
    crossover = None
    for N, pair in sorted(by_n.items()):
        d, lh = pair.get("dense", {}), pair.get("lighthouse", {})
        speed = lh.get("speedup_vs_dense")
        if speed is not None and speed > 1 and crossover is None:
            crossover = N
        notes = [x for x in (lh.get("note"), d.get("oom"), lh.get("oom")) if x]
        recomputed = [k for k, r in pair.items() if r.get("activation_checkpointing")]
        if recomputed:
            notes.append(f"activation checkpointing ({', '.join(recomputed)}): out of memory without it")
        fmt = lambda r: f"{r['tok_s']:,.0f}" if "tok_s" in r else "OOM"  # noqa: E731
        mem = lambda r: f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"  # noqa: E731
        lines.append(f"| {N // 1024}K | {lh.get('topk', '-')} | {lh.get('sub_seq_len', '-')} | {fmt(d)} | {fmt(lh)} | "
                     f"{'-' if speed is None else f'{speed:.2f}x'} | {mem(d)} / {mem(lh)} | {'; '.join(notes)} |")
    lines.append("")
    lines.append(f"Crossover: Lighthouse is faster from N = {crossover // 1024}K on." if crossover else
                 "Crossover: Lighthouse was not faster at any measured length.")
    return "\n".join(lines)


def main(args, argv=None) -> int:
    from ..trainer.config import load_config

    if not torch.cuda.is_available():
        print("the training benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)
    lengths = parse_lengths(args.seq_lens)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{cfg.name}: {Transformer(cfg.model, cfg.lighthouse).num_params() / 1e6:.1f}M parameters, "
          f"{cfg.lighthouse.describe()} in layers outside {cfg.model.dense_layers}, on {torch.cuda.get_device_name()}")
    rows = bench_train(cfg.model, cfg.lighthouse, lengths, steps=args.steps, warmup=args.warmup)
    text = table(rows, f"{cfg.name} on {torch.cuda.get_device_name()}")
    print(text)
    if args.out:
        write_result(args.out, {**run_info(argv), "config": args.config, "rows": rows})
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="tokens/s of whole training steps, dense vs Lighthouse, for a config's model")
    t.add_argument("--config", required=True, help="a training config (its [model] and [lighthouse])")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--seq-lens", default="16K,32K,64K,128K,256K")
    t.add_argument("--steps", type=int, default=4, help="timed steps per pair (median)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator)")
    t.add_argument("--out", help="JSON file for the rows")
