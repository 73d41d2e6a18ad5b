"""A small Llama-3 style decoder whose attention layers are dense or Lighthouse.

RMSNorm, rotary position embedding (RoPE), SwiGLU feed-forward, grouped-query attention
(GQA), tied or untied embeddings, and a byte-level vocabulary: ids 0..255 are bytes, 256
and up are special ids (`EOD_ID` ends a document).

Each attention layer has a *kind*, "dense" or "lighthouse", that is a plain attribute and
not a parameter: switching a model between training stages (`Transformer.set_attention`)
changes no weight. Layers listed in `ModelArgs.dense_layers` stay dense in every stage.

Legend: B batch, N sequence length, V vocabulary size, E model dim, H query heads,
G key/value heads, D head dim, F feed-forward hidden size, L layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import lighthouse_attention
from .config import LighthouseConfig
from .rope import apply_rotary_dense, rope_tables

# ---- vocabulary -------------------------------------------------------------------------
BYTE_VOCAB = 256  # ids 0..255: raw bytes
EOD_ID = 256  # end of document: separates packed documents
PAD_ID = 257  # reserved (packing never pads)
VOCAB_SIZE = 264  # 256 bytes + 8 special ids (257..263 reserved), a multiple of 8

ATTENTION_KINDS = ("dense", "lighthouse")
ROPE_PLACEMENTS = ("window-end", "pre-pool")


@dataclass
class ModelArgs:
    """Architecture. Defaults are the tiny demo model."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 384
    vocab_size: int = VOCAB_SIZE
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # "window-end": q, k go to lighthouse_attention un-rotated with the RoPE tables and every
    # gathered entry is rotated at the last position it covers; "pre-pool": q, k are rotated
    # at every position first. Dense layers always use ordinary RoPE.
    rope: str = "window-end"
    # Layers that are dense in every stage; negative indices count from the end.
    dense_layers: list[int] = field(default_factory=lambda: [0, -1])
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def dense_layer_set(self) -> set[int]:
        return {i % self.n_layers for i in self.dense_layers}


@dataclass
class LighthouseArgs:
    """Keyword arguments of `lighthouse_attention` for the Lighthouse layers."""

    levels: int = 3
    pooling: int = 2
    topk: int = 128
    scorer: str = "norm"
    backend: str = "auto"

    def config(self) -> LighthouseConfig:
        """The validated attention config (raises on bad levels/pooling/topk/scorer)."""
        return LighthouseConfig(levels=self.levels, pooling=self.pooling, topk=self.topk, scorer=self.scorer)

    def sizes(self) -> LighthouseConfig:
        """The config without the scorer check (sizes do not depend on the scorer)."""
        return LighthouseConfig(levels=self.levels, pooling=self.pooling, topk=self.topk)

    @property
    def min_seq_len(self) -> int:
        return self.sizes().min_seq_len

    def sub_seq_len(self, seq_len: int) -> int:
        return self.sizes().sub_seq_len(seq_len)

    def kwargs(self) -> dict:
        return dict(levels=self.levels, pooling=self.pooling, topk=self.topk, scorer=self.scorer, backend=self.backend)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x_BNE: torch.Tensor) -> torch.Tensor:
        x_BNE_f = x_BNE.float()
        x_BNE_f = x_BNE_f * torch.rsqrt(x_BNE_f.pow(2).mean(-1, keepdim=True) + self.eps)
        return x_BNE_f.type_as(x_BNE) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, lighthouse: LighthouseArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.rope_placement = args.rope
        self.lighthouse = lighthouse
        self.kind = "dense"  # "dense" | "lighthouse": not a parameter, flipped between stages
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x_BNE: torch.Tensor, cos_ND: torch.Tensor, sin_ND: torch.Tensor) -> torch.Tensor:
        B, N, _ = x_BNE.shape
        q_BHND = self.wq(x_BNE).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
        k_BGND = self.wk(x_BNE).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BGND = self.wv(x_BNE).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)

        if self.kind == "lighthouse" and self.rope_placement == "window-end":
            o_BHND = lighthouse_attention(q_BHND, k_BGND, v_BGND, rope=(cos_ND, sin_ND), **self.lighthouse.kwargs())
        else:
            q_BHND = apply_rotary_dense(q_BHND, cos_ND, sin_ND)
            k_BGND = apply_rotary_dense(k_BGND, cos_ND, sin_ND)
            if self.kind == "lighthouse":  # pre-pool placement
                o_BHND = lighthouse_attention(q_BHND, k_BGND, v_BGND, rope=None, **self.lighthouse.kwargs())
            else:
                o_BHND = F.scaled_dot_product_attention(
                    q_BHND, k_BGND, v_BGND, is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads
                )
        return self.wo(o_BHND.transpose(1, 2).reshape(B, N, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x_BNE: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_BNE)) * self.w3(x_BNE))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, lighthouse: LighthouseArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, lighthouse)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden)

    def forward(self, x_BNE, cos_ND, sin_ND):
        x_BNE = x_BNE + self.attention(self.attention_norm(x_BNE), cos_ND, sin_ND)
        return x_BNE + self.feed_forward(self.ffn_norm(x_BNE))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, lighthouse: LighthouseArgs | None = None):
        super().__init__()
        check_model_args(args)
        self.args = args
        self.lighthouse = lighthouse or LighthouseArgs()
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, self.lighthouse) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self._rope_cache: dict = {}
        self.reset_parameters()

    # ---- attention kinds ----------------------------------------------------------------
    def set_attention(self, kind: str) -> None:
        """Make every layer not in `dense_layers` use `kind`; changes no parameter."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        keep_dense = self.args.dense_layer_set()
        for i, block in enumerate(self.layers):
            block.attention.kind = "dense" if i in keep_dense else kind

    def attention_kinds(self) -> list[str]:
        return [block.attention.kind for block in self.layers]

    # ---- parameters ---------------------------------------------------------------------
    def reset_parameters(self) -> None:
        std = self.args.init_std
        out_std = std / math.sqrt(2 * self.args.n_layers)  # residual projections (GPT-2 style)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)  # RMSNorm weights
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=out_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied weight counts once

    # ---- forward ------------------------------------------------------------------------
    def rope(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, str(device))
        if key not in self._rope_cache:
            self._rope_cache = {key: rope_tables(seq_len, self.args.head_dim, self.args.rope_theta, device=device)}
        return self._rope_cache[key]

    def forward(self, idx_BN: torch.Tensor, targets_BN: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, N, V]; or, with targets, the mean cross-entropy (nats per token)."""
        N = idx_BN.shape[1]
        cos_ND, sin_ND = self.rope(N, idx_BN.device)
        x_BNE = self.tok_embeddings(idx_BN)
        for block in self.layers:
            x_BNE = block(x_BNE, cos_ND, sin_ND)
        logits_BNV = self.output(self.norm(x_BNE))
        if targets_BN is None:
            return logits_BNV
        return F.cross_entropy(logits_BNV.float().flatten(0, 1), targets_BN.flatten())


def check_model_args(args: ModelArgs) -> None:
    """Raise ValueError naming the offending `model.*` key."""
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size"):
        if getattr(args, key) < 1:
            raise ValueError(f"model.{key} must be >= 1, got {getattr(args, key)}")
    if args.dim % args.n_heads:
        raise ValueError(f"model.dim ({args.dim}) must be a multiple of model.n_heads ({args.n_heads})")
    if args.n_heads % args.n_kv_heads:
        raise ValueError(f"model.n_heads ({args.n_heads}) must be a multiple of model.n_kv_heads ({args.n_kv_heads})")
    if args.head_dim % 2:
        raise ValueError(f"head dim model.dim / model.n_heads = {args.head_dim} must be even for RoPE")
    if args.vocab_size < BYTE_VOCAB + 1:
        raise ValueError(f"model.vocab_size must be >= {BYTE_VOCAB + 1} (256 bytes + end-of-document), got {args.vocab_size}")
    if args.rope not in ROPE_PLACEMENTS:
        raise ValueError(f"model.rope must be one of {ROPE_PLACEMENTS}, got {args.rope!r}")
    for i in args.dense_layers:
        if not -args.n_layers <= i < args.n_layers:
            raise ValueError(f"model.dense_layers: layer {i} is out of range for model.n_layers={args.n_layers}")
    if args.rope_theta <= 0 or args.norm_eps <= 0 or args.init_std <= 0:
        raise ValueError("model.rope_theta, model.norm_eps and model.init_std must be > 0")
