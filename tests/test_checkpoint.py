"""The checkpointer under faults: damaged files, fallback, the run lock, leftovers of killed saves."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from lighthouse.cli import main
from lighthouse.model import ModelArgs, Transformer
from lighthouse.trainer.checkpoint import (
    CheckpointError,
    RunLock,
    RunLockedError,
    latest_checkpoint,
    latest_good_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from lighthouse.trainer.config import load_config
from lighthouse.trainer.loop import train
from test_trainer import losses, tiny_config

SMALL = ModelArgs(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32)


def two_checkpoints(tmp_path: Path):
    model = Transformer(SMALL)
    save_checkpoint(tmp_path, 1, model, {"step": 1}, keep=2)
    save_checkpoint(tmp_path, 2, model, {"step": 2}, keep=2)
    root = tmp_path / "checkpoints"
    return model, root / "step-00000001", root / "step-00000002"


def flip_bytes(path: Path, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b""), r"model\.safetensors: 0 bytes, expected"),
        (lambda d: os.truncate(d / "model.safetensors", 100), r"model\.safetensors: 100 bytes"),
        (lambda d: os.truncate(d / "state.pt", 10), r"state\.pt: 10 bytes"),
        (lambda d: flip_bytes(d / "model.safetensors"), r"model\.safetensors: content does not match its SHA-256"),
        (lambda d: (d / "meta.json").write_text("{", encoding="utf-8"), r"meta\.json: not valid JSON"),
    ],
)
def test_damage_is_detected_and_older_checkpoint_used(tmp_path, damage, match):
    model, old, new = two_checkpoints(tmp_path)
    damage(new)
    with pytest.raises(CheckpointError, match=match):
        verify_checkpoint(new)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(new, model)
    warnings = []
    assert latest_checkpoint(tmp_path) == new  # present, but not good
    assert latest_good_checkpoint(tmp_path, warnings.append) == old
    assert len(warnings) == 1 and "skipping damaged checkpoint" in warnings[0] and new.name in warnings[0]
    assert resolve_checkpoint(tmp_path, warn=lambda m: None) == old
    assert load_checkpoint(old, model)["step"] == 1


def test_every_checkpoint_damaged_is_a_one_line_error(tmp_path):
    _, old, new = two_checkpoints(tmp_path)
    flip_bytes(old / "state.pt", 64)
    flip_bytes(new / "state.pt", 64)
    with pytest.raises(CheckpointError, match="every checkpoint under .* is damaged"):
        resolve_checkpoint(tmp_path, warn=lambda m: None)


def test_unreadable_state_without_checksums_names_the_file(tmp_path):
    """Checkpoints from before checksums (meta.json without sizes) still fail cleanly when damaged."""
    model, _, new = two_checkpoints(tmp_path)
    (new / "meta.json").write_text(json.dumps({"step": 2, "files": ["model.safetensors", "state.pt"]}))
    (new / "state.pt").write_bytes(b"")
    verify_checkpoint(new)  # nothing to compare against
    with pytest.raises(CheckpointError, match=r"state\.pt: cannot be read \(EOFError"):
        load_checkpoint(new, model)
    (new / "model.safetensors").write_bytes(b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read"):
        load_checkpoint(new, model)


def test_resume_falls_back_to_older_checkpoint(tmp_path):
    """A damaged newest checkpoint: --resume warns, continues from the older one, and repeats exactly."""
    cfg = load_config(tiny_config(tmp_path, steps=(4, 3), ckpt_every=2), ["training.keep_checkpoints=3"])
    run = train(cfg, echo=lambda *a: None)  # checkpoints kept: steps 4, 6, 7
    before = losses(run.run_dir)
    newest = latest_checkpoint(cfg.run_dir)
    assert newest.name == "step-00000007"
    flip_bytes(newest / "model.safetensors", 64)
    said = []
    resumed = train(cfg, resume=True, echo=said.append)
    assert resumed.resumed_from == 6
    assert any("skipping damaged checkpoint" in s and "step-00000007" in s for s in said)
    assert losses(resumed.run_dir) == before
    verify_checkpoint(latest_checkpoint(cfg.run_dir))  # step 7 written again, good this time
    assert main(["eval", "--checkpoint", str(resumed.run_dir)]) == 0


def test_eval_of_damaged_checkpoint_is_a_clean_error(tmp_path, capsys):
    model, _, new = two_checkpoints(tmp_path)
    flip_bytes(new / "model.safetensors", 64)
    assert main(["eval", "--checkpoint", str(new)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.safetensors" in err[0]


def _hold_lock(run_dir, ready, release):
    with RunLock(run_dir):
        ready.set()
        release.wait(30)


def test_run_lock_refuses_a_second_trainer(tmp_path):
    cfg = load_config(tiny_config(tmp_path))
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(cfg.run_dir, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunLockedError, match=rf"is being trained by pid {holder.pid}"):
            RunLock(cfg.run_dir).acquire()
        with pytest.raises(RunLockedError):
            train(cfg, resume=True, echo=lambda *a: None)
        assert main(["train", "--config", str(tmp_path / "tiny.toml"), "--resume", "--no-progress"]) == 2
    finally:
        release.set()
        holder.join(30)
        if holder.is_alive():
            holder.kill()
    assert not (cfg.run_dir / "metrics.jsonl").exists()  # the refused trainers wrote nothing
    with RunLock(cfg.run_dir):  # free again once the holder is gone
        pass


def test_run_lock_is_released_when_the_holder_dies(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.join(30)
    with RunLock(tmp_path):
        pass


def test_leftovers_of_killed_saves_and_prunes_are_cleaned(tmp_path):
    model, old, new = two_checkpoints(tmp_path)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000009-123").mkdir()  # a save killed before its rename
    (root / ".trash-step-00000000-123").mkdir()  # a prune killed mid-delete
    half = root / "step-00000000"  # an older version's prune killed mid-delete
    half.mkdir()
    (half / "state.pt").write_bytes(b"x")
    save_checkpoint(tmp_path, 3, model, {"step": 3}, keep=2)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step-00000002", "step-00000003"]
