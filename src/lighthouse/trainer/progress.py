"""Metrics and progress: the trainer's log part.

Per-step values (loss, gradient norm) arrive as device tensors and are kept as they are;
`flush` reads them back to the host once per log interval (the only sync of the training
loop), writes one `train` record to metrics.jsonl, checks them for NaN/Inf and updates the
progress bar. Time is measured from flush to flush, so on a GPU it includes the queued work.

In a multi-process run every rank keeps a TrainLog: `reduce` averages the losses over the
ranks at each flush, `gather` collects every rank's peak memory (host, and GPU on CUDA) into
the record, and only the main rank writes metrics and shows the bar. A rank that dies of its
host memory leaves no Python error; the per-rank peaks in metrics.jsonl say how close each was.
"""

from __future__ import annotations

import math
import resource
import time

import torch

from .metrics import MetricsWriter


class TrainLog:
    def __init__(self, name: str, run_dir, total_steps: int, initial_step: int, show: bool, echo=print,
                 reduce=None, main: bool = True, gather=None):
        from tqdm.auto import tqdm

        self.name = name
        self.metrics = MetricsWriter(run_dir) if main else None
        show = show and main
        self.bar = tqdm(total=total_steps, initial=initial_step, desc=name, unit="step", disable=not show,
                        dynamic_ncols=True)
        self.write = self.bar.write if show else echo
        self._reduce = reduce  # losses of all ranks -> their mean (None: one process)
        self._gather = gather  # one value per rank -> the list over ranks (None: one process)
        self._losses: list[torch.Tensor] = []
        self._grad_norm: torch.Tensor | None = None
        self._tok_s_ema: float | None = None
        self.restart_clock()

    def restart_clock(self) -> None:
        """Start timing training again (after evaluation or a checkpoint, which do not count)."""
        self._t0 = time.perf_counter()

    def add_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self._losses.append(loss)
        self._grad_norm = grad_norm
        self.bar.update(1)

    @property
    def pending(self) -> int:
        return len(self._losses)

    def flush(self, record: dict, time_s: float, tokens_per_step: int) -> float:
        """Read back the steps since the last flush and write a `train` record.

        `time_s` is the training time before these steps; returns it with their seconds added.
        """
        losses = torch.stack(self._losses).float()
        if self._reduce is not None:
            losses = self._reduce(losses)
        losses = losses.cpu()  # the sync
        grad_norm = float(self._grad_norm)
        dt = time.perf_counter() - self._t0
        steps = len(self._losses)
        self._losses = []
        loss = float(losses.mean()) if steps > 1 else float(losses[0])
        if not bool(torch.isfinite(losses).all()):
            first_bad = record["step"] - steps + 1 + int((~torch.isfinite(losses)).nonzero()[0])
            raise FloatingPointError(f"[{self.name}] loss is {loss} at step {first_bad}; lower optim.lr?")
        tok_s = steps * tokens_per_step / dt if dt > 0 else math.inf
        self._tok_s_ema = tok_s if self._tok_s_ema is None else 0.9 * self._tok_s_ema + 0.1 * tok_s
        time_s += dt
        extra = {}
        peaks = {"host_peak_gib": host_peak_gib()}  # the process's peak resident memory so far
        if torch.cuda.is_available():  # this process's peak since the last flush (a host-side counter: no sync)
            peaks["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        if self._gather is not None:  # one entry per rank
            per_rank = self._gather(peaks)
            extra = {key: [p[key] for p in per_rank] for key in peaks}
            if "peak_gib" in extra:
                extra["peak_gib"], extra["peak_gib_ranks"] = extra["peak_gib"][0], extra["peak_gib"]
        else:
            extra = peaks
        self.record({"kind": "train", **record, "loss": loss, "grad_norm": grad_norm, "time_s": time_s,
                     "tok_per_s": tok_s, **extra})
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self._tok_s_ema:,.0f}",
                             stage=f"{record['stage'] + 1}:{record['attention']}")
        self.restart_clock()
        return time_s

    def record(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def host_peak_gib() -> float:
    """This process's peak resident set size in GiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import sys

    return peak / (2**30 if sys.platform == "darwin" else 2**20)
