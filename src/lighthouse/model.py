"""A small Llama-3 style decoder whose attention layers are dense or Lighthouse.

RMSNorm, rotary position embedding (RoPE), SwiGLU feed-forward, grouped-query attention
(GQA), tied or untied embeddings, and the byte-level vocabulary of `lighthouse.tokenizer`
(ids 0..255 are bytes, 256 and up special ids; `EOD_ID` ends a document).

Each attention layer owns its projections (the only weights) and an attention module from
`lighthouse.layers` (dense or Lighthouse, no parameters) behind one forward contract.
Switching a model between training stages (`Transformer.set_attention`) replaces those
modules and changes no weight; layers listed in `ModelArgs.dense_layers` stay dense in every
stage. `Transformer.attention_builder` is the one place that makes them: context
parallelism or another backend plugs in there.

The model can be built on the meta device (`with torch.device("meta"): Transformer(...)`)
and materialized later (`Transformer.materialize(device)`), after sharding, with the same
initial weights as an eager build from the same seed.

Decoding (`lighthouse sample`) uses the same forward with a `KVCache`:
`model(ids_BN, start=s, cache=cache)` runs positions s..s+N-1, appends their rotated keys and
values to the cache and attends to everything cached before them, with dense attention (what a
model is after its dense recovery stage; Lighthouse is a training-time method with no cached form).

Legend: B batch, N sequence length (new positions when decoding), S cached positions (past and
new), V vocabulary size, E model dim, H query heads, G key/value heads, D head dim, F
feed-forward hidden size, L layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpointing import checkpoint_policy, run_block
from .config import LighthouseConfig
from .gla import gla_log_gates, init_gate_projection
from .layers import ATTENTION_KINDS, ROPE_PLACEMENTS, build_attention
from .loss import chunked_cross_entropy
from .rope import apply_rotary_dense, rope_tables
from .scorers import GLAScorer
from .tokenizer import BYTE_VOCAB, EOD_ID, PAD_ID, VOCAB_SIZE  # noqa: F401 - EOD_ID, PAD_ID: older imports from here


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


class RopeTables:
    """RoPE tables (cos, sin) [N, D] of one length and device at a time, made when first asked for."""

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, theta
        self._cache: dict = {}

    def __call__(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, str(device))
        if key not in self._cache:
            self._cache = {key: rope_tables(seq_len, self.head_dim, self.theta, device=device)}
        return self._cache[key]


class Embedding(nn.Embedding):
    """`nn.Embedding` that skips its default init on the meta device, where it writes nothing: torch's
    meta `normal_` loads torch._dynamo, about 2 s of start-up in every process that builds a model.
    `Transformer.materialize` runs the init once the weight has memory."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x_BNE: torch.Tensor) -> torch.Tensor:
        x_BNE_f = x_BNE.float()
        x_BNE_f = x_BNE_f * torch.rsqrt(x_BNE_f.pow(2).mean(-1, keepdim=True) + self.eps)
        return x_BNE_f.type_as(x_BNE) * self.weight


class LayerCache:
    """The rotated keys and the values of one layer, [B, G, capacity, D] each."""

    def __init__(self, shape: tuple[int, ...], device, dtype):
        self.k_BGSD = torch.empty(shape, device=device, dtype=dtype)
        self.v_BGSD = torch.empty(shape, device=device, dtype=dtype)

    def update(self, start: int, k_BGND: torch.Tensor, v_BGND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write positions start..start+N-1; returns keys and values of positions 0..start+N-1."""
        end = start + k_BGND.shape[2]
        self.k_BGSD[:, :, start:end] = k_BGND
        self.v_BGSD[:, :, start:end] = v_BGND
        return self.k_BGSD[:, :, :end], self.v_BGSD[:, :, :end]


class KVCache:
    """Keys and values of every layer for up to `capacity` positions (dense decoding; see the module docstring)."""

    def __init__(self, model: Transformer, batch: int, capacity: int, device=None, dtype=None):
        args = model.args
        shape = (batch, args.n_kv_heads, capacity, args.head_dim)
        self.layers = [LayerCache(shape, device, dtype) for _ in model.layers]
        self.capacity = capacity


def attend_cached(q_BHND: torch.Tensor, k_BGSD: torch.Tensor, v_BGSD: torch.Tensor, start: int) -> torch.Tensor:
    """Causal SDPA of N new queries at positions start..start+N-1 over the S = start + N cached keys."""
    N = q_BHND.shape[2]
    gqa = q_BHND.shape[1] != k_BGSD.shape[1]
    if N == 1:  # one query sees every cached key
        return F.scaled_dot_product_attention(q_BHND, k_BGSD, v_BGSD, enable_gqa=gqa)
    if start == 0:
        return F.scaled_dot_product_attention(q_BHND, k_BGSD, v_BGSD, is_causal=True, enable_gqa=gqa)
    # Several new positions after a cached prefix: causal, aligned to the end.
    keep_NS = torch.arange(start + N, device=q_BHND.device)[None, :] <= torch.arange(start, start + N, device=q_BHND.device)[:, None]
    return F.scaled_dot_product_attention(q_BHND, k_BGSD, v_BGSD, attn_mask=keep_NS, enable_gqa=gqa)


class Attention(nn.Module):
    """q, k, v, o projections around an attention module (`self.core`, from `lighthouse.layers`).

    With the `gla` scorer, a layer that can run Lighthouse also owns its gate projection `wg`
    (model dim -> one log-decay per query head). Selection is gradient-free, so `wg` never
    trains: it is frozen at its initialization, as in the paper's code, and saved with the weights.
    """

    def __init__(self, args: ModelArgs, gla_gate: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.core: nn.Module = build_attention("dense")  # replaced by Transformer.set_attention
        # Initialized by Transformer.reset_parameters (lighthouse.gla.init_gate_projection).
        self.wg = nn.Linear(args.dim, args.n_heads, bias=True).requires_grad_(False) if gla_gate else None

    @property
    def kind(self) -> str:
        return self.core.kind

    def forward(self, x_BNE: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], start: int = 0,
                cache: LayerCache | None = None) -> torch.Tensor:
        """`rope`: the tables of positions start..start+N-1; `cache`: decode against it (dense attention)."""
        B, N, _ = x_BNE.shape
        q_BHND = self.wq(x_BNE).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
        k_BGND = self.wk(x_BNE).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BGND = self.wv(x_BNE).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            if self.kind != "dense":
                raise ValueError("decoding with a KV cache runs dense attention: call model.set_attention('dense') first")
            cos_ND, sin_ND = rope
            q_BHND = apply_rotary_dense(q_BHND, cos_ND, sin_ND)
            k_BGSD, v_BGSD = cache.update(start, apply_rotary_dense(k_BGND, cos_ND, sin_ND), v_BGND)
            o_BHND = attend_cached(q_BHND, k_BGSD, v_BGSD, start)
        else:
            gates = gla_log_gates(x_BNE, self.wg) if self.wg is not None and self.kind == "lighthouse" else None
            o_BHND = self.core(q_BHND, k_BGND, v_BGND, rope=rope, context=gates)
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
    def __init__(self, args: ModelArgs, gla_gate: bool = False):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, gla_gate)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden)

    def forward(self, x_BNE, rope, start: int = 0, cache: LayerCache | None = None):
        x_BNE = x_BNE + self.attention(self.attention_norm(x_BNE), rope, start, cache)
        return x_BNE + self.feed_forward(self.ffn_norm(x_BNE))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, lighthouse: LighthouseConfig | None = None):
        super().__init__()
        check_model_args(args)
        self.args = args
        self.lighthouse = lighthouse if lighthouse is not None else LighthouseConfig()
        self.tok_embeddings = Embedding(args.vocab_size, args.dim)
        gla = self.lighthouse.scorer == "gla" or isinstance(self.lighthouse.scorer, GLAScorer)
        dense = args.dense_layer_set()
        self.layers = nn.ModuleList(Block(args, gla_gate=gla and i not in dense) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self._rope_tables = RopeTables(args.head_dim, args.rope_theta)
        # Training memory (lighthouse.checkpointing): what each block keeps for the backward pass
        # (False / "none", True / "block": recompute each block, "selective"; the selection
        # is recomputed identically), how many of the first blocks keep their input in host memory
        # (with "block"), and the loss taken `loss_chunk` positions at a time (0: all at once).
        self.activation_checkpointing: bool | str = False
        self.offload_layers = 0
        self.loss_chunk = 0
        if self.output.weight.device.type != "meta":
            self.reset_parameters()

    # ---- attention kinds ----------------------------------------------------------------
    def attention_builder(self, kind: str, layer: int) -> nn.Module:
        """The attention module of layer `layer` for `kind`; replace this to plug in another one."""
        return build_attention(kind, self.lighthouse, self.args.rope)

    def set_attention(self, kind: str) -> None:
        """Make every layer not in `dense_layers` use `kind`; changes no parameter."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        keep_dense = self.args.dense_layer_set()
        for i, block in enumerate(self.layers):
            block.attention.core = self.attention_builder("dense" if i in keep_dense else kind, i)

    def attention_kinds(self) -> list[str]:
        return [block.attention.kind for block in self.layers]

    # ---- parameters ---------------------------------------------------------------------
    def materialize(self, device) -> Transformer:
        """Allocate a meta-built model on `device` and initialize it as an eager build would.

        The eager constructors draw their default init from the RNG before `reset_parameters`
        overwrites it; replaying those draws in construction order makes the weights equal to
        an eager build from the same seed (and keeps old runs reproducible).
        """
        self.to_empty(device=device)
        if self.args.tie_embeddings:  # to_empty gives each module its own tensor
            self.output.weight = self.tok_embeddings.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.reset_parameters()
        self.reset_parameters()
        return self

    def reset_parameters(self) -> None:
        std = self.args.init_std
        out_std = std / math.sqrt(2 * self.args.n_layers)  # residual projections (GPT-2 style)
        for name, p in self.named_parameters():
            if ".wg." in name:  # frozen gla gates: their own initialization, below
                continue
            if p.dim() < 2:
                nn.init.ones_(p)  # RMSNorm weights
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=out_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)
        for block in self.layers:
            if block.attention.wg is not None:
                init_gate_projection(block.attention.wg)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied weight counts once

    # ---- forward ------------------------------------------------------------------------
    def rope(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables of positions 0..seq_len-1."""
        return self._rope_tables(seq_len, device)

    def forward(self, idx_BN: torch.Tensor, targets_BN: torch.Tensor | None = None, start: int = 0,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, N, V] of the ids at positions start..start+N-1; or, with targets, the mean cross-entropy
        (nats per token).

        cache: decode with it: the keys and values of these positions are written into it and
        every layer attends to positions 0..start+N-1 with dense attention.
        """
        N = idx_BN.shape[1]
        if cache is not None and start + N > cache.capacity:
            raise ValueError(f"KV cache full: {start} + {N} positions > capacity {cache.capacity}")
        cos_SD, sin_SD = self.rope(cache.capacity if cache is not None else start + N, idx_BN.device)
        rope = cos_SD[start : start + N], sin_SD[start : start + N]
        x_BNE = self.tok_embeddings(idx_BN)
        training = self.training and torch.is_grad_enabled()
        policy = checkpoint_policy(self.activation_checkpointing) if training else "none"
        for i, block in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            offload = training and i < self.offload_layers
            x_BNE = run_block(block, x_BNE, rope, start, layer_cache, policy, offload)
        if targets_BN is not None and self.loss_chunk:
            return chunked_cross_entropy(x_BNE, self.head, targets_BN, self.loss_chunk)
        logits_BNV = self.head(x_BNE)
        if targets_BN is None:
            return logits_BNV
        return F.cross_entropy(logits_BNV.float().flatten(0, 1), targets_BN.flatten())

    def head(self, x_BNE: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of the last block's output: final norm and output projection, position by position."""
        return self.output(self.norm(x_BNE))


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
