"""The `lighthouse` command: train, eval, plot.

    lighthouse train --config configs/demo.toml --baseline   # two stages + dense baseline, table, plot
    lighthouse train --config configs/demo.toml --resume     # continue after a kill
    lighthouse eval --checkpoint runs/demo --attention dense # validation bits-per-byte
    lighthouse eval --checkpoint runs/demo --task passkey --lengths 1K,4K --out evals/  # also: --task position, leak
    lighthouse eval --checkpoint runs/demo --task position,passkey --out evals/  # several tasks, one model load
    lighthouse plot runs/demo runs/demo-baseline -o plot.png
    lighthouse export runs/demo hf/demo                      # a Hugging Face Llama folder (needs .[hf])
    lighthouse sample --checkpoint runs/demo --prompt "def " # text, dense attention with a KV cache

Every command checks its arguments before it starts work, and a bad argument, a missing or
damaged file, a folder it may not write or delete, or a device that is not there is one line
on stderr (`error: ...`, naming the argument and the way out) and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .cpu_threads import prefer_passive_waits
from .cuda_allocator import prefer_expandable_segments

prefer_passive_waits()  # before anything loads torch (see cpu_threads.py)
prefer_expandable_segments()  # before anything uses CUDA (see cuda_allocator.py)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the usage first), exit status 2 as before."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)  # a ValueError is argparse's "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


EVAL_TASKS = ("bpb", "position", "passkey", "leak")


def eval_tasks(text: str) -> list[str]:
    """`--task position,passkey`: one task or several, run in order on the one loaded model."""
    tasks = [t.strip() for t in text.split(",")]
    if any(t not in EVAL_TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more of {', '.join(EVAL_TASKS)}, comma-separated, "
                                         "each once")
    if "bpb" in tasks and len(tasks) > 1:
        raise argparse.ArgumentTypeError(f"{text!r}: bpb runs alone (it prints one number); the others combine, "
                                         "e.g. position,passkey")
    return tasks


def os_error_line(e: OSError) -> str:
    """An OSError as `path: reason` (its str is "[Errno 13] Permission denied: 'path'")."""
    if e.filename is None:
        return str(e)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    return f"{where}: {(e.strerror or str(e)).lower()}"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.batch_size=16 --set stages.0.steps=200 (repeatable)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the config's training.device, auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lighthouse", description="Two-stage Lighthouse Attention training.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the stages of a config (and, with --baseline, a dense baseline)")
    t.add_argument("--config", help="TOML config (default: the built-in demo, same as configs/demo.toml)")
    _add_common(t)
    t.add_argument("--baseline", action="store_true",
                   help="also train dense attention from scratch for the same steps into runs/<name>-baseline, then compare")
    t.add_argument("--baseline-only", action="store_true", help="train only the dense baseline")
    start = t.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the run's newest checkpoint that verifies (a new run if there is none yet)")
    start.add_argument("--resume-weights-only", action="store_true",
                       help="continue from the newest checkpoint whose weights verify, with a fresh optimizer "
                            "(when the rest of every checkpoint is damaged)")
    start.add_argument("--overwrite", action="store_true",
                       help="delete the run's files (checkpoints, metrics, config, plot) and start over; only in a "
                            "folder that is a run")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    drawn = t.add_mutually_exclusive_group()
    drawn.add_argument("--plot", metavar="PNG", help="where to write the comparison plot (default: runs/<name>/plot.png)")
    drawn.add_argument("--no-plot", action="store_true",
                       help="no plot at the end (for scripts that plot many runs together; `lighthouse plot` draws it later)")

    e = sub.add_parser("eval", help="evaluate a checkpoint: validation bpb, bpb by position, passkey")
    e.add_argument("--checkpoint", required=True, help="a run folder (its latest checkpoint) or a checkpoint folder")
    e.add_argument("--attention", choices=("auto", "dense", "lighthouse"), default="auto",
                   help="attention of the non-dense layers (auto: that of the checkpoint's stage)")
    e.add_argument("--windows", type=positive_int,
                   help="validation windows to score (default: the run's data.val_windows)")
    e.add_argument("--task", type=eval_tasks, default="bpb",
                   help="bpb: validation bits-per-byte (default); position: bpb by position in the window; "
                        "passkey: pass key retrieval accuracy by length and depth; leak: how much the loss at t "
                        "depends on the bytes after t (0 for dense attention and causal selection); several of "
                        "the last three comma-separated (position,passkey) run on one loaded model")
    e.add_argument("--lengths",
                   help="passkey: prompt lengths in bytes, e.g. 1024,4096 or 1K,4K (default: data.seq_len)")
    e.add_argument("--depths",
                   help="passkey: where the key is hidden, fractions of the filler (default: 0,0.25,0.5,0.75,1)")
    e.add_argument("--trials", type=positive_int, default=5, help="passkey: prompts per length and depth (default: 5)")
    e.add_argument("--seed", type=int, default=0, help="passkey: seed of the pass keys (default: 0)")
    e.add_argument("--positions", type=positive_int, default=16, help="leak: positions t per window (default: 16)")
    e.add_argument("--out", metavar="DIR", help="position/passkey/leak: write <task>.json and <task>.png into DIR")
    _add_common(e)

    p = sub.add_parser("plot", help="plot loss vs tokens and vs wall-clock for runs")
    p.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl)")
    p.add_argument("-o", "--output", default="plot.png", help="PNG to write (default: plot.png)")

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face Llama folder with a byte-level tokenizer")
    x.add_argument("run_dir", help="a run folder (its newest good checkpoint) or a checkpoint folder")
    x.add_argument("out_dir", help="the folder to write (config.json, model.safetensors, tokenizer files)")
    x.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weight dtype (default: as trained)")
    x.add_argument("--overwrite", action="store_true", help="replace an export already in out_dir")

    s = sub.add_parser("sample", help="generate text from a checkpoint (dense attention with a KV cache)")
    s.add_argument("--checkpoint", required=True, help="a run folder (its newest good checkpoint) or a checkpoint folder")
    s.add_argument("--prompt", default="", help="text to continue (default: empty, a new document)")
    s.add_argument("--max-new-tokens", type=int, default=200, help="bytes to generate at most (default: 200)")
    s.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0: greedy (default: 0.8)")
    s.add_argument("--top-k", type=int, default=50, help="sample among the k most likely bytes; 0: all (default: 50)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    s.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    return parser


def cmd_train(args) -> int:
    from .distributed.mesh import is_main_process, process_group_scope
    from .trainer.build import resolve_device
    from .trainer.config import baseline_config, load_config
    from .trainer.folders import check_run_dir
    from .trainer.loop import train
    from .trainer.metrics import compare_runs, format_comparison, format_table
    from .trainer.plot import check_plot_path, plot_runs

    overrides = list(args.overrides)
    if args.device:
        resolve_device(args.device, what="--device")
        overrides.append(f"training.device={args.device!r}".replace("'", '"'))
    if args.compile:
        overrides.append("training.compile=true")
    if args.no_progress:
        overrides.append("training.progress=false")
    cfg = load_config(args.config, overrides)
    if args.config is None:
        print("using the built-in demo config (same as configs/demo.toml)")
    runs = [] if args.baseline_only else [cfg]
    if args.baseline or args.baseline_only:
        runs.append(baseline_config(cfg))
    resume = args.resume or args.resume_weights_only
    for run_cfg in runs:  # every folder, the baseline's too, before the first is touched
        check_run_dir(run_cfg.run_dir, resume=resume, overwrite=args.overwrite)
    out = check_plot_path(args.plot, "--plot") if args.plot else cfg.run_dir / "plot.png"
    rows = []
    with process_group_scope():  # under torchrun the trainer joins one; left at the end
        for run_cfg in runs:
            result = train(run_cfg, resume=args.resume, overwrite=args.overwrite,
                           weights_only=args.resume_weights_only)
            rows += result.rows
    if not is_main_process():
        return 0  # rank 0 prints the table and writes the plot
    print()
    print(format_table(rows))
    if len(runs) == 2 and not args.baseline_only:
        print()
        print(format_comparison(compare_runs(runs[0].run_dir, runs[1].run_dir)))
    if not args.no_plot:
        plot_runs([r.run_dir for r in runs], out)
        print(f"\nplot: {out}")
    return 0


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def cmd_eval(args) -> int:
    from .eval_tasks import parse_depths, parse_lengths
    from .trainer.config import ConfigError
    from .trainer.folders import output_folder

    if args.lengths is not None:  # checked before the checkpoint is loaded
        parse_lengths(args.lengths)
    if args.depths is not None:
        parse_depths(args.depths)
    if args.out is None:
        return _eval(args)
    if args.task == ["bpb"]:
        raise ConfigError("--out: --task bpb prints its one number and writes nothing; --out is for --task "
                          "position, passkey or leak")
    with output_folder(args.out, "--out"):  # made now (checked before the work), gone again if the work fails
        return _eval(args)


def _eval(args) -> int:
    from .evals.bpb import evaluate
    from .trainer.build import autocast_dtype, load_trained, resolve_device
    from .trainer.data import ByteData

    overrides = list(args.overrides)
    if args.device:
        resolve_device(args.device, what="--device")
        overrides.append(f'training.device="{args.device}"')
    if args.windows is not None:
        overrides.append(f"data.val_windows={args.windows}")
    trained = load_trained(args.checkpoint, overrides=overrides, warn=_warn)
    model, cfg, step, ckpt, device = trained.model, trained.cfg, trained.step, trained.ckpt, trained.device
    kind = args.attention if args.attention != "auto" else trained.attention
    model.set_attention(kind)
    if args.task != ["bpb"]:
        from .eval_tasks import run_task

        for task in args.task:
            run_task(
                task, model, cfg, device, autocast_dtype(cfg, device), attention=kind,
                title=f"{ckpt}: step {step}, attention {kind}", lengths=args.lengths, depths=args.depths,
                trials=args.trials, seed=args.seed, out=args.out, positions=args.positions,
            )
        return 0
    windows = ByteData(cfg.data, cfg.training.seed).val_windows()
    result = evaluate(model, windows, cfg.micro_batch, device, autocast_dtype(cfg, device))
    print(
        f"{ckpt}: step {step}, attention {kind} (layers {model.attention_kinds()}), "
        f"{len(windows)} windows of {cfg.data.seq_len}: val bpb {result['val_bpb']:.4f}, val loss {result['val_loss']:.4f}"
    )
    return 0


def cmd_export(args) -> int:
    try:
        from .integrations.export import ExportError, export_run
    except ImportError as e:
        print(f"error: lighthouse export needs transformers ({e}); pip install -e '.[hf]'", file=sys.stderr)
        return 2
    import torch

    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        ckpt, out = export_run(args.run_dir, args.out_dir, dtype=dtype, overwrite=args.overwrite, warn=_warn)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {ckpt} to {out} (AutoModelForCausalLM / AutoTokenizer.from_pretrained)")
    return 0


def cmd_sample(args) -> int:
    from .sample import main_sample

    return main_sample(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k or None, seed=args.seed, device=args.device)


def cmd_plot(args) -> int:
    from .trainer.plot import check_plot_path, plot_runs

    out = plot_runs(args.runs, check_plot_path(args.output, "--output"))
    print(f"plot: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an argument error argparse has printed (one line)
        return e.code
    from .sample import SampleError
    from .trainer.checkpoint import CheckpointError, RunLockedError
    from .trainer.config import ConfigError
    from .trainer.data import DataError
    from .trainer.folders import RunDirError
    from .trainer.loop import Interrupted
    from .trainer.resume import ResumeError

    try:
        commands = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "export": cmd_export, "sample": cmd_sample}
        return commands[args.command](args)
    except (ConfigError, DataError, RunDirError, ResumeError, CheckpointError, RunLockedError, SampleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`lighthouse sample ... | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's own flush at exit does not fail again
        return 128 + signal.SIGPIPE
    except OSError as e:  # a file or folder that is missing, not writable, or not what was expected
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"\n{e}; continue with --resume", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
