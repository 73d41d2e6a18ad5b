"""Probe: does pipelining head groups on two CUDA streams hide the memory passes under SDPA?

    PYTHONPATH=src python scripts/probe_head_streams.py [OUT_DIR]    (one CUDA GPU, about a minute)

Times one Lighthouse layer (forward + backward, B=1, H=G=8, D=128, bf16, L3 p4 K2048) whole, split
into head groups on one stream, and split into head groups alternating between two streams, beside
the floor (SDPA on S alone), and checks the split's gradients against the whole layer's. The answer
(no: the streams do not overlap) is in docs/kernel_notes.md, "Versions and what moved", item 4.
"""

import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lighthouse.bench.timing import K1, time_fn, versions, write_result
from lighthouse.config import LighthouseConfig
from lighthouse.kernels.fast_path import lighthouse_fast

cfg = LighthouseConfig(levels=3, pooling=4, topk=2048)
B, H, D = 1, 8, 128
dt = torch.bfloat16
rows = []
side = torch.cuda.Stream()


def leaves(N, groups, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hg = H // groups
    mk = lambda: torch.randn(B, hg, N, D, device="cuda", dtype=dt, generator=gen)  # noqa: E731
    return [(mk().requires_grad_(), mk().requires_grad_(), mk().requires_grad_(), mk()) for _ in range(groups)]


def run_groups(gs, streams):
    main = torch.cuda.current_stream()
    outs, grads, ins = [], [], []
    for i, (q, k, v, g) in enumerate(gs):
        st = main if streams == 1 or i % 2 == 0 else side
        st.wait_stream(main)
        with torch.cuda.stream(st):
            outs.append(lighthouse_fast(q, k, v, cfg))
        grads.append(g)
        ins += [q, k, v]
    main.wait_stream(side)
    res = torch.autograd.grad(outs, ins, grads)
    main.wait_stream(side)
    return res


def view_split(q, k, v, g, groups):
    """Two streams over views of full tensors: the cost a drop-in version would pay for slice backward."""
    main = torch.cuda.current_stream()
    hg = H // groups
    outs = []
    for i in range(groups):
        sl = slice(i * hg, (i + 1) * hg)
        st = main if i % 2 == 0 else side
        st.wait_stream(main)
        with torch.cuda.stream(st):
            outs.append(lighthouse_fast(q[:, sl], k[:, sl], v[:, sl], cfg))
    main.wait_stream(side)
    o = torch.cat(outs, dim=1)
    res = torch.autograd.grad(o, (q, k, v), g)
    return res


def measure(N: int) -> dict:
    S = N // 16 + 2 * 4 * 2048
    row = {"N": N, "S": S}
    full = leaves(N, 1)[0]
    row["whole"] = time_fn(lambda: run_groups([full], 1), "cuda")["median_ms"]
    for groups in (2, 4):
        gs = leaves(N, groups)
        row[f"split{groups}_1stream"] = time_fn(lambda: run_groups(gs, 1), "cuda")["median_ms"]  # noqa: B023
        row[f"split{groups}_2streams"] = time_fn(lambda: run_groups(gs, 2), "cuda")["median_ms"]  # noqa: B023
    q, k, v, g = full
    row["view2_2streams"] = time_fn(lambda: view_split(q, k, v, g, 2), "cuda")["median_ms"]
    fq = torch.randn(B, H, S, D, device="cuda", dtype=dt, requires_grad=True)
    fk = torch.randn_like(fq, requires_grad=True)
    fv = torch.randn_like(fq, requires_grad=True)
    fg = torch.randn_like(fq)

    def floor():
        o = F.scaled_dot_product_attention(fq, fk, fv, is_causal=True)
        torch.autograd.grad(o, (fq, fk, fv), fg)

    row["floor"] = time_fn(floor, "cuda")["median_ms"]
    # the two-stream split against the whole layer on the same (fresh) inputs
    gs = leaves(N, 2, seed=1)
    q, k, v = (torch.cat([x[j] for x in gs], 1).detach().requires_grad_() for j in range(3))
    g = torch.cat([x[3] for x in gs], 1)
    ref = torch.autograd.grad(lighthouse_fast(q, k, v, cfg), (q, k, v), g)
    got = run_groups(gs, 2)
    got_cat = [torch.cat([got[3 * i + j] for i in range(2)], 1) for j in range(3)]
    row["max_abs_diff"] = max((a.float() - b.float()).abs().max().item() for a, b in zip(ref, got_cat))
    return row


for N in [32 * K1, 128 * K1, 512 * K1]:
    rows.append(measure(N))
    print(json.dumps(rows[-1]), flush=True)
    torch.cuda.empty_cache()

info = {"command": "python scripts/probe_head_streams.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(), "unit": "ms, median, forward + backward"}
write_result(Path(sys.argv[1] if len(sys.argv) > 1 else ".") / "probe_head_streams.json", {**info, "rows": rows})
print(f"{'N':>8} {'whole':>8} {'s2/1st':>8} {'s2/2st':>8} {'s4/1st':>8} {'s4/2st':>8} {'view2':>8} {'floor':>8}  whole/floor best/floor")
for r in rows:
    best = min(r["split2_2streams"], r["split4_2streams"])
    print(f"{r['N']:>8} {r['whole']:8.2f} {r['split2_1stream']:8.2f} {r['split2_2streams']:8.2f} {r['split4_1stream']:8.2f} "
          f"{r['split4_2streams']:8.2f} {r['view2_2streams']:8.2f} {r['floor']:8.2f}  {r['whole']/r['floor']:.3f} {best/r['floor']:.3f}",
          file=sys.stdout)
