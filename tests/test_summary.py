"""The end-of-run summary compares dense-evaluated bpb only: at equal tokens and at equal wall-clock."""

from __future__ import annotations

import json

import pytest

from lighthouse.trainer.metrics import compare_runs, dense_bpb_curve, format_comparison, format_table, stage_rows
from lighthouse.trainer.plot import plot_runs


def write(run_dir, records):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def train(step, attention, time_s, rate):
    return {"kind": "train", "step": step, "stage": 0 if attention == "lighthouse" else 1, "attention": attention,
            "tokens": step * 100, "loss": 3.0, "lr": 1e-3, "grad_norm": 1.0, "time_s": time_s, "tok_per_s": rate}


def ev(step, attention, time_s, bpb, dense):
    return {"kind": "eval", "step": step, "stage": 0, "attention": attention, "tokens": step * 100, "time_s": time_s,
            "val_bpb": bpb, "val_loss": bpb, "val_bpb_dense": dense}


@pytest.fixture
def runs(tmp_path):
    recipe, base = tmp_path / "demo", tmp_path / "demo-baseline"
    write(recipe, [
        train(10, "lighthouse", 5.0, 300.0), train(20, "lighthouse", 10.0, 300.0),
        ev(20, "lighthouse", 10.0, 2.0, 3.5),  # Lighthouse-evaluated 2.0: far below any dense model
        {"kind": "leak", "step": 20, "stage": 0, "attention": "lighthouse", "tokens": 2000, "time_s": 10.0,
         "spans": [{"span": 1, "mean_nats": 0.03, "stderr": 0.01, "mean_abs_nats": 0.05, "positions": 8}]},
        {"kind": "stage_end", "step": 20, "stage": 0, "attention": "lighthouse", "tokens": 2000, "time_s": 10.0,
         "val_bpb": 2.0, "val_bpb_dense": 3.5},
        train(30, "dense", 20.0, 100.0), ev(30, "dense", 20.0, 3.0, 3.0),
        {"kind": "stage_end", "step": 30, "stage": 1, "attention": "dense", "tokens": 3000, "time_s": 20.0,
         "val_bpb": 3.0, "val_bpb_dense": 3.0},
    ])
    write(base, [
        train(10, "dense", 10.0, 100.0), ev(10, "dense", 10.0, 3.6, 3.6),
        train(20, "dense", 20.0, 100.0), ev(20, "dense", 20.0, 3.2, 3.2),
        train(30, "dense", 30.0, 100.0), ev(30, "dense", 30.0, 2.9, 2.9),
        {"kind": "stage_end", "step": 30, "stage": 0, "attention": "dense", "tokens": 3000, "time_s": 30.0,
         "val_bpb": 2.9, "val_bpb_dense": 2.9},
    ])
    return recipe, base


def test_comparison_at_equal_tokens_and_equal_wall_clock(runs):
    recipe, base = runs
    assert dense_bpb_curve(recipe) == [(20, 2000, 10.0, 3.5), (30, 3000, 20.0, 3.0)]
    c = compare_runs(recipe, base)
    assert c["recipe_bpb"] == 3.0 and c["baseline_bpb_equal_tokens"] == 2.9
    assert c["baseline_bpb_equal_time"] == pytest.approx(3.2)  # the baseline at 20 s, the recipe's training time
    assert c["lighthouse_tok_s"] == 300.0 and c["dense_tok_s"] == 100.0 and c["leak_nats"] == 0.03
    text = format_comparison(c)
    assert "at equal tokens" in text and "(+0.1000)" in text and "at equal wall-clock" in text and "(-0.2000)" in text
    assert "3.00x" in text and "+0.0300 nats" in text
    assert "2.0000" not in text  # the Lighthouse-evaluated bpb is no part of the comparison


def test_table_puts_dense_bpb_first_and_lighthouse_bpb_as_a_diagnostic(runs):
    recipe, base = runs
    rows = stage_rows(recipe) + stage_rows(base)
    table = format_table(rows)
    header = table.splitlines()[0]
    assert header.index("val bpb (dense)") < header.index("diagnostic: bpb with own attention")
    lighthouse_line = next(line for line in table.splitlines() if " lighthouse " in line)
    assert "3.5000" in lighthouse_line and "2.0000" in lighthouse_line and "+0.0300" in lighthouse_line
    assert lighthouse_line.index("3.5000") < lighthouse_line.index("2.0000")


def test_plot_shows_dense_evaluations(runs, tmp_path):
    out = plot_runs(list(runs), tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_says_why_there_is_no_equal_wall_clock_point(runs, tmp_path):
    recipe, _ = runs
    fast_base = tmp_path / "fast-baseline"
    write(fast_base, [train(30, "dense", 15.0, 200.0), ev(30, "dense", 15.0, 2.9, 2.9),
                      {"kind": "stage_end", "step": 30, "stage": 0, "attention": "dense", "tokens": 3000, "time_s": 15.0,
                       "val_bpb": 2.9, "val_bpb_dense": 2.9}])
    c = compare_runs(recipe, fast_base)  # the recipe trained 20 s, the baseline only 15 s
    assert c["baseline_bpb_equal_time"] is None
    assert "this run was slower" in format_comparison(c)
