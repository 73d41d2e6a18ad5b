"""Text from a trained model (`lighthouse sample`): dense attention with a KV cache.

Decoding reuses the model's own modules (embeddings, norms, projections, feed-forward, output,
RoPE tables) and runs dense causal attention in every layer, which is what a model is after
its dense recovery stage; Lighthouse is a training-time method and has no cached form. Each
layer keeps the rotated keys and the values of every position seen so far, so a new token
costs one query against the cache instead of a forward over the whole prefix.

A prompt starts after an end-of-document id, as every document but the first does in
training, and sampling stops at the next one (or after `max_new_tokens`).

Legend: B batch, T new positions in this call, S cached positions (past + new), E model dim,
H query heads, G key/value heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .model import EOD_ID, Transformer
from .rope import apply_rotary_dense


class KVCache:
    """Rotated keys and values of every layer, [B, G, capacity, D] each, filled up to `length`."""

    def __init__(self, model: Transformer, batch: int, capacity: int, device, dtype):
        args = model.args
        shape = (batch, args.n_kv_heads, capacity, args.head_dim)
        self.k_BGSD = [torch.empty(shape, device=device, dtype=dtype) for _ in model.layers]
        self.v_BGSD = [torch.empty(shape, device=device, dtype=dtype) for _ in model.layers]
        self.capacity = capacity
        self.length = 0


def _attention(block, x_BTE: torch.Tensor, cache: KVCache, layer: int, rope) -> torch.Tensor:
    """The block's attention for T new positions after `cache.length` cached ones (dense, causal)."""
    attn = block.attention
    B, T, _ = x_BTE.shape
    start, end = cache.length, cache.length + T
    cos_SD, sin_SD = rope
    q_BHTD = attn.wq(x_BTE).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
    k_BGTD = attn.wk(x_BTE).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v_BGTD = attn.wv(x_BTE).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q_BHTD = apply_rotary_dense(q_BHTD, cos_SD[start:end], sin_SD[start:end])
    cache.k_BGSD[layer][:, :, start:end] = apply_rotary_dense(k_BGTD, cos_SD[start:end], sin_SD[start:end])
    cache.v_BGSD[layer][:, :, start:end] = v_BGTD
    k_BGSD, v_BGSD = cache.k_BGSD[layer][:, :, :end], cache.v_BGSD[layer][:, :, :end]
    gqa = attn.n_heads != attn.n_kv_heads
    if T == 1:  # one query sees every cached key
        o_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BGSD, v_BGSD, enable_gqa=gqa)
    elif start == 0:
        o_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BGSD, v_BGSD, is_causal=True, enable_gqa=gqa)
    else:  # several new positions after a cached prefix: causal, aligned to the end
        keep_TS = torch.arange(end, device=x_BTE.device)[None, :] <= torch.arange(start, end, device=x_BTE.device)[:, None]
        o_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BGSD, v_BGSD, attn_mask=keep_TS, enable_gqa=gqa)
    return attn.wo(o_BHTD.transpose(1, 2).reshape(B, T, -1))


@torch.no_grad()
def forward_cached(model: Transformer, ids_BT: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits [B, V] of the last of T new ids, appending their keys and values to `cache`."""
    T = ids_BT.shape[1]
    if cache.length + T > cache.capacity:
        raise ValueError(f"KV cache full: {cache.length} + {T} positions > capacity {cache.capacity}")
    rope = model.rope(cache.capacity, ids_BT.device)
    x_BTE = model.tok_embeddings(ids_BT)
    for layer, block in enumerate(model.layers):
        x_BTE = x_BTE + _attention(block, block.attention_norm(x_BTE), cache, layer, rope)
        x_BTE = x_BTE + block.feed_forward(block.ffn_norm(x_BTE))
    cache.length += T
    return model.output(model.norm(x_BTE[:, -1]))


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
    cache = KVCache(model, prompt_BP.shape[0], prompt_BP.shape[1] + max_new_tokens, param.device, param.dtype)
    ids_BP = prompt_BP.to(param.device)
    out = [ids_BP]
    done_B = torch.zeros(ids_BP.shape[0], dtype=torch.bool, device=param.device)
    logits_BV = forward_cached(model, ids_BP, cache)
    for step in range(max_new_tokens):
        next_B = pick_next(logits_BV, temperature, top_k, generator)
        if stop_id is not None:
            next_B = torch.where(done_B, torch.full_like(next_B, stop_id), next_B)
            done_B |= next_B == stop_id
        out.append(next_B[:, None])
        if (stop_id is not None and bool(done_B.all())) or step == max_new_tokens - 1:
            break
        logits_BV = forward_cached(model, next_B[:, None], cache)
    return torch.cat(out, dim=1)


def encode_prompt(prompt: str) -> list[int]:
    """A document start (the end-of-document id) followed by the prompt's UTF-8 bytes."""
    return [EOD_ID, *prompt.encode("utf-8")]


def decode_bytes(ids) -> str:
    """Byte ids -> text, up to the first special id; invalid UTF-8 becomes U+FFFD."""
    out = bytearray()
    for i in ids:
        if int(i) >= 256:
            break
        out.append(int(i))
    return out.decode("utf-8", errors="replace")


def sample_text(model: Transformer, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 50, seed: int = 0) -> str:
    """The continuation of `prompt` (without the prompt)."""
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([encode_prompt(prompt)], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = generate(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode_bytes(ids[0, prompt_ids.shape[1]:].tolist())


def main_sample(checkpoint, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None, seed: int,
                device: str | None = None, out=None, err=None) -> int:
    """`lighthouse sample`: prints the prompt and its continuation (to `out`, default stdout); notes go to `err`."""
    out, err = out or sys.stdout, err or sys.stderr
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from .trainer.build import load_trained

    trained = load_trained(checkpoint, dev, warn=lambda msg: print(f"warning: {msg}", file=err))
    note = f"{trained.ckpt}: step {trained.step}, dense attention with a KV cache"
    if trained.attention != "dense":
        note += f" (this checkpoint is from a {trained.attention} stage, before dense recovery)"
    print(note, file=err)
    trained.model.set_attention("dense")
    text = sample_text(trained.model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    print(prompt + text, file=out)
    return 0
