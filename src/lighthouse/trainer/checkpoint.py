"""Checkpoints: weights as safetensors, everything else (optimizer, LR schedule, data position,
RNG states, counters) in `state.pt`, written atomically.

Layout of `runs/<name>/checkpoints/`:

    step-00000100/model.safetensors   weights
    step-00000100/state.pt            optimizer, scheduler, data, rng, progress, config
    step-00000100/meta.json           step and file list, for people and tools
    latest                            the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, flushed to disk, and renamed into
place in one step (`os.replace`); only then does `latest` move (temp file + rename) and are
older checkpoints pruned. A kill at any moment therefore leaves the last good checkpoint
readable; leftover temporary folders are ignored and cleaned up by the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

CHECKPOINT_DIR = "checkpoints"
FILES = ("model.safetensors", "state.pt", "meta.json")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, state: dict, keep: int = 1) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_name(step)
    if not is_complete(final):
        tmp = root / f".tmp-{_step_name(step)}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        meta = {"step": step, "files": list(FILES)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        for f in FILES:
            _fsync(tmp / f)
        _fsync(tmp)
        if final.exists():  # an incomplete folder of that name cannot be a good checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    write_atomic(root / "latest", final.name + "\n")
    _prune(root, keep, current=final)
    return final


def _prune(root: Path, keep: int, current: Path) -> None:
    complete = sorted(p for p in root.glob("step-*") if is_complete(p))
    for old in complete[:-keep] if keep > 0 else []:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):  # left by a save that was killed part-way
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (`latest` first, else a scan), or None."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if candidate.name and is_complete(candidate):
            return candidate
    complete = sorted(p for p in root.glob("step-*") if is_complete(p))
    return complete[-1] if complete else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, its checkpoints folder, or one checkpoint folder -> a checkpoint folder."""
    path = Path(path)
    if is_complete(path):
        return path
    found = latest_checkpoint(path)
    if found is None and path.name == CHECKPOINT_DIR:
        found = latest_checkpoint(path.parent)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint found at {path}")
    return found


def load_checkpoint(path: Path, model: torch.nn.Module | None = None, device="cpu") -> dict:
    """Load weights into `model` (when given) and return the state dict."""
    path = Path(path)
    if model is not None:
        load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
    return torch.load(path / "state.pt", map_location=device, weights_only=True)


# ---- RNG state -----------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(x):
    return [_to_lists(i) for i in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(i) for i in x) if isinstance(x, list) else x
