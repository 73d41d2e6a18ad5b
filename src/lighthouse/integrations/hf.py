"""Lighthouse attention as an attention backend of Hugging Face transformers models.

    import lighthouse.hf                                   # registers attn_implementation "lighthouse"
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=264, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=1536)
    lighthouse.hf.configure(config, levels=3, pooling=4, topk=2048)    # validated, kept in config.lighthouse
    model = AutoModelForCausalLM.from_config(config, attn_implementation="lighthouse")
    ...                                                    # pre-train at long lengths (N >= 32K here)
    model.set_attn_implementation("sdpa")                  # dense recovery: the same weights
    ...
    model.save_pretrained("out")                           # config.lighthouse is saved with the config

Importing this module registers "lighthouse" with transformers' `AttentionInterface` (the
attention function, `lighthouse_attention_forward`) and `AttentionMaskInterface` (the mask
function, `lighthouse_mask`, which never builds an N x N mask: it returns None for plain causal
attention and otherwise a `DeferredMask` that only a dense path ever turns into a tensor).

Settings live on the model config as a plain dict, `config.lighthouse` (saved and loaded with
it); every key is optional:

    levels, pooling, topk, scorer, backend, selection
                     LighthouseConfig's defaults: 3, 4, 2048, "norm", "auto", "topk"
    dense_layers     [0, -1]     layers that always run dense SDPA (negative: from the end), as in
                                 `lighthouse train`: the first and last layers see every token
    rope             "pre-pool"  transformers rotates q and k before the attention call, so pooled
                                 entries are means of rotated vectors: exact, no extra work, any RoPE
                                 type. "window-end" undoes that rotation (rotation by -theta with the
                                 model's own tables, recomputed from the config; default, linear and
                                 llama3 RoPE) and rotates every gathered entry at the last position
                                 it covers, as `lighthouse train` does by default (averaging rotated
                                 vectors smears their positions); costs two extra rotations of q
                                 and k and, in bf16, one rounding of the un-rotated q and k
    short_sequences  "dense"     sequences shorter than the budget (N < topk * pooling**(levels-1)
                                 after padding) run dense SDPA: there Lighthouse would keep at
                                 least as many entries as there are tokens, and dense attention is
                                 its limit. "error" raises instead.

Which calls run what (every decision is made per forward, the same in every layer):
- Dense SDPA (transformers' own "sdpa" function, with the mask it would get):
  - calls with past keys in a KV cache (key length != query length: decoding, chunked prefill,
    static caches) and calls that fill a cache without autograd (`use_cache=True` while
    gradients are off: `generate()`, or a `torch.no_grad()` forward with the default
    `use_cache=True`). Lighthouse is a training-time method: a model generates as the dense
    model it becomes after recovery. To score with Lighthouse without gradients, pass
    `use_cache=False`;
  - short sequences (with `short_sequences="dense"`), and the layers in `dense_layers`.
- Lighthouse otherwise, with GQA as is (k, v keep their G heads). Inputs it does not define
  raise a ValueError that says so: padding with holes (an attention_mask with zeros), non-causal
  attention, a sliding window or chunk shorter than the sequence (Mistral's default
  `sliding_window=4096`: set it to None), packed sequences (position_ids that restart), custom
  4D masks, attention dropout, logit soft-capping and attention sinks.

Tested with transformers 5.x (Llama, Mistral, Qwen2, Qwen3).

Legend: B batch, H query heads, G key/value heads, N sequence length, D head dim.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..attention import lighthouse_attention
from ..config import LighthouseConfig, LighthouseConfigError, LighthouseConfigTypeError
from ..rope import apply_rotary_dense

ATTN_IMPLEMENTATION = "lighthouse"
ROPE_PLACEMENTS = ("pre-pool", "window-end")
SHORT_SEQUENCES = ("dense", "error")
DEFAULT_DENSE_LAYERS = (0, -1)
# RoPE types whose tables are a fixed inv_freq with no attention scaling: rotations, so they can be undone.
WINDOW_END_ROPE_TYPES = ("default", "linear", "llama3")
SETTING_KEYS = ("levels", "pooling", "topk", "scorer", "backend", "selection", "dense_layers", "rope", "short_sequences")


class UnsupportedInputError(ValueError):
    """An input Lighthouse does not define (padding holes, non-causal attention, ...)."""


# ---- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HFSettings:
    """The parsed `config.lighthouse` of one model."""

    attention: LighthouseConfig
    dense_layers: frozenset[int]  # resolved to 0..n_layers-1
    rope: str
    short_sequences: str
    n_layers: int

    @property
    def lighthouse_layers(self) -> list[int]:
        return [i for i in range(self.n_layers) if i not in self.dense_layers]

    def describe(self) -> str:
        return (f"Lighthouse on layers {self.lighthouse_layers}, dense SDPA on layers {sorted(self.dense_layers)}; "
                f"{self.attention.describe()}; rope={self.rope}; short sequences: {self.short_sequences}")


def _error(key: str, message: str, type_error: bool = False) -> LighthouseConfigError:
    cls = LighthouseConfigTypeError if type_error else LighthouseConfigError
    return cls(key, f"config.lighthouse[{key!r}]: {message}")


def _parse_settings(raw: dict, n_layers: int) -> HFSettings:
    unknown = sorted(set(raw) - set(SETTING_KEYS))
    if unknown:
        raise _error(unknown[0], f"unknown key(s) {unknown}; the keys are {list(SETTING_KEYS)}")
    if "scorer" in raw and not isinstance(raw["scorer"], str):
        raise _error("scorer", f"must be a registered scorer name (a string, saved in config.json), got {raw['scorer']!r}",
                     type_error=True)
    try:
        fields = ("levels", "pooling", "topk", "scorer", "backend", "selection")
        attention = LighthouseConfig.resolve(None, **{k: raw.get(k) for k in fields})
    except LighthouseConfigError as e:
        raise _error(e.key, str(e), isinstance(e, TypeError)) from None
    dense_layers = raw.get("dense_layers", list(DEFAULT_DENSE_LAYERS))
    if not isinstance(dense_layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in dense_layers):
        raise _error("dense_layers", f"must be a list of layer indices (ints), got {dense_layers!r}", type_error=True)
    for i in dense_layers:
        if not -n_layers <= i < n_layers:
            raise _error("dense_layers", f"layer {i} is out of range for num_hidden_layers={n_layers}")
    rope = raw.get("rope", "pre-pool")
    if rope not in ROPE_PLACEMENTS:
        raise _error("rope", f"must be one of {ROPE_PLACEMENTS}, got {rope!r}")
    short = raw.get("short_sequences", "dense")
    if short not in SHORT_SEQUENCES:
        raise _error("short_sequences", f"must be one of {SHORT_SEQUENCES}, got {short!r}")
    return HFSettings(attention, frozenset(i % n_layers for i in dense_layers), rope, short, n_layers)


@functools.lru_cache(maxsize=64)
def _parse_cached(raw_json: str, n_layers: int) -> HFSettings:
    return _parse_settings(json.loads(raw_json), n_layers)


def settings_from_config(config) -> HFSettings:
    """The Lighthouse settings of a transformers config (`config.lighthouse`, defaults when absent)."""
    return _settings(getattr(config, "lighthouse", None), getattr(config, "num_hidden_layers", None))


def _settings(raw, n_layers) -> HFSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TypeError(f"config.lighthouse must be a dict of settings, got {type(raw).__name__}")
    if not isinstance(n_layers, int):
        raise ValueError("the model config has no num_hidden_layers; Lighthouse needs it to resolve dense_layers")
    try:
        key = json.dumps(raw, sort_keys=True)
    except TypeError:  # not JSON (a Scorer object, say): parse for the error message, uncached
        return _parse_settings(raw, n_layers)
    return _parse_cached(key, n_layers)


def configure(config, **settings) -> dict:
    """Validate `settings` and merge them into `config.lighthouse` (a model's config when given a model).

    Keys: levels, pooling, topk, scorer, backend, selection, dense_layers, rope, short_sequences (see the
    module docstring for the defaults). Returns the stored dict. A bad value raises
    `LighthouseConfigError` naming `config.lighthouse[key]`.
    """
    target = getattr(config, "config", config)  # a PreTrainedModel carries its config
    merged = dict(getattr(target, "lighthouse", None) or {})
    merged.update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    _settings(merged, getattr(target, "num_hidden_layers", None))
    target.lighthouse = merged
    return merged


# ---- the mask function --------------------------------------------------------------------------
class DeferredMask:
    """The mask of a forward that is not plain causal attention over the whole input.

    It holds the arguments transformers gave the mask function and builds the mask (with the
    "sdpa" mask function, once per forward) only when a dense path needs it: decoding with a
    cache, short sequences. A Lighthouse forward raises `UnsupportedInputError` with `reason`.
    """

    def __init__(self, reason: str, mask_kwargs: dict):
        self.reason = reason
        self._mask_kwargs = mask_kwargs
        self._built = False
        self._mask = None

    def materialize(self):
        if not self._built:
            self._mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](**self._mask_kwargs)
            self._built = True
        return self._mask

    def __repr__(self) -> str:
        return f"DeferredMask({self.reason})"


def lighthouse_mask(
    batch_size: int,
    q_length: int | None = None,
    kv_length: int | None = None,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = False,
    **kwargs,
):
    """The mask function registered for "lighthouse": None for plain causal attention, else a `DeferredMask`.

    Called by transformers' `create_causal_mask` & co. with the 2D padding mask
    (`attention_mask`, [B, kv_length], True = keep) and the pattern (`mask_function`); it never
    builds a [q_length, kv_length] tensor itself.
    """
    mask_kwargs = dict(batch_size=batch_size, kv_length=kv_length, kv_offset=kv_offset, mask_function=mask_function,
                       attention_mask=attention_mask, local_size=local_size, allow_is_causal_skip=allow_is_causal_skip,
                       **kwargs)
    if q_length is not None:
        mask_kwargs.update(q_length=q_length, q_offset=q_offset)
    else:  # transformers 4.x passes cache_position instead of q_length / q_offset
        cache_position = kwargs["cache_position"]
        q_length, q_offset = cache_position.shape[0], int(cache_position[0])
    reasons = []
    if attention_mask is not None and not bool(attention_mask.all()):
        reasons.append("padding: the attention_mask has zeros (padded or masked tokens)")
    # A sliding window or chunk at least as long as the sequence is plain causal attention.
    within_window = local_size is not None and q_offset + q_length <= local_size
    if mask_function is not causal_mask_function and not within_window:
        if local_size is not None:
            reasons.append(f"a sliding window or chunk of {local_size} positions, shorter than the sequence "
                           f"({q_offset + q_length}); Lighthouse replaces full causal attention (for Mistral: "
                           "sliding_window=None)")
        elif mask_function is bidirectional_mask_function:
            reasons.append("non-causal (bidirectional) attention, config.is_causal=False")
        else:
            reasons.append("a mask pattern that is not plain causal (packed sequences found in position_ids, "
                           "or a custom mask function)")
    elif not allow_is_causal_skip:
        reasons.append("a mask transformers must build here (a static cache, or a caller that rules out is_causal)")
    if not reasons and (q_length == 1 or (q_length == kv_length and q_offset == 0 and kv_offset == 0)):
        return None  # is_causal covers it (and a single query attends to every cached key)
    if not reasons:
        reasons.append(f"past keys in a cache (queries {q_length}, keys {kv_length}, offset {q_offset})")
    return DeferredMask("; ".join(reasons), mask_kwargs)


# ---- RoPE (window-end placement) -------------------------------------------------------------------
def _rope_inv_freq(config, head_dim: int, device) -> torch.Tensor:
    """The model's inverse frequencies [D/2] in float32, as its rotary embedding computes them."""
    params = getattr(config, "rope_parameters", None)
    if params is None:  # transformers 4.x: rope_theta and rope_scaling
        scaling = getattr(config, "rope_scaling", None) or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        theta = getattr(config, "rope_theta", 10000.0)
        partial = getattr(config, "partial_rotary_factor", 1.0)
    else:
        if "rope_type" not in params and any(isinstance(v, dict) for v in params.values()):
            raise ValueError("rope='window-end' does not support per-layer-type RoPE parameters; use rope='pre-pool'")
        rope_type = params.get("rope_type", "default")
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"rope='window-end' needs RoPE on the whole head (partial_rotary_factor={partial}); "
                         "use rope='pre-pool'")
    if rope_type not in WINDOW_END_ROPE_TYPES:
        raise ValueError(f"rope='window-end' supports RoPE types {WINDOW_END_ROPE_TYPES}, not {rope_type!r} (its "
                         "tables scale or change with the length, so the rotation cannot be undone exactly); "
                         "use rope='pre-pool'")
    if rope_type == "default":
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](config, device)
    if attention_scaling != 1.0:
        raise ValueError(f"rope='window-end' needs unscaled RoPE tables; {rope_type!r} scales them by {attention_scaling}")
    return inv_freq.float()


def _rope_tables(config, position_ids: torch.Tensor | None, N: int, D: int, device):
    """cos, sin [N, D] float32 at the positions of the sequence, in the rotate_half convention."""
    if position_ids is None:
        positions_N = torch.arange(N, device=device)
    else:
        if position_ids.shape[0] > 1 and not bool((position_ids == position_ids[:1]).all()):
            raise UnsupportedInputError("rope='window-end' needs the same position_ids in every batch row")
        positions_N = position_ids[0]
    freqs_NF = positions_N[:, None].float() * _rope_inv_freq(config, D, device)[None, :]
    emb_ND = torch.cat([freqs_NF, freqs_NF], dim=-1)
    return emb_ND.cos(), emb_ND.sin()


def _unrotate(x_BHND: torch.Tensor, cos_ND: torch.Tensor, sin_ND: torch.Tensor) -> torch.Tensor:
    """Rotate by -theta: RoPE is orthogonal, so this undoes transformers' rotation (in float32 or wider)."""
    return apply_rotary_dense(x_BHND, cos_ND, -sin_ND)


# ---- the attention function ----------------------------------------------------------------------
def _runs_with_cache(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> bool:
    """Decoding or prefilling a KV cache: past keys present, or a cache filled without autograd."""
    return key.shape[2] != query.shape[2] or (bool(kwargs.get("use_cache")) and not torch.is_grad_enabled())


def _check_lighthouse_inputs(module, attention_mask, dropout, is_causal, kwargs, N) -> None:
    what = "Lighthouse attention (attn_implementation='lighthouse')"
    if isinstance(attention_mask, DeferredMask):
        raise UnsupportedInputError(f"{what} computes plain causal attention over the whole input; this forward has "
                                    f"{attention_mask.reason}. Lighthouse is for causal pre-training on unpadded (packed) "
                                    "sequences; use attn_implementation='sdpa' for this input.")
    if attention_mask is not None:
        raise UnsupportedInputError(f"{what} cannot apply a custom {type(attention_mask).__name__} attention mask "
                                    f"of shape {tuple(getattr(attention_mask, 'shape', ()))}; it is plain causal")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal:
        raise UnsupportedInputError(f"{what} is causal; this call asks for non-causal attention (is_causal=False)")
    window = kwargs.get("sliding_window")
    if window is not None and window < N:
        raise UnsupportedInputError(f"{what} replaces full causal attention; this layer has a sliding window of "
                                    f"{window} < N={N} (for Mistral: sliding_window=None)")
    if dropout:
        raise UnsupportedInputError(f"{what} has no attention dropout; set config.attention_dropout=0 (got {dropout})")
    for name in ("softcap", "s_aux", "sinks", "position_bias"):
        if kwargs.get(name) is not None:
            raise UnsupportedInputError(f"{what} does not support {name}")


def lighthouse_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, H, N, D], key/value [B, G, N, D] -> ([B, N, H, D], None).

    Lighthouse for a forward over whole sequences; dense SDPA for decoding with a KV cache,
    short sequences and `dense_layers` (see the module docstring). Lighthouse is training-time:
    generation runs dense.
    """
    settings = settings_from_config(module.config)

    def dense(mask):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                               is_causal=is_causal, **kwargs)

    def full_mask():
        return attention_mask.materialize() if isinstance(attention_mask, DeferredMask) else attention_mask

    N = query.shape[2]
    cfg = settings.attention
    if _runs_with_cache(query, key, kwargs) or not settings.lighthouse_layers:
        return dense(full_mask())
    if cfg.padded_len(N) < cfg.min_seq_len:
        if settings.short_sequences == "dense":
            return dense(full_mask())
        raise UnsupportedInputError(
            f"sequence length N={N} is shorter than the Lighthouse budget topk * pooling**(levels-1) = {cfg.min_seq_len} "
            f"({cfg.describe()}); lower topk or levels, or set config.lighthouse['short_sequences'] = 'dense'")
    # From here the forward is a Lighthouse forward: its inputs must be defined for it in every layer.
    _check_lighthouse_inputs(module, attention_mask, dropout, is_causal, kwargs, N)
    layer_idx = getattr(module, "layer_idx", None)
    if not isinstance(layer_idx, int):
        raise ValueError(f"{type(module).__name__} has no layer_idx; Lighthouse needs it to apply dense_layers")
    if layer_idx in settings.dense_layers:
        return dense(None)
    D = query.shape[-1]
    q_BHND, k_BGND = query, key
    if scaling is not None and not math.isclose(scaling, D**-0.5, rel_tol=1e-9):
        q_BHND = q_BHND * (scaling / D**-0.5)  # lighthouse_attention's SDPA uses the default 1/sqrt(D)
    rope = None
    if settings.rope == "window-end":
        cos_ND, sin_ND = _rope_tables(module.config, kwargs.get("position_ids"), N, D, query.device)
        q_BHND, k_BGND = _unrotate(q_BHND, cos_ND, sin_ND), _unrotate(k_BGND, cos_ND, sin_ND)
        rope = (cos_ND, sin_ND)
    o_BHND = lighthouse_attention(q_BHND, k_BGND, value, cfg, rope=rope)
    return o_BHND.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register "lighthouse" with transformers (done on import; calling it again is harmless)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, lighthouse_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, lighthouse_mask)


register()

__all__ = [
    "ATTN_IMPLEMENTATION",
    "DEFAULT_DENSE_LAYERS",
    "DeferredMask",
    "HFSettings",
    "UnsupportedInputError",
    "configure",
    "lighthouse_attention_forward",
    "lighthouse_mask",
    "register",
    "settings_from_config",
]
