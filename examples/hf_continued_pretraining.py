"""Train a Hugging Face causal LM with Lighthouse attention, then recover with dense attention.

    # a tiny Llama built from a config, on the Python standard library's sources (no download), CPU, ~1 minute:
    python examples/hf_continued_pretraining.py --out hf-tiny

    # continue pre-training a model written by `lighthouse export` (or any local causal LM folder whose
    # vocabulary covers our byte ids), at a long length:
    python examples/hf_continued_pretraining.py --model hf/demo --seq-len 65536 --levels 3 --pooling 4 --topk 2048 \
        --batch-size 1 --steps 1000 --recovery-steps 100 --out hf/demo-long

Data: `lighthouse.trainer.data.ByteData`, the byte pipeline of `lighthouse train` (ids 0..255 are
bytes, 256 ends a document), so the model's vocabulary must hold ids 0..256: a config-built
model gets our 264 ids and `lighthouse export` writes them; a model with another tokenizer
would read bytes as unrelated tokens, and is refused here.

Stages: `--steps` with `attn_implementation="lighthouse"` (settings in `config.lighthouse`), then
`--recovery-steps` after `model.set_attn_implementation("sdpa")`: the same weights and optimizer,
dense attention. Validation bits-per-byte after each stage, then `save_pretrained(--out)` (with
the byte-level tokenizer for a config-built model).

Legend: B batch, N sequence length, V vocabulary.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

import lighthouse.hf
from lighthouse.integrations.export import save_byte_tokenizer
from lighthouse.tokenizer import EOD_ID, PAD_ID, VOCAB_SIZE
from lighthouse.trainer.config import DataConfig
from lighthouse.trainer.data import ByteData

TINY_SETTINGS = {"levels": 2, "pooling": 2, "topk": 128}  # sequences of >= 256 tokens


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a local Hugging Face model folder (default: a Llama built from the flags below)")
    ap.add_argument("--hidden", type=int, default=64, help="config-built model: hidden size")
    ap.add_argument("--layers", type=int, default=4, help="config-built model: layers")
    ap.add_argument("--heads", type=int, default=4, help="config-built model: query heads")
    ap.add_argument("--kv-heads", type=int, default=2, help="config-built model: key/value heads")
    ap.add_argument("--ffn", type=int, default=192, help="config-built model: SwiGLU hidden size")
    # Lighthouse settings: a loaded model keeps its config.lighthouse except for the flags given;
    # a config-built one gets TINY_SETTINGS, then the flags.
    ap.add_argument("--levels", type=int)
    ap.add_argument("--pooling", type=int)
    ap.add_argument("--topk", type=int)
    ap.add_argument("--dense-layers", help="layers that stay dense, comma-separated (default 0,-1)")
    ap.add_argument("--rope", choices=("pre-pool", "window-end"), help="RoPE placement (default pre-pool)")
    ap.add_argument("--data", nargs="*", default=[], help="text/JSONL/Parquet files or folders (default: the stdlib)")
    ap.add_argument("--max-bytes", type=int, default=20_000_000, help="read at most this many bytes of data")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="Lighthouse steps")
    ap.add_argument("--recovery-steps", type=int, default=10, help="dense steps after them")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-windows", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="hf-lighthouse", help="where save_pretrained writes the model")
    return ap.parse_args(argv)


def load_model(args, device):
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="lighthouse")
        if model.config.vocab_size <= EOD_ID:
            raise SystemExit(f"{args.model} has vocab_size {model.config.vocab_size}; the byte pipeline needs ids 0..256 "
                             "(a model from `lighthouse export`, or one built from a config)")
    else:
        config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=args.hidden, intermediate_size=args.ffn,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq_len,
                             bos_token_id=EOD_ID, eos_token_id=EOD_ID, pad_token_id=PAD_ID, tie_word_embeddings=True)
        lighthouse.hf.configure(config, **TINY_SETTINGS)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="lighthouse")
    flags = {"levels": args.levels, "pooling": args.pooling, "topk": args.topk, "rope": args.rope}
    if args.dense_layers is not None:
        flags["dense_layers"] = [int(i) for i in args.dense_layers.split(",") if i.strip()]
    lighthouse.hf.configure(model, **{k: v for k, v in flags.items() if v is not None})
    return model.to(device)


def next_token_loss(model, window_BN1: torch.Tensor, amp) -> torch.Tensor:
    """Mean cross-entropy (nats per byte) of predicting window[:, 1:] from window[:, :-1]."""
    with torch.autocast(window_BN1.device.type, dtype=torch.bfloat16, enabled=amp):
        # use_cache=False: a training forward fills no KV cache (and runs Lighthouse without gradients too)
        logits_BNV = model(input_ids=window_BN1[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits_BNV.float().flatten(0, 1), window_BN1[:, 1:].flatten())


@torch.no_grad()
def val_bpb(model, windows, device, amp) -> float:
    model.eval()
    losses = [next_token_loss(model, w[None].to(device), amp).item() for w in windows]
    model.train()
    return sum(losses) / len(losses) / math.log(2)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    amp = device.type == "cuda"  # bf16 autocast on GPU, float32 on CPU
    model = load_model(args, device)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{lighthouse.hf.settings_from_config(model.config).describe()}")
    source = "files" if args.data else "stdlib"
    data = ByteData(DataConfig(source=source, paths=list(args.data), seq_len=args.seq_len, max_bytes=args.max_bytes,
                               val_windows=args.val_windows), args.seed)
    windows = data.val_windows()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    for stage, steps in (("lighthouse", args.steps), ("sdpa", args.recovery_steps)):
        model.set_attn_implementation(stage)  # changes no weight
        t0 = time.perf_counter()
        for step in range(steps):
            loss = next_token_loss(model, data.train.next_batch(args.batch_size).to(device), amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if step % 10 == 0 or step == steps - 1:
                print(f"{stage} step {step + 1}/{steps}: loss {loss.item():.4f}")
        if steps:
            tok_s = steps * args.batch_size * args.seq_len / (time.perf_counter() - t0)
            print(f"{stage}: val bpb {val_bpb(model, windows, device, amp):.4f} ({tok_s:,.0f} tokens/s)")
    model.save_pretrained(args.out)
    if args.model:
        try:
            AutoTokenizer.from_pretrained(args.model).save_pretrained(args.out)
        except (OSError, ValueError):
            print(f"note: no tokenizer found in {args.model}; none saved")
    else:
        save_byte_tokenizer(args.out, model_max_length=args.seq_len)
    print(f"saved to {args.out} (dense: attn_implementation 'sdpa'; 'lighthouse' continues with config.lighthouse)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
