"""Shared test setup.

- Without a GPU, Triton kernels can only run on CPU tensors under Triton's interpreter, which
  must be switched on before any kernel module is imported (its decorators read it): here,
  before every test module. With a GPU the kernels run compiled.
- Every test starts from a seed of its own (derived from its id), so its random inputs do not
  depend on which other tests ran before it.
"""

from __future__ import annotations

import os
import random
import sys
import zlib
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (plain_reference, poison) import by name


@pytest.fixture(autouse=True)
def seed_per_test(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    random.seed(seed)
    yield
