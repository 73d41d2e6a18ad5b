"""`lighthouse plot runs/a runs/b -o plot.png`: training loss and validation bits-per-byte
against tokens and against wall-clock (seconds spent in training steps), one line per run,
with dotted vertical lines where a run changes stage.

The validation panels show bpb with dense attention at every evaluation: the number that
compares models. Bpb evaluated with Lighthouse attention is left out (with top-k selection a
model can read its future through it); the training loss of a Lighthouse stage has the same
caveat, and its panel says so.
"""

from __future__ import annotations

from pathlib import Path

from .metrics import METRICS_FILE, dense_bpb_curve, read_metrics


def _smooth(values: list[float], weight: float) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else weight * avg + (1 - weight) * v
        out.append(avg)
    return out


def check_plot_path(out: str | Path, what: str) -> Path:
    """`out` when matplotlib can write its format and its folder is writable; else a one-line RunDirError."""
    from matplotlib.backend_bases import FigureCanvasBase

    from .folders import RunDirError, writable_file

    out = Path(out)
    if out.is_dir():
        raise RunDirError(f"{what} {out}: is a folder; give a file name, e.g. {out / 'plot.png'}")
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in formats:
        raise RunDirError(f"{what} {out}: the name must end in an image format matplotlib writes "
                          f"({', '.join('.' + f for f in sorted(formats))}), e.g. plot.png")
    return writable_file(out, what)


def plot_runs(run_dirs: list[str | Path], out: str | Path, smooth: float = 0.8) -> Path:
    """Write a PNG comparing the runs; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    plotted = 0
    for i, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir)
        records = read_metrics(run_dir)
        if not records:
            what = "holds no records of a lighthouse run" if (run_dir / METRICS_FILE).is_file() else "is missing"
            raise FileNotFoundError(f"no metrics in {run_dir}: {run_dir / METRICS_FILE} {what}")
        color = f"C{i}"
        train = [r for r in records if r.get("kind") == "train"]
        curve = dense_bpb_curve(run_dir)
        label = run_dir.name
        for col, x_key in enumerate(("tokens", "time_s")):
            if train:
                xs = [r[x_key] for r in train]
                ys = [r["loss"] for r in train]
                axes[0][col].plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                axes[0][col].plot(xs, _smooth(ys, smooth), color=color, label=label, linewidth=1.6)
            if curve:
                index = 1 if x_key == "tokens" else 2
                axes[1][col].plot([p[index] for p in curve], [p[3] for p in curve], "o-", color=color, label=label)
            for r in records:
                if r.get("kind") == "stage_end" and r["step"] != (train[-1]["step"] if train else None):
                    for row in (0, 1):
                        axes[row][col].axvline(r[x_key], color=color, linestyle=":", linewidth=1)
        plotted += 1

    for col, xlabel in enumerate(("training tokens", "wall-clock (s, training steps)")):
        axes[0][col].set_ylabel("training loss (nats/token, each stage's attention)")
        axes[1][col].set_ylabel("validation bits per byte, dense attention")
        for row in (0, 1):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].grid(alpha=0.3)
            if plotted:
                axes[row][col].legend()
    fig.suptitle("loss vs tokens and vs wall-clock (dotted: stage switch); validation: every layer dense")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
