"""Context-parallel training steps: step time and peak memory per GPU, Lighthouse vs dense, under torchrun.

    torchrun --standalone --nproc-per-node 4 -m lighthouse.bench cp --config configs/recipe-64k.toml \\
        --seq-len 1M --attention lighthouse --set 'model.dense_layers=[]' --out cp.json
    (then the same with --attention dense and the same --out: the file collects the rows, and
    the table printed at the end pairs them)

One sequence of N tokens per step is split over all the launched processes (parallel.cp = the
world size, dp = 1): the config's model is built and sharded exactly as the trainer does
(`build_sharded_model`: FSDP2 over the ranks, bf16 mixed precision on CUDA, the
context-parallel attention modules of every layer), and each step is a whole optimizer step
(forward, backward, AdamW) on random tokens. After `--warmup` untimed steps (Triton
compilation, allocator growth), each of `--steps` steps is timed on every rank (timing.py:
CUDA events on GPUs, the host clock on CPU); the row records the median over steps of the
slowest rank's time, tokens/s, and the largest peak memory (`torch.cuda.max_memory_allocated`)
of any rank.

Each attention kind runs in its own launch, so a kind that does not fit (a dense length past
the memory) cannot take the other's numbers with it: a rank out of memory stops its launch,
and the table then marks that row missing. On CPU (gloo) it runs at small N as a smoke test;
timings there mean little.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..eval_tasks import parse_lengths
from ..evals.common import autocast
from ..tokenizer import VOCAB_SIZE
from .timing import peak_memory, run_info, time_runs, write_result


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Elementwise, the largest of every rank's values."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def timed_steps(model, optimizer, x_Bn, y_Bn, amp_dtype, steps: int, warmup: int, device) -> tuple[list[float], float]:
    """(seconds of each timed step on the slowest rank, loss of the last step) after `warmup` untimed steps."""
    last = {}

    def step():
        with autocast(device, amp_dtype):
            loss = model(x_Bn, y_Bn)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last["loss"] = loss

    times_ms = time_runs(step, device, warmup=max(0, warmup - 1), reps=steps)  # the first call is one of the warm-up
    return [ms / 1e3 for ms in _max_over_ranks(times_ms, device)], float(last["loss"].detach())


def measure(cfg, seq_len: int, kind: str, steps: int, warmup: int):
    """(row, this process's ParallelState): `kind` attention in the config's non-dense layers at
    `seq_len`, cp = the world size."""
    from ..distributed.mesh import join_parallel, launched_world_size
    from ..trainer.build import autocast_dtype, build_model, resolve_device
    from ..trainer.parallel import build_sharded_model, inputs_and_targets
    from ..trainer.stepper import build_optimizer

    device = resolve_device(cfg.training.device)
    parallel = join_parallel(1, launched_world_size(), device)
    device = parallel.device
    amp_dtype = autocast_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(cfg.training.seed)
    if parallel.distributed:
        model = build_sharded_model(cfg, parallel, amp_dtype)
    else:  # one process: the single-GPU model (a baseline at lengths that fit)
        model = build_model(cfg, device)
    model.set_attention(kind)
    model.activation_checkpointing = cfg.training.activation_checkpointing
    optimizer = build_optimizer(cfg, model, device)
    gen = torch.Generator().manual_seed(1234)  # the same tokens on every rank
    w_BN1 = torch.randint(0, VOCAB_SIZE, (1, seq_len + 1), generator=gen)
    x_Bn, y_Bn = inputs_and_targets(w_BN1, parallel)
    with peak_memory(device) as peak:  # not tracked on CPU
        times, loss = timed_steps(model, optimizer, x_Bn, y_Bn, amp_dtype, steps, warmup, device)
    step_s = statistics.median(times)
    row = {
        "attention": kind, "N": seq_len, "cp": parallel.cp, "device": _device_name(device),
        "dense_layers": list(cfg.model.dense_layers), "layers": cfg.model.n_layers,
        "lighthouse": cfg.lighthouse.describe(), "activation_checkpointing": cfg.training.activation_checkpointing,
        "step_s": step_s, "min_s": min(times), "max_s": max(times), "steps": len(times),
        "tok_s": seq_len / step_s,
        "peak_gib_max_rank": None if peak.gib is None else _max_over_ranks([peak.gib], device)[0],
        "loss": loss,
    }
    return row, parallel


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def format_table(rows: list[dict]) -> str:
    """One line per Lighthouse row, beside the dense row of the same N and GPUs (with dense attention every
    layer is dense, whatever the config's dense_layers, so one dense row serves every layout)."""
    dense = {(r["N"], r["cp"]): r for r in rows if r["attention"] == "dense"}
    lighthouse = [r for r in rows if r["attention"] == "lighthouse"]
    lines = ["| N | GPUs (cp) | dense layers of the Lighthouse model | dense s/step | Lighthouse s/step | dense / Lighthouse "
             "| peak GiB dense / LH |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda r: f"{r['step_s']:.2f}" if r else "missing (did not run or did not fit)"  # noqa: E731
    mem = lambda r: f"{r['peak_gib_max_rank']:.1f}" if r and r["peak_gib_max_rank"] is not None else "-"  # noqa: E731
    paired = set()
    for lh in sorted(lighthouse, key=lambda r: (r["N"], r["cp"], len(r["dense_layers"]))):
        d = dense.get((lh["N"], lh["cp"]))
        paired.add((lh["N"], lh["cp"]))
        ratio = f"{d['step_s'] / lh['step_s']:.1f}x" if d else "-"
        lines.append(f"| {lh['N'] // 1024}K | {lh['cp']} | {lh['dense_layers'] or 'none'} | {fmt(d)} | {fmt(lh)} | {ratio} | "
                     f"{mem(d)} / {mem(lh)} |")
    for key, d in sorted(dense.items()):
        if key not in paired:
            lines.append(f"| {d['N'] // 1024}K | {d['cp']} | - | {fmt(d)} | {fmt(None)} | - | {mem(d)} / - |")
    return "\n".join(lines)


def main(args, argv=None) -> int:
    from ..distributed.mesh import launched_world_size
    from ..trainer.config import load_config

    lengths = parse_lengths(args.seq_len)
    if len(lengths) != 1:
        print("--seq-len takes one length", file=sys.stderr)
        return 2
    seq_len = lengths[0]
    world = launched_world_size()
    overrides = [*args.overrides, f"data.seq_len={seq_len}", f"parallel.cp={world}", "parallel.dp=1"]
    if args.activation_checkpointing:
        overrides.append("training.activation_checkpointing=true")
    cfg = load_config(args.config, overrides)
    row, parallel = measure(cfg, seq_len, args.attention, args.steps, args.warmup)
    row.update(run_info(argv), config=args.config)  # launches add rows to one file: each row says where it came from
    if parallel.is_main:
        print(f"N={seq_len} cp={row['cp']} {row['attention']}: {row['step_s']:.3f} s/step "
              f"(min {row['min_s']:.3f}, max {row['max_s']:.3f}), {row['tok_s']:,.0f} tok/s, "
              f"peak {row['peak_gib_max_rank'] or 0:.1f} GiB (largest rank), on {row['device']}", flush=True)
        if args.out:
            out = Path(args.out)
            rows = json.loads(out.read_text())["rows"] if out.is_file() else []
            rows.append(row)
            write_result(out, {"rows": rows})
            print(format_table(rows))
    if parallel.distributed:
        dist.barrier()  # rank 0 has written the row; leaving together avoids a peer's abort on a closed link
        dist.destroy_process_group()
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("cp", help="context-parallel training steps under torchrun: s/step and peak memory per GPU")
    c.add_argument("--config", required=True, help="a training config (its [model], [lighthouse], [training])")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--seq-len", required=True, help="tokens per sequence, e.g. 524288 or 512K or 1M")
    c.add_argument("--attention", choices=("lighthouse", "dense"), required=True,
                   help="the attention of the non-dense layers (one kind per launch)")
    c.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    c.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    c.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    c.add_argument("--out", help="JSON file collecting the rows of several launches")
