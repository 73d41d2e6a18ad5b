"""The training loop: stages of Lighthouse and dense attention in one run.

    for step in range(start, total_steps):
        enter the step's stage (switch the attention modules; no parameter changes)
        stepper.step: LR from the schedule over *all* stages, accumulate, clip, AdamW
        every log_every steps (and before evaluating or saving): read the losses back, log
        every eval_every steps and at stage ends: validation bits-per-byte
        every checkpoint_every steps, at stage ends and on SIGINT/SIGTERM: checkpoint

Stage 2 simply continues: same weights, same optimizer state, same schedule, with dense
attention. A checkpoint holds everything needed to continue bit for bit (`--resume`).

The parts, one job each: `Stepper` (stepper.py), `Evaluator` (build.py, on evals/bpb.py),
`Checkpointer` (checkpoint/), `TrainLog` (progress.py: metrics and the progress bar).

Under torchrun (WORLD_SIZE > 1) every rank runs this same loop; setup joins the process group
(`ParallelState`, lighthouse/distributed/mesh.py) and picks the multi-process parts: a model
sharded with FSDP2, a stepper that keeps the rank's rows, a sharded evaluator (parallel.py) and
sharded checkpoints (checkpoint/sharded.py), built on lighthouse/distributed/. Rank 0 owns the
run's files (lock, metrics, config.toml, the choice of checkpoint); the others follow its decisions.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed.mesh import join_parallel, launched_world_size
from .build import Evaluator, autocast_dtype, build_model, resolve_device
from .checkpoint import Checkpointer, RunLock, rng_state, saved_config, set_rng_state
from .config import Config, ConfigError, load_config, resolve_parallel, to_dict, to_toml
from .data import ByteData
from .folders import RunDirError, RunExistsError, check_run_dir, clear_run, create_run_dir, mark_run
from .metrics import read_metrics, stage_rows, truncate_metrics
from .progress import TrainLog
from .resume import ResumeError, ResumePoint, check_resume_config, find_resume_point
from .stepper import Stepper, build_optimizer, lr_at

__all__ = ["Interrupted", "ResumeError", "RunDirError", "RunExistsError", "RunResult", "Trainer", "train"]


class Interrupted(RuntimeError):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written to {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


@dataclass
class RunResult:
    name: str
    run_dir: Path
    rows: list[dict]  # per-stage summary rows (see metrics.stage_rows)
    resumed_from: int = 0


# ---- the trainer ----------------------------------------------------------------------------
class Trainer:
    """weights_only: `--resume-weights-only`, a resume from the newest checkpoint whose weights verify (the
    optimizer starts afresh); for a run whose checkpoints are damaged but for their weights."""

    def __init__(self, cfg: Config, *, resume: bool = False, overwrite: bool = False, weights_only: bool = False,
                 echo=print):
        if overwrite and (resume or weights_only):
            raise ValueError("resume and overwrite exclude each other")
        self.cfg, self.resume, self.overwrite, self.echo = cfg, resume or weights_only, overwrite, echo
        self.weights_only = weights_only
        self._stop_signal: int | None = None
        self._cores: dict[str, list] = {}  # each attention kind's modules, built once (_use_attention)

    # -- setup --
    def _warn(self, msg: str) -> None:
        self.echo(f"[{self.cfg.name}] warning: {msg}")

    def _open_run_dir(self) -> None:
        """Before anything is written: the folder must be fit for what was asked (folders.py), then exist."""
        check_run_dir(self.cfg.run_dir, resume=self.resume, overwrite=self.overwrite)
        create_run_dir(self.cfg.run_dir)

    def _prepare_run_dir(self) -> None:
        """Under the run lock: --overwrite clears the run's own files; else the folder is checked again."""
        run_dir = self.cfg.run_dir
        if self.overwrite:
            kept = clear_run(run_dir)
            if kept:
                self._warn(f"--overwrite kept {len(kept)} entries of {run_dir} that are not the run's: {', '.join(kept[:5])}")
        else:
            check_run_dir(run_dir, resume=self.resume)

    def _find_start(self) -> ResumePoint | None:
        """The checkpoint to continue (its settings compared with the config's), or None for a new run."""
        if not self.resume:
            return None
        cfg = self.cfg
        point = find_resume_point(cfg.run_dir, weights_only=self.weights_only, warn=self._warn)
        if point is None:
            self.echo(f"[{cfg.name}] nothing to resume in {cfg.run_dir}: starting the run")
            return None
        saved = saved_config(point.path) if not point.weights_only else self._last_config()
        if saved is not None:
            changed = check_resume_config(saved, cfg)
            if changed:
                self._warn(changed)
        return point

    def _last_config(self) -> dict | None:
        """The config the run last started with (config.toml), when state.pt cannot say."""
        try:
            return to_dict(load_config(self.cfg.run_dir / "config.toml"))
        except (ConfigError, OSError):
            return None

    def _setup(self) -> None:
        cfg, t, par = self.cfg, self.cfg.training, self.parallel
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = par.device
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            # Deterministic mode also fills every new tensor with NaN, against ops that would read
            # memory they never wrote; none of ours do (the kernel tests poison outputs to check), and
            # on CPU the fill cost 9-20% of a demo step.
            torch.utils.deterministic.fill_uninitialized_memory = False
        self.amp_dtype = autocast_dtype(cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.checkpointer = Checkpointer(cfg.run_dir, t.keep_checkpoints, par, warn=self._warn)
        # The run's files are rank 0's: it acts, the other ranks get its answer (or its error).
        par.on_main(self._prepare_run_dir)
        start = par.on_main(self._find_start)  # before config.toml is written: a refused resume changes nothing
        par.on_main(self._write_run_files)

        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        if par.distributed:
            from .parallel import build_sharded_model

            self.model = build_sharded_model(cfg, par, self.amp_dtype)
        else:
            self.model = build_model(cfg, self.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        self.optimizer = build_optimizer(cfg, self.model, self.device)
        self.data = ByteData(cfg.data, t.seed)
        self.step, self.time_s = 0, 0.0
        if start is not None and start.weights_only:
            self.checkpointer.load_weights_only(start.path, self.model, self.device)
            self.step = start.step
            self.data.train.skip(self.step * t.batch_size)  # the windows those steps trained on
            par.on_main(truncate_metrics, cfg.run_dir, self.step)
            self.time_s = par.on_main(_time_at, cfg.run_dir, self.step)
            self.echo(f"[{cfg.name}] resumed from the weights of {start.path} (step {self.step}/{cfg.total_steps}) "
                      "with a fresh optimizer: the run will not repeat exactly")
        elif start is not None:
            state = self.checkpointer.load(start.path, self.model, self.optimizer, self.device)
            self.data.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            self.step = int(state["step"])
            self.time_s = float(state["progress"]["time_s"])
            par.on_main(truncate_metrics, cfg.run_dir, self.step)
            self.echo(f"[{cfg.name}] resumed from {start.path} (step {self.step}/{cfg.total_steps})")
        self.resumed_from = self.step
        forward = torch.compile(self.model) if t.compile else self.model
        if par.distributed:
            from .parallel import DistributedEvaluator, DistributedStepper

            self.stepper = DistributedStepper(cfg, self.model, forward, self.optimizer, self.data.train, par,
                                              self.amp_dtype)
            self.evaluator = DistributedEvaluator(cfg, self.model, forward, self.data.val_windows(), par, self.amp_dtype)
        else:
            self.stepper = Stepper(cfg, self.model, forward, self.optimizer, self.data.train, self.device,
                                   self.amp_dtype)
            self.evaluator = Evaluator(self.model, forward, self.data.val_windows(), cfg.micro_batch, self.device,
                                       self.amp_dtype)

    def _write_run_files(self) -> None:
        mark_run(self.cfg.run_dir)
        (self.cfg.run_dir / "config.toml").write_text(to_toml(self.cfg), encoding="utf-8")

    # -- pieces of the loop --
    def _state(self) -> dict:
        return {
            "step": self.step,
            "scheduler": {"kind": self.cfg.optim.schedule, "step": self.step, "lr": lr_at(self.cfg, max(0, self.step - 1))},
            "data": self.data.state_dict(),
            "rng": rng_state(),
            "progress": {"time_s": self.time_s, "tokens": self.step * self.cfg.tokens_per_step},
            "config": to_dict(self.cfg),
        }

    def save(self) -> Path:
        return self.checkpointer.save(self.step, self.model, self.optimizer, self._state())

    def _use_attention(self, kind: str) -> None:
        """Put `kind`'s attention modules in place. Each kind's modules are built once and kept, so a
        stage that interleaves dense steps swaps the same objects (a compiled model is not recompiled)."""
        cores = self._cores
        if kind not in cores:
            self.model.set_attention(kind)
            cores[kind] = [block.attention.core for block in self.model.layers]
        for block, core in zip(self.model.layers, cores[kind]):
            block.attention.core = core

    def _enter_stage(self, stage: int | None) -> int:
        """The stage of the next step, with the step's attention in place (logged when a stage begins)."""
        now = self.cfg.stage_at(self.step)
        if now != stage:
            s = self.cfg.stages[now]
            mixed = f", one step in {s.dense_every} dense" if s.dense_every else ""
            rewarm = f", learning rate re-warmed over {s.warmup_steps} steps" if s.warmup_steps else ""
            self._use_attention(s.attention)  # the stage's own layers, for the log line
            self.log.write(f"[{self.cfg.name}] stage {now + 1}/{len(self.cfg.stages)}: {s.attention} attention "
                           f"(layers {self.model.attention_kinds()}{mixed}{rewarm}) from step {self.step}")
        self._use_attention(self.cfg.attention_at(self.step))
        return now

    def _record(self, stage: int) -> dict:
        return {"step": self.step, "stage": stage, "attention": self.cfg.stages[stage].attention,
                "tokens": self.step * self.cfg.tokens_per_step}

    def _evaluate(self, stage: int, stage_done: bool) -> None:
        """Validation bpb with dense attention (what compares models), and in a Lighthouse stage also
        with the stage's attention and, on cadence, the leak meter: diagnostics of the selection."""
        kind = self.cfg.stages[stage].attention
        self._use_attention(kind)  # the last step may have been one of the stage's dense steps
        ev = self.evaluator()
        dense = ev if kind == "dense" else self.evaluator("dense")
        self.log.record({"kind": "eval", **self._record(stage), **ev, "val_bpb_dense": dense["val_bpb"],
                         "time_s": self.time_s})
        if kind == "dense":
            self.log.write(f"[{self.cfg.name}] step {self.step}: val bpb {ev['val_bpb']:.4f} (dense)")
        else:
            self.log.write(f"[{self.cfg.name}] step {self.step}: val bpb {dense['val_bpb']:.4f} (dense; "
                           f"{ev['val_bpb']:.4f} with {kind} attention, a diagnostic)")
        self._n_evals = getattr(self, "_n_evals", 0) + 1
        leak_every = self.cfg.training.leak_every
        if (kind == "lighthouse" and leak_every > 0 and not self.parallel.distributed
                and (stage_done or self._n_evals % leak_every == 0)):
            leak = self.evaluator.leak(self.cfg.training.leak_positions)
            self.log.record({"kind": "leak", **self._record(stage), "time_s": self.time_s, "spans": leak["spans"]})
            one = leak["spans"][0]
            self.log.write(f"[{self.cfg.name}] step {self.step}: leak meter {one['mean_nats']:+.4f} ± {one['stderr']:.4f} "
                           f"nats when the predicted byte is replaced ({kind}; 0 = reads no future)")
        if stage_done:
            self.log.record({"kind": "stage_end", **self._record(stage), "time_s": self.time_s,
                             "val_bpb": ev["val_bpb"], "val_bpb_dense": dense["val_bpb"]})

    # -- signals --
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -- the loop --
    def run(self, progress: bool | None = None) -> RunResult:
        cfg, t = self.cfg, self.cfg.training
        # One process, or a rank of a torchrun launch; [parallel] is checked against the launch first.
        device = resolve_device(t.device)
        world = launched_world_size()
        dp, cp = resolve_parallel(cfg, world)
        if world > 1 and device.type not in ("cpu", "cuda"):
            raise ConfigError(f"'training.device' = {device.type!r}: multi-process training runs on cuda or cpu")
        self.parallel = join_parallel(dp, cp, device)
        if not self.parallel.is_main:
            self.echo = lambda *args, **kwargs: None  # rank 0 speaks for the run
        self.parallel.on_main(self._open_run_dir)
        with self.parallel.on_main_held(lambda: RunLock(cfg.run_dir)):  # one trainer per run
            self._setup()
            total = cfg.total_steps
            if self.step >= total:
                self.echo(f"[{cfg.name}] already finished ({self.step}/{total} steps)")
                return RunResult(cfg.name, cfg.run_dir, stage_rows(cfg.run_dir), self.resumed_from)
            self.echo(
                f"[{cfg.name}] {self.model.num_params() / 1e6:.2f}M parameters, {total} steps of "
                f"{cfg.tokens_per_step:,} tokens ({' -> '.join(f'{s.attention} x{s.steps}' for s in cfg.stages)}) "
                f"on {self.parallel.describe()}"
            )
            self.echo(f"[{cfg.name}] data: {self.data.summary()}; {self.data.split_description}")
            repeats = self.data.epoch_budget_warning(cfg.total_steps * cfg.tokens_per_step)
            for warning in (repeats, self.data.long_document_warning(cfg.tokens_per_step)):
                if warning:
                    self.echo(f"[{cfg.name}] warning: {warning}")
            show = t.progress if progress is None else progress
            self.log = TrainLog(cfg.name, cfg.run_dir, total, self.step, show, self.echo,
                                reduce=self.parallel.mean if self.parallel.distributed else None,
                                main=self.parallel.is_main,
                                gather=self.parallel.all_gather_object if self.parallel.distributed else None)
            try:
                with self._signals():
                    self._loop(total)
            finally:
                self.log.close()
        if self.data.stats.total:
            self.echo(f"[{cfg.name}] data: {self.data.stats.summary()}")
        return RunResult(cfg.name, cfg.run_dir, stage_rows(cfg.run_dir), self.resumed_from)

    def _loop(self, total: int) -> None:
        cfg, t = self.cfg, self.cfg.training
        every = lambda n: n > 0 and self.step % n == 0  # noqa: E731
        stage = None
        while self.step < total:
            stage = self._enter_stage(stage)
            loss, grad_norm = self.stepper.step(self.step)  # device tensors: no sync here
            self.step += 1
            self.log.add_step(loss, grad_norm)

            stage_done = self.step == cfg.stage_end(stage)
            stop_signal = self.parallel.agree_max(self._stop_signal or 0)  # all ranks stop after the same step
            stopping = stop_signal > 0
            due_eval = stage_done or every(t.eval_every)
            due_save = stage_done or every(t.checkpoint_every) or stopping
            if stage_done or every(t.log_every) or due_eval or due_save:
                record = {**self._record(stage), "lr": lr_at(cfg, self.step - 1)}
                self.time_s = self.log.flush(record, self.time_s, cfg.tokens_per_step)
            if due_eval:
                self._evaluate(stage, stage_done)
            if due_save:
                path = self.save()
                if stopping:
                    raise Interrupted(stop_signal, path)
            if due_eval or due_save:
                self.log.restart_clock()  # evaluation and checkpoints are not training time


def _time_at(run_dir: Path, step: int) -> float:
    """Training seconds the run had spent by `step`, from its metrics (what state.pt would have said)."""
    return max((r["time_s"] for r in read_metrics(run_dir) if r.get("step", 0) <= step and "time_s" in r), default=0.0)


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, weights_only: bool = False,
          progress: bool | None = None, echo=print) -> RunResult:
    """Train `cfg` through all its stages; see `Trainer`."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, weights_only=weights_only, echo=echo).run(progress=progress)
