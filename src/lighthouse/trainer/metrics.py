"""Metrics: one JSON object per line in `runs/<name>/metrics.jsonl` (and TensorBoard when
installed), and the end-of-run summary table.

Record kinds (field "kind"):
  train      step, stage, attention, tokens, loss (nats/token, mean since the previous record), lr,
             grad_norm, time_s, tok_per_s, host_peak_gib (the peak resident host memory so far;
             a list with one entry per rank in a multi-process run), and on CUDA peak_gib (rank 0's
             peak allocated memory since the previous record; every rank's in peak_gib_ranks)
  eval       step, stage, attention, tokens, val_bpb, val_loss (with the stage's attention),
             val_bpb_dense (the same weights with dense attention everywhere: what compares
             models; equal to val_bpb in a dense stage), time_s
  leak       step, stage, attention, tokens, time_s, spans: the leak meter (lighthouse.evals.leak)
             in a Lighthouse stage: [{span, mean_nats, stderr, mean_abs_nats, positions}, ...]
  stage_end  step, stage, attention, tokens, time_s, val_bpb (with the stage's attention),
             val_bpb_dense (with dense attention everywhere)

`step` counts finished optimizer steps, `tokens` the training tokens seen so far and
`time_s` the seconds spent in training steps (evaluation and checkpoints excluded),
continued across resumes.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
# The fields a record of each kind must have to be read back (a line of another program's file is skipped).
REQUIRED_FIELDS = {"train": ("step", "tokens", "time_s", "loss"), "eval": ("step", "tokens", "time_s", "val_bpb"),
                   "stage_end": ("step", "tokens", "time_s"), "leak": ("step", "spans")}


class MetricsWriter:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed
                self._tb = None

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            kind = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{kind}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run (a truncated last line, from a kill mid-write, and lines that are not records
    of ours, without the fields of their kind, are ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and all(k in record for k in REQUIRED_FIELDS.get(record.get("kind"), ())):
                records.append(record)
    return records


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only records up to `step` (what a checkpoint at `step` had seen); atomic."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stage_rows(run_dir: str | Path) -> list[dict]:
    """One row per finished stage: name, stage, attention, steps, tokens, time, bpb (dense and with
    the stage's own attention), and the leak meter at the stage's end (span 1) when it ran."""
    run_dir = Path(run_dir)
    rows, prev = [], {"step": 0, "tokens": 0, "time_s": 0.0}
    step_rates: list[float] = []  # per-step tok/s of the current stage
    leaks: dict[int, dict] = {}
    for r in read_metrics(run_dir):
        if r.get("kind") == "train":
            step_rates.append(r["tok_per_s"])
        if r.get("kind") == "leak":
            leaks[r["step"]] = r["spans"][0]
        if r.get("kind") != "stage_end":
            continue
        rows.append(
            {
                "run": run_dir.name,
                "stage": r["stage"] + 1,
                "attention": r["attention"],
                "steps": r["step"] - prev["step"],
                "tokens": r["tokens"] - prev["tokens"],
                "time_s": r["time_s"] - prev["time_s"],
                "total_time_s": r["time_s"],
                "val_bpb": r.get("val_bpb"),
                "val_bpb_dense": r.get("val_bpb_dense"),
                "leak_nats": leaks[r["step"]]["mean_nats"] if r["step"] in leaks else None,
                # The median step ignores one-time costs (kernel compilation on the first step).
                "step_rates": step_rates,
            }
        )
        prev, step_rates = r, []
    return rows


def dense_bpb_curve(run_dir: str | Path) -> list[tuple[int, int, float, float]]:
    """(step, tokens, training seconds, validation bpb with dense attention) at every evaluation."""
    points = {}
    for r in read_metrics(run_dir):
        if r.get("kind") == "eval":
            bpb = r.get("val_bpb_dense", r["val_bpb"] if r.get("attention") == "dense" else None)
            if bpb is not None:
                points[r["step"]] = (r["step"], r["tokens"], r["time_s"], bpb)
        elif r.get("kind") == "stage_end" and r.get("val_bpb_dense") is not None:
            points[r["step"]] = (r["step"], r["tokens"], r["time_s"], r["val_bpb_dense"])
    return [points[k] for k in sorted(points)]


def _at(curve: list[tuple[int, int, float, float]], x: float, index: int) -> float | None:
    """The curve's bpb at x (tokens: index 1, seconds: index 2), linear between evaluations; None outside."""
    for a, b in zip(curve, curve[1:]):
        if a[index] <= x <= b[index]:
            w = 0.0 if b[index] == a[index] else (x - a[index]) / (b[index] - a[index])
            return a[3] + w * (b[3] - a[3])
    return curve[-1][3] if curve and x == curve[-1][index] else None


def compare_runs(recipe_dir: str | Path, baseline_dir: str | Path) -> dict:
    """The recipe against its dense baseline, with dense-evaluated bpb only: at equal tokens, at the
    recipe's training wall-clock, and the Lighthouse stage's speed against the dense stage's."""
    rows, base_rows = stage_rows(recipe_dir), stage_rows(baseline_dir)
    if not rows or not base_rows:
        return {}
    curve, base_curve = dense_bpb_curve(recipe_dir), dense_bpb_curve(baseline_dir)
    time_s, tokens = rows[-1]["total_time_s"], sum(r["tokens"] for r in rows)
    median = lambda r: statistics.median(r["step_rates"]) if r["step_rates"] else None  # noqa: E731  (as in the table)
    lh = [median(r) for r in rows if r["attention"] == "lighthouse"]
    dense = [median(r) for r in rows + base_rows if r["attention"] == "dense"]
    return {
        "recipe": Path(recipe_dir).name, "baseline": Path(baseline_dir).name,
        "tokens": tokens, "recipe_time_s": time_s, "baseline_time_s": base_rows[-1]["total_time_s"],
        "recipe_bpb": curve[-1][3] if curve else None,
        "baseline_bpb_equal_tokens": _at(base_curve, tokens, 1),
        "baseline_bpb_equal_time": _at(base_curve, time_s, 2),
        "lighthouse_tok_s": lh[0] if lh else None, "dense_tok_s": dense[0] if dense else None,
        "leak_nats": next((r["leak_nats"] for r in rows if r.get("leak_nats") is not None), None),
    }


def format_comparison(c: dict) -> str:
    """What the two-stage recipe bought, in dense-evaluated validation bits per byte (lower is better)."""
    if not c:
        return ""
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    diff = lambda a, b: "" if a is None or b is None else f" ({a - b:+.4f})"  # noqa: E731
    lines = [f"{c['recipe']} vs {c['baseline']}, validation bits per byte with dense attention (lower is better):",
             f"  at equal tokens ({_fmt_tokens(c['tokens'])}):      {c['recipe']} {fmt(c['recipe_bpb'])}, "
             f"{c['baseline']} {fmt(c['baseline_bpb_equal_tokens'])}{diff(c['recipe_bpb'], c['baseline_bpb_equal_tokens'])}",
             f"  at equal wall-clock ({_fmt_time(c['recipe_time_s'])}, {c['recipe']}'s training time): "
             f"{c['recipe']} {fmt(c['recipe_bpb'])}, {c['baseline']} {fmt(c['baseline_bpb_equal_time'])}"
             f"{diff(c['recipe_bpb'], c['baseline_bpb_equal_time'])}"
             + ("" if c["baseline_bpb_equal_time"] is not None else
                (" (the baseline's training ended earlier: this run was slower)" if c["recipe_time_s"] > c["baseline_time_s"]
                 else " (before the baseline's first evaluation)"))]
    if c["lighthouse_tok_s"] and c["dense_tok_s"]:
        lines.append(f"  speed: the Lighthouse stage trains at {c['lighthouse_tok_s'] / c['dense_tok_s']:.2f}x the dense "
                     f"stage's tokens/s (median step: {c['lighthouse_tok_s']:,.0f} vs {c['dense_tok_s']:,.0f})")
    if c.get("leak_nats") is not None:
        lines.append(f"  leak meter at the switch: {c['leak_nats']:+.4f} nats (the loss at t when the byte after t is "
                     "replaced; 0 = the model reads no future)")
    return "\n".join(lines)


def _fmt_tokens(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _fmt_time(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f}h"
    if s >= 60:
        return f"{int(s // 60)}m{s % 60:04.1f}s"
    return f"{s:.1f}s"


def format_table(rows: list[dict]) -> str:
    """The summary table: one line per stage of every run, then a total per run."""
    header = ["run", "stage", "attention", "steps", "tokens", "time", "tok/s", "median step tok/s", "val bpb (dense)",
              "diagnostic: bpb with own attention", "leak (nats)"]
    lines = []
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    for run, rs in by_run.items():
        for r in rs:
            lines.append(_row(r, str(r["stage"])))
        if len(rs) > 1:
            total = {
                "run": run,
                "attention": "+".join(r["attention"] for r in rs),
                "steps": sum(r["steps"] for r in rs),
                "tokens": sum(r["tokens"] for r in rs),
                "time_s": sum(r["time_s"] for r in rs),
                "val_bpb": rs[-1]["val_bpb"],
                "val_bpb_dense": rs[-1]["val_bpb_dense"],
                "leak_nats": None,
                "step_rates": [x for r in rs for x in r.get("step_rates", [])],
            }
            lines.append(_row(total, "all"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    note = ("val bpb (dense): every layer dense, the number that compares models. The Lighthouse-evaluated bpb "
            "and the leak meter are diagnostics of a Lighthouse stage: top-k selection lets a model read its future.")
    return "\n".join(out + [note])


def _row(r: dict, stage: str) -> list[str]:
    def bpb(x):
        return "-" if x is None else f"{x:.4f}"

    tok_s = r["tokens"] / r["time_s"] if r["time_s"] > 0 else 0.0
    rates = r.get("step_rates") or []
    median = f"{statistics.median(rates):,.0f}" if rates else "-"
    return [
        r["run"],
        stage,
        r["attention"],
        str(r["steps"]),
        _fmt_tokens(r["tokens"]),
        _fmt_time(r["time_s"]),
        f"{tok_s:,.0f}",
        median,
        bpb(r["val_bpb_dense"]),
        bpb(r["val_bpb"]) if r["attention"] != "dense" else "",
        "" if r.get("leak_nats") is None else f"{r['leak_nats']:+.4f}",
    ]
