"""The `lighthouse` command sets OpenMP's passive wait policy before torch loads; a user's choice wins."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import os, sys, lighthouse.cli; print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"


def probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_cli_prefers_passive_waits_before_torch_loads():
    assert probe() == "False PASSIVE"  # importing the command does not load torch, and sets the policy
    assert probe(OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"
    assert probe(GOMP_SPINCOUNT="1000") == "False None"


def test_package_names_load_on_first_use():
    out = subprocess.run([sys.executable, "-c", "import sys, lighthouse; a = 'torch' in sys.modules; "
                          "from lighthouse import lighthouse_attention, LighthouseConfig; print(a, 'torch' in sys.modules, "
                          "LighthouseConfig().levels, set(lighthouse.__all__) <= set(dir(lighthouse)))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "3", "True"]
