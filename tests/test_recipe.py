"""The recipe experiment's script (scripts/recipe.py) end to end on the CPU, at toy size.

One sweep learning rate, the baseline and one Lighthouse arm of 16 steps each (the plan of
every arm is checked in this process: the arms differ only in their overrides), their
evaluations and the summary: the arms share tokens and learning rate, split their steps 10/16,
and the summary agrees with each arm's metrics. A second invocation finds everything done and
changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lighthouse.trainer.config import load_config
from lighthouse.trainer.metrics import read_metrics
from test_trainer import _env

REPO = Path(__file__).resolve().parents[1]


def run_recipe(out: Path) -> str:
    cmd = [sys.executable, str(REPO / "scripts" / "recipe.py"), "--config", str(REPO / "configs" / "demo.toml"),
           "--gpus", "cpu", "--out", str(out), "--lrs", "3e-3", "--sweep-steps", "4", "--passkey-lengths", "512",
           "--position-windows", "2", "--passkey-trials", "1", "--deadline", "600",
           "--set", "stages.0.steps=8", "--set", "stages.1.steps=8", "--set", "training.eval_every=4",
           "--set", "training.checkpoint_every=8", "--set", "data.val_windows=2", "--set", "training.batch_size=1",
           "--set", "training.log_every=2", "--set", "data.seq_len=512", "--set", "lighthouse.pooling=2",
           "--set", "training.threads=1", "--set", "data.max_bytes=4000000",
           "--set", "training.leak_every=0", "--arms", "b-lighthouse-window-end"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_recipe_runs_every_arm_and_summarizes(tmp_path):
    out = tmp_path / "recipe"
    text = run_recipe(out)
    assert "all done" in text
    summary = json.loads((out / "results.json").read_text())
    assert summary["lr"] == 3e-3 and set(summary["sweep"]) == {"0.003"}
    arms = summary["arms"]
    assert list(arms) == ["a-dense", "b-lighthouse-window-end"]
    splits = {name: [(s["attention"], s["steps"]) for s in arm["stages"]] for name, arm in arms.items()}
    assert splits == {"a-dense": [("dense", 16)], "b-lighthouse-window-end": [("lighthouse", 10), ("dense", 6)]}
    assert len({arm["tokens"] for arm in arms.values()}) == 1
    for name, arm in arms.items():
        records = read_metrics(out / name)
        ends = [r for r in records if r["kind"] == "stage_end"]
        assert arm["final_val_bpb_dense"] == ends[-1]["val_bpb_dense"]
        assert arm["time_s"] == ends[-1]["time_s"]
        assert load_config(out / name / "config.toml").optim.lr == 3e-3  # the sweep's pick, in every arm
        assert arm["position"] and arm["passkey"] and 0 <= arm["passkey_accuracy"] <= 1
        assert (out / "evals" / name / "passkey.png").is_file()
        assert not (out / name / "plot.png").exists()  # trained with --no-plot: recipe.png draws every arm
        reached = arm["reached_baseline_final_bpb"]
        if reached is not None:  # the first dense-evaluated point at or under the baseline's final bpb
            assert reached["val_bpb_dense"] <= arms["a-dense"]["final_val_bpb_dense"]
            assert arm["time_to_baseline_final_vs_baseline_time"] == reached["time_s"] / arms["a-dense"]["time_s"]
    assert arms["a-dense"]["time_vs_baseline"] == 1.0
    assert arms["a-dense"]["reached_baseline_final_bpb"]["step"] == 16  # the baseline reaches its own final bpb last
    assert (out / "recipe.png").is_file()

    before = (out / "results.json").read_text()
    again = run_recipe(out)  # resumable: everything is done, so nothing reruns
    assert "a-dense: finished, not launched again" in again
    assert json.loads((out / "results.json").read_text()) == json.loads(before)
    assert "all done" in again


def test_recipe_plans_every_arm():
    """The stage splits and settings of all arms (the end-to-end test above runs two of them)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import recipe
    finally:
        sys.path.remove(str(REPO / "scripts"))
    cfg = load_config(REPO / "configs" / "demo.toml", ["stages.0.steps=8", "stages.1.steps=8"])
    arms = recipe.plan(cfg, 3e-3, extra=True)
    assert list(arms) == ["a-dense", "b-lighthouse-window-end", "c-lighthouse-pre-pool", "d-lighthouse-only",
                          "e-recovery-2-of-16", "f-dilated"]
    for name, lighthouse_steps in (("a-dense", 0), ("b-lighthouse-window-end", 10), ("c-lighthouse-pre-pool", 10),
                                   ("d-lighthouse-only", 16), ("e-recovery-2-of-16", 14), ("f-dilated", 10)):
        run = load_config(REPO / "configs" / "demo.toml", arms[name])
        stages = [(s.attention, s.steps) for s in run.stages]
        want = [("lighthouse", lighthouse_steps), ("dense", 16 - lighthouse_steps)]
        assert stages == [s for s in want if s[1]], name
        assert run.optim.lr == 3e-3 and run.total_steps == 16
    assert load_config(REPO / "configs" / "demo.toml", arms["c-lighthouse-pre-pool"]).model.rope == "pre-pool"
    assert load_config(REPO / "configs" / "demo.toml", arms["f-dilated"]).lighthouse.scorer == "dilated"


def test_recipe_refuses_an_unknown_arm(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "recipe.py"), "--config", str(REPO / "configs" / "demo.toml"),
                           "--gpus", "cpu", "--out", str(tmp_path), "--lrs", "", "--arms", "z-nothing"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown arms ['z-nothing']" in proc.stderr
    assert not (tmp_path / "results.json").exists()  # refused before any run
