"""The recipe experiment: does Lighthouse pre-training plus a short dense recovery pay off?

    python scripts/recipe.py --config configs/recipe-64k.toml --gpus 0,1 --deadline 540
    (run it again until it prints "all done"; every piece resumes where it stopped)

Phases, each resumable:
  1. sweep   dense runs of --sweep-steps at each --lrs; the best final validation bpb picks the
             learning rate that every arm then uses (a fair baseline first).
  2. arms    a  dense from scratch                        (all steps dense)
             b  Lighthouse for 10/16 of the steps, then dense  (window-end RoPE)
             c  as b with pre-pool RoPE
             d  Lighthouse for all steps (its stage end is evaluated with Lighthouse and densely)
             and with --extra: e  Lighthouse for 14/16, then dense;  f  as b with the dilated scorer
             (--arms b-lighthouse-window-end,... runs a subset; arm a, the baseline, always runs)
  3. evals   per arm, on its GPU right after its training: validation bpb by position bucket,
             passkey accuracy by length and depth (heat map), both with dense attention
  4. summary results.json (one entry per arm: stages, tokens, wall-clock, tok/s, final dense bpb,
             when it first reached arm a's final bpb, position buckets, passkey) and the plot

Same model, seed, data order and token budget in every arm: the arms differ only in their
[[stages]] and the stated setting. Runs go one per GPU (CUDA_VISIBLE_DEVICES) in parallel, or
one after another on one GPU (or the CPU). A run still going at the deadline gets SIGTERM,
which makes the trainer write a checkpoint and stop; the next invocation resumes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lighthouse.trainer.checkpoint import folder_step, latest_good_checkpoint  # noqa: E402
from lighthouse.trainer.config import load_config  # noqa: E402
from lighthouse.trainer.metrics import read_metrics, stage_rows  # noqa: E402
from lighthouse.trainer.plot import plot_runs  # noqa: E402


def arm_overrides(total: int, share_lighthouse: int) -> list[str]:
    """Stages for Lighthouse over share_lighthouse/16 of `total` steps, then dense (no dense stage at 16/16)."""
    lh = total * share_lighthouse // 16
    if lh in (0, total):
        kind = "dense" if lh == 0 else "lighthouse"
        return [f'stages=[{{attention = "{kind}", steps = {total}}}]']
    return [f'stages=[{{attention = "lighthouse", steps = {lh}}}, {{attention = "dense", steps = {total - lh}}}]']


def plan(cfg, lr: float | None, extra: bool) -> dict[str, list[str]]:
    """Run name -> overrides, for every arm."""
    total = cfg.total_steps
    common = [] if lr is None else [f"optim.lr={lr}"]
    arms = {
        "a-dense": arm_overrides(total, 0),
        "b-lighthouse-window-end": arm_overrides(total, 10),
        "c-lighthouse-pre-pool": arm_overrides(total, 10) + ['model.rope="pre-pool"'],
        "d-lighthouse-only": arm_overrides(total, 16),
    }
    if extra:
        arms["e-recovery-2-of-16"] = arm_overrides(total, 14)
        arms["f-dilated"] = arm_overrides(total, 10) + ['lighthouse.scorer="dilated"']
    return {name: common + o for name, o in arms.items()}


class Runner:
    """Runs chains of `lighthouse` commands, one chain per slot at a time, until a deadline.

    A slot is a device ("0", "1", ..., "cpu"); a device named twice runs two chains at once.
    A job is (name, [argv, ...]): its commands run one after another in the same slot (an
    arm's training, then its evaluations), so a slot that finishes early starts the next job.
    """

    def __init__(self, gpus: list[str], deadline: float, log_dir: Path):
        self.gpus, self.deadline, self.log_dir = gpus, deadline, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def _start(self, gpu: str, name: str, argv: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if gpu != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log = open(self.log_dir / f"{name}.log", "a")
        print(f"[{time.strftime('%H:%M:%S')}] {name} on {gpu}: {' '.join(argv)}", flush=True)
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log

    def run_all(self, jobs: list[tuple[str, list[list[str]]]]) -> bool:
        """Run the jobs; True when every command finished, False when one failed or the deadline stopped it."""
        pending = [(name, list(chain)) for name, chain in jobs if chain]
        running: dict[int, tuple] = {}  # slot -> (name, remaining commands, Popen, log)
        finished = True
        while pending or running:
            for slot, gpu in enumerate(self.gpus):
                if slot not in running and pending:
                    name, chain = pending.pop(0)
                    running[slot] = (name, chain[1:], *self._start(gpu, name, chain[0]))
            time.sleep(0.25)  # a slot that frees starts its next command within a quarter second
            for slot, (name, rest, proc, log) in list(running.items()):
                gpu = self.gpus[slot]
                if proc.poll() is None and time.time() > self.deadline:
                    proc.terminate()  # SIGTERM: the trainer checkpoints and exits
                    try:
                        proc.wait(120)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                if proc.poll() is None:
                    continue
                log.close()
                ok = proc.returncode == 0
                if ok and rest and time.time() < self.deadline:
                    running[slot] = (name, rest[1:], *self._start(gpu, name, rest[0]))
                    continue
                del running[slot]
                finished &= ok and not rest
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done' if ok and not rest else f'stopped (exit {proc.returncode})'}",
                      flush=True)
            if time.time() > self.deadline and pending:
                return False
        return finished


def train_argv(config: str, name: str, out_dir: Path, overrides: list[str]) -> list[str]:
    sets = [f"name={name}", f'out_dir="{out_dir}"', "training.progress=false", *overrides]
    # --no-plot: the script plots its runs together at the end (a plot per run would cost ~2 s a run)
    return [sys.executable, "-m", "lighthouse", "train", "--config", config, "--resume", "--no-plot",
            *[x for s in sets for x in ("--set", s)]]


def finished(run_dir: Path, total_steps: int) -> bool:
    """Whether the run's newest good checkpoint is its last step (then its training is not launched again)."""
    ckpt = latest_good_checkpoint(run_dir, warn=lambda msg: None) if run_dir.is_dir() else None
    return ckpt is not None and folder_step(ckpt) == total_steps


def train_chain(config: str, name: str, out_dir: Path, overrides: list[str], total_steps: int) -> list[list[str]]:
    """The training command of a run, or none when it has finished (said once, here)."""
    if finished(out_dir / name, total_steps):
        print(f"{name}: finished, not launched again", flush=True)
        return []
    return [train_argv(config, name, out_dir, overrides)]


def final_bpb(run_dir: Path) -> float | None:
    ends = [r for r in read_metrics(run_dir) if r.get("kind") == "stage_end"]
    return ends[-1]["val_bpb_dense"] if ends else None


def dense_curve(run_dir: Path) -> list[tuple[float, int, float]]:
    """(training seconds, step, validation bpb with dense attention) of every dense-evaluated point of a run."""
    points = {}
    for r in read_metrics(run_dir):
        if r.get("kind") == "eval" and "val_bpb_dense" in r:  # every evaluation has a dense score
            points[r["step"]] = (r["time_s"], r["step"], r["val_bpb_dense"])
        elif r.get("kind") == "eval" and r.get("attention") == "dense":  # runs from before that
            points[r["step"]] = (r["time_s"], r["step"], r["val_bpb"])
        elif r.get("kind") == "stage_end" and r.get("attention") != "dense":
            points[r["step"]] = (r["time_s"], r["step"], r["val_bpb_dense"])
    return sorted(points.values())


def first_reaching(run_dir: Path, target: float) -> dict | None:
    """The first dense-evaluated point at or below `target` bpb: an upper bound on the time to reach it
    (evaluations are `training.eval_every` steps apart)."""
    for time_s, step, bpb in dense_curve(run_dir):
        if bpb <= target:
            return {"time_s": time_s, "step": step, "val_bpb_dense": bpb}
    return None


def eval_commands(out: Path, name: str, lengths: str, windows: int, trials: int = 5) -> list[list[str]]:
    """The evaluations of an arm's final checkpoint not done yet (dense attention: the model users ship), in one
    command (one model load)."""
    todo = [task for task in ("position", "passkey") if not (out / "evals" / name / f"{task}.json").is_file()]
    if not todo:
        return []
    return [[sys.executable, "-m", "lighthouse", "eval", "--checkpoint", str(out / name), "--task", ",".join(todo),
             "--attention", "dense", "--out", str(out / "evals" / name), "--windows", str(windows),
             "--lengths", lengths, "--trials", str(trials)]]


def summarize(out: Path, config: str, state: dict, arms: dict) -> dict:
    """results.json: one entry per arm, and how each compares with the dense baseline (the first arm)."""
    summary = {"config": config, "lr": state.get("lr"), "sweep": state.get("sweep"), "arms": {}}
    baseline = next(iter(arms))
    target = final_bpb(out / baseline)
    baseline_time = sum(r["time_s"] for r in stage_rows(out / baseline))
    for name in arms:
        rows = stage_rows(out / name)
        position = json.loads((out / "evals" / name / "position.json").read_text())
        passkey = json.loads((out / "evals" / name / "passkey.json").read_text())
        cells = passkey["results"]
        time_s = sum(r["time_s"] for r in rows)
        reached = first_reaching(out / name, target) if target is not None else None
        summary["arms"][name] = {
            "stages": [{**{k: r[k] for k in ("attention", "steps", "tokens", "time_s", "val_bpb", "val_bpb_dense")},
                        "tok_per_s_median": statistics.median(r["step_rates"][1:] or r["step_rates"])}
                       for r in rows],
            "tokens": sum(r["tokens"] for r in rows), "time_s": time_s,
            "time_vs_baseline": time_s / baseline_time if baseline_time else None,
            "final_val_bpb_dense": rows[-1]["val_bpb_dense"] if rows else None,
            "final_val_bpb_own_attention": rows[-1]["val_bpb"] if rows else None,
            "reached_baseline_final_bpb": reached,
            "time_to_baseline_final_vs_baseline_time": reached["time_s"] / baseline_time if reached else None,
            "position": position["buckets"],
            "passkey": cells,
            "passkey_accuracy": sum(c["accuracy"] for c in cells) / max(1, len(cells)),
        }
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/recipe-64k.toml")
    ap.add_argument("--out", default="runs/recipe", help="folder of all runs, logs and results")
    ap.add_argument("--gpus", default="0", help="comma-separated CUDA device ids, or 'cpu'")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds this invocation may run")
    ap.add_argument("--lrs", default="5e-4,1e-3,2e-3,4e-3", help="learning rates of the dense sweep ('' to skip)")
    ap.add_argument("--sweep-steps", type=int, default=200)
    ap.add_argument("--extra", action="store_true", help="also the 14/16 recovery arm and the dilated scorer")
    ap.add_argument("--arms", default="", help="comma-separated arm names to run (default: all; the first, a-dense, "
                    "is the baseline and is always run)")
    ap.add_argument("--passkey-lengths", default=None, help="default: 1/4, 1/2 and all of data.seq_len")
    ap.add_argument("--position-windows", type=int, default=32, help="validation windows of the position eval")
    ap.add_argument("--passkey-trials", type=int, default=5, help="passkey prompts per length and depth")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applies to every run")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    cfg = load_config(args.config, args.overrides)
    runner = Runner(args.gpus.split(","), time.time() + args.deadline, out / "logs")
    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}

    # 1. learning-rate sweep of the dense baseline
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    if lrs and "lr" not in state:
        sweep = {f"sweep-lr{lr:g}": [*args.overrides, f"optim.lr={lr}", *arm_overrides(args.sweep_steps, 0),
                                     f"optim.warmup_steps={min(cfg.optim.warmup_steps, args.sweep_steps // 4)}"]
                 for lr in lrs}
        if not runner.run_all([(n, [train_argv(args.config, n, out, o)]) for n, o in sweep.items()]):
            print("not finished: run again to continue")
            return 3
        scores = {float(n.removeprefix("sweep-lr")): final_bpb(out / n) for n in sweep}
        state["sweep"] = {str(k): v for k, v in scores.items()}
        state["lr"] = min(scores, key=lambda lr: scores[lr])
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=1))
        print(f"sweep (final val bpb by lr): {scores}; every arm uses lr={state['lr']}")

    # 2 and 3. the arms, each followed on its device by its evaluations
    n = cfg.data.seq_len
    lengths = args.passkey_lengths or f"{n // 4},{n // 2},{n}"
    arms = plan(cfg, state.get("lr"), args.extra)
    if args.arms:
        wanted = {a for a in args.arms.split(",") if a}
        if unknown := wanted - set(arms):
            print(f"error: unknown arms {sorted(unknown)}; the arms are {list(arms)}", file=sys.stderr)
            return 2
        arms = {name: o for i, (name, o) in enumerate(arms.items()) if i == 0 or name in wanted}
    jobs = [(name, [*train_chain(args.config, name, out, [*args.overrides, *o], cfg.total_steps),
                    *eval_commands(out, name, lengths, args.position_windows, args.passkey_trials)])
            for name, o in arms.items()]
    if not runner.run_all(jobs):
        print("not finished: run again to continue")
        return 3

    # 4. summary
    summary = summarize(out, args.config, state, arms)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:  # in this process (a `lighthouse plot` process would import torch again); a failed plot loses no result
        plot_runs([out / n for n in arms], out / "recipe.png")
    except Exception as e:  # noqa: BLE001
        print(f"warning: the plot failed ({e}); `lighthouse plot` draws it from the run folders", file=sys.stderr)
    for name, arm in summary["arms"].items():
        reach = arm["time_to_baseline_final_vs_baseline_time"]
        print(f"{name:<26} {arm['tokens']:>12,} tokens  {arm['time_s']:8.1f} s ({arm['time_vs_baseline']:.2f}x)  "
              f"final dense bpb {arm['final_val_bpb_dense']:.4f}  reaches the baseline's final bpb at "
              f"{'never' if reach is None else f'{reach:.2f}x'} of its time  passkey {arm['passkey_accuracy']:.2f}")
    print(f"all done: {out / 'results.json'}, {out / 'recipe.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
