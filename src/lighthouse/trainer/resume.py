"""What `--resume` continues from, and which changed settings it accepts.

- `find_resume_point`: the newest checkpoint that verifies (damaged newer ones are reported and
  skipped); with `weights_only` (`--resume-weights-only`), the newest whose weights verify,
  whatever its state.pt holds. When nothing verifies, a one-line `ResumeError` that names the
  damage and the ways out: a run is never restarted in place of the one asked for.
- `check_resume_config`: the settings that decide the run's trajectory, against the
  checkpoint's. A changed `[model]` is refused (the weights fit no other shape, and the same
  shapes with another rope_theta or norm_eps are another function); any other change is a
  warning naming each key. Where and how fast the run goes (device, threads, parallel, compile,
  activation checkpointing, offloading, loss chunks, the log/eval/checkpoint cadence) is not
  compared: like a resume on another number of processes, it may change the last bits and
  nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import (
    CheckpointError,
    checkpoint_folders,
    latest_good_checkpoint,
    verify_checkpoint,
    verify_weights,
)
from .checkpoint.files import checkpoint_root
from .config import Config, ConfigError, config_diff, to_dict
from .metrics import read_metrics

# Sections and keys compared on resume; "model" is refused, the others warned about.
TRAJECTORY_KEYS = ("model", "lighthouse", "data", "optim", "stages", "training.seed", "training.batch_size",
                   "training.micro_batch_size", "training.dtype", "training.deterministic")
REFUSED_KEYS = ("model",)


class ResumeError(RuntimeError):
    """Nothing that `--resume` asked for can be continued; the message names the damage and the ways out."""


@dataclass
class ResumePoint:
    path: Path  # the checkpoint folder
    weights_only: bool = False  # only model.safetensors verifies (or only it was asked for)
    step: int | None = None  # known up front for weights only (meta.json); else state.pt's


def _short(run_dir: Path, error: Exception) -> str:
    """A checkpoint error with the path from the checkpoints folder on (one line stays short)."""
    return str(error).replace(f"{checkpoint_root(run_dir)}/", "")


def _listing(items: list[str], limit: int = 2) -> str:
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _last_step(run_dir: Path) -> int:
    return max((r.get("step", 0) for r in read_metrics(run_dir)), default=0)


def find_resume_point(run_dir: str | Path, *, weights_only: bool = False, warn=print) -> ResumePoint | None:
    """Where `--resume` (or `--resume-weights-only`) continues run_dir; None when there is no run to continue
    (no checkpoint and no metrics: a new run starts). Raises ResumeError when nothing verifies."""
    run_dir = Path(run_dir)
    folders = checkpoint_folders(run_dir)
    flag = "--resume-weights-only" if weights_only else "--resume"
    if not folders:
        if read_metrics(run_dir):
            raise ResumeError(
                f"{flag}: {run_dir} has metrics up to step {_last_step(run_dir)} but no checkpoint to continue from; "
                "pass --overwrite to start it over"
            )
        return None
    if weights_only:
        damage = []
        for folder in folders:
            try:
                return ResumePoint(folder, weights_only=True, step=verify_weights(folder))
            except CheckpointError as e:
                damage.append(_short(run_dir, e))
        raise ResumeError(f"{flag}: no checkpoint of {run_dir} has weights that verify ({_listing(damage)}); "
                          "pass --overwrite to start it over")
    skipped: list[str] = []
    found = latest_good_checkpoint(run_dir, skipped.append)
    if found is not None:
        for message in skipped:
            warn(message)
        return ResumePoint(found)
    damage = []
    for folder in folders:
        try:
            verify_checkpoint(folder)
        except CheckpointError as e:
            damage.append(_short(run_dir, e))
    ways = "pass --overwrite to start it over (no checkpoint's weights verify either)"
    for folder in folders:
        try:
            step = verify_weights(folder)
        except CheckpointError:
            continue
        ways = (f"its weights verify in {folder.name}: pass --resume-weights-only to continue from step {step} "
                "with a fresh optimizer, or --overwrite to start it over")
        break
    raise ResumeError(f"{flag}: no checkpoint of {run_dir} verifies ({_listing(damage)}); {ways}")


def _value(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume_config(saved: dict, cfg: Config) -> str | None:
    """Compare the checkpoint's config with `cfg` over `TRAJECTORY_KEYS`: ConfigError for a changed model,
    else a warning naming every changed key (None when nothing changed)."""
    now = to_dict(cfg)
    changes = [(key, old, new) for key, old, new in config_diff(saved, now)
               if any(key == k or key.startswith(k + ".") for k in TRAJECTORY_KEYS)]
    refused = [c for c in changes if any(c[0] == k or c[0].startswith(k + ".") for k in REFUSED_KEYS)]
    if refused:
        diffs = ", ".join(f"{key} ({_value(old)} in the checkpoint, {_value(new)} now)" for key, old, new in refused)
        raise ConfigError(f"--resume: the checkpoint's model differs: {diffs}; a run keeps its model: resume with the "
                          "checkpoint's [model] or start another run (--set name=...)")
    if not changes:
        return None
    diffs = ", ".join(f"{key} ({_value(old)} -> {_value(new)})" for key, old, new in changes)
    return f"resuming with settings the checkpoint was not trained with: {diffs}; the run will not repeat exactly"
