"""The two-stage trainer: stages, schedule, checkpoints, kill-and-resume, CLI."""

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lighthouse.cli import main
from lighthouse.model import Transformer
from lighthouse.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lighthouse.trainer.config import ConfigError, baseline_config, load_config
from lighthouse.trainer.loop import RunExistsError, lr_at, train
from lighthouse.trainer.metrics import format_table, read_metrics

WORDS = "the of and a to in is you that it he was for on are as with his they at be this from".split()


def make_corpus(root: Path, n_files: int = 40) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        words = [rng.choice(WORDS) for _ in range(rng.randint(50, 400))]
        (root / f"doc{i:03d}.txt").write_text(" ".join(words) + ".\n", encoding="utf-8")
    return root


def tiny_config(tmp_path: Path, *, steps=(4, 3), name="tiny", ckpt_every: int = 3) -> Path:
    corpus = make_corpus(tmp_path / "corpus")
    stages = "".join(f'\n[[stages]]\nattention = "{k}"\nsteps = {n}\n' for k, n in zip(("lighthouse", "dense"), steps))
    text = f"""
name = "{name}"
out_dir = "{tmp_path / 'runs'}"

[model]
dim = 32
n_layers = 3
n_heads = 2
n_kv_heads = 1
ffn_hidden = 64
dense_layers = [0]

[lighthouse]
levels = 2
pooling = 2
topk = 128

[data]
source = "files"
paths = ["{corpus}"]
seq_len = 256
val_fraction = 0.2
val_windows = 3

[optim]
lr = 3e-3
warmup_steps = 2

[training]
batch_size = 2
micro_batch_size = 1
eval_every = 3
checkpoint_every = {ckpt_every}
log_every = 1
progress = false
threads = 1
{stages}
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-stage run and its baseline (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = load_config(tiny_config(tmp))
    switches = []
    original = Transformer.set_attention

    def spy(self, kind):
        before = {k: v.clone() for k, v in self.state_dict().items()}
        original(self, kind)
        switches.append((kind, all(torch.equal(before[k], v) for k, v in self.state_dict().items())))

    Transformer.set_attention = spy
    try:
        result = train(cfg, echo=lambda *a: None)
    finally:
        Transformer.set_attention = original
    base = train(baseline_config(cfg), echo=lambda *a: None)
    return cfg, result, base, switches


def test_two_stages_in_one_run(finished_run):
    cfg, result, base, switches = finished_run
    records = read_metrics(result.run_dir)
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(1, 8))
    assert [r["attention"] for r in train_recs] == ["lighthouse"] * 4 + ["dense"] * 3
    assert [r["stage"] for r in train_recs] == [0] * 4 + [1] * 3
    assert [r["tokens"] for r in train_recs] == [512 * s for s in range(1, 8)]
    assert all(math.isfinite(r["loss"]) and r["time_s"] > 0 for r in train_recs)
    # the schedule runs over both stages without a jump at the switch
    assert [r["lr"] for r in train_recs] == [lr_at(cfg, s) for s in range(7)]
    ends = [r for r in records if r["kind"] == "stage_end"]
    assert [(r["step"], r["attention"]) for r in ends] == [(4, "lighthouse"), (7, "dense")]
    assert all(0 < r["val_bpb"] < 10 and 0 < r["val_bpb_dense"] < 10 for r in ends)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 4, 6, 7]
    # the switch changes no parameter
    assert [k for k, _ in switches[:2]] == ["lighthouse", "dense"] and all(same for _, same in switches)
    # summary rows and table
    assert [(r["stage"], r["attention"], r["steps"]) for r in result.rows] == [(1, "lighthouse", 4), (2, "dense", 3)]
    table = format_table(result.rows + base.rows)
    assert "tiny-baseline" in table and "lighthouse+dense" in table and "val bpb" in table


def test_optimizer_state_survives_the_switch(finished_run):
    cfg, result, _, _ = finished_run
    ckpt = latest_checkpoint(result.run_dir)
    assert ckpt.name == "step-00000007"
    state = load_checkpoint(ckpt)
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {7.0}  # AdamW kept counting through the stage switch
    assert state["data"]["train"]["windows"] == 7 * 2
    assert (result.run_dir / "config.toml").is_file()
    assert load_config(result.run_dir / "config.toml") == cfg


def test_baseline_is_dense_for_the_same_tokens(finished_run):
    cfg, result, base, _ = finished_run
    recs = [r for r in read_metrics(base.run_dir) if r["kind"] == "train"]
    assert {r["attention"] for r in recs} == {"dense"} and recs[-1]["tokens"] == 7 * cfg.tokens_per_step
    assert base.run_dir.name == "tiny-baseline"
    assert losses(base.run_dir).keys() == losses(result.run_dir).keys()
    # same seed, same initial weights, same first batch: only the attention of step 1 differs
    assert losses(base.run_dir)[1] != losses(result.run_dir)[1]


def test_cli_eval_and_plot(finished_run, capsys, tmp_path):
    _, result, base, _ = finished_run
    assert main(["eval", "--checkpoint", str(result.run_dir), "--attention", "dense"]) == 0
    dense_out = capsys.readouterr().out
    assert "attention dense" in dense_out and "val bpb" in dense_out
    ends = [r for r in read_metrics(result.run_dir) if r["kind"] == "stage_end"]
    bpb = float(dense_out.split("val bpb ")[1].split(",")[0])
    assert abs(bpb - ends[-1]["val_bpb"]) < 1e-3
    assert main(["eval", "--checkpoint", str(result.run_dir), "--attention", "lighthouse"]) == 0
    assert "attention lighthouse" in capsys.readouterr().out
    out = tmp_path / "cmp.png"
    assert main(["plot", str(result.run_dir), str(base.run_dir), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2


def test_existing_run_needs_resume_or_overwrite(finished_run):
    cfg, _, _, _ = finished_run
    with pytest.raises(RunExistsError, match="--resume"):
        train(cfg, echo=lambda *a: None)
    again = train(cfg, resume=True, echo=lambda *a: None)  # already finished: nothing to do
    assert again.resumed_from == cfg.total_steps and len(again.rows) == 2


def test_lr_schedule():
    cfg = load_config(None, ["optim.warmup_steps=10", "optim.min_lr_ratio=0.1", "stages.0.steps=60", "stages.1.steps=40"])
    lr = cfg.optim.lr
    assert lr_at(cfg, 0) == pytest.approx(lr / 10) and lr_at(cfg, 9) == pytest.approx(lr)
    assert lr_at(cfg, 99) == pytest.approx(0.1 * lr, rel=1e-3)
    values = [lr_at(cfg, s) for s in range(100)]
    assert all(b <= a for a, b in zip(values[9:], values[10:]))  # monotone decay across the switch at 60
    assert abs(values[60] - values[59]) < 0.05 * lr


def test_stage_rewarmup_ramps_the_scheduled_rate():
    common = ["optim.warmup_steps=10", "stages.0.steps=60", "stages.1.steps=40"]
    plain = load_config(None, common)
    cfg = load_config(None, [*common, "stages.1.warmup_steps=8"])
    for step in range(100):
        ramp = (step - 59) / 8 if 60 <= step < 68 else 1.0
        assert lr_at(cfg, step) == pytest.approx(ramp * lr_at(plain, step)), step
    assert lr_at(cfg, 60) == pytest.approx(lr_at(plain, 60) / 8) and lr_at(cfg, 67) == pytest.approx(lr_at(plain, 67))


def test_interleaved_dense_steps(tmp_path, monkeypatch):
    """`dense_every`: those steps of a Lighthouse stage train with dense attention, the others with
    Lighthouse, and evaluations still report the stage's own attention beside dense."""
    from lighthouse.trainer.stepper import Stepper

    cfg = load_config(tiny_config(tmp_path, steps=(5, 2), name="mixed"), ["stages.0.dense_every=3"])
    assert [cfg.attention_at(s) for s in range(7)] == ["lighthouse"] * 2 + ["dense"] + ["lighthouse"] * 2 + ["dense"] * 2
    kinds, original = [], Stepper.step

    def spy(self, step):
        kinds.append(self.model.attention_kinds()[1])  # layer 0 stays dense
        return original(self, step)

    monkeypatch.setattr(Stepper, "step", spy)
    result = train(cfg, echo=lambda *a: None)
    assert kinds == [cfg.attention_at(s) for s in range(7)]
    at_3 = next(r for r in read_metrics(result.run_dir) if r["kind"] == "eval" and r["step"] == 3)
    assert at_3["val_bpb"] != at_3["val_bpb_dense"]  # step 3 was dense; the diagnostic is Lighthouse's


def test_an_interleaved_dense_step_is_a_dense_step(tmp_path):
    """Lighthouse x2 with every 2nd step dense, then dense x2, trains bitwise as Lighthouse x1, dense x3."""
    mixed = load_config(tiny_config(tmp_path, steps=(2, 2), name="mixed"), ["stages.0.dense_every=2"])
    split = load_config(tiny_config(tmp_path, steps=(1, 3), name="split"))
    assert losses(train(mixed, echo=lambda *a: None).run_dir) == losses(train(split, echo=lambda *a: None).run_dir)


@pytest.mark.parametrize("override, message", [
    ("stages.0.dense_every=1", "dense_every' must be 0"),
    ("stages.0.dense_every=-2", "dense_every' must be 0"),
    ("stages.1.dense_every=4", "already dense"),
    ("stages.1.warmup_steps=1000", "warmup_steps' must be between"),
])
def test_stage_mitigations_refuse_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_config_written_before_the_stage_keys_resumes_without_a_diff():
    from lighthouse.trainer.config import config_diff, to_dict

    now = to_dict(load_config(None))
    old = to_dict(load_config(None))
    for stage in old["stages"]:
        del stage["dense_every"], stage["warmup_steps"]
    assert config_diff(old, now) == []


def test_a_config_written_before_data_streams_read_one_stream():
    """data.streams is absent from configs written before it existed, whose runs read one stream: resumed
    under today's default (0, auto) the diff names the key (the data's own resume error for a changed
    stream count is tested in test_data)."""
    from lighthouse.trainer.config import config_diff, to_dict

    now = to_dict(load_config(None))
    old = to_dict(load_config(None))
    del old["data"]["streams"]
    assert config_diff(old, now) == [("data.streams", 1, 0)]
    old["data"]["streams"] = 0
    assert config_diff(old, now) == []


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 3)
    save_checkpoint(tmp_path, 1, model, {"step": 1})
    good = latest_checkpoint(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, {"step": 2})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good  # the half-written one is invisible
    assert load_checkpoint(good, model)["step"] == 1
    (tmp_path / "checkpoints" / "latest").unlink()  # even without the pointer
    assert latest_checkpoint(tmp_path) == good
    save_checkpoint(tmp_path, 3, model, {"step": 3})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000003"]


def test_unknown_scorer_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="'lighthouse.scorer': unknown scorer 'nope'"):
        load_config(tiny_config(tmp_path), ["lighthouse.scorer=nope"])


def test_gla_scorer_trains_with_frozen_gates_and_resumes(tmp_path):
    """scorer = "gla" through the trainer: the gates feed selection, never change, and resume exactly."""
    from safetensors.torch import load_file

    config = tiny_config(tmp_path, steps=(3, 2), ckpt_every=2)
    extra = ["lighthouse.scorer=gla", "data.seq_len=512", "training.keep_checkpoints=5"]  # 256 coarse entries, 128 picks
    full = train(load_config(config, [*extra, "name=gla-full"]), echo=lambda *a: None)
    first = latest_checkpoint(full.run_dir).parent / "step-00000002"
    weights = [load_file(str(c / "model.safetensors")) for c in (first, latest_checkpoint(full.run_dir))]
    gates = [k for k in weights[0] if ".attention.wg." in k]
    assert gates and all(k.startswith(("layers.1.", "layers.2.")) for k in gates)  # layer 0 is dense
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in gates)  # frozen through both stages
    assert not torch.equal(weights[0]["layers.1.attention.wq.weight"], weights[1]["layers.1.attention.wq.weight"])
    before = losses(full.run_dir)
    shutil.rmtree(latest_checkpoint(full.run_dir))  # back to step 4: step 5 is trained again
    resumed = train(load_config(config, [*extra, "name=gla-full"]), resume=True, echo=lambda *a: None)
    assert resumed.resumed_from == 4 and losses(resumed.run_dir) == before


# ---- kill and resume, in subprocesses -------------------------------------------------------
def _cli(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lighthouse.cli", "train", "--config", str(config), "--no-progress", *extra]


def _env():
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start_and_signal(cmd, run_dir: Path, after_step: int, sig) -> subprocess.Popen:
    """Start a run and send `sig` as soon as its checkpoint at `after_step` (or later) exists."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pointer = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.is_file():
            name = pointer.read_text().strip()
            if name and int(name.split("-")[1]) >= after_step:
                proc.send_signal(sig)
                break
        time.sleep(0.005)
    proc.wait(timeout=120)
    return proc


def _ckpt_step(run_dir: Path) -> int:
    return int(latest_checkpoint(run_dir).name.split("-")[1])


def test_kill_and_resume_is_exact(tmp_path):
    n = 8  # 2n steps: lighthouse 8, dense 8; checkpoints every 3 and at stage ends
    ref_cfg = tiny_config(tmp_path, steps=(n, n), name="ref", ckpt_every=3)
    train(load_config(ref_cfg), echo=lambda *a: None)  # in this process: one thread, the same sums as the CLI's
    want = losses(tmp_path / "runs" / "ref")
    assert sorted(want) == list(range(1, 2 * n + 1))

    # SIGKILL just after the checkpoint at step 6 (mid stage 1): nothing gets to clean up.
    cfg = tiny_config(tmp_path, steps=(n, n), name="killed", ckpt_every=3)
    run_dir = tmp_path / "runs" / "killed"
    proc = _start_and_signal(_cli(cfg), run_dir, 6, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    killed_at = _ckpt_step(run_dir)
    assert 6 <= killed_at < 2 * n
    resumed = subprocess.run(_cli(cfg, "--resume", "--no-plot"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    assert losses(run_dir) == want  # bitwise: every step, before and after the kill

    # SIGTERM after the stage switch: the handler writes a checkpoint at the current step and exits.
    cfg = tiny_config(tmp_path, steps=(n, n), name="termed", ckpt_every=100)
    run_dir = tmp_path / "runs" / "termed"
    proc = _start_and_signal(_cli(cfg), run_dir, n, signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "continue with --resume" in out
    stopped_at = _ckpt_step(run_dir)
    assert n <= stopped_at < 2 * n  # usually a step that is not a regular checkpoint step
    resumed = subprocess.run(_cli(cfg, "--resume", "--no-plot"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert losses(run_dir) == want
    ref_evals = [r["val_bpb"] for r in read_metrics(tmp_path / "runs" / "ref") if r["kind"] == "stage_end"]
    got_evals = [r["val_bpb"] for r in read_metrics(run_dir) if r["kind"] == "stage_end"]
    assert got_evals == ref_evals


def test_interleaved_streams_train_and_resume_exactly(tmp_path):
    """data.streams = 2 through the trainer: a run resumed from its step-3 checkpoint (mid Lighthouse
    stage) repeats the uninterrupted run's losses bitwise; the checkpoint holds both streams' positions."""
    config = tiny_config(tmp_path, steps=(4, 3), name="streams", ckpt_every=3)
    cfg = load_config(config, ["data.streams=2", "training.keep_checkpoints=10"])
    train(cfg, echo=lambda *a: None)
    want = losses(cfg.run_dir)
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step-00000003")
    assert len(state["data"]["train"]["streams"]) == 2 and state["data"]["train"]["windows"] == 3 * 2

    again = tmp_path / "runs" / "again"
    shutil.copytree(cfg.run_dir, again)
    for ckpt in (again / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > 3:
            shutil.rmtree(ckpt)
    (again / "checkpoints" / "latest").write_text("step-00000003\n", encoding="utf-8")
    said = []
    train(load_config(config, ["data.streams=2", "training.keep_checkpoints=10", 'name="again"']), resume=True,
          echo=lambda *a: said.append(" ".join(map(str, a))))
    assert any("resumed from" in line and "step-00000003" in line for line in said), said
    assert losses(again) == want
