"""CPU threads: keep OpenMP's idle threads from spinning while another process needs the core.

PyTorch's CPU kernels run on OpenMP threads, one per core by default. Between parallel regions
an idle OpenMP thread spins for a while before it sleeps (GNU OpenMP: about 300,000 iterations).
When another process holds one of the cores, each parallel region waits for the thread that
lost its core while the spinning threads keep the CPU from it. Measured on 2 busy cores, one
training step of the demo model at 1,024 tokens went from 0.4 s to 2-10 s with 2 threads, wall
time equal to CPU time; with passive waiting it took 1.2-1.6 s, with one thread 1.0-2.2 s.

OpenMP reads its wait policy once, when torch loads, so `lighthouse`'s commands call
`prefer_passive_waits()` before anything imports torch (the package imports its modules on
first use for this reason). A setting the user made (OMP_WAIT_POLICY, GOMP_SPINCOUNT) wins.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_waits() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE for this process unless torch is loaded or the user chose; True if set."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
