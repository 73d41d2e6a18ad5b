"""The files of a checkpoint (their layout: the package's docstring): written atomically, sealed
with checksums, verified, found, pruned.

A save (local.py, sharded.py) writes its files into a hidden temporary folder
(`fresh_folder`), seals it (`seal_checkpoint`: fsync, meta.json), renames it into place in one
step (`install_checkpoint`), then moves `latest` and prunes what it supersedes (`point_latest`).
Loading checks meta.json's sizes and SHA-256s first (`verify_checkpoint`) and falls back to the
newest older checkpoint that verifies (`latest_good_checkpoint`), reporting each damaged or
incomplete one it skips; `verify_weights` checks the weights alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger("lighthouse.checkpoint")

CHECKPOINT_DIR = "checkpoints"
FILES = ("model.safetensors", "state.pt", "meta.json")
DATA_FILES = ("model.safetensors", "state.pt")  # the files meta.json vouches for
SHARDED_DIR = "dcp"  # in a multi-process run's checkpoint: model and optimizer, sharded


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (damaged, truncated, unreadable); the message names the file."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def folder_step(path: Path) -> int | None:
    """The step of a checkpoint folder's name (`step-00000100` -> 100), None for another name."""
    prefix, _, digits = Path(path).name.partition("-")
    return int(digits) if prefix == "step" and digits.isdigit() else None


def fsync(path: Path) -> None:
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
    return sorted(p for p in root.glob("step-*") if folder_step(p) is not None and is_complete(p))


# ---- writing ---------------------------------------------------------------------------------
def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` of a run lives once complete."""
    return checkpoint_root(run_dir) / step_name(step)


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
        fsync(folder / f)
    files = {f: {"bytes": (folder / f).stat().st_size, "sha256": digests.get(f) or sha256_file(folder / f)}
             for f in files}
    meta = {"step": step, **extra, "files": files}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    fsync(folder / "meta.json")
    fsync(folder)


def install_checkpoint(tmp: Path, final: Path) -> None:
    """Rename a sealed temporary folder into place: the one step that makes a checkpoint visible."""
    if final.exists():  # an incomplete or damaged folder of that name
        _remove(final)
    os.replace(tmp, final)
    fsync(final.parent)


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
    """Keep the newest `keep` checkpoints up to `current` (just saved, good); remove the older ones.

    Only what `current` supersedes goes: a checkpoint of a later step (one a resume fell back
    from, damaged) stays until the run saves that step again, for a person to look at.
    """
    step = folder_step(current)
    superseded = [p for p in _complete_checkpoints(root) if p != current and folder_step(p) < step]
    for old in superseded[: max(0, len(superseded) - (keep - 1))] if keep > 0 else []:
        _remove(old)
    for left in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:  # from saves or prunes that were killed
        shutil.rmtree(left, ignore_errors=True)
    for partial in root.glob("step-*"):  # a folder of an older version's interrupted delete
        if partial.is_dir() and not is_complete(partial) and (folder_step(partial) or 0) < step:
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


def _latest_name(root: Path) -> str | None:
    pointer = root / "latest"
    try:
        return pointer.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _newest_first(root: Path, found: list[Path]) -> list[Path]:
    """`found` by step, newest first, with the one `latest` names first."""
    found = sorted(found, key=lambda p: (folder_step(p) or 0, p.name), reverse=True)
    name = _latest_name(root)
    if name is not None and root / name in found:
        found.remove(root / name)
        found.insert(0, root / name)
    return found


def checkpoints_newest_first(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, the one `latest` names first, then by step, newest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return _newest_first(root, _complete_checkpoints(root))


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """Every checkpoint folder of a run, complete or not, in the order of `checkpoints_newest_first`."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return _newest_first(root, [p for p in root.glob("step-*") if p.is_dir() and folder_step(p) is not None])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (`latest` first, else a scan), or None; not verified."""
    found = checkpoints_newest_first(run_dir)
    return found[0] if found else None


def latest_good_checkpoint(run_dir: str | Path, warn=log.warning) -> Path | None:
    """The newest checkpoint that verifies; each damaged or incomplete newer one is reported through `warn`,
    and so is a `latest` that names a folder that is gone."""
    root = checkpoint_root(run_dir)
    folders = checkpoint_folders(run_dir)
    name = _latest_name(root) if root.is_dir() else None
    if name is not None and not (root / name).is_dir():
        warn(f"{root / 'latest'} names {name}, which is missing; falling back to the newest checkpoint that verifies")
    for ckpt in folders:
        try:
            verify_checkpoint(ckpt)
            return ckpt
        except CheckpointError as e:
            warn(f"skipping damaged checkpoint: {e}")
    return None


def verify_weights(path: Path) -> int:
    """The step of a checkpoint whose weights (model.safetensors) match meta.json, whatever state.pt holds;
    else CheckpointError. What `--resume-weights-only` continues from."""
    path = Path(path)
    meta_file, weights = path / "meta.json", path / "model.safetensors"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file}: cannot be read ({type(e).__name__})") from None
    want = meta.get("files", {}).get("model.safetensors") if isinstance(meta.get("files"), dict) else None
    if not isinstance(want, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{meta_file}: records no step or no checksum of model.safetensors")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    if weights.stat().st_size != want.get("bytes") or sha256_file(weights) != want.get("sha256"):
        raise CheckpointError(f"{weights}: does not match its size and SHA-256 in meta.json (damaged)")
    return meta["step"]


def resolve_checkpoint(path: str | Path, warn=log.warning) -> Path:
    """A run folder, its checkpoints folder, or one checkpoint folder -> a verified checkpoint folder."""
    path = Path(path)
    if is_complete(path) or (path.is_dir() and folder_step(path) is not None):
        verify_checkpoint(path)  # an incomplete one: the error names the missing file
        return path
    run_dir = path.parent if path.name == CHECKPOINT_DIR else path
    if not checkpoint_folders(run_dir):
        raise FileNotFoundError(f"no checkpoint found at {path}")
    skipped: list[str] = []  # reported when a checkpoint is found; else the one error names them
    found = latest_good_checkpoint(run_dir, skipped.append)
    if found is None:
        damage = [m.removeprefix("skipping damaged checkpoint: ") for m in skipped if m.startswith("skipping")]
        more = f" and {len(damage) - 1} more" if len(damage) > 1 else ""
        first = f" ({damage[0]}{more})" if damage else ""
        raise CheckpointError(f"every checkpoint under {checkpoint_root(run_dir)} is damaged{first}")
    for message in skipped:
        warn(message)
    return found


# ---- reading ---------------------------------------------------------------------------------
def saved_config(path: Path) -> dict:
    """The config a checkpoint was trained with (state.pt's "config"), without reading the optimizer state."""
    f = Path(path) / "state.pt"
    try:  # mmap: the tensors are mapped, not read; only the small config is touched
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # as in load_state: a damaged file is a one-line error
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {first_line})") from None
    return state["config"]


def load_state(path: Path, device="cpu") -> dict:
    """`state.pt` of a checkpoint; any failure becomes a one-line CheckpointError naming the file."""
    f = Path(path) / "state.pt"
    try:
        return torch.load(f, map_location=device, weights_only=True)
    except Exception as e:  # EOFError, pickle errors, zip errors from a damaged file
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{f}: cannot be read ({type(e).__name__}: {first_line})") from None
