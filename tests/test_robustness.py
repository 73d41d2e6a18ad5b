"""The robustness matrix's script (scripts/robustness.py): its arms, your own corpus, and a toy run on the CPU.

The end-to-end run trains the dense arm and the causal arm (16 steps at 512 tokens) on a corpus
given with --corpus, evaluates both densely, and checks the result entry against the runs'
metrics: the stage split, the dense-evaluated final bpb, the switch with both attentions and the
leak meter there (exactly 0 for causal selection). A second invocation finds both runs finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lighthouse.trainer.config import load_config, to_toml
from lighthouse.trainer.metrics import read_metrics
from test_trainer import _env, make_corpus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import robustness  # noqa: E402

sys.path.remove(str(REPO / "scripts"))

TOY = ["stages.0.steps=8", "stages.1.steps=8", "data.seq_len=512", "lighthouse.pooling=2", "lighthouse.topk=128",
       "training.batch_size=1", "training.eval_every=4", "training.checkpoint_every=8", "training.log_every=2",
       "training.threads=1", "training.leak_every=1", "training.leak_positions=2", "data.val_windows=2",
       "data.val_fraction=0.2", "optim.warmup_steps=2"]


def test_every_arm_splits_the_same_steps():
    cfg = load_config(REPO / "configs" / "robustness-32k.toml")
    assert cfg.total_steps == 1024 and cfg.lighthouse.topk == 512
    for arm, selection, lighthouse_steps, topk in (("dense", None, 0, 512), ("topk", "topk", 640, 512),
                                                   ("causal", "causal", 640, 512), ("causal-k2", "causal", 640, 1024),
                                                   ("topk-rec6", "topk", 384, 512), ("causal-only", "causal", 1024, 512)):
        run = load_config(REPO / "configs" / "robustness-32k.toml", robustness.arm_settings(arm, cfg))
        want = [("lighthouse", lighthouse_steps), ("dense", 1024 - lighthouse_steps)]
        assert [(s.attention, s.steps) for s in run.stages] == [s for s in want if s[1]], arm
        assert run.lighthouse.topk == topk, arm
        if selection:
            assert run.lighthouse.selection == selection, arm
    mixed = load_config(REPO / "configs" / "robustness-32k.toml", robustness.arm_settings("causal-mix4", cfg))
    assert [(s.attention, s.steps, s.dense_every) for s in mixed.stages] == [("lighthouse", 640, 4), ("dense", 384, 0)]
    assert [mixed.attention_at(s) for s in range(8)] == ["lighthouse"] * 3 + ["dense"] + ["lighthouse"] * 3 + ["dense"]
    rewarmed = load_config(REPO / "configs" / "robustness-32k.toml", robustness.arm_settings("topk-rw", cfg))
    assert [s.warmup_steps for s in rewarmed.stages] == [0, cfg.optim.warmup_steps] == [0, 100]
    for bad in ("sparse", "causal-k3"):
        with pytest.raises(SystemExit, match="unknown arm"):
            robustness.arm_settings(bad, cfg)


def test_your_own_corpus_is_files_one_document_each():
    name, globs = robustness.parse_corpus_flag("mine=/data/a/**/*.txt;/data/b/*.md")
    assert (name, globs) == ("mine", ["/data/a/**/*.txt", "/data/b/*.md"])
    cfg = load_config(REPO / "configs" / "robustness-32k.toml", robustness.corpus_overrides("mine", {"mine": globs}))
    assert (cfg.data.source, cfg.data.paths, cfg.data.document, cfg.data.val_split) == \
        ("files", globs, "file", "documents")
    for bad in ("mine", "=/x/*.txt", "mine=", "a b=/x", "code=/x/*.c"):
        with pytest.raises(SystemExit, match="--corpus"):
            robustness.parse_corpus_flag(bad)


def test_a_run_folder_of_another_length_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(to_toml(load_config(REPO / "configs" / "demo.toml", TOY)))
    robustness.check_run_length(tmp_path / "run", 512)  # the same length: resumed as before
    robustness.check_run_length(tmp_path / "absent", 1024)  # no folder yet: a new run
    with pytest.raises(SystemExit, match=r"run: trained at data.seq_len = 512, this invocation runs 1024; give each"):
        robustness.check_run_length(tmp_path / "run", 1024)


def run_matrix(tmp_path: Path, corpus: Path, *extra: str, arms: str = "dense,causal") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "robustness.py"), "--config", str(REPO / "configs" / "demo.toml"),
           "--corpora", "", "--corpus", f"toy={corpus}/*.txt", "--arms", arms, "--device", "cpu", *extra,
           "--out", str(tmp_path / "matrix"), "--results", str(tmp_path / "results.json"), "--final-windows", "2",
           "--deadline", "600", *[x for s in TOY for x in ("--set", s)]]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_toy_matrix_on_your_own_corpus(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_files=120)
    run_matrix(tmp_path, corpus)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["corpus"], r["arm"]) for r in results] == [("toy", "causal"), ("toy", "dense")]
    causal, dense = results
    assert [(s["attention"], s["steps"]) for s in causal["stages"]] == [("lighthouse", 10), ("dense", 6)]
    assert [(s["attention"], s["steps"]) for s in dense["stages"]] == [("dense", 16)]
    assert causal["tokens"] == dense["tokens"] == 16 * 512
    assert causal["lighthouse"]["selection"] == "causal"
    for r in results:
        evaluated = json.loads((tmp_path / "matrix" / "evals" / f"toy-s0-{r['arm']}-stauto" / "position.json").read_text())
        assert r["final_bpb_dense"] == evaluated["val_bpb"] and r["final_windows"] == 2
    records = read_metrics(tmp_path / "matrix" / "toy-s0-causal-stauto")  # the demo's data.streams = 0: auto
    switch = [x for x in records if x["kind"] == "stage_end"][0]
    assert (causal["switch_step"], causal["switch_bpb_lighthouse"], causal["switch_bpb_dense"]) == \
        (10, switch["val_bpb"], switch["val_bpb_dense"])
    assert causal["switch_leak"] and all(span["mean_nats"] == 0.0 for span in causal["switch_leak"])
    assert "switch_step" not in dense

    # Again, with a repeat of the dense arm: runs already in the results are not run again and keep their
    # entries; the repeat is a new run beside the first, compared with the first dense run. On the CPU
    # training is bitwise repeatable, so the repeat ends exactly where the first dense run did.
    again = run_matrix(tmp_path, corpus, "--repeats", "0,1", arms="dense")
    assert "toy-s0-dense-stauto: already in" in again.stdout and "toy-s0-dense-stauto-r1" in again.stdout
    now = json.loads((tmp_path / "results.json").read_text())
    assert [(r["arm"], r["repeat"]) for r in now] == [("causal", 0), ("dense", 0), ("dense", 1)]
    assert now[:2] == results and now[2]["final_bpb_dense"] == dense["final_bpb_dense"]
    rows = {row["arm"]: row for row in robustness.summary_rows(now)}
    assert (rows["dense"]["runs"], rows["dense"]["mean"]) == (1, 0.0)
    assert rows["causal"]["mean"] == pytest.approx(causal["final_bpb_dense"] - dense["final_bpb_dense"])


def test_summary_pairs_every_run_with_the_first_dense_run_of_its_seed_and_rate(tmp_path):
    def run(seed, arm, bpb, repeat=None, lr=2e-3, streams=None, seq_len=None):  # older entries lack the last keys
        return {"corpus": "c", "lr": lr, "seed": seed, "arm": arm, "final_bpb_dense": bpb,
                **({} if repeat is None else {"repeat": repeat}), **({} if streams is None else {"streams": streams}),
                **({} if seq_len is None else {"seq_len": seq_len})}
    results = [run(0, "dense", 3.0), run(0, "dense", 3.2, repeat=1), run(1, "dense", 2.5),
               run(0, "causal", 3.4), run(0, "causal", 3.1, repeat=1), run(1, "causal", 2.8), run(2, "causal", 1.0),
               run(0, "dense", 2.0, lr=1e-3), run(0, "causal", 2.5, lr=1e-3),
               run(0, "dense", 2.9, streams=16), run(0, "causal", 2.95, streams=16),
               # the same corpus, seed, rate and streams at another length: its own dense run is its baseline
               run(0, "dense", 2.1, streams=16, seq_len=65536), run(0, "causal", 2.25, streams=16, seq_len=65536)]
    assert len({robustness.run_key(r) for r in results}) == len(results)
    rows = {(row["arm"], row["lr"]): row for row in robustness.summary_rows(results) if row["streams"] == 1}
    streams = [row for row in robustness.summary_rows(results) if row["streams"] == 16]
    assert [(r["arm"], r["seq_len"], r["runs"]) for r in streams] == [("causal", 0, 1), ("causal", 65536, 1)]
    assert streams[0]["mean"] == pytest.approx(0.05) and streams[1]["mean"] == pytest.approx(0.15)
    assert rows["causal", 2e-3]["runs"] == 3  # seed 2 has no dense run: not compared
    assert rows["causal", 2e-3]["mean"] == pytest.approx((0.4 + 0.1 + 0.3) / 3)
    assert (rows["causal", 2e-3]["min"], rows["causal", 2e-3]["max"]) == (pytest.approx(0.1), pytest.approx(0.4))
    assert rows["dense", 2e-3] == {"corpus": "c", "seq_len": 0, "lr": 2e-3, "streams": 1, "arm": "dense", "runs": 1,
                                   "mean": pytest.approx(0.2), "min": pytest.approx(0.2), "max": pytest.approx(0.2)}
    assert rows["causal", 1e-3]["runs"] == 1 and rows["causal", 1e-3]["mean"] == pytest.approx(0.5)  # its own rate's dense
    robustness.plot_matrix(results, tmp_path / "matrix.png")
    assert (tmp_path / "matrix.png").stat().st_size > 0
    assert robustness.run_name("c", 0, "causal", 2) == "c-s0-causal-r2" and robustness.run_name("c", 0, "causal") == "c-s0-causal"
    assert robustness.parse_repeats("0") == [0] and robustness.parse_repeats("0, 1,2") == [0, 1, 2]
    for bad in ("", "x", "-1", "0,0", "1,"):
        with pytest.raises(SystemExit, match="--repeats"):
            robustness.parse_repeats(bad)
    assert robustness.run_name("c", 1, "dense", 0, 1e-3) == "c-s1-dense-lr0.001"
    assert robustness.run_name("c", 1, "dense", 2, None, 16) == "c-s1-dense-st16-r2"
    assert robustness.run_name("c", 1, "dense", 0, None, 0) == "c-s1-dense-stauto"  # data.streams = 0: auto
    assert robustness.parse_lrs("", 2e-3) == [None] and robustness.parse_lrs("1e-3, 2e-3", 2e-3) == [1e-3, None]
    for bad in ("x", "0", "1e-3,1e-3", "2"):
        with pytest.raises(SystemExit, match="--lrs"):
            robustness.parse_lrs(bad, 2e-3)
