"""Run folders under --overwrite and --resume: a folder that is not a run is never deleted or trained
into, a run is never restarted silently, pruning keeps what no good checkpoint superseded, and every
setting that decides the trajectory is compared with the checkpoint's."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from lighthouse.cli import main
from lighthouse.model import Transformer
from lighthouse.trainer.build import load_trained
from lighthouse.trainer.checkpoint import load_checkpoint, save_checkpoint
from lighthouse.trainer.config import ConfigError, load_config
from lighthouse.trainer.data import ByteData
from lighthouse.trainer.folders import RUN_MARKER, RunDirError
from lighthouse.trainer.loop import train
from lighthouse.trainer.metrics import read_metrics
from lighthouse.trainer.resume import ResumeError
from test_checkpoint import SMALL, flip_bytes
from test_trainer import losses, tiny_config


def quiet(*args, **kwargs):
    pass


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` and the SHA-256 of its bytes (the lock's content is the holder's pid: left out)."""
    return {p.relative_to(root).as_posix(): "" if p.name == ".lock" else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_kept(before: dict[str, str], root: Path) -> None:
    """Every file of `before` is still there, unchanged (new files may have appeared)."""
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run of 3 + 2 steps, checkpoints at steps 2, 4, 5 (all kept): the run every test copies."""
    tmp = tmp_path_factory.mktemp("trained")
    config = tiny_config(tmp, steps=(3, 2), ckpt_every=2)
    overrides = ["training.keep_checkpoints=3"]
    cfg = load_config(config, overrides)
    train(cfg, echo=quiet)
    return config, overrides, cfg


def copy_run(trained, tmp_path: Path, *extra: str):
    """A copy of the trained run in tmp_path/runs/copy; returns (its config, the overrides that name it)."""
    config, overrides, cfg = trained
    names = [*overrides, f'out_dir="{tmp_path / "runs"}"', 'name="copy"', *extra]
    copy = load_config(config, names)
    shutil.copytree(cfg.run_dir, copy.run_dir, ignore=shutil.ignore_patterns(".lock"))
    return copy, names


def drop_newest(cfg) -> None:
    """Back to the state of a run killed after step 4's checkpoint."""
    root = cfg.run_dir / "checkpoints"
    shutil.rmtree(root / "step-00000005")
    (root / "latest").write_text("step-00000004\n")


def train_cli(config: Path, names: list[str], *flags: str) -> int:
    return main(["train", "--config", str(config), *[a for n in names for a in ("--set", n)], "--no-progress", *flags])


# ---- --overwrite -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--overwrite"], [], ["--resume"], ["--resume-weights-only"]])
def test_a_folder_that_is_not_a_run_is_never_touched(tmp_path, capsys, flags):
    config = tiny_config(tmp_path)
    sandbox = tmp_path / "runs" / "sandbox"
    sandbox.mkdir(parents=True)
    (sandbox / "precious.txt").write_text("precious\n")
    assert main(["train", "--config", str(config), "--set", "name=sandbox", "--no-progress", *flags]) == 2
    line = one_error_line(capsys)
    assert "is not a lighthouse run" in line and "precious.txt" in line and "--set name=" in line
    assert ("--overwrite deletes only runs" in line) == (flags == ["--overwrite"])
    assert sorted(p.name for p in sandbox.iterdir()) == ["precious.txt"]  # not even a lock was made
    with pytest.raises(RunDirError, match="is not a lighthouse run"):
        train(load_config(config, ["name=sandbox"]), overwrite=True, echo=quiet)
    assert (sandbox / "precious.txt").read_text() == "precious\n"


def test_overwrite_with_baseline_checks_both_folders_first(trained, tmp_path, capsys):
    copy, names = copy_run(trained, tmp_path)
    foreign = tmp_path / "runs" / "copy-baseline"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    before = snapshot(copy.run_dir)
    assert train_cli(trained[0], names, "--overwrite", "--baseline") == 2
    assert "copy-baseline is not a lighthouse run" in one_error_line(capsys)
    assert snapshot(copy.run_dir) == before  # the run was not cleared before the baseline's folder was refused
    assert (foreign / "notes.txt").read_text() == "mine\n"


def test_overwrite_deletes_only_the_runs_own_files(trained, tmp_path):
    copy, _ = copy_run(trained, tmp_path)
    (copy.run_dir / RUN_MARKER).unlink()  # a run from before the marker: known by its metrics and checkpoints
    (copy.run_dir / "notes.txt").write_text("mine\n")
    (copy.run_dir / "evals").mkdir()
    (copy.run_dir / "evals" / "passkey.json").write_text("{}\n")
    said = []
    result = train(copy, overwrite=True, echo=said.append)
    assert (copy.run_dir / "notes.txt").read_text() == "mine\n" and (copy.run_dir / "evals" / "passkey.json").is_file()
    assert any("--overwrite kept 2 entries" in s and "evals, notes.txt" in s for s in said)
    assert (copy.run_dir / RUN_MARKER).is_file()
    assert [r["step"] for r in read_metrics(result.run_dir) if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert losses(result.run_dir) == losses(trained[2].run_dir)  # started over, the same run again


# ---- --resume with nothing that verifies ----------------------------------------------------------------
def test_resume_stops_when_no_checkpoint_verifies(trained, tmp_path, capsys):
    copy, names = copy_run(trained, tmp_path)
    steps = sorted(copy.run_dir.glob("checkpoints/step-*"))
    for ckpt in steps:
        flip_bytes(ckpt / "state.pt", 64)
    before = snapshot(copy.run_dir)
    assert train_cli(trained[0], names, "--resume") == 2
    line = one_error_line(capsys)
    assert "--resume: no checkpoint of" in line and "step-00000005/state.pt: content does not match" in line
    assert "its weights verify in step-00000005: pass --resume-weights-only" in line and "--overwrite" in line
    assert_kept(before, copy.run_dir)  # nothing restarted, rewritten or pruned
    for ckpt in steps:
        flip_bytes(ckpt / "model.safetensors", 64)
    with pytest.raises(ResumeError, match="no checkpoint's weights verify either"):
        train(copy, resume=True, echo=quiet)
    with pytest.raises(ResumeError, match="--resume-weights-only: no checkpoint of .* has weights that verify"):
        train(copy, weights_only=True, echo=quiet)


def test_resume_weights_only_continues_from_intact_weights(trained, tmp_path):
    copy, _ = copy_run(trained, tmp_path)
    root = copy.run_dir / "checkpoints"
    shutil.rmtree(root / "step-00000005")  # killed after step 4's checkpoint; `latest` names a missing folder
    for ckpt in root.glob("step-*"):
        flip_bytes(ckpt / "state.pt", 64)
    said = []
    result = train(copy, weights_only=True, echo=said.append)
    assert result.resumed_from == 4
    assert any("resumed from the weights of" in s and "step-00000004" in s and "fresh optimizer" in s for s in said)
    got, want = losses(copy.run_dir), losses(trained[2].run_dir)
    assert sorted(got) == [1, 2, 3, 4, 5] and {s: got[s] for s in range(1, 5)} == {s: want[s] for s in range(1, 5)}
    # The data stream went on from where step 4 had left it (what the damaged state.pt recorded).
    data = ByteData(copy.data, copy.training.seed)
    data.train.skip(4 * copy.training.batch_size)
    assert data.train.state_dict() == load_checkpoint(trained[2].run_dir / "checkpoints" / "step-00000004")["data"]["train"]


def test_resume_of_metrics_without_a_checkpoint_stops_and_a_new_run_starts(trained, tmp_path):
    copy, _ = copy_run(trained, tmp_path)
    shutil.rmtree(copy.run_dir / "checkpoints")
    with pytest.raises(ResumeError, match=r"has metrics up to step 5 but no checkpoint to continue from; pass --overwrite"):
        train(copy, resume=True, echo=quiet)
    fresh = load_config(trained[0], [f'out_dir="{tmp_path / "runs"}"', 'name="new"'])
    said = []
    assert train(fresh, resume=True, echo=said.append).resumed_from == 0
    assert any("nothing to resume in" in s and "starting the run" in s for s in said)


def test_pruning_keeps_what_no_good_checkpoint_superseded(tmp_path):
    model = Transformer(SMALL)
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=5)
    root = tmp_path / "checkpoints"
    flip_bytes(root / "step-00000004" / "state.pt", 64)  # damaged: a resume falls back to step 2 ...
    (root / "step-00000006" / "state.pt").unlink()
    save_checkpoint(tmp_path, 3, model, {"step": 3}, keep=1)  # ... and saves step 3
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000003", "step-00000004", "step-00000006"]
    save_checkpoint(tmp_path, 5, model, {"step": 5}, keep=1)  # supersedes 3 and the damaged 4, not 6
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000005", "step-00000006"]


# ---- a checkpoint with a missing file ---------------------------------------------------------------------
def test_a_missing_file_falls_back_with_a_warning(trained, tmp_path, capsys):
    copy, _ = copy_run(trained, tmp_path)
    (copy.run_dir / "checkpoints" / "step-00000005" / "state.pt").unlink()
    assert main(["eval", "--checkpoint", str(copy.run_dir)]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping damaged checkpoint" in err and "step-00000005/state.pt: missing" in err
    assert load_trained(copy.run_dir, "cpu", warn=quiet).step == 4
    said = []
    assert train(copy, resume=True, echo=said.append).resumed_from == 4
    assert any("skipping damaged checkpoint" in s and "state.pt: missing" in s for s in said)
    assert losses(copy.run_dir) == losses(trained[2].run_dir)  # step 5 again, exactly


# ---- settings changed on resume ------------------------------------------------------------------------------
def test_resume_names_every_changed_setting_of_the_trajectory(trained, tmp_path):
    copy, names = copy_run(trained, tmp_path)
    drop_newest(copy)
    changed = ["training.seed=1", "training.batch_size=4", "training.micro_batch_size=2", "optim.lr=0.001",
               "stages.1.steps=3", "data.val_fraction=0.25"]
    said = []
    train(load_config(trained[0], [*names, *changed]), resume=True, echo=said.append)
    warning = [s for s in said if "resuming with settings the checkpoint was not trained with" in s]
    assert len(warning) == 1
    for key, change in [("training.seed", "0 -> 1"), ("training.batch_size", "2 -> 4"),
                        ("training.micro_batch_size", "1 -> 2"), ("optim.lr", "0.003 -> 0.001"),
                        ("stages.1.steps", "2 -> 3"), ("data.val_fraction", "0.2 -> 0.25")]:
        assert f"{key} ({change})" in warning[0]


def test_resume_with_where_it_runs_changed_says_nothing(trained, tmp_path):
    copy, names = copy_run(trained, tmp_path)
    drop_newest(copy)
    said = []
    same = ["training.threads=2", "training.log_every=2", "training.eval_every=4", "training.keep_checkpoints=1"]
    train(load_config(trained[0], [*names, *same]), resume=True, echo=said.append)
    assert not [s for s in said if "warning" in s]
    assert losses(copy.run_dir) == losses(trained[2].run_dir)


def test_resume_with_another_model_is_a_short_refusal(trained, tmp_path, capsys):
    copy, names = copy_run(trained, tmp_path)
    drop_newest(copy)
    before = snapshot(copy.run_dir)
    with pytest.raises(ConfigError, match=r"model.dim \(32 in the checkpoint, 64 now\)"):
        train(load_config(trained[0], [*names, "model.dim=64"]), resume=True, echo=quiet)
    assert train_cli(trained[0], [*names, "model.dim=64", "model.n_layers=4"], "--resume") == 2
    line = one_error_line(capsys)
    assert len(line) < 400 and "model.dim (32 in the checkpoint, 64 now), model.n_layers (3 in the checkpoint, 4 now)" in line
    assert_kept(before, copy.run_dir)  # config.toml not rewritten, nothing pruned
    assert main(["eval", "--checkpoint", str(copy.run_dir), "--set", "model.dim=64"]) == 2
    line = one_error_line(capsys)
    assert len(line) < 300 and "model.dim (32 in the checkpoint, 64 asked)" in line


# ---- the plot at the end ----------------------------------------------------------------------------------
def test_train_plots_at_the_end_unless_told_not_to(trained, tmp_path, capsys):
    copy, names = copy_run(trained, tmp_path)
    plot = copy.run_dir / "plot.png"
    assert not plot.exists()
    assert train_cli(trained[0], names, "--resume", "--no-plot") == 0  # finished: the table only
    assert not plot.exists() and "plot:" not in capsys.readouterr().out
    assert train_cli(trained[0], names, "--resume") == 0
    assert plot.stat().st_size > 0 and f"plot: {plot}" in capsys.readouterr().out
    assert main(["train", "--plot", str(tmp_path / "p.png"), "--no-plot"]) == 2  # argparse refuses the pair
    assert "not allowed with argument" in capsys.readouterr().err
