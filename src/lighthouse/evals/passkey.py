"""Passkey retrieval, byte-level: can the model find a number hidden in long filler text?

The standard synthetic test (Mohtashami & Jaggi, "Landmark Attention", 2023). A prompt of
exactly `length` bytes:

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ...
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ...
    The pass key is 68048. Remember it. 68048 is the pass key.     <- at `depth` of the filler
    The grass is green. The sky is blue. ...                          (0: first, 1: last)
    What is the pass key? The pass key is

The filler is whole sentences, padded with spaces to the exact length; the pass key sits at
the sentence start nearest below `depth` times the filler length. The model then decodes as
many bytes as the key has digits, greedily (argmax; the whole forward pass again for each
byte, no cache), and a trial is right when they are the key. Keys come from a generator
seeded by (seed, length, depth, trial): the prompts are the same on every run and do not
change when other lengths or depths are added.

Legend: T trials (a batch of prompts), B micro-batch, N prompt length, V vocabulary.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from ..tokenizer import BYTE_VOCAB, encode
from .common import autocast, eval_mode

HEADER = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER_SENTENCES = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
                    "There and back again. ")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is "
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def min_prompt_length(digits: int = 5) -> int:
    """The shortest prompt: header, pass key sentence and question with no filler."""
    return len(HEADER) + len(NEEDLE.format(key="0" * digits)) + len(QUESTION)


def passkey_prompt(length: int, depth: float, key: str) -> bytes:
    """The prompt of exactly `length` bytes hiding `key` at `depth` (0..1) of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    needle = NEEDLE.format(key=key)
    room = length - len(HEADER) - len(needle) - len(QUESTION)
    if room < 0:
        raise ValueError(f"a passkey prompt needs at least {min_prompt_length(len(key))} bytes, got length {length}")
    sentences, used, starts = [], 0, [0]  # starts: where each sentence begins (and the end)
    while used + len(FILLER_SENTENCES[len(sentences) % len(FILLER_SENTENCES)]) <= room:
        sentence = FILLER_SENTENCES[len(sentences) % len(FILLER_SENTENCES)]
        sentences.append(sentence)
        used += len(sentence)
        starts.append(used)
    filler = "".join(sentences)
    at = max(s for s in starts if s <= depth * used)  # a sentence start, so no sentence is cut
    text = HEADER + filler[:at] + needle + filler[at:] + " " * (room - used) + QUESTION
    data = text.encode("ascii")
    assert len(data) == length
    return data


def passkey_key(seed: int, length: int, depth: float, trial: int, digits: int = 5) -> str:
    """The pass key of one trial: `digits` digits, no leading zero, from its own seeded generator."""
    rng = random.Random(f"lighthouse-passkey/{seed}/{length}/{depth!r}/{trial}")
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def passkey_prompts(
    length: int, depth: float, trials: int, seed: int, digits: int = 5
) -> tuple[list[bytes], list[str]]:
    """(prompts, keys) of the trials of one (length, depth) cell."""
    keys = [passkey_key(seed, length, depth, t, digits) for t in range(trials)]
    return [passkey_prompt(length, depth, k) for k in keys], keys


@torch.no_grad()
def greedy_decode(
    model, idx_TN: torch.Tensor, steps: int, device, amp_dtype=None, micro_batch: int = 0
) -> torch.Tensor:
    """The `steps` ids [T, steps] that greedy decoding appends to each prompt (no KV cache)."""
    micro_batch = micro_batch or len(idx_TN)
    idx_TN = idx_TN.to(device)
    with eval_mode(model):
        for _ in range(steps):
            next_ids = []
            for i in range(0, len(idx_TN), micro_batch):
                with autocast(device, amp_dtype):
                    logits_BNV = model(idx_TN[i : i + micro_batch])
                next_ids.append(logits_BNV[:, -1].float().argmax(-1))
            idx_TN = torch.cat([idx_TN, torch.cat(next_ids)[:, None]], dim=1)
    return idx_TN[:, -steps:].cpu()


def passkey_eval(
    model, lengths, depths=DEFAULT_DEPTHS, trials: int = 5, seed: int = 0, device="cpu", amp_dtype=None,
    digits: int = 5, micro_batch: int = 0,
) -> list[dict]:
    """Accuracy of pass key retrieval for every (length, depth).

    `model(idx_BN) -> logits_BNV`. Returns one dict per cell: {length, depth, trials, accuracy
    (share of trials with every digit right), digit_accuracy (share of digits right), keys,
    answers (the decoded bytes as text)}.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    results = []
    for length in lengths:
        for depth in depths:
            prompts, keys = passkey_prompts(length, depth, trials, seed, digits)
            idx_TN = torch.from_numpy(np.stack([encode(p) for p in prompts]).astype(np.int64))
            out_TS = greedy_decode(model, idx_TN, digits, device, amp_dtype, micro_batch)
            # One character per decoded id, so that digits compare by position: Latin-1 for a byte, "?" for a special id.
            answers = [bytes(i if i < BYTE_VOCAB else ord("?") for i in row.tolist()).decode("latin-1") for row in out_TS]
            right = [sum(a == k for a, k in zip(answer, key)) for answer, key in zip(answers, keys)]
            results.append({
                "length": length, "depth": depth, "trials": trials,
                "accuracy": sum(r == digits for r in right) / trials,
                "digit_accuracy": sum(right) / (trials * digits),
                "keys": keys, "answers": answers,
            })
    return results


def format_passkey_table(results: list[dict]) -> str:
    """Accuracy in percent, one row per depth, one column per length."""
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    cell = {(r["length"], r["depth"]): r["accuracy"] for r in results}
    rows = [["depth \\ length"] + [f"{n:,}" for n in lengths]]
    rows += [[f"{d:g}"] + [f"{100 * cell[(n, d)]:.0f}%" if (n, d) in cell else "" for n in lengths] for d in depths]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def plot_passkey_heatmap(results: list[dict], png: str | Path, title: str = "") -> Path:
    """A heat map of accuracy (depth down, context length across), saved as a PNG."""
    from matplotlib.figure import Figure

    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for r in results:
        grid[depths.index(r["depth"])][lengths.index(r["length"])] = r["accuracy"]
    fig = Figure(figsize=(1.1 * len(lengths) + 3, 0.5 * len(depths) + 2))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    for i, row in enumerate(grid):
        for j, acc in enumerate(row):
            if not math.isnan(acc):  # NaN: a cell that was not run
                ax.text(j, i, f"{100 * acc:.0f}%", ha="center", va="center", fontsize=8)
    ax.set_xlabel("context length (bytes)")
    ax.set_ylabel("depth of the pass key")
    ax.set_title(title or "passkey retrieval accuracy")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png
