"""Probe: how much of the fast path's distance to the floor is the host, not the kernels?

    PYTHONPATH=src python scripts/probe_launch_overhead.py [OUT_DIR]    (one CUDA GPU, about two minutes)

For one Lighthouse layer (forward + backward, B=1, H=G=8, D=128, bf16, L3 p4 K2048) and the floor
(causal SDPA on S alone), at 32K, 128K and 512K:
- `events`: milliseconds per call as the benchmark measures it (CUDA events, calls back to back);
- `host`: milliseconds the host needs to issue one call (20 calls without a synchronisation; when
  this is above `events`, the device waits for the host);
- `kernels`: the sum of the device kernels' durations per call, and how many there are (profiler);
- `graph`: the same call captured once in a CUDA graph and replayed (no launch cost; what
  `torch.compile(mode="reduce-overhead")` or a captured training step pays).
Gradients of the captured call are checked against the eager call's.
"""

import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lighthouse.bench.timing import K1, time_fn, versions, write_result
from lighthouse.config import LighthouseConfig
from lighthouse.kernels.fast_path import lighthouse_fast

cfg = LighthouseConfig(levels=3, pooling=4, topk=2048)
B, H, D = 1, 8, 128
dt = torch.bfloat16


def leaves(n, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda: torch.randn(B, H, n, D, device="cuda", dtype=dt, generator=gen)  # noqa: E731
    q, k, v, g = mk().requires_grad_(), mk().requires_grad_(), mk().requires_grad_(), mk()
    return q, k, v, g


def fwd_bwd(fn, q, k, v, g):
    return torch.autograd.grad(fn(q, k, v), (q, k, v), g)


def host_ms(call, n=20):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e3 / n


def kernel_ms(call, n=10):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            call()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in ev)
    return total_us / 1e3 / n, len(ev) / n


def graphed(call):
    """Capture call() once in a CUDA graph; return (replay, its outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call()  # warm-up on the capture stream (allocator, cuDNN plans)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = call()
    return graph.replay, outs


def main(out_dir):
    rows = []
    for n in (32 * K1, 128 * K1, 512 * K1):
        S = cfg.sub_seq_len(n)
        entries = {
            "fast": (lambda a, b, c: lighthouse_fast(a, b, c, cfg), leaves(n, 0)),
            "floor": (lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), leaves(S, 1)),
        }
        row = {"N": n, "S": S}
        for name, (fn, (q, k, v, g)) in entries.items():
            call = lambda fn=fn, q=q, k=k, v=v, g=g: fwd_bwd(fn, q, k, v, g)  # noqa: E731
            eager = call()
            r = {"events_ms": time_fn(call, "cuda", budget_s=4)["median_ms"], "host_ms": host_ms(call)}
            r["kernels_ms"], r["kernels_per_call"] = kernel_ms(call)
            try:
                replay, outs = graphed(call)
                r["graph_ms"] = time_fn(replay, "cuda", budget_s=4)["median_ms"]
                replay()
                torch.cuda.synchronize()
                r["graph_grad_max_abs_diff"] = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outs, eager))
                del replay, outs
            except Exception as e:  # a host synchronisation inside the call cannot be captured: that is a finding
                r["graph_ms"], r["graph_error"] = float("nan"), f"{type(e).__name__}: {e}"[:300]
            row[name] = r
            del eager
            torch.cuda.empty_cache()
        for key in ("events_ms", "kernels_ms", "graph_ms"):
            row[f"ratio_{key}"] = row["fast"][key] / row["floor"][key]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'N':>6} | {'fast events':>11} {'host':>6} {'kernels':>8} {'#':>4} {'graph':>7} | "
          f"{'floor events':>12} {'kernels':>8} {'graph':>7} | {'ratio ev':>8} {'kern':>6} {'graph':>6}")
    for r in rows:
        f, fl = r["fast"], r["floor"]
        print(f"{r['N'] // K1:>5}K | {f['events_ms']:>11.3f} {f['host_ms']:>6.3f} {f['kernels_ms']:>8.3f} "
              f"{f['kernels_per_call']:>4.0f} {f['graph_ms']:>7.3f} | {fl['events_ms']:>12.3f} {fl['kernels_ms']:>8.3f} "
              f"{fl['graph_ms']:>7.3f} | {r['ratio_events_ms']:>8.3f} {r['ratio_kernels_ms']:>6.3f} {r['ratio_graph_ms']:>6.3f}")
    if out_dir:
        write_result(Path(out_dir) / "probe-launch-overhead.json",
                     {"command": "python scripts/probe_launch_overhead.py", "device": torch.cuda.get_device_name(),
                      "date": datetime.datetime.now().isoformat(timespec="seconds"),
                      "versions": versions(), "config": cfg.describe(), "B": B, "H": H, "D": D, "dtype": str(dt),
                      "rows": rows})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
