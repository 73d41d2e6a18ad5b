"""Text from a trained model (`lighthouse sample`): the model's own forward with a KV cache.

Decoding runs `Transformer.forward(ids, start=..., cache=...)` (dense causal attention in every
layer, which is what a model is after its dense recovery stage; Lighthouse is a training-time
method and has no cached form). Each layer keeps the rotated keys and the values of every
position seen so far, so a new token costs one query against the cache instead of a forward
over the whole prefix.

A prompt starts after an end-of-document id, as every document but the first does in
training (`tokenizer.encode(prompt, start=True)`), and sampling stops at the next one (or
after `max_new_tokens`); the text is `tokenizer.decode` of what came after the prompt.

`lighthouse sample` checks its arguments before it loads anything (`check_sampling`), and the
KV cache against the free memory of the device before it allocates it (`check_cache_fits`):
a bad value is a one-line `SampleError`. A prompt is bytes to a byte-level model, so one that
is not valid UTF-8 (a command-line argument in another encoding reaches Python as surrogate
escapes) is fed as the bytes it was, and shown with U+FFFD where it is not text.

Legend: B batch, P prompt length, V vocabulary.
"""

from __future__ import annotations

import math
import os
import sys

import torch

from .model import KVCache, Transformer
from .tokenizer import EOD_ID, decode, encode


class SampleError(ValueError):
    """A sampling argument that cannot work; the message names it and says what can."""


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, seed: int) -> None:
    """The arguments of `lighthouse sample`, checked before anything is loaded."""
    if max_new_tokens < 1:
        raise SampleError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise SampleError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise SampleError(f"--top-k must be >= 0 (0: every byte), got {top_k}")
    if not 0 <= seed < 2**63:
        raise SampleError(f"--seed must be in [0, 2**63), got {seed}")


def prompt_bytes(prompt: str | bytes) -> bytes:
    """The bytes of a prompt: UTF-8 text, or the original bytes of a command-line argument that was not UTF-8."""
    if isinstance(prompt, bytes):
        return prompt
    try:
        return prompt.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError as e:
        raise SampleError(f"--prompt holds {prompt[e.start:e.end]!r}, which is neither text nor a byte") from None


def cache_bytes(model: Transformer, positions: int, batch: int = 1) -> int:
    """Memory of a KV cache of `positions` (every layer's keys and values) and of its RoPE tables."""
    args, param = model.args, next(model.parameters())
    kv = len(model.layers) * 2 * batch * args.n_kv_heads * positions * args.head_dim * param.element_size()
    return kv + 2 * positions * args.head_dim * 4  # cos and sin, float32


def free_memory(device: torch.device) -> int | None:
    """Bytes that `device` can still allocate (None when the platform does not say). On Linux CPUs that is
    MemAvailable, which counts the page cache the kernel would give back, not only the free pages."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_cache_fits(model: Transformer, prompt_len: int, max_new_tokens: int, trained_len: int | None = None) -> None:
    """SampleError when the KV cache of prompt + max_new_tokens positions cannot fit in the device's free memory."""
    device = next(model.parameters()).device
    need, free = cache_bytes(model, prompt_len + max_new_tokens), free_memory(device)
    if free is not None and need > free:
        trained = f"; the model trained on windows of {trained_len:,} bytes" if trained_len else ""
        raise SampleError(
            f"--max-new-tokens {max_new_tokens:,}: the KV cache would take {need / 2**30:,.1f} GiB, more than the "
            f"{free / 2**30:,.1f} GiB available on {device}; lower it{trained}"
        )


def pick_next(logits_BV: torch.Tensor, temperature: float, top_k: int | None, generator=None) -> torch.Tensor:
    """Next ids [B]: argmax when temperature <= 0, else a sample of softmax(logits / temperature) over the top k."""
    if temperature <= 0:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and 0 < top_k < logits_BV.shape[-1]:
        kth_B1 = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    probs_BV = torch.softmax(logits_BV, dim=-1)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Transformer, prompt_BP: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             stop_id: int | None = EOD_ID) -> torch.Tensor:
    """prompt [B, P] -> [B, P + n], n <= max_new_tokens: stops once every row has produced `stop_id`
    (rows that stopped repeat it)."""
    if prompt_BP.dim() != 2 or prompt_BP.shape[1] < 1:
        raise ValueError(f"prompt must be [B, P] ids with P >= 1, got shape {tuple(prompt_BP.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite (<= 0: greedy), got {temperature}")
    model.eval()
    param = next(model.parameters())
    B, P = prompt_BP.shape
    cache = KVCache(model, B, P + max_new_tokens, param.device, param.dtype)
    ids_BP = prompt_BP.to(param.device)
    out = [ids_BP]
    done_B = torch.zeros(B, dtype=torch.bool, device=param.device)
    logits_BV = model(ids_BP, start=0, cache=cache)[:, -1]
    for step in range(max_new_tokens):
        next_B = pick_next(logits_BV, temperature, top_k, generator)
        if stop_id is not None:
            next_B = torch.where(done_B, torch.full_like(next_B, stop_id), next_B)
            done_B |= next_B == stop_id
        out.append(next_B[:, None])
        if (stop_id is not None and bool(done_B.all())) or step == max_new_tokens - 1:
            break
        logits_BV = model(next_B[:, None], start=P + step, cache=cache)[:, -1]
    return torch.cat(out, dim=1)


def sample_text(model: Transformer, prompt: str | bytes, *, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 50, seed: int = 0) -> str:
    """The continuation of `prompt` (text or bytes; without the prompt)."""
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([encode(prompt, start=True).tolist()], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = generate(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode(ids[0, prompt_ids.shape[1]:].tolist())


def main_sample(checkpoint, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None, seed: int,
                device: str | None = None, out=None, err=None) -> int:
    """`lighthouse sample`: prints the prompt and its continuation (to `out`, default stdout); notes go to `err`."""
    from .trainer.build import load_trained, resolve_device

    out, err = out or sys.stdout, err or sys.stderr
    check_sampling(max_new_tokens, temperature, top_k, seed)
    data = prompt_bytes(prompt)
    dev = resolve_device(device or "auto", what="--device")
    trained = load_trained(checkpoint, dev, warn=lambda msg: print(f"warning: {msg}", file=err))
    check_cache_fits(trained.model, len(data) + 1, max_new_tokens, trained.cfg.data.seq_len)
    note = f"{trained.ckpt}: step {trained.step}, dense attention with a KV cache"
    if trained.attention != "dense":
        note += f" (this checkpoint is from a {trained.attention} stage, before dense recovery)"
    print(note, file=err)
    trained.model.set_attention("dense")
    text = sample_text(trained.model, data, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    print(data.decode("utf-8", errors="replace") + text, file=out)
    return 0
