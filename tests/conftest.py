"""Shared test setup.

- Without a GPU, Triton kernels can only run on CPU tensors under Triton's interpreter, which
  must be switched on before any kernel module is imported (its decorators read it): here,
  before every test module. With a GPU the kernels run compiled.
- The README's test command runs a worker process per core (pytest-xdist, `-n auto --dist
  loadfile`: a file's tests share a worker, so its module fixtures are built once), each worker
  with one torch thread; plain `python -m pytest` runs them all in this one process.
- Every test starts from a seed of its own (derived from its id), so its random inputs do not
  depend on which other tests ran before it.
- `unwritable_dir`: a folder this process cannot write into, for the tests of one-line errors.
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
    try:
        # Triton's own @jit helpers (tl.cdiv, tl.sum, ...) take the mode in force when triton is first
        # imported: import it now, so a test that unsets the variable cannot leave them compiled.
        import triton.language  # noqa: F401
    except ImportError:
        pass
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one pytest worker per core (-n auto): no oversubscribed threads

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (plain_reference, poison) import by name


@pytest.fixture(autouse=True)
def seed_per_test(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    random.seed(seed)
    yield


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot write into: a read-only one; for root, whom permissions do not stop, an
    empty folder of sysfs (which refuses new entries to everyone). Skipped where there is neither."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    sysfs = Path("/sys/class")
    for folder in sorted(sysfs.iterdir()) if sysfs.is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            try:
                (folder / "lighthouse-probe").mkdir()
            except OSError:
                yield folder
                return
            (folder / "lighthouse-probe").rmdir()
    pytest.skip("no folder that root cannot write into")
