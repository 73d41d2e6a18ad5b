"""What a run is made of, for training it and for using what it trained.

- `resolve_device`, `autocast_dtype`: the device and the autocast dtype of a config.
- `build_model`: the model of a config (built on meta, materialized on the device), with its
  training-memory settings (`set_training_memory`).
- `Evaluator`: validation bits-per-byte with the model's current attention or another, and
  the leak meter.
- `load_trained`: a run folder or checkpoint folder -> the model with its weights, its config,
  the step, and the attention its last step trained with (`lighthouse eval`, `lighthouse
  sample`, `lighthouse export`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..evals.bpb import evaluate
from ..evals.leak import leak_meter, leak_spans
from ..model import Transformer
from .checkpoint import load_state, load_weights, resolve_checkpoint
from .config import Config, ConfigError, config_diff, config_from_dict, to_dict


def resolve_device(name: str, what: str = "'training.device'") -> torch.device:
    """The device `name` names ("auto": cuda when available, else cpu), checked to exist on this machine;
    else a ConfigError that names `what` (the key or argument it came from)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} is {name!r}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} is {name!r} but CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what} is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what} is {name!r} but MPS is not available on this machine; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{what} is {name!r}: use cpu, cuda, cuda:N or mps")
    return device


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA by default; None means plain float32."""
    if cfg.training.dtype == "bfloat16" or (cfg.training.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_model(cfg: Config, device: torch.device | str = "meta") -> Transformer:
    """The model of `cfg`; built on the meta device, then materialized on `device` unless that is meta.

    Sharded training materializes after sharding (`Transformer.materialize`); either way the
    initial weights equal an eager build from the same RNG state.
    """
    with torch.device("meta"):
        model = Transformer(cfg.model, cfg.lighthouse)
    set_training_memory(model, cfg)
    if torch.device(device).type != "meta":
        model.materialize(device)
    return model


def set_training_memory(model: Transformer, cfg: Config) -> Transformer:
    """The model's `training.activation_checkpointing`, `offload_layers` and `loss_chunk` (lighthouse.checkpointing,
    lighthouse.loss); they change what a training step keeps in memory, not what it computes."""
    t = cfg.training
    model.activation_checkpointing = t.activation_checkpointing
    model.offload_layers = t.offload_layers
    model.loss_chunk = t.loss_chunk
    return model


class Evaluator:
    """Validation bits-per-byte of the model, with its current attention or with every layer set to `kind`."""

    def __init__(self, model: Transformer, forward, windows, micro_batch: int, device, amp_dtype):
        self.model, self.forward, self.windows = model, forward, windows
        self.micro_batch, self.device, self.amp_dtype = micro_batch, device, amp_dtype

    def __call__(self, kind: str | None = None) -> dict:
        saved = [block.attention.core for block in self.model.layers]
        if kind is not None:
            self.model.set_attention(kind)
        try:
            return self.score()
        finally:
            for block, core in zip(self.model.layers, saved):
                block.attention.core = core

    def score(self) -> dict:
        return evaluate(self.forward, self.windows, self.micro_batch, self.device, self.amp_dtype)

    def leak(self, positions: int) -> dict:
        """The leak meter with the current attention on the first two validation windows."""
        windows = self.windows[:2] if len(self.windows) >= 2 else self.windows.repeat(2, 1)
        spans = leak_spans(self.model.lighthouse, windows.shape[1] - 1)
        return leak_meter(self.forward, windows, spans, self.device, self.amp_dtype, micro_batch=self.micro_batch,
                          positions=positions)


@dataclass
class Trained:
    """A checkpoint's model and what it came from."""

    model: Transformer  # its weights loaded, every attention module still dense (`set_attention` picks)
    cfg: Config
    step: int  # optimizer steps taken
    attention: str  # the attention of the stage that took the last of them ("lighthouse" or "dense")
    ckpt: Path  # the checkpoint folder, verified

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def trained_attention(cfg: Config, step: int) -> str:
    """The attention of the stage that took step `step` - 1, the last one a checkpoint of `step` holds."""
    return cfg.stages[cfg.stage_at(max(0, step - 1))].attention


def load_trained(path: str | Path, device: torch.device | str | None = None, *, overrides=(), warn=None) -> Trained:
    """A run folder (its newest checkpoint that verifies) or a checkpoint folder -> `Trained`.

    overrides: `--set` items applied to the checkpoint's config. device: None means the
    config's `training.device`. warn: where a skipped damaged checkpoint is reported.
    """
    ckpt = resolve_checkpoint(path, warn) if warn else resolve_checkpoint(path)
    state = load_state(ckpt)
    cfg = config_from_dict(state["config"], overrides)
    reshaped = config_diff(state["config"], {"model": to_dict(cfg.model)})
    if reshaped:  # the weights fit one model only
        keys = ", ".join(f"{key} ({old!r} in the checkpoint, {new!r} asked)" for key, old, new in reshaped)
        raise ConfigError(f"--set {reshaped[0][0]}: a checkpoint's [model] cannot change: {keys}")
    step = int(state["step"])
    device = resolve_device(cfg.training.device) if device is None else device
    model = build_model(cfg, device)
    load_weights(ckpt, model, device)
    return Trained(model, cfg, step, trained_attention(cfg, step), ckpt)
