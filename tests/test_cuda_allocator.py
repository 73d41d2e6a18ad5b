"""The allocator setting `lighthouse` prefers at long context (lighthouse/cuda_allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from lighthouse import cuda_allocator


def test_sets_expandable_segments_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        assert not cuda_allocator.prefer_expandable_segments()  # too late: the allocator has read it
        return
    assert cuda_allocator.prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:256")
    assert not cuda_allocator.prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:256"


def test_the_cli_sets_it_before_torch_loads():
    code = ("import os, sys; os.environ.pop('PYTORCH_CUDA_ALLOC_CONF', None); import lighthouse.cli; "
            "print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip() == "expandable_segments:True"
