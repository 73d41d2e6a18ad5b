"""Checkpoints: weights as safetensors, everything else (optimizer, LR schedule, data position,
RNG states, counters) in `state.pt`, written atomically and verified on load.

Layout of `runs/<name>/checkpoints/`:

    step-00000100/model.safetensors   weights
    step-00000100/state.pt            optimizer, scheduler, data, rng, progress, config
    step-00000100/meta.json           step, and the size and SHA-256 of every file
    latest                            the name of the newest complete checkpoint

A checkpoint of a multi-process run (`lighthouse.distributed.checkpoint`) has the same three
files (`model.safetensors` consolidated, `state.pt` without the optimizer) plus `dcp/`, the
model and optimizer sharded by torch.distributed.checkpoint; meta.json vouches for those too.

The promises, and how they are kept:
- A kill at any moment leaves the last good checkpoint loadable: a checkpoint is written
  into a hidden temporary folder, flushed, and renamed into place in one step (`os.replace`);
  only then does `latest` move (temp file + rename).
- A damaged checkpoint is never loaded silently: `meta.json` records a SHA-256 of each file,
  checked before anything is read. A damaged or unreadable checkpoint raises a one-line
  `CheckpointError` naming the file; resuming falls back, with a warning, to the newest older
  checkpoint that verifies (keep more than one with `training.keep_checkpoints`).
- Pruning renames an old checkpoint out of sight (`.trash-*`) before deleting it, so a kill
  mid-delete leaves no half folder that looks like a checkpoint; leftovers of killed saves
  and prunes are removed by the next save.
- One trainer per run: `RunLock` holds an exclusive lock on `<run>/.lock` for the whole run
  (released by the OS when the process dies, even by SIGKILL), and a second trainer on the
  same run stops with an error that says who holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import socket
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

log = logging.getLogger("lighthouse.checkpoint")

CHECKPOINT_DIR = "checkpoints"
FILES = ("model.safetensors", "state.pt", "meta.json")
DATA_FILES = ("model.safetensors", "state.pt")  # the files meta.json vouches for
SHARDED_DIR = "dcp"  # in a multi-process run's checkpoint: model and optimizer, sharded


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (damaged, truncated, unreadable); the message names the file."""


class RunLockedError(RuntimeError):
    """Another live process is training the same run."""


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


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_complete(path: Path) -> bool:
    """All files present (a cheap test; `verify_checkpoint` checks their content)."""
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def is_sharded(path: Path) -> bool:
    """Written by a multi-process run (model and optimizer in `dcp/`)."""
    return (Path(path) / SHARDED_DIR).is_dir()


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if is_complete(p))


# ---- saving ---------------------------------------------------------------------------------
def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, state: dict, keep: int = 1) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_name(step)
    if not is_good(final):  # a good checkpoint of this step (a re-save after resume) stays as it is
        tmp = fresh_folder(root / f".tmp-{_step_name(step)}-{os.getpid()}")
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        seal_checkpoint(tmp, step, DATA_FILES)
        install_checkpoint(tmp, final)
    point_latest(final, keep)
    return final


# The steps of a save, shared with the multi-process checkpointer (lighthouse.distributed.checkpoint).
def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` of a run lives once complete."""
    return checkpoint_root(run_dir) / _step_name(step)


def fresh_folder(path: Path) -> Path:
    """An empty folder at `path` (whatever a killed save left there is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def seal_checkpoint(folder: Path, step: int, files, digests: dict | None = None, **extra) -> None:
    """Flush `files` (paths relative to `folder`) and write meta.json with the size and SHA-256 of each.

    `digests` holds SHA-256s computed already (a multi-process save hashes its shards on
    every rank); `extra` adds keys to meta.json.
    """
    digests = digests or {}
    for f in files:
        _fsync(folder / f)
    files = {f: {"bytes": (folder / f).stat().st_size, "sha256": digests.get(f) or sha256_file(folder / f)}
             for f in files}
    meta = {"step": step, **extra, "files": files}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    _fsync(folder / "meta.json")
    _fsync(folder)


def install_checkpoint(tmp: Path, final: Path) -> None:
    """Rename a sealed temporary folder into place: the one step that makes a checkpoint visible."""
    if final.exists():  # an incomplete or damaged folder of that name
        _remove(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def point_latest(final: Path, keep: int) -> None:
    """Point `latest` at `final` (temp file + rename), then keep only the newest `keep` checkpoints."""
    write_atomic(final.parent / "latest", final.name + "\n")
    _prune(final.parent, keep, current=final)


def is_good(path: Path) -> bool:
    """Complete and matching its checksums."""
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


def _remove(path: Path) -> None:
    """Rename out of sight first (atomic), then delete: a kill mid-delete leaves only hidden trash."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(root: Path, keep: int, current: Path) -> None:
    complete = _complete_checkpoints(root)
    for old in complete[:-keep] if keep > 0 else []:
        if old != current:
            _remove(old)
    for left in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:  # from saves or prunes that were killed
        shutil.rmtree(left, ignore_errors=True)
    for partial in root.glob("step-*"):  # a folder of an older version's interrupted delete
        if partial.is_dir() and not is_complete(partial) and partial != current:
            _remove(partial)


# ---- finding and verifying --------------------------------------------------------------------
def verify_checkpoint(path: Path) -> dict:
    """meta.json of a checkpoint whose files match their recorded size and SHA-256; else CheckpointError."""
    path = Path(path)
    for f in FILES:
        if not (path / f).is_file():
            raise CheckpointError(f"{path / f}: missing")
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / 'meta.json'}: not valid JSON ({e})") from None
    files = meta.get("files")
    if not isinstance(files, dict):  # written before checksums existed: nothing to compare
        return meta
    for name, want in files.items():
        f = path / name
        if not f.is_file():  # a shard of a multi-process checkpoint
            raise CheckpointError(f"{f}: missing")
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"{f}: {size} bytes, expected {want.get('bytes')} (truncated or replaced)")
        if sha256_file(f) != want.get("sha256"):
            raise CheckpointError(f"{f}: content does not match its SHA-256 in meta.json (damaged)")
    return meta


def checkpoints_newest_first(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, the one `latest` names first, then by step, newest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = _complete_checkpoints(root)[::-1]
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (`latest` first, else a scan), or None; not verified."""
    found = checkpoints_newest_first(run_dir)
    return found[0] if found else None


def latest_good_checkpoint(run_dir: str | Path, warn=log.warning) -> Path | None:
    """The newest checkpoint that verifies; each damaged newer one is reported through `warn`."""
    for ckpt in checkpoints_newest_first(run_dir):
        try:
            verify_checkpoint(ckpt)
            return ckpt
        except CheckpointError as e:
            warn(f"skipping damaged checkpoint: {e}")
    return None


def resolve_checkpoint(path: str | Path, warn=log.warning) -> Path:
    """A run folder, its checkpoints folder, or one checkpoint folder -> a verified checkpoint folder."""
    path = Path(path)
    if is_complete(path):
        verify_checkpoint(path)
        return path
    run_dir = path.parent if path.name == CHECKPOINT_DIR else path
    if not checkpoints_newest_first(run_dir):
        raise FileNotFoundError(f"no complete checkpoint found at {path}")
    found = latest_good_checkpoint(run_dir, warn)
    if found is None:
        raise CheckpointError(f"every checkpoint under {checkpoint_root(run_dir)} is damaged")
    return found


# ---- loading ----------------------------------------------------------------------------------
def load_state(path: Path, device="cpu") -> dict:
    """`state.pt` of a checkpoint; any failure becomes a one-line CheckpointError naming the file."""
    f = Path(path) / "state.pt"
    try:
        return torch.load(f, map_location=device, weights_only=True)
    except Exception as e:  # EOFError, pickle errors, zip errors from a damaged file
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {first_line})") from None


def load_weights(path: Path, model: torch.nn.Module, device="cpu") -> None:
    f = Path(path) / "model.safetensors"
    try:
        load_model(model, str(f), strict=True, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{f}: cannot be read ({e})") from None
    except RuntimeError as e:  # missing or unexpected weights: another architecture's checkpoint
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
        raise CheckpointError(f"{f}: does not fit this model ({detail})") from None


def load_checkpoint(path: Path, model: torch.nn.Module | None = None, device="cpu", verify: bool = True) -> dict:
    """Verify, load weights into `model` (when given) and return the state dict."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    if model is not None:
        load_weights(path, model, device)
    return load_state(path, device)


class Checkpointer:
    """The trainer's checkpoint part: saves every so often, finds the newest good one, loads it."""

    def __init__(self, run_dir: str | Path, keep: int = 1, warn=log.warning):
        self.run_dir, self.keep, self.warn = Path(run_dir), keep, warn

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> Path:
        return save_checkpoint(self.run_dir, step, model, {**state, "optimizer": optimizer.state_dict()}, self.keep)

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies (damaged newer ones are reported and skipped)."""
        return latest_good_checkpoint(self.run_dir, self.warn)

    def any_exist(self) -> bool:
        return bool(checkpoints_newest_first(self.run_dir))

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device) -> dict:
        """Weights into `model`, moments into `optimizer`; returns the rest of the state."""
        if is_sharded(path):  # written by a multi-process run: torch.distributed.checkpoint reshards it
            from .checkpoint_sharded import load_sharded

            load_sharded(path, model, optimizer)
            return load_state(path, device)
        state = load_checkpoint(path, model, device, verify=False)  # `latest` verified it
        optimizer.load_state_dict(state["optimizer"])
        return state


# ---- one trainer per run ------------------------------------------------------------------------
class RunLock:
    """An exclusive advisory lock on `<run_dir>/.lock`, held while a trainer works on the run."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLockedError(
                f"{self.path.parent} is being trained by {holder}; wait for it to finish or stop it first"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
