"""A Hugging Face model trained with "sdpa" vs "lighthouse": `python -m lighthouse.bench hf`.

    python -m lighthouse.bench hf                                     # one GPU: ~135M Llama, N=64K, bf16
    python -m lighthouse.bench hf --device cpu --seq-len 512 --hidden 64 --layers 2 --heads 2 --kv-heads 1 \
        --ffn 128 --levels 2 --pooling 2 --topk 128 --dtype float32 --budget 1     # CPU smoke test

A Llama-architecture `LlamaForCausalLM` built from a config (default: hidden 1024, 12 layers,
8 query heads of dim 128, 2 key/value heads, SwiGLU 2816, our 264-id vocabulary: about 135M
parameters) on random tokens, B=1. One timed step is a whole training step: forward,
backward and an AdamW update (fused on CUDA), with fp32 weights under bf16 autocast. Both
attention implementations run in the same process on the same model weights; Lighthouse uses
`config.lighthouse` (default L=3, p=4, K=2048, dense_layers [0, -1]: the first and last layers
stay dense, as in training). Reported: median step time (timing.py: CUDA events, warm-up
excluded; the host clock on CPU), tokens/s = B*N / step time, and on CUDA the peak allocated
memory of one step.

Legend: B batch, N sequence length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..evals.common import autocast
from ..tokenizer import BYTE_VOCAB, EOD_ID, PAD_ID, VOCAB_SIZE
from .timing import peak_memory, run_info, timed_or_oom, write_result


def _llama(args, attn_implementation: str, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ..integrations import hf

    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=args.hidden, intermediate_size=args.ffn,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq_len,
                         bos_token_id=EOD_ID, eos_token_id=EOD_ID, pad_token_id=PAD_ID, tie_word_embeddings=False)
    hf.configure(config, levels=args.levels, pooling=args.pooling, topk=args.topk,
                            dense_layers=[int(i) for i in args.dense_layers.split(",") if i.strip()], rope=args.rope)
    torch.manual_seed(0)  # the same initial weights for both implementations
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).to(device)


def _measure(args, impl: str, tokens_BN1: torch.Tensor, device, dtype) -> dict:
    """Timing (and peak memory on CUDA) of whole training steps with one attention implementation."""
    model = _llama(args, impl, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with autocast(device, None if dtype == torch.float32 else dtype):
            logits_BNV = model(input_ids=tokens_BN1[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits_BNV.float().flatten(0, 1), tokens_BN1[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    row = {"attn_implementation": impl, "N": args.seq_len, "B": args.batch, "dtype": args.dtype,
           "device": str(device), "params": sum(p.numel() for p in model.parameters())}
    row["step"] = timed_or_oom(step, device, args.budget)
    if "median_ms" in row["step"]:
        row["tokens_per_s"] = args.batch * args.seq_len / (row["step"]["median_ms"] / 1e3)
        if device.type == "cuda":
            with peak_memory(device) as peak:
                step()
            row["peak_gib"] = peak.gib
    return row


def bench_hf(args, log=print) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    tokens_BN1 = torch.randint(0, BYTE_VOCAB, (args.batch, args.seq_len + 1), generator=gen).to(device)
    rows = []
    for impl in ("lighthouse", "sdpa"):  # dense last: its long runs heat the card
        rows.append(_measure(args, impl, tokens_BN1, device, dtype))
        log(_format_row(rows[-1]))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _format_row(row) -> str:
    if "tokens_per_s" not in row:
        return f"{row['attn_implementation']:>10}: N={row['N']} {row['step'].get('error', 'failed')}"
    peak = f", peak {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""
    return (f"{row['attn_implementation']:>10}: N={row['N']} step {row['step']['median_ms']:.1f} ms, "
            f"{row['tokens_per_s']:,.0f} tokens/s{peak}")


def add_parser(sub) -> None:
    h = sub.add_parser("hf", help="a Hugging Face Llama trained with 'sdpa' vs 'lighthouse': tokens/s, peak memory")
    h.add_argument("--out", default="bench_results/hf.json", help="JSON output path")
    h.add_argument("--seq-len", type=int, default=64 * 1024)
    h.add_argument("--batch", type=int, default=1)
    h.add_argument("--hidden", type=int, default=1024)
    h.add_argument("--layers", type=int, default=12)
    h.add_argument("--heads", type=int, default=8)
    h.add_argument("--kv-heads", type=int, default=2)
    h.add_argument("--ffn", type=int, default=2816)
    h.add_argument("--levels", type=int, default=3)
    h.add_argument("--pooling", type=int, default=4)
    h.add_argument("--topk", type=int, default=2048)
    h.add_argument("--dense-layers", default="0,-1", help="layers that stay dense (comma-separated)")
    h.add_argument("--rope", choices=("pre-pool", "window-end"), default="pre-pool")
    h.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="autocast dtype")
    h.add_argument("--device", default=None, help="cuda (the default when available) or cpu")
    h.add_argument("--budget", type=float, default=20.0, help="seconds per timed entry (fewer repeats when slow)")


def main(args, argv=None) -> int:
    import transformers

    rows = bench_hf(args)
    by_impl = {r["attn_implementation"]: r for r in rows}
    speedup = None
    if all("tokens_per_s" in by_impl.get(k, {}) for k in ("sdpa", "lighthouse")):
        speedup = by_impl["lighthouse"]["tokens_per_s"] / by_impl["sdpa"]["tokens_per_s"]
        print(f"lighthouse / sdpa tokens/s: {speedup:.2f}x")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "what")}
    info = run_info(argv)
    info["versions"]["transformers"] = transformers.__version__
    result = {
        **info,
        "timing": "one training step = forward + backward + AdamW update (fp32 weights, autocast to --dtype), B*N "
                  "tokens of random ids; median of repeats (CUDA events on CUDA, wall clock on CPU), warm-up "
                  "excluded; peak = torch.cuda.max_memory_allocated during one step (CUDA only)",
        "settings": settings,
        "rows": rows,
        "lighthouse_over_sdpa_tokens_per_s": speedup,
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0
