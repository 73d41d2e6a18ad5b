"""What every evaluation needs: autocast by dtype, and eval mode for the duration."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`, or nothing for None (plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model):
    """nn.Modules in eval mode for the duration (restored after); plain callables as they are."""
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        yield
    finally:
        if was_training is not None:
            model.train(was_training)
