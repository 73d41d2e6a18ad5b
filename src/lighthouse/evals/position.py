"""Validation bits-per-byte by position in the window: does the model use long context?

A model that uses its context predicts later bytes better, so bpb should fall from the first
bucket (little context) to the last. The prediction at position p has seen inputs 0..p and
predicts target p (the byte at p + 1). Buckets of positions grow by a factor of 4 from
0-1K: 0-1K, 1K-4K, 4K-16K, 16K-64K, 64K-256K, ..., the last one clipped to the window length.
Pooling all buckets gives the overall validation bpb of `lighthouse.evals.bpb.evaluate` (the
same targets: bytes only, end-of-document targets left out).

Legend: W windows, B micro-batch, N window length (inputs), V vocabulary.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch

from .common import eval_mode, target_nats, window_batches


def bucket_edges(n: int, first: int = 1024, factor: int = 4) -> list[int]:
    """[0, first, first*factor, ..., n]: bucket boundaries of positions 0..n-1, the last clipped to n."""
    if n < 1 or first < 1 or factor < 2:
        raise ValueError(f"bucket_edges needs n >= 1, first >= 1, factor >= 2; got {n}, {first}, {factor}")
    edges, edge = [0], first
    while edge < n:
        edges.append(edge)
        edge *= factor
    return edges + [n]


def format_position(p: int) -> str:
    """1024 -> '1K', 65536 -> '64K', 1048576 -> '1M', 1000 -> '1000'."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if p and p % size == 0:
            return f"{p // size}{unit}"
    return str(p)


@torch.no_grad()
def position_bpb(
    model, windows_WN1: torch.Tensor, device, amp_dtype=None, micro_batch: int = 1, edges: list[int] | None = None
) -> list[dict]:
    """Bits-per-byte of the windows' byte targets, bucketed by position.

    `model(idx_BN) -> logits_BNV`; `windows_WN1` holds windows of N + 1 ids (inputs [:, :-1],
    targets [:, 1:]). `edges` are bucket boundaries from 0 to N (default `bucket_edges(N)`).
    Returns one dict per bucket: {bucket, start, end, bpb, n_bytes}, positions [start, end);
    bpb is None for a bucket without byte targets.
    """
    n = windows_WN1.shape[1] - 1
    edges = list(edges) if edges is not None else bucket_edges(n)
    if edges[0] != 0 or edges[-1] != n or any(a >= b for a, b in itertools.pairwise(edges)):
        raise ValueError(f"edges must rise strictly from 0 to the window length {n}, got {edges}")
    nats_N = torch.zeros(n, dtype=torch.float64, device=device)  # summed on the device, read back once
    bytes_N = torch.zeros(n, dtype=torch.int64, device=device)
    with eval_mode(model):
        for x_BN, y_BN in window_batches(windows_WN1, micro_batch, device):
            nats_BN, is_byte_BN = target_nats(model, x_BN, y_BN, device, amp_dtype)
            nats_N += torch.where(is_byte_BN, nats_BN.double(), 0.0).sum(0)
            bytes_N += is_byte_BN.sum(0)
    nats_N, bytes_N = nats_N.cpu(), bytes_N.cpu()
    out = []
    for start, end in itertools.pairwise(edges):
        nats, count = float(nats_N[start:end].sum()), int(bytes_N[start:end].sum())
        out.append({
            "bucket": f"{format_position(start)}-{format_position(end)}", "start": start, "end": end,
            "bpb": nats / count / math.log(2) if count else None, "n_bytes": count,
        })
    return out


def pooled_bpb(buckets: list[dict]) -> float:
    """The bpb of all buckets together (equal to the windows' overall validation bpb)."""
    n_bytes = sum(b["n_bytes"] for b in buckets)
    return sum(b["bpb"] * b["n_bytes"] for b in buckets if b["n_bytes"]) / max(1, n_bytes)


def format_position_table(buckets: list[dict]) -> str:
    rows = [("positions", "bytes", "bpb")]
    rows += [(b["bucket"], f"{b['n_bytes']:,}", "-" if b["bpb"] is None else f"{b['bpb']:.4f}") for b in buckets]
    rows.append(("all", f"{sum(b['n_bytes'] for b in buckets):,}", f"{pooled_bpb(buckets):.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def plot_position_bpb(buckets: list[dict], png: str | Path, title: str = "") -> Path:
    """A bar chart of bpb per position bucket, saved as a PNG (no pyplot state is touched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 * len(buckets) + 3, 4))
    ax = fig.add_subplot()
    shown = [b for b in buckets if b["bpb"] is not None]
    ax.bar(range(len(shown)), [b["bpb"] for b in shown], color="C0")
    ax.set_xticks(range(len(shown)), [b["bucket"] for b in shown])
    for x, b in enumerate(shown):
        ax.annotate(f"{b['bpb']:.3f}", (x, b["bpb"]), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("position in the window (bytes of context)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(title or "bits per byte by position")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png
