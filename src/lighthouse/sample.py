"""Text from a trained model (`lighthouse sample`): the model's own forward with a KV cache.

Decoding runs `Transformer.forward(ids, start=..., cache=...)` (dense causal attention in every
layer, which is what a model is after its dense recovery stage; Lighthouse is a training-time
method and has no cached form). Each layer keeps the rotated keys and the values of every
position seen so far, so a new token costs one query against the cache instead of a forward
over the whole prefix.

A prompt starts after an end-of-document id, as every document but the first does in
training (`tokenizer.encode(prompt, start=True)`), and sampling stops at the next one (or
after `max_new_tokens`); the text is `tokenizer.decode` of what came after the prompt.

Legend: B batch, P prompt length, V vocabulary.
"""

from __future__ import annotations

import sys

import torch

from .model import KVCache, Transformer
from .tokenizer import EOD_ID, decode, encode


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


def sample_text(model: Transformer, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 50, seed: int = 0) -> str:
    """The continuation of `prompt` (without the prompt)."""
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([encode(prompt, start=True).tolist()], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = generate(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode(ids[0, prompt_ids.shape[1]:].tolist())


def main_sample(checkpoint, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None, seed: int,
                device: str | None = None, out=None, err=None) -> int:
    """`lighthouse sample`: prints the prompt and its continuation (to `out`, default stdout); notes go to `err`."""
    from .trainer.build import load_trained

    out, err = out or sys.stdout, err or sys.stderr
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    trained = load_trained(checkpoint, dev, warn=lambda msg: print(f"warning: {msg}", file=err))
    note = f"{trained.ckpt}: step {trained.step}, dense attention with a KV cache"
    if trained.attention != "dense":
        note += f" (this checkpoint is from a {trained.attention} stage, before dense recovery)"
    print(note, file=err)
    trained.model.set_attention("dense")
    text = sample_text(trained.model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    print(prompt + text, file=out)
    return 0
