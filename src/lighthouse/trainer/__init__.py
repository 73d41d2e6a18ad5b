"""Two-stage training of byte-level language models with Lighthouse, then dense, attention.

    config.py      dataclasses, TOML loading, `--set` overrides, validation
    data/          byte-level documents from local files, packed into windows
    build.py       device, autocast dtype, the model, the evaluator; load_trained (a checkpoint's model)
    loop.py        the training loop (stages, evaluation and checkpoint cadence, signals)
    stepper.py     one optimizer step: schedule, accumulation, clipping, AdamW (no host sync)
    checkpoint/    atomic, verified safetensors + state checkpoints (one process or sharded); the run lock
    folders.py     what marks a run folder, what --overwrite may delete, output folders checked up front
    resume.py      what --resume continues from, which changed settings it accepts
    parallel.py    the parts of a multi-process run: sharded model, stepper, evaluator
    progress.py    metrics and the progress bar, read back once per log interval
    metrics.py     metrics.jsonl and the summary table
    plot.py        loss against tokens and wall-clock
"""

from ..evals.bpb import evaluate
from .build import Trained, load_trained
from .config import (
    Config,
    ConfigError,
    DataConfig,
    OptimConfig,
    StageConfig,
    TrainingConfig,
    baseline_config,
    load_config,
)
from .loop import RunResult, Trainer, train
from .stepper import lr_at

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "StageConfig",
    "TrainingConfig",
    "RunResult",
    "Trained",
    "Trainer",
    "baseline_config",
    "evaluate",
    "load_config",
    "load_trained",
    "lr_at",
    "train",
]
