"""The leak meter: does the loss at position t depend on the bytes after t?

A causal language model's prediction at t (of the byte at t + 1) may use inputs 0..t only.
Dense attention and causal selection obey that exactly; the paper's top-k selection does not
(spec §3: later tokens' norms decide which earlier entries get refined), and a model trained
with it can learn to read its future, even the byte it predicts, through the selection.

The meter measures it directly. For positions t of a window, it replaces the m input bytes
after t (positions t+1 .. t+m) by the bytes at the same positions of another window, and
records how much the loss at t (against the original target) changes:

    delta(t, m) = nats(t | perturbed after t) - nats(t | original)

and reports, per span m, the mean of delta in nats per position with its standard error, and
the mean of |delta|. A mean above 0 means the model does worse when its future is wrong: it
reads it. The spans are 1 (the predicted byte only), p, p^(L-1) (a coarsest entry) and a whole
tile of base positions. Dense attention and causal selection read exactly 0 (every delta is
0.0, bit for bit), which the tests check.

Exactness: the baseline of a perturbed copy in micro-batch slot j is the original window run in
slot j of a micro-batch of the same size, so both take the same arithmetic path (the loss of
every position from common.py's `target_nats`, then the positions t picked out).

Legend: W windows, B micro-batch, N window length (inputs), V vocabulary, M spans.
"""

from __future__ import annotations

import math

import torch

from ..config import LighthouseConfig
from .common import eval_mode, target_nats


def leak_spans(cfg: LighthouseConfig, seq_len: int) -> list[int]:
    """1, p, p^(L-1) and the base positions of one tile, clipped to the window (sorted, unique)."""
    if cfg.is_dense:
        spans = [1, cfg.pooling]
    else:
        tile = cfg.padded_len(seq_len) // cfg.num_tiles
        spans = [1, cfg.pooling, cfg.coarsest_factor, tile]
    return sorted({min(m, seq_len - 1) for m in spans})


def leak_positions(seq_len: int, count: int, first: int = 1) -> list[int]:
    """`count` positions t spread evenly over [first, seq_len - 2] (each has a byte after it)."""
    last = seq_len - 2
    if last < first:
        raise ValueError(f"windows of {seq_len} tokens are too short for the leak meter (need > {first + 1})")
    count = max(1, min(count, last - first + 1))
    step = (last - first) / count
    return sorted({first + int(step * (j + 0.5)) for j in range(count)})


def _nats(model, x_BN: torch.Tensor, y_N: torch.Tensor, device, amp_dtype) -> torch.Tensor:
    """[B, N] on the device: the loss at every position of every row, against the original window's targets."""
    x_BN = x_BN.to(device)
    return target_nats(model, x_BN, y_N.to(device).expand_as(x_BN), device, amp_dtype)[0]


def _nats_at(nats_BN: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """The loss of row b at position t_B[b], [B] float64 on the host."""
    rows = torch.arange(len(t_B), device=nats_BN.device)
    return nats_BN[rows, t_B.to(nats_BN.device)].double().cpu()


@torch.no_grad()
def leak_meter(
    model, windows_WN1: torch.Tensor, spans: list[int], device, amp_dtype=None, *, micro_batch: int = 1,
    positions: int = 16, progress=None,
) -> dict:
    """Mean change of the loss at t when the bytes after t are replaced, per span.

    `model(idx_BN) -> logits_BNV`; `windows_WN1` holds W >= 2 windows of N + 1 ids (inputs
    [:, :-1], targets [:, 1:]); the donor of window w is window w + 1 (mod W). `progress(done,
    total)` is called after every micro-batch. Returns {"spans": [{"span", "mean_nats",
    "stderr", "mean_abs_nats", "positions"}, ...], "windows", "seq_len", "positions_per_window"}.
    """
    W, n = windows_WN1.shape[0], windows_WN1.shape[1] - 1
    if W < 2:
        raise ValueError("the leak meter needs at least 2 windows (each takes its replacement bytes from another)")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    ts = leak_positions(n, positions)
    deltas = {m: [] for m in spans}
    total = W * (1 + -(-len(spans) * len(ts) // micro_batch))
    done = 0
    with eval_mode(model):
        for w in range(W):
            x_N, y_N = windows_WN1[w, :-1], windows_WN1[w, 1:]
            donor_N = windows_WN1[(w + 1) % W, :-1]
            jobs = [(m, t) for m in spans for t in ts]
            # Baselines: the original window in every slot of a full micro-batch.
            nats_BN = _nats(model, x_N.repeat(micro_batch, 1), y_N, device, amp_dtype)
            base = {t: _nats_at(nats_BN, torch.full((micro_batch,), t)) for t in ts}  # t -> [B]
            del nats_BN
            done += 1
            for start in range(0, len(jobs), micro_batch):
                chunk = jobs[start : start + micro_batch]
                x_BN = x_N.repeat(micro_batch, 1)  # unused slots stay unperturbed copies
                t_B = torch.zeros(micro_batch, dtype=torch.long)
                for j, (m, t) in enumerate(chunk):
                    end = min(t + 1 + m, n)
                    x_BN[j, t + 1 : end] = donor_N[t + 1 : end]
                    t_B[j] = t
                nats_B = _nats_at(_nats(model, x_BN, y_N, device, amp_dtype), t_B)
                for j, (m, t) in enumerate(chunk):
                    deltas[m].append(float(nats_B[j] - base[t][j]))
                done += 1
                if progress is not None:
                    progress(done, total)
    rows = []
    for m in spans:
        d = torch.tensor(deltas[m], dtype=torch.float64)
        stderr = float(d.std(unbiased=True) / math.sqrt(len(d))) if len(d) > 1 else 0.0
        rows.append({"span": m, "mean_nats": float(d.mean()), "stderr": stderr,
                     "mean_abs_nats": float(d.abs().mean()), "positions": len(d)})
    return {"spans": rows, "windows": W, "seq_len": n, "positions_per_window": len(ts)}


def plot_leak(result: dict, out, title: str = "") -> None:
    """Mean change of the loss at t (± one standard error) against the span replaced."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["spans"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([str(r["span"]) for r in rows], [r["mean_nats"] for r in rows], yerr=[r["stderr"] for r in rows],
                fmt="o-", capsize=4)
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xlabel("bytes after t replaced")
    ax.set_ylabel("mean change of the loss at t (nats)")
    ax.set_title(title or "leak meter", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def format_leak_table(result: dict) -> str:
    lines = ["span (bytes after t replaced) | mean change of the loss at t (nats) | stderr | mean |change| | positions"]
    for r in result["spans"]:
        lines.append(f"{r['span']:>29} | {r['mean_nats']:+.5f} | {r['stderr']:.5f} | {r['mean_abs_nats']:.5f} | {r['positions']}")
    return "\n".join(lines)
