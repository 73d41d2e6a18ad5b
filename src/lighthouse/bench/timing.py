"""What every benchmark shares: one timer, one peak-memory measurement, one result file.

- `time_runs(fn, device)`: milliseconds of each timed call of fn(). The first call is never
  timed (compilation, autotuning, allocator growth), nor are `warmup` more. On CUDA each timed
  call is bracketed by a pair of CUDA events, issued back to back with one synchronisation at
  the end, as in a training loop where the host runs ahead of the device; elsewhere each call
  is timed by the host clock (perf_counter) after the device has finished it. The number of
  timed calls is `reps`, or, when it is not given, as many as fit in `budget_s` (3 to 20),
  judged from the first warm-up call.
- `time_fn`: the same, summarised (median, min, max, count); `timed_or_oom` notes an
  out-of-memory instead of raising.
- `peak_memory(device)`: the peak memory allocated on a CUDA device inside a `with` block
  (everything alive counts, inputs included), and the peak of pinned host memory (what
  offloaded activations occupy); None elsewhere.
- `length_label(N)`: 512K, 1M, or N itself.
- `run_info`, `write_result`: the command, date and versions every result file starts with,
  and the one way a result is written (JSON, folders made as needed).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

K1 = 1024  # lengths are given in K = 1024 tokens


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_ms(fn, device: torch.device) -> float:
    """Milliseconds of one call of fn(), the device's work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def time_runs(fn, device, *, warmup: int = 3, reps: int | None = None, budget_s: float = 10.0) -> list[float]:
    """Milliseconds of each timed call of fn() on `device`, after the untimed first call and `warmup` more."""
    device = torch.device(device)
    fn()  # compilation, autotuning, allocator growth: not timed, not used to size the run
    synchronize(device)
    for i in range(warmup):
        ms = _host_ms(fn, device)
        if reps is None and i == 0 and ms * (warmup + 20) > budget_s * 1e3:  # slow: fewer runs
            reps = max(3, int(budget_s * 1e3 / max(ms, 1e-3)) - 1)
            break
    reps = 20 if reps is None else reps
    if device.type != "cuda":
        return [_host_ms(fn, device) for _ in range(reps)]
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    synchronize(device)
    for t0, t1 in events:
        t0.record()
        fn()
        t1.record()
    synchronize(device)
    return [t0.elapsed_time(t1) for t0, t1 in events]


def summarize(times_ms: list[float]) -> dict:
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "reps": len(times_ms)}


def time_fn(fn, device, *, warmup: int = 3, reps: int | None = None, budget_s: float = 10.0) -> dict:
    """Median, min and max milliseconds of fn() and the number of timed calls (see `time_runs`)."""
    return summarize(time_runs(fn, device, warmup=warmup, reps=reps, budget_s=budget_s))


def timed_or_oom(fn, device, budget_s: float) -> dict:
    """`time_fn`, or {"error": "OOM"} when the device runs out of memory (its cache emptied either way)."""
    device = torch.device(device)
    try:
        return time_fn(fn, device, budget_s=budget_s)
    except torch.cuda.OutOfMemoryError:
        return {"error": "OOM"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


class _Peak:
    gib: float | None = None
    host_gib: float | None = None


@contextlib.contextmanager
def peak_memory(device):
    """`with peak_memory(device) as peak: ...` sets `peak.gib`, the GiB allocated at most inside the block, and
    `peak.host_gib`, the most pinned host memory the CUDA host allocator held (CUDA only)."""
    device = torch.device(device)
    peak = _Peak()
    if device.type != "cuda":
        yield peak
        return
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    host_stats = hasattr(torch.cuda, "reset_peak_host_memory_stats")
    if host_stats:
        torch.cuda.reset_peak_host_memory_stats()
    yield peak
    torch.cuda.synchronize(device)
    peak.gib = torch.cuda.max_memory_allocated(device) / 2**30
    if host_stats:
        peak.host_gib = torch.cuda.host_memory_stats().get("allocated_bytes.peak", 0) / 2**30


def length_label(N: int) -> str:
    """512K, 1M: lengths in units of 1024 tokens (or 1024^2), else the number."""
    if N % (K1 * K1) == 0:
        return f"{N // (K1 * K1)}M"
    return f"{N // K1}K" if N % K1 == 0 else str(N)


def versions() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    return info


def run_info(argv: list[str] | None = None) -> dict:
    """The command (as `python -m lighthouse.bench ...`), the date and the versions of a run."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": "python -m lighthouse.bench " + " ".join(args),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "versions": versions()}


def write_result(path: str | Path, result: dict) -> Path:
    """`result` as JSON at `path` (its folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path

