"""The folders the commands write into, and what they may delete there.

A run folder (`runs/<name>`) is recognisably a run when it holds the marker file the trainer
writes when it creates the run (`.lighthouse-run`), or, for runs from before the marker,
`metrics.jsonl` or `checkpoints/`. Only such a folder is ever cleared by `--overwrite`, and
then only of the files the trainer writes (`RUN_FILES`): anything else a user put there stays.
A folder that is not a run and holds anything but the lock is never trained into.

`check_run_dir` decides all of this before a single file is touched (the command checks every
run of an invocation, the baseline's too, before training the first); `clear_run` is the one
place that deletes. `writable_folder` checks an output folder before the work that fills it;
`output_folder` also takes it away again, with the parents it made, when the work fails before
writing anything there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .checkpoint import CHECKPOINT_DIR
from .metrics import METRICS_FILE

RUN_MARKER = ".lighthouse-run"
LOCK_FILE = ".lock"
# Everything the trainer and `lighthouse train` write into a run folder (besides the lock).
RUN_FILES = (RUN_MARKER, "config.toml", METRICS_FILE, CHECKPOINT_DIR, "tensorboard", "plot.png")


class RunDirError(RuntimeError):
    """A run folder that cannot be used as asked (not a run, not writable); the message says what to do."""


class RunExistsError(RunDirError):
    """A run folder that already holds a run, without --resume or --overwrite."""


def is_run(path: str | Path) -> bool:
    """The folder holds a run of ours: its marker, or (older runs) metrics.jsonl or checkpoints/."""
    path = Path(path)
    return any((path / name).exists() for name in (RUN_MARKER, METRICS_FILE, CHECKPOINT_DIR))


def has_progress(path: str | Path) -> bool:
    """The run has trained: metrics or checkpoints (a marker and config.toml alone are only a start)."""
    path = Path(path)
    return (path / METRICS_FILE).exists() or (path / CHECKPOINT_DIR).exists()


def foreign_entries(path: str | Path) -> list[str]:
    """The names in a folder that no run writes, sorted."""
    ours = {*RUN_FILES, LOCK_FILE}
    return sorted(p.name for p in Path(path).iterdir() if p.name not in ours)


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_run_dir(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise RunDirError unless training into `run_dir` as asked is safe; touches nothing.

    - a folder that is not a run but holds files: refused, whatever the flags;
    - a run that has trained, without --resume or --overwrite: RunExistsError;
    - no folder, an empty one, or one with only the lock: fine.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run folder; choose another --set name=... or out_dir")
    if not is_run(run_dir):
        others = foreign_entries(run_dir)
        if others:
            what = "--overwrite deletes only runs; " if overwrite else ""
            raise RunDirError(
                f"{run_dir} is not a lighthouse run (no {RUN_MARKER}, {METRICS_FILE} or {CHECKPOINT_DIR}/) and holds "
                f"{_listing(others)}; {what}choose another --set name=... or out_dir"
            )
        return
    if not resume and not overwrite and has_progress(run_dir):
        held = "checkpoints" if (run_dir / CHECKPOINT_DIR).exists() else "metrics"
        raise RunExistsError(
            f"{run_dir} already has {held}; pass --resume to continue it or --overwrite to start over "
            "(or choose another --set name=...)"
        )


def create_run_dir(run_dir: str | Path) -> None:
    """Make the run folder (and out_dir), with a one-line error that names out_dir when it cannot be made."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the run folder {run_dir}: {e.strerror or e}; set out_dir to a folder "
                          "you can write (--set out_dir=...)") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write into the run folder {run_dir}: permission denied; set out_dir to a folder "
                          "you can write (--set out_dir=...)")


def mark_run(run_dir: str | Path) -> None:
    """Write the marker that makes the folder recognisably a run (once, when the run is created)."""
    marker = Path(run_dir) / RUN_MARKER
    if not marker.exists():
        marker.write_text("a lighthouse training run: `lighthouse train --overwrite` may replace its files\n",
                          encoding="utf-8")


def clear_run(run_dir: str | Path) -> list[str]:
    """Delete the run's own files (`RUN_FILES`) for --overwrite; returns the names it kept (not the run's).

    Refuses (RunDirError) a folder that is not a run but holds files: `check_run_dir` says why.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite=True)
    for name in RUN_FILES:
        item = run_dir / name
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        elif item.exists() or item.is_symlink():
            item.unlink()
    return foreign_entries(run_dir)


def writable_folder(path: str | Path, what: str) -> Path:
    """Create folder `path` if needed and check that files can be written into it; else one-line RunDirError.

    what: the argument that named it (e.g. "--out"), for the message.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {path}: is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"{what} {path}: the folder is not writable")
    return path


@contextlib.contextmanager
def output_folder(path: str | Path, what: str) -> Iterator[Path]:
    """`writable_folder(path, what)` for the body of the command that fills it. If the body fails
    (a bad checkpoint, Ctrl-C), the folders this made and the body left empty are removed: a failed
    command leaves no empty folder behind, and never removes one that was there or holds a file."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    folder = writable_folder(path, what)
    try:
        yield folder
    except BaseException:
        for p in made:
            try:
                p.rmdir()  # only an empty folder goes
            except OSError:
                break
        raise


def writable_file(path: str | Path, what: str) -> Path:
    """Check that file `path` can be written (its folder is made if needed); else one-line RunDirError."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunDirError(f"{what} {path}: the file is not writable")
    writable_folder(path.parent, what)
    return path
