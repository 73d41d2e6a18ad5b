"""The training loop: stages of Lighthouse and dense attention in one run.

    for step in range(start, total_steps):
        switch the attention kind when a new stage begins (no parameter changes)
        accumulate gradients over micro-batches to the global batch
        clip, set the learning rate from the schedule over *all* stages, AdamW step
        log; evaluate validation bits-per-byte; checkpoint

Stage 2 simply continues: same weights, same optimizer state, same schedule, with dense
attention. A checkpoint holds everything needed to continue bit for bit (`--resume`).

Legend: B micro-batch, N seq_len, V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model import BYTE_VOCAB, Transformer
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError, from_dict, to_dict, to_toml
from .data import ByteData
from .metrics import MetricsWriter, stage_rows, truncate_metrics


class RunExistsError(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written to {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


# ---- small helpers ---------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'training.device' is {name!r} but CUDA is not available")
    return device


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA by default; None means plain float32."""
    if cfg.training.dtype == "bfloat16" or (cfg.training.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def lr_at(cfg: Config, step: int) -> float:
    """Learning rate of step `step` (0-based): linear warm-up, then the schedule to the last step."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.total_steps - 1 - o.warmup_steps))
    floor = o.lr * o.min_lr_ratio
    if o.schedule == "linear":
        return o.lr - (o.lr - floor) * progress
    return floor + (o.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(cfg: Config, device: torch.device) -> Transformer:
    model = Transformer(cfg.model, cfg.lighthouse)
    return model.to(device)


def check_lighthouse(cfg: Config) -> None:
    """Let the attention core reject bad Lighthouse settings (e.g. an unknown scorer) up front."""
    if any(s.attention == "lighthouse" for s in cfg.stages):
        from .. import LighthouseConfig

        lh = cfg.lighthouse
        try:
            LighthouseConfig(levels=lh.levels, pooling=lh.pooling, topk=lh.topk, scorer=lh.scorer)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"[lighthouse]: {e}") from None


def build_optimizer(cfg: Config, model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings, not on norm weights. Fused on CUDA."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **extra)


@torch.no_grad()
def evaluate(model: Transformer, windows_BN1: torch.Tensor, micro_batch: int, device, amp_dtype=None) -> dict:
    """Validation loss (nats/token, all targets) and bits-per-byte (byte targets only)."""
    was_training = model.training
    model.eval()
    nats_bytes, n_bytes, nats_all, n_all = 0.0, 0, 0.0, 0
    for i in range(0, len(windows_BN1), micro_batch):
        w = windows_BN1[i : i + micro_batch].to(device)
        x_BN, y_BN = w[:, :-1], w[:, 1:]
        with _autocast(device, amp_dtype):
            logits_BNV = model(x_BN)
        nats_BN = F.cross_entropy(logits_BNV.float().flatten(0, 1), y_BN.flatten(), reduction="none").view_as(y_BN)
        is_byte = y_BN < BYTE_VOCAB
        nats_bytes += float(nats_BN[is_byte].double().sum())
        n_bytes += int(is_byte.sum())
        nats_all += float(nats_BN.double().sum())
        n_all += y_BN.numel()
    model.train(was_training)
    return {"val_bpb": nats_bytes / max(1, n_bytes) / math.log(2), "val_loss": nats_all / max(1, n_all)}


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class RunResult:
    name: str
    run_dir: Path
    rows: list[dict]  # per-stage summary rows (see metrics.stage_rows)
    resumed_from: int = 0


# ---- the trainer ----------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, overwrite: bool = False, echo=print):
        self.cfg, self.resume, self.overwrite, self.echo = cfg, resume, overwrite, echo
        self._stop_signal: int | None = None

    # -- setup --
    def _prepare_run_dir(self) -> Path | None:
        run_dir = self.cfg.run_dir
        ckpt = latest_checkpoint(run_dir)
        if self.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
            ckpt = None
        elif not self.resume and (ckpt is not None or (run_dir / "metrics.jsonl").exists()):
            where = f"a checkpoint at {ckpt}" if ckpt else "metrics"
            raise RunExistsError(
                f"{run_dir} already has {where}; pass --resume to continue it or --overwrite to start over "
                "(or choose another --set name=...)"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None and self.resume:
            self.echo(f"[{self.cfg.name}] no checkpoint in {run_dir}; starting from scratch")
        if ckpt is None and (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
        return ckpt

    def _setup(self):
        cfg = self.cfg
        t = cfg.training
        check_lighthouse(cfg)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.amp_dtype = autocast_dtype(cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        ckpt = self._prepare_run_dir()
        (cfg.run_dir / "config.toml").write_text(to_toml(cfg), encoding="utf-8")

        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        self.model = build_model(cfg, self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.device)
        self.data = ByteData(cfg.data, t.seed)
        self.step, self.time_s = 0, 0.0
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.device)
            self._check_resume_config(state["config"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.data.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            self.step = int(state["step"])
            self.time_s = float(state["progress"]["time_s"])
            truncate_metrics(cfg.run_dir, self.step)
            self.echo(f"[{cfg.name}] resumed from {ckpt} (step {self.step}/{cfg.total_steps})")
        self.resumed_from = self.step
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.val_windows = self.data.val_windows()
        self.metrics = MetricsWriter(cfg.run_dir)

    def _check_resume_config(self, saved: dict) -> None:
        old = from_dict(saved)
        if to_dict(old.model) != to_dict(self.cfg.model):
            raise ConfigError(f"--resume: [model] differs from the checkpoint's ({to_dict(old.model)})")
        changed = [k for k in ("lighthouse", "data", "optim", "stages") if to_dict(old)[k] != to_dict(self.cfg)[k]]
        if changed:
            self.echo(f"[{self.cfg.name}] warning: resuming with changed {', '.join(changed)}; the run will not repeat exactly")

    # -- pieces of a step --
    def _state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": self.cfg.optim.schedule, "step": self.step, "lr": lr_at(self.cfg, max(0, self.step - 1))},
            "data": self.data.state_dict(),
            "rng": rng_state(),
            "progress": {"time_s": self.time_s, "tokens": self.step * self.cfg.tokens_per_step},
            "config": to_dict(self.cfg),
        }

    def save(self) -> Path:
        return save_checkpoint(self.cfg.run_dir, self.step, self.model, self._state(), self.cfg.training.keep_checkpoints)

    def train_step(self) -> tuple[float, float]:
        cfg = self.cfg
        micro = cfg.micro_batch
        accum = cfg.training.batch_size // micro
        lr = lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(accum):
            w_BN1 = self.data.train.next_batch(micro).to(self.device, non_blocking=True)
            with _autocast(self.device, self.amp_dtype):
                loss = self.forward(w_BN1[:, :-1], w_BN1[:, 1:])
            (loss / accum).backward()
            loss_sum += loss.detach()
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")  # inf: measure only
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss_sum / accum), float(grad_norm)

    def _eval(self, kind: str | None = None) -> dict:
        """Validation with the current attention kinds, or all layers set to `kind`."""
        saved = self.model.attention_kinds()
        if kind is not None:
            self.model.set_attention(kind)
        try:
            return evaluate(self.forward, self.val_windows, self.cfg.micro_batch, self.device, self.amp_dtype)
        finally:
            for block, k in zip(self.model.layers, saved):
                block.attention.kind = k

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
        cfg = self.cfg
        self._setup()
        total = cfg.total_steps
        show = cfg.training.progress if progress is None else progress
        if self.step >= total:
            self.echo(f"[{cfg.name}] already finished ({self.step}/{total} steps)")
            self.metrics.close()
            return RunResult(cfg.name, cfg.run_dir, stage_rows(cfg.run_dir), self.resumed_from)

        from tqdm.auto import tqdm

        n_params = self.model.num_params()
        self.echo(
            f"[{cfg.name}] {n_params / 1e6:.2f}M parameters, {total} steps of {cfg.tokens_per_step:,} tokens "
            f"({' -> '.join(f'{s.attention} x{s.steps}' for s in cfg.stages)}) on {self.device}, "
            f"{len(self.data.files)} files"
        )
        bar = tqdm(total=total, initial=self.step, desc=cfg.name, unit="step", disable=not show, dynamic_ncols=True)
        write = bar.write if show else self.echo
        stage_idx = None
        tok_s_ema = None
        try:
            with self._signals():
                while self.step < total:
                    if cfg.stage_at(self.step) != stage_idx:
                        stage_idx = cfg.stage_at(self.step)
                        kind = cfg.stages[stage_idx].attention
                        self.model.set_attention(kind)
                        write(
                            f"[{cfg.name}] stage {stage_idx + 1}/{len(cfg.stages)}: {kind} attention "
                            f"(layers {self.model.attention_kinds()}) from step {self.step}"
                        )
                    kind = cfg.stages[stage_idx].attention
                    t0 = time.perf_counter()
                    loss, grad_norm = self.train_step()
                    dt = time.perf_counter() - t0
                    self.time_s += dt
                    tok_s = cfg.tokens_per_step / dt
                    tok_s_ema = tok_s if tok_s_ema is None else 0.9 * tok_s_ema + 0.1 * tok_s
                    tokens = self.step * cfg.tokens_per_step
                    common = {"step": self.step, "stage": stage_idx, "attention": kind, "tokens": tokens}
                    if self.step % cfg.training.log_every == 0 or self.step == total:
                        self.metrics.write(
                            {"kind": "train", **common, "loss": loss, "lr": lr_at(cfg, self.step - 1),
                             "grad_norm": grad_norm, "time_s": self.time_s, "tok_per_s": tok_s}
                        )
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s_ema:,.0f}", stage=f"{stage_idx + 1}:{kind}")
                    bar.update(1)
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"[{cfg.name}] loss is {loss} at step {self.step}; lower optim.lr?")

                    stage_done = self.step == cfg.stage_end(stage_idx)
                    every = cfg.training.eval_every
                    if stage_done or (every and self.step % every == 0):
                        ev = self._eval()
                        self.metrics.write({"kind": "eval", **common, **ev, "time_s": self.time_s})
                        write(f"[{cfg.name}] step {self.step}: val bpb {ev['val_bpb']:.4f} ({kind})")
                        if stage_done:
                            dense = ev if kind == "dense" else self._eval("dense")
                            self.metrics.write(
                                {"kind": "stage_end", **common, "time_s": self.time_s,
                                 "val_bpb": ev["val_bpb"], "val_bpb_dense": dense["val_bpb"]}
                            )
                            if kind != "dense":
                                write(f"[{cfg.name}] step {self.step}: val bpb {dense['val_bpb']:.4f} (same weights, dense)")
                    every = cfg.training.checkpoint_every
                    if stage_done or (every and self.step % every == 0) or self._stop_signal is not None:
                        path = self.save()
                        if self._stop_signal is not None:
                            raise Interrupted(self._stop_signal, path)
        finally:
            bar.close()
            self.metrics.close()
        if self.data.stats.total:
            self.echo(f"[{cfg.name}] data: {self.data.stats.summary()}")
        return RunResult(cfg.name, cfg.run_dir, stage_rows(cfg.run_dir), self.resumed_from)


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool | None = None, echo=print) -> RunResult:
    """Train `cfg` through all its stages; see `Trainer`."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, echo=echo).run(progress=progress)
