"""The training benchmark's bookkeeping (the timing itself needs a GPU and is not tested here)."""

from lighthouse import LighthouseConfig
from lighthouse.bench.train import fitted_lighthouse, parse_lengths, table
from test_trainer import tiny_config


def test_lengths_and_fitted_budget():
    assert parse_lengths("16K, 98304,1M") == [16384, 98304, 1 << 20]
    cfg = LighthouseConfig(levels=3, pooling=4, topk=1536)
    assert fitted_lighthouse(cfg, 98304) is cfg
    small = fitted_lighthouse(cfg, 16384)  # 1024 coarse entries: the budget can be at most 1024
    assert small.topk == 1024 and small.min_seq_len <= 16384
    assert fitted_lighthouse(cfg, 20000).topk == 1152  # 1250 coarse entries, rounded down to 128s


def test_table_states_the_crossover_and_memory_failures():
    rows = [
        {"N": 16384, "attention": "dense", "tok_s": 100.0, "peak_gib": 1.0},
        {"N": 16384, "attention": "lighthouse", "tok_s": 80.0, "peak_gib": 1.0, "speedup_vs_dense": 0.8, "topk": 1024},
        {"N": 65536, "attention": "dense", "oom": "out of memory"},
        {"N": 65536, "attention": "lighthouse", "tok_s": 90.0, "peak_gib": 2.0, "speedup_vs_dense": None},
        {"N": 32768, "attention": "dense", "tok_s": 50.0, "peak_gib": 1.5},
        {"N": 32768, "attention": "lighthouse", "tok_s": 75.0, "peak_gib": 1.2, "speedup_vs_dense": 1.5},
    ]
    text = table(rows, "t")
    assert "Crossover: Lighthouse is faster from N = 32K on." in text
    assert "| 64K |" in text and "| OOM |" in text and "out of memory" in text
    assert text.index("| 16K |") < text.index("| 32K |") < text.index("| 64K |")


def test_step_options_are_checked():
    import pytest

    from lighthouse.bench.train import StepOptions

    assert StepOptions().policies() == ["none", "block"] and StepOptions("selective").policies() == ["selective"]
    for bad in (dict(checkpointing="mlp"), dict(param_dtype="float16"), dict(offload_layers=2),
                dict(checkpointing="selective", offload_layers=1), dict(loss_chunk=-1)):
        with pytest.raises(ValueError):
            StepOptions(**bad)


def test_bench_train_runs_the_memory_options_on_cpu(tmp_path, capsys):
    """The 1M-token command's plumbing at toy size: every option reaches the step, rows and JSON record it."""
    import json

    from lighthouse.bench import main

    config = tiny_config(tmp_path)  # the trainer tests' model; the benchmark reads [model] and [lighthouse]
    out = tmp_path / "train.json"
    base = ["train", "--config", str(config), "--device", "cpu", "--seq-lens", "256", "--steps", "1", "--warmup", "1"]
    argv = base + ["--attention", "lighthouse", "--set", "model.dense_layers=[]", "--checkpointing", "block",
                   "--offload-layers", "2", "--loss-chunk", "100", "--param-dtype", "bfloat16", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["attention"] == "lighthouse" and row["N"] == 256 and row["tok_s"] > 0
    assert (row["checkpointing"], row["offload_layers"], row["loss_chunk"], row["param_dtype"]) == ("block", 2, 100, "bfloat16")
    assert result["dense_layers"] == [] and result["options"]["param_dtype"] == "bfloat16"
    text = capsys.readouterr().out
    assert "Lighthouse in every layer" in text and "loss in chunks of 100" in text and "| 256 |" in text
    assert main(base + ["--checkpointing", "selective", "--attention", "dense"]) == 0
    assert "checkpointing selective" in capsys.readouterr().out
    assert main(base + ["--checkpointing", "selective", "--offload-layers", "1"]) == 2  # offload needs "block"
