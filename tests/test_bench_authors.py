"""The harness around the authors' code (`bench attention --authors DIR`), on a fake checkout.

The fake has the authors' file layout and entry points and their imports (the torchtitan
package path, einops); its layer is our reference (so it agrees with ours) or dense attention
(so it does not). The real code needs CUDA; what runs here is the loading, the adapter, the
timing entries and the float32 check.
"""

from __future__ import annotations

import sys

import pytest
import torch

from lighthouse import LighthouseConfig
from lighthouse.bench import attention as bench_attention
from lighthouse.bench import authors as A

CUDA_FILE = """
import torch


class LighthouseSelectionQkKqChunkedTopkNvrtc:
    @staticmethod
    def forward(scores_qk, scores_kq, num_levels, pooling_factor, topk, actual_seq_len):
        # Not a selection: one (batch, head) row of the right length, all zeros, to be told apart from ours.
        n_coarse = actual_seq_len // pooling_factor ** (num_levels - 1)
        S = n_coarse + (num_levels - 1) * pooling_factor * topk
        return torch.zeros(*scores_qk.shape[:2], S, dtype=torch.int32)
"""

MAIN_FILE = """
import os

import torch
from einops import rearrange  # noqa: F401 - as the authors' file does
from torchtitan.models.llama3.model.lighthouse_selection_cuda import LighthouseSelectionQkKqChunkedTopkNvrtc  # noqa: F401

from lighthouse import lighthouse_attention

os.environ["TRITON_PRINT_AUTOTUNING"] = "1"  # as the authors' file does
MODE = "{mode}"


class DialatedLighthouseNormScorer(torch.nn.Module):
    def __init__(self, pooling_factor=4, levels=3):
        super().__init__()
        self.pooling_factor, self.levels = pooling_factor, levels

    def forward(self, xq, xk, xv):
        if MODE == "dense":
            raise NotImplementedError("no scorer in this fake")
        return xq.norm(dim=-1).transpose(1, 2), xk.norm(dim=-1).transpose(1, 2), xq, xk, xv


class LighthouseLocal(torch.nn.Module):
    def __init__(self, attention, scorer, num_levels=3, pooling_factor=4, topk=1024):
        super().__init__()
        self.attention, self.scorer = attention, scorer
        self.num_levels, self.pooling_factor, self.topk = num_levels, pooling_factor, topk

    def forward(self, xq, xk, xv):
        q, k, v = (x.transpose(1, 2) for x in (xq, xk, xv))
        if MODE == "dense":
            return self.attention(q, k, v)
        return lighthouse_attention(q, k, v, levels=self.num_levels, pooling=self.pooling_factor, topk=self.topk,
                                    backend="reference")
"""


def fake_checkout(root, mode="lighthouse", main_file=MAIN_FILE):
    (root / "src").mkdir(parents=True)
    (root / "src" / "lighthouse_selection_cuda.py").write_text(CUDA_FILE, encoding="utf-8")
    (root / "src" / "lighthouse_selection.py").write_text(main_file.replace("{mode}", mode), encoding="utf-8")
    return root


def test_loads_from_the_checkout_and_leaves_no_trace(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_PRINT_AUTOTUNING", raising=False)
    before = set(sys.modules)
    module = A.load_authors(fake_checkout(tmp_path / "authors"))
    assert module.checkout == str(tmp_path / "authors")
    assert {name for name in set(sys.modules) - before if name.startswith(("torchtitan", "einops"))} == set()
    assert "TRITON_PRINT_AUTOTUNING" not in __import__("os").environ
    if "einops" not in before:  # their import of einops got the stub, which refuses to run
        with pytest.raises(RuntimeError, match="einops is not installed"):
            module.rearrange(torch.zeros(1), "a -> a")


def test_a_folder_that_is_not_their_checkout_is_refused(tmp_path):
    with pytest.raises(A.AuthorsCodeError, match="does not look like a checkout.*missing src/lighthouse_selection.py"):
        A.load_authors(tmp_path)
    broken = fake_checkout(tmp_path / "broken", main_file="import not_a_module_anywhere\n")
    with pytest.raises(A.AuthorsCodeError, match="does not import: ModuleNotFoundError"):
        A.load_authors(broken)
    other = fake_checkout(tmp_path / "other", main_file="X = 1\n")
    with pytest.raises(A.AuthorsCodeError, match="has no LighthouseLocal, DialatedLighthouseNormScorer"):
        A.load_authors(other)


def test_float32_check_tells_agreement_from_difference(tmp_path):
    cfg = LighthouseConfig(levels=2, pooling=2, topk=128)
    same = A.compare_with_authors(A.load_authors(fake_checkout(tmp_path / "a")), cfg, 512, H=2, D=8, device="cpu")
    assert same["agree"] and same["rel_err"] < 1e-6 and same["dtype"] == "float32"
    assert (same["selection_rows_differ"], same["selection_rows"]) == (2, 2)  # the fake's kernel picks nothing real
    other = A.compare_with_authors(A.load_authors(fake_checkout(tmp_path / "b", "dense")), cfg, 512, H=2, D=8, device="cpu")
    assert not other["agree"] and other["rel_err"] > A.AGREE_RTOL
    assert other["selection"].startswith("not compared (NotImplementedError")
    line = bench_attention.authors_check_line(dict(other, levels=2, pooling=2, topk=128))
    assert "DIFFER" in line and "selection not compared" in line
    line = bench_attention.authors_check_line(dict(same, levels=2, pooling=2, topk=128))
    assert ": agree; selection differs in 2 of 2 rows" in line


def test_cases_their_layer_cannot_run():
    cfg = LighthouseConfig(levels=3, pooling=4, topk=2048)
    assert A.check_supported(cfg, 32768, 8, 8) is None
    assert "GQA" in A.check_supported(cfg, 32768, 8, 2)
    assert "does not pad" in A.check_supported(cfg, 32768 + 16, 8, 8)
    assert "min_seq_len" in A.check_supported(LighthouseConfig(4, 4, 4096), 131072, 8, 8)


def test_benchmark_entries_time_their_layer_and_check_it_once(tmp_path):
    """The rows `bench attention --authors` fills: timing per length, the float32 check at the first."""
    module = A.load_authors(fake_checkout(tmp_path / "authors"))
    checked: set = set()
    rows_by_n = {}
    for N in (512, 1024):
        q, k, v = (torch.randn(1, 2, N, 8, requires_grad=True) for _ in range(3))
        g = torch.randn(1, 2, N, 8)
        rows = [dict(levels=2, pooling=2, topk=128, N=N, B=1, H=2, G=2, D=8),
                dict(levels=3, pooling=2, topk=256, N=N, B=1, H=2, G=2, D=8, skipped="N < min_seq_len")]
        bench_attention._authors_entries(module, rows, q, k, v, g, 1e-3, checked, device=torch.device("cpu"))
        rows_by_n[N] = rows
    first, second = rows_by_n[512][0], rows_by_n[1024][0]
    for row in (first, second):
        assert row["authors"]["fwd"]["median_ms"] > 0 and row["authors"]["fwd_bwd"]["median_ms"] > 0
    assert first["authors_check"]["agree"] and "authors_check" not in second
    assert "authors" not in rows_by_n[512][1]
    assert checked == {(2, 2, 128)}
