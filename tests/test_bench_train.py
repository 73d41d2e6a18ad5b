"""The training benchmark's bookkeeping (the timing itself needs a GPU and is not tested here)."""

from lighthouse import LighthouseConfig
from lighthouse.bench.train import fitted_lighthouse, parse_lengths, table


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
