"""Checkpoints: weights as safetensors, everything else (optimizer, LR schedule, data position,
RNG states, counters) in `state.pt`, written atomically and verified on load.

Layout of `runs/<name>/checkpoints/`:

    step-00000100/model.safetensors   weights
    step-00000100/state.pt            optimizer, scheduler, data, rng, progress, config
    step-00000100/meta.json           step, and the size and SHA-256 of every file
    latest                            the name of the newest complete checkpoint

A checkpoint of a multi-process run (sharded.py) has the same three files (`model.safetensors`
consolidated, `state.pt` without the optimizer) plus `dcp/`, the model and optimizer sharded
by torch.distributed.checkpoint; meta.json vouches for those too.

The promises, and how they are kept:
- A kill at any moment leaves the last good checkpoint loadable: a checkpoint is written
  into a hidden temporary folder, flushed, and renamed into place in one step (`os.replace`);
  only then does `latest` move (temp file + rename).
- A damaged checkpoint is never loaded silently: `meta.json` records a SHA-256 of each file,
  checked before anything is read. A damaged, incomplete or unreadable checkpoint raises a
  one-line `CheckpointError` naming the file; resuming falls back, with a warning, to the
  newest older checkpoint that verifies (keep more than one with `training.keep_checkpoints`),
  and when none does, the trainer stops (trainer/resume.py) instead of starting over.
  `verify_weights` checks model.safetensors alone (`--resume-weights-only`).
- Pruning removes only checkpoints older than the good one just saved (never a later one a
  resume fell back from), and renames each out of sight (`.trash-*`) before deleting it, so a
  kill mid-delete leaves no half folder that looks like a checkpoint; leftovers of killed
  saves and prunes are removed by the next save.
- One trainer per run: `RunLock` holds an exclusive lock on `<run>/.lock` for the whole run
  (released by the OS when the process dies, even by SIGKILL), and a second trainer on the
  same run stops with an error that says who holds it.

The modules:
    files.py    the files: atomic write, seal (meta.json), install, verify, find, prune, read state.pt
    local.py    one process: save, load weights
    sharded.py  a multi-process run: DCP shards plus consolidated weights; either kind into a sharded model
    lock.py     RunLock
    rng.py      the RNG states saved in state.pt
    __init__    `Checkpointer`, the trainer's one interface to all of it
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .files import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_folders,
    checkpoints_newest_first,
    folder_step,
    is_sharded,
    latest_checkpoint,
    latest_good_checkpoint,
    load_state,
    resolve_checkpoint,
    saved_config,
    verify_checkpoint,
    verify_weights,
)
from .local import load_checkpoint, load_weights, save_checkpoint
from .lock import RunLock, RunLockedError
from .rng import rng_state, set_rng_state

log = logging.getLogger("lighthouse.checkpoint")

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "Checkpointer",
    "RunLock",
    "RunLockedError",
    "checkpoint_folders",
    "checkpoints_newest_first",
    "folder_step",
    "is_sharded",
    "latest_checkpoint",
    "latest_good_checkpoint",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "saved_config",
    "set_rng_state",
    "verify_checkpoint",
    "verify_weights",
]


class Checkpointer:
    """The checkpoints of one run: save every so often, find the newest good one, load it.

    `parallel`: the run's `ParallelState` (lighthouse/distributed/mesh.py). In a multi-process
    run every rank calls `save`, `load` and `load_weights_only` (they are collective: sharded.py);
    which checkpoint to load is rank 0's choice (trainer/resume.py), shared with the others.
    Without it, or in a world of one, the checkpoints are those of one process (local.py), and
    `load` reads either kind.
    """

    def __init__(self, run_dir: str | Path, keep: int = 1, parallel=None, warn=log.warning):
        self.run_dir, self.keep, self.warn = Path(run_dir), keep, warn
        self.parallel = parallel if parallel is not None and parallel.distributed else None

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> Path:
        if self.parallel is not None:
            from .sharded import save_sharded_checkpoint  # torch.distributed.checkpoint, for multi-process runs only

            return save_sharded_checkpoint(self.run_dir, step, model, optimizer, state, self.keep, self.parallel)
        return save_checkpoint(self.run_dir, step, model, {**state, "optimizer": optimizer.state_dict()}, self.keep)

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device) -> dict:
        """Weights into `model`, moments into `optimizer` (either kind of checkpoint); returns the rest of the state."""
        if is_sharded(path):  # DCP reads the shards of any layout into this one (sharded or plain)
            from .sharded import load_sharded  # torch.distributed.checkpoint, for sharded checkpoints only

            load_sharded(path, model, optimizer)
            return load_state(path, "cpu" if self.parallel is not None else device)
        if self.parallel is not None:  # a one-process checkpoint into a sharded model
            from .sharded import load_single_process

            state = load_state(path)
            load_single_process(path, model, optimizer, state.pop("optimizer"))
            return state
        state = load_checkpoint(path, model, device, verify=False)  # `latest` verified it
        optimizer.load_state_dict(state["optimizer"])
        return state

    def load_weights_only(self, path: Path, model: torch.nn.Module, device) -> None:
        """Only the weights of checkpoint `path` (its model.safetensors, either kind) into `model`: what
        `--resume-weights-only` continues from when the rest of a checkpoint is damaged."""
        if self.parallel is not None:
            from .sharded import load_full_weights  # torch.distributed.checkpoint, for multi-process runs only

            load_full_weights(path, model)
        else:
            load_weights(path, model, device)
