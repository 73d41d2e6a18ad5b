"""Training throughput: tokens/s of whole optimizer steps, dense vs Lighthouse, on one GPU.

    python -m lighthouse.bench train --config configs/recipe-64k.toml --seq-lens 16K,32K,64K,128K,256K
    python -m lighthouse.bench train --config configs/paper-530m.toml --seq-lens 32K,64K,98K,128K
    python -m lighthouse.bench train --config configs/paper-530m.toml --set model.dense_layers=[] \
        --seq-lens 1M,2M --attention lighthouse --checkpointing block --param-dtype bfloat16 --loss-chunk 65536

One step = forward, backward and a fused AdamW update of the config's model (bf16 autocast,
batch 1), on random tokens. Each (length, attention) pair is warmed up (Triton compilation,
allocator growth) and then timed over several steps (CUDA events, timing.py); the median step
time gives s/step and tokens/s, next to the peak GPU memory (and the pinned host memory that
offloaded activations take). Dense and Lighthouse run in the same process on the same
card, so their ratio is meaningful; the crossover is the shortest length where Lighthouse is
faster.

How a step keeps its memory (`StepOptions`, the flags):
  --checkpointing auto    no recomputation; a pair that does not fit is retried with "block"
                          (recorded), and one that still does not fit is reported as out of memory
  --checkpointing none|block|selective   that policy only (lighthouse.checkpointing)
  --offload-layers n      with "block": the first n blocks keep their input in host memory
  --loss-chunk n          the loss n positions at a time (lighthouse.loss)
  --param-dtype bfloat16  bf16 parameters with fp32 master weights (lighthouse.trainer.precision)
`--device cpu` runs the same code at toy sizes (a smoke test; no autocast).

At a length shorter than the config's Lighthouse minimum (topk * pooling**(levels-1)) the
top-k budget is lowered to the largest multiple of 128 that fits, and the row says so.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from pathlib import Path

import torch

from ..config import TILE_WIDTH, LighthouseConfig
from ..eval_tasks import parse_lengths
from ..evals.common import autocast
from ..model import Transformer
from ..tokenizer import VOCAB_SIZE
from ..trainer.precision import MasterWeights
from .timing import length_label, peak_memory, run_info, summarize, time_runs, write_result

CHECKPOINTING = ("auto", "none", "block", "selective")
PARAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How a training step keeps its memory (see the module docstring)."""

    checkpointing: str = "auto"
    offload_layers: int = 0
    loss_chunk: int = 0
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing must be one of {CHECKPOINTING}, got {self.checkpointing!r}")
        if self.param_dtype not in PARAM_DTYPES:
            raise ValueError(f"param dtype must be one of {tuple(PARAM_DTYPES)}, got {self.param_dtype!r}")
        if self.offload_layers < 0 or self.loss_chunk < 0:
            raise ValueError("offload layers and loss chunk must be >= 0")
        if self.offload_layers and self.checkpointing != "block":
            raise ValueError("offloading block inputs needs --checkpointing block")

    def policies(self) -> list[str]:
        """The checkpoint policies to try, in order: "auto" retries with "block" when out of memory."""
        return ["none", "block"] if self.checkpointing == "auto" else [self.checkpointing]


def fitted_lighthouse(cfg: LighthouseConfig, seq_len: int) -> LighthouseConfig:
    """`cfg`, with topk lowered to the largest multiple of 128 that `seq_len` admits when needed."""
    if seq_len >= cfg.min_seq_len:
        return cfg
    topk = (seq_len // cfg.coarsest_factor) // TILE_WIDTH * TILE_WIDTH
    if topk < TILE_WIDTH:
        raise ValueError(f"N={seq_len} is too short for any top-k budget at L={cfg.levels}, p={cfg.pooling}")
    return dataclasses.replace(cfg, topk=topk)


def build(model_args, lighthouse: LighthouseConfig, kind: str, policy: str, options: StepOptions, device):
    """(model, optimizer) of one measurement: the model as the trainer starts it (meta, then materialized)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(model_args, lighthouse)
    model.materialize(device)
    model.set_attention(kind)
    model.activation_checkpointing = policy
    model.offload_layers = options.offload_layers
    model.loss_chunk = options.loss_chunk
    fused = {"fused": True} if device.type == "cuda" else {}
    make_optimizer = lambda params: torch.optim.AdamW(params, lr=1e-4, **fused)  # noqa: E731
    if options.param_dtype == "float32":
        return model, make_optimizer(model.parameters())
    return model, MasterWeights(model, make_optimizer, PARAM_DTYPES[options.param_dtype])


def time_steps(model, optimizer, tokens_BN1, steps: int, warmup: int, device, amp_dtype=torch.bfloat16) -> list[float]:
    """Milliseconds of `steps` timed optimizer steps (timing.py), after `warmup` untimed ones."""

    def step():
        with autocast(device, amp_dtype):
            loss = model(tokens_BN1[:, :-1], tokens_BN1[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_runs(step, device, warmup=max(0, warmup - 1), reps=steps)  # the first call is one of the warm-up


def measure(model_args, lighthouse: LighthouseConfig, kind: str, seq_len: int, steps: int, warmup: int,
            options: StepOptions = StepOptions(), device="cuda") -> dict:
    device = torch.device(device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    row = {"attention": kind, "N": seq_len, "offload_layers": options.offload_layers, "loss_chunk": options.loss_chunk,
           "param_dtype": options.param_dtype}
    policies = options.policies()
    for policy in policies:
        model = optimizer = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            model, optimizer = build(model_args, lighthouse, kind, policy, options, device)
            tokens = torch.randint(0, VOCAB_SIZE, (1, seq_len + 1), device=device)
            with peak_memory(device) as peak:
                timing = summarize(time_steps(model, optimizer, tokens, steps, warmup, device, amp_dtype))
            if "oom" in row:  # it fits only with recomputation: say so instead of out of memory
                row["note_memory"] = f"{row.pop('oom')}; fits with activation checkpointing"
            row.update(step_ms=timing["median_ms"], min_ms=timing["min_ms"], max_ms=timing["max_ms"], steps=timing["reps"],
                       tok_s=seq_len / (timing["median_ms"] / 1e3), peak_gib=peak.gib, host_gib=peak.host_gib,
                       checkpointing=policy, activation_checkpointing=policy != "none")
            return row
        except torch.OutOfMemoryError as e:
            row["oom"] = "out of memory" + (f" with checkpointing {policy!r}" if policy != "none" else "")
            row["checkpointing"] = policy
            # Which allocation failed, and where in our code: what the next memory option must address.
            ours = [f for f in traceback.extract_tb(e.__traceback__) if "lighthouse" in f.filename]
            row["oom_detail"] = str(e).split("\n")[0][:400]
            row["oom_where"] = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in ours[-3:]]
        finally:
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return row


def bench_train(model_args, lighthouse: LighthouseConfig, lengths, steps=4, warmup=2, kinds=("dense", "lighthouse"),
                options: StepOptions = StepOptions(), device="cuda", log=print) -> list[dict]:
    rows = []
    for N in lengths:
        lh = fitted_lighthouse(lighthouse, N)
        pair = {}
        for kind in kinds:
            row = measure(model_args, lh, kind, N, steps, warmup, options, device)
            row.update(levels=lh.levels, pooling=lh.pooling, topk=lh.topk, sub_seq_len=lh.sub_seq_len(N))
            if lh.topk != lighthouse.topk:
                row["note"] = f"topk lowered to {lh.topk} (N < {lighthouse.min_seq_len})"
            pair[kind] = row
            rows.append(row)
            log(format_row(row))
        if "tok_s" in pair.get("dense", {}) and "tok_s" in pair.get("lighthouse", {}):
            pair["lighthouse"]["speedup_vs_dense"] = pair["lighthouse"]["tok_s"] / pair["dense"]["tok_s"]
    return rows


def options_note(r: dict) -> str:
    """The memory options of a row, in words ("" for today's default step)."""
    parts = []
    if r.get("checkpointing", "none") != "none":
        parts.append(f"checkpointing {r['checkpointing']}")
    if r.get("offload_layers"):
        parts.append(f"{r['offload_layers']} block inputs in host memory")
    if r.get("loss_chunk"):
        parts.append(f"loss in chunks of {r['loss_chunk']}")
    if r.get("param_dtype", "float32") != "float32":
        parts.append(f"{r['param_dtype']} params, fp32 master weights")
    return ", ".join(parts)


def format_row(r: dict) -> str:
    if "tok_s" not in r:
        where = f" at {r['oom_where'][-1]}: {r['oom_detail']}" if r.get("oom_where") else ""
        return f"N={length_label(r['N']):>5} {r['attention']:<10} {r.get('oom', 'failed')}{where}"
    note = options_note(r)
    host = f", host {r['host_gib']:.1f} GiB" if r.get("host_gib") else ""
    peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:5.1f}"
    return (f"N={length_label(r['N']):>5} {r['attention']:<10} {r['step_ms'] / 1e3:8.2f} s/step  {r['tok_s']:>10,.0f} tok/s  "
            f"peak {peak} GiB{host}{f' ({note})' if note else ''}")


def table(rows: list[dict], title: str) -> str:
    by_n: dict[int, dict] = {}
    for r in rows:
        by_n.setdefault(r["N"], {})[r["attention"]] = r
    lines = [f"### {title}", "",
             "| N | K | S | dense tok/s | Lighthouse tok/s | Lighthouse s/step | Lighthouse / dense | peak GiB dense / LH "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|"]
    crossover = None
    for N, pair in sorted(by_n.items()):
        d, lh = pair.get("dense", {}), pair.get("lighthouse", {})
        speed = lh.get("speedup_vs_dense")
        if speed is not None and speed > 1 and crossover is None:
            crossover = N
        notes = [x for x in (lh.get("note"), d.get("oom"), lh.get("oom")) if x]
        recomputed = [k for k, r in pair.items() if r.get("note_memory")]
        if recomputed:
            notes.append(f"activation checkpointing ({', '.join(recomputed)}): out of memory without it")
        options = {options_note(r) for r in pair.values() if "tok_s" in r and not r.get("note_memory")} - {""}
        notes += sorted(options)
        fmt = lambda r: f"{r['tok_s']:,.0f}" if "tok_s" in r else ("OOM" if r else "-")  # noqa: E731
        mem = lambda r: f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"  # noqa: E731
        step = f"{lh['step_ms'] / 1e3:.2f}" if "step_ms" in lh else "-"
        lines.append(f"| {length_label(N)} | {lh.get('topk', '-')} | {lh.get('sub_seq_len', '-')} | {fmt(d)} | {fmt(lh)} | "
                     f"{step} | {'-' if speed is None else f'{speed:.2f}x'} | {mem(d)} / {mem(lh)} | {'; '.join(notes)} |")
    lines.append("")
    if {"dense", "lighthouse"} <= {r["attention"] for r in rows}:
        lines.append(f"Crossover: Lighthouse is faster from N = {length_label(crossover)} on." if crossover else
                     "Crossover: Lighthouse was not faster at any measured length.")
    return "\n".join(lines)


def main(args, argv=None) -> int:
    from ..trainer.config import load_config

    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("the training benchmark needs a CUDA GPU (or --device cpu for a smoke test)", file=sys.stderr)
        return 2
    try:
        options = StepOptions(args.checkpointing, args.offload_layers, args.loss_chunk, args.param_dtype)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)
    lengths = parse_lengths(args.seq_lens)
    kinds = ("dense", "lighthouse") if args.attention == "both" else (args.attention,)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    layers = cfg.model.dense_layer_set()
    with torch.device("meta"):
        params = Transformer(cfg.model, cfg.lighthouse).num_params()
    print(f"{cfg.name}: {params / 1e6:.1f}M parameters, {cfg.lighthouse.describe()} in layers outside "
          f"{sorted(layers) or 'none (Lighthouse in every layer)'}, on {name}; checkpointing {options.checkpointing}"
          + (f", {options_note({**dataclasses.asdict(options), 'checkpointing': 'none'})}" if options != StepOptions(
              options.checkpointing) else ""))
    rows = bench_train(cfg.model, cfg.lighthouse, lengths, steps=args.steps, warmup=args.warmup, kinds=kinds,
                       options=options, device=device)
    text = table(rows, f"{cfg.name} on {name}")
    print(text)
    if args.out:
        write_result(args.out, {**run_info(argv), "config": args.config, "overrides": args.overrides,
                                "options": dataclasses.asdict(options), "dense_layers": sorted(layers), "rows": rows})
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="tokens/s of whole training steps, dense vs Lighthouse, for a config's model")
    t.add_argument("--config", required=True, help="a training config (its [model] and [lighthouse])")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.dense_layers=[] for Lighthouse in every layer")
    t.add_argument("--seq-lens", default="16K,32K,64K,128K,256K", help="comma-separated N (e.g. 512K,1M,2M)")
    t.add_argument("--attention", choices=["both", "dense", "lighthouse"], default="both")
    t.add_argument("--checkpointing", choices=CHECKPOINTING, default="auto",
                   help="auto: none, retried with block when out of memory; or that policy only")
    t.add_argument("--offload-layers", type=int, default=0, help="with --checkpointing block: block inputs in host memory")
    t.add_argument("--loss-chunk", type=int, default=0, help="positions per chunk of the loss (0: all at once)")
    t.add_argument("--param-dtype", choices=list(PARAM_DTYPES), default="float32",
                   help="bfloat16: bf16 parameters with fp32 master weights")
    t.add_argument("--steps", type=int, default=4, help="timed steps per pair (median)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator)")
    t.add_argument("--device", default=None, help="cuda (default); cpu for a smoke test at toy sizes")
    t.add_argument("--out", help="JSON file for the rows")
