"""`lighthouse eval --task position|passkey|leak`: the command-line glue that runs one evaluation of
`lighthouse.evals` on a loaded checkpoint.

Prints a table, and with an output folder writes `<task>.json` (the results) and `<task>.png`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .evals.leak import format_leak_table, leak_meter, leak_spans, plot_leak
from .evals.passkey import DEFAULT_DEPTHS, format_passkey_table, min_prompt_length, passkey_eval, plot_passkey_heatmap
from .evals.position import format_position_table, plot_position_bpb, pooled_bpb, position_bpb
from .trainer.config import ConfigError

TASKS = ("bpb", "position", "passkey", "leak")


def parse_lengths(text: str) -> list[int]:
    """'1024,4K,1M' -> [1024, 4096, 1048576]."""
    out = []
    for item in text.split(","):
        item = item.strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(item[-1:], 1)
        try:
            value = int(item[:-1] if scale > 1 else item) * scale
        except ValueError:
            raise ConfigError(f"--lengths: {item!r} is not a length (e.g. 1024,4096 or 1K,4K)") from None
        if value < 1:
            raise ConfigError(f"--lengths: lengths must be >= 1, got {value}")
        out.append(value)
    return out


def parse_depths(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0], each in [0, 1]."""
    try:
        depths = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--depths: {text!r} is not a list of numbers (e.g. 0,0.25,0.5,0.75,1)") from None
    if not all(0.0 <= d <= 1.0 for d in depths):
        raise ConfigError(f"--depths: every depth must be in [0, 1], got {text!r}")
    return depths


def run_task(
    task: str, model, cfg, device, amp_dtype, *, attention: str, title: str, lengths: str | None = None,
    depths: str | None = None, trials: int = 5, seed: int = 0, out: str | None = None, echo=print, positions: int = 16,
) -> dict:
    """Run `task` ("position", "passkey" or "leak") on `model` for the run config `cfg`; returns the results.

    attention: the attention kind the model runs with (Lighthouse layers need prompts of at
    least lighthouse.min_seq_len). title: a line naming the checkpoint, printed first.
    """
    if task == "position":
        from .trainer.data import ByteData

        windows = ByteData(cfg.data, cfg.training.seed).val_windows()
        buckets = position_bpb(model, windows, device, amp_dtype, cfg.micro_batch)
        result = {"task": task, "windows": len(windows), "seq_len": cfg.data.seq_len,
                  "val_bpb": pooled_bpb(buckets), "buckets": buckets}
        echo(f"{title}: val bpb by position, {len(windows)} windows of {cfg.data.seq_len}")
        echo(format_position_table(buckets))
    elif task == "passkey":
        if trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {trials}")
        lengths_n = parse_lengths(lengths) if lengths else [cfg.data.seq_len]
        depths_f = parse_depths(depths) if depths else list(DEFAULT_DEPTHS)
        shortest, why = min_prompt_length(), "the passkey prompt's fixed text (instructions, the key sentence and the " \
            "question) with no filler"
        lh = cfg.lighthouse
        if attention == "lighthouse" and lh.min_seq_len > shortest:
            shortest, why = lh.min_seq_len, (f"the Lighthouse minimum topk * pooling**(levels-1) = {lh.topk} * "
                                             f"{lh.pooling}**{lh.levels - 1}; or pass --attention dense")
        if min(lengths_n) < shortest:
            raise ConfigError(f"--lengths: {min(lengths_n)} is shorter than {shortest} bytes, {why}")
        cells = passkey_eval(model, lengths_n, depths_f, trials, seed, device, amp_dtype, micro_batch=cfg.micro_batch)
        result = {"task": task, "trials": trials, "seed": seed, "results": cells}
        echo(f"{title}: passkey retrieval accuracy, {trials} trials per cell (seed {seed})")
        echo(format_passkey_table(cells))
    elif task == "leak":
        from .trainer.data import ByteData

        if positions < 1:
            raise ConfigError(f"--positions must be >= 1, got {positions}")
        windows = ByteData(cfg.data, cfg.training.seed).val_windows()
        if len(windows) < 2:
            raise ConfigError("--task leak needs at least 2 validation windows (--windows 2 or more)")
        spans = leak_spans(cfg.lighthouse, cfg.data.seq_len)
        selection = cfg.lighthouse.selection if attention == "lighthouse" else "-"
        echo(f"{title}: leak meter, {len(windows)} windows of {cfg.data.seq_len}, {positions} positions each")
        result = {"task": task, "attention": attention, "selection": selection,
                  **leak_meter(model, windows, spans, device, amp_dtype, micro_batch=cfg.micro_batch, positions=positions)}
        echo(format_leak_table(result))
    else:
        raise ConfigError(f"--task must be one of {TASKS[1:]} here, got {task!r}")
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{task}.json").write_text(json.dumps({"title": title, **result}, indent=1) + "\n", encoding="utf-8")
        if task == "position":
            plot_position_bpb(result["buckets"], folder / "position.png", title=title)
        elif task == "leak":
            plot_leak(result, folder / "leak.png", title=title)
        else:
            plot_passkey_heatmap(result["results"], folder / "passkey.png", title=title)
        echo(f"wrote {folder / f'{task}.json'} and {folder / f'{task}.png'}")
    return result
