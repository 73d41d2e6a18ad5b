"""Two-stage training of byte-level language models with Lighthouse, then dense, attention.

    config.py      dataclasses, TOML loading, `--set` overrides, validation
    data.py        byte-level documents from local files, packed into windows
    loop.py        the training loop (stages, accumulation, schedule, eval, signals)
    checkpoint.py  atomic safetensors + state checkpoints
    metrics.py     metrics.jsonl and the summary table
    plot.py        loss against tokens and wall-clock
"""

from .config import Config, ConfigError, DataConfig, OptimConfig, StageConfig, TrainingConfig, baseline_config, load_config
from .loop import RunResult, Trainer, evaluate, lr_at, train

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "StageConfig",
    "TrainingConfig",
    "RunResult",
    "Trainer",
    "baseline_config",
    "evaluate",
    "load_config",
    "lr_at",
    "train",
]
