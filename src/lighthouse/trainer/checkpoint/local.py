"""Checkpoints of one process: the weights as safetensors, everything else in state.pt.

`save_checkpoint` writes checkpoint `step` through the steps of files.py; `load_checkpoint`
verifies one and loads its weights into a model (`load_weights`: strict, a one-line
`CheckpointError` for a file that does not fit the model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .files import (
    DATA_FILES,
    CheckpointError,
    checkpoint_folder,
    fresh_folder,
    install_checkpoint,
    is_good,
    load_state,
    point_latest,
    seal_checkpoint,
    verify_checkpoint,
)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, state: dict, keep: int = 1) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    final = checkpoint_folder(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not is_good(final):  # a good checkpoint of this step (a re-save after resume) stays as it is
        tmp = fresh_folder(final.with_name(f".tmp-{final.name}-{os.getpid()}"))
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        seal_checkpoint(tmp, step, DATA_FILES)
        install_checkpoint(tmp, final)
    point_latest(final, keep)
    return final


def load_weights(path: Path, model: torch.nn.Module, device="cpu") -> None:
    f = Path(path) / "model.safetensors"
    try:
        load_model(model, str(f), strict=True, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{f}: cannot be read ({e})") from None
    except RuntimeError as e:  # missing, unexpected or reshaped weights: another architecture's checkpoint
        raise CheckpointError(f"{f}: does not fit this model ({misfit_summary(e)}); use the checkpoint's [model]") from None


def misfit_summary(error: RuntimeError) -> str:
    """torch's list of every tensor that does not fit (thousands of characters for a model of another
    width) as one short clause: how many of each kind, and the first."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    parts = []
    reshaped = [line for line in lines if line.startswith("size mismatch for ")]
    if reshaped:
        m = re.match(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
                     r"the shape in current model is torch\.Size\((\[.*?\])\)", reshaped[0])
        first = f"{m[1]} is {m[2]} in the file, {m[3]} in the model" if m else reshaped[0][:160]
        parts.append(f"{len(reshaped)} tensors of another shape, e.g. {first}")
    for kind in ("Missing", "Unexpected"):
        for line in lines:
            if line.startswith(f"{kind} key(s)"):
                names = re.findall(r'"([^"]+)"', line)
                more = f" and {len(names) - 1} more" if len(names) > 1 else ""
                parts.append(f"{kind.lower()} {names[0] if names else line[:160]}{more}")
    return "; ".join(parts) or (lines[0][:200] if lines else str(error)[:200])


def load_checkpoint(path: Path, model: torch.nn.Module | None = None, device="cpu", verify: bool = True) -> dict:
    """Verify, load weights into `model` (when given) and return the state dict."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    if model is not None:
        load_weights(path, model, device)
    return load_state(path, device)
