"""`lighthouse export RUN_DIR OUT_DIR`: a checkpoint of ours as a Hugging Face Llama folder.

The folder holds what `AutoModelForCausalLM.from_pretrained(OUT_DIR)` and
`AutoTokenizer.from_pretrained(OUT_DIR)` open offline:

    config.json              LlamaConfig (hidden_size = dim, intermediate_size = ffn_hidden, ...,
                             eos = bos = 256 (end of document), pad = 257) and, under "lighthouse",
                             the run's Lighthouse settings for `attn_implementation="lighthouse"`
    generation_config.json   the same special ids
    model.safetensors        the weights under transformers' Llama names (`WEIGHT_NAMES`)
    tokenizer.json           byte-level: one token per byte (id = byte value), specials 256..263
    tokenizer_config.json, special_tokens_map.json

Our model is a Llama architecture (RMSNorm, RoPE in the rotate_half convention, SwiGLU with
w1 = gate, w3 = up, w2 = down, GQA), so the exported model computes the same function as ours
with dense attention. The run's RoPE placement only matters for Lighthouse layers; it is kept
in `config.lighthouse["rope"]` for continued pre-training with `lighthouse.hf`.

Where it writes: a new or empty folder, or (with `overwrite`) a folder that already holds an
export of ours, recognised by its config.json (a Llama of our byte vocabulary and special ids).
The files are written into a hidden folder inside it first and moved into place once all are
written, and an overwrite first removes the Hugging Face weight files the folder held
(`WEIGHT_FILES`), so no stale shard is ever loaded with the new config; other files stay. A
folder that is not an export is never written into.

Tokenizer: the text API maps any text to its UTF-8 bytes (`tokenizer("é").input_ids == [195, 169]`)
and back; the literal text "<eod>" stays bytes (`split_special_tokens`), only id 256 is the end
of a document. Decoding ids that are not valid UTF-8 gives U+FFFD in text; `ids_to_bytes` (or
`tokenizer.convert_ids_to_tokens` with `byte_level_alphabet`) returns the exact bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig

from ..model import ModelArgs, Transformer
from ..tokenizer import BYTE_VOCAB, EOD_ID, PAD_ID, VOCAB_SIZE

# our parameter name (per layer: "layers.{i}." + name) -> transformers' Llama name
WEIGHT_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_WEIGHT_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
SPECIAL_TOKENS = ["<eod>", "<pad>"] + [f"<reserved_{i}>" for i in range(PAD_ID + 1, VOCAB_SIZE)]  # ids 256..263
EOD_TOKEN, PAD_TOKEN = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]


# What an export writes, and the weight files of a Hugging Face folder (ours or saved over it by
# transformers) that an overwrite removes.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
TMP_PREFIX = ".export-"  # the hidden folder an export writes into before moving its files into place


class ExportError(RuntimeError):
    """The output folder cannot be written (a file, another folder's contents, an export without --overwrite)."""


def is_our_export(folder: str | Path) -> bool:
    """The folder holds an export of ours: its config.json is a Llama of our byte vocabulary and special ids."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and (config.get("model_type"), config.get("vocab_size"), config.get("eos_token_id"),
                                         config.get("pad_token_id")) == ("llama", VOCAB_SIZE, EOD_ID, PAD_ID)


def check_export_target(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Raise ExportError unless `out_dir` may receive an export: new, empty, or (with overwrite) one of ours."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; an export is a folder: give a new folder's path")
    if not out_dir.is_dir():
        return out_dir
    entries = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(TMP_PREFIX))  # a killed export's
    if not entries:
        return out_dir
    if not is_our_export(out_dir):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise ExportError(f"{out_dir} holds files that are not a lighthouse export ({shown}); export into a new or "
                          "empty folder")
    if not overwrite:
        raise ExportError(f"{out_dir} already holds a model (config.json); pass --overwrite to replace it")
    return out_dir


def hf_name(name: str) -> str:
    """transformers' Llama name of one of our parameters."""
    if name in WEIGHT_NAMES:
        return WEIGHT_NAMES[name]
    prefix, i, rest = name.split(".", 2)
    if prefix != "layers" or rest not in LAYER_WEIGHT_NAMES:
        raise KeyError(f"no Hugging Face Llama name for parameter {name!r}")
    return f"model.layers.{i}.{LAYER_WEIGHT_NAMES[rest]}"


def hf_state_dict(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (lm_head left out when tied: transformers ties it on load)."""
    tied = model.args.tie_embeddings
    out = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "output.weight":
            continue
        if ".attention.wg." in name:  # the gla scorer's frozen gates: selection only, no part of the dense model
            continue
        t = tensor.detach().to("cpu")
        out[hf_name(name)] = (t.to(dtype) if dtype is not None else t).contiguous().clone()
    return out


def llama_config(args: ModelArgs, max_position_embeddings: int, lighthouse: dict | None = None):
    """The transformers LlamaConfig of our architecture."""
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        tie_word_embeddings=args.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=EOD_ID,  # a document starts after an end-of-document id, as in training
        eos_token_id=EOD_ID,
        pad_token_id=PAD_ID,
    )
    if lighthouse is not None:
        config.lighthouse = lighthouse
    return config


def lighthouse_settings(model: Transformer) -> dict | None:
    """The model's Lighthouse settings as `config.lighthouse` of `lighthouse.hf` (None for a Scorer object or gla)."""
    cfg = model.lighthouse
    if not isinstance(cfg.scorer, str) or cfg.scorer == "gla":  # gla needs its gates, which the export leaves out
        return None
    return {"levels": cfg.levels, "pooling": cfg.pooling, "topk": cfg.topk, "scorer": cfg.scorer,
            "dense_layers": list(model.args.dense_layers), "rope": model.args.rope}


# ---- tokenizer -------------------------------------------------------------------------------------
def byte_level_alphabet() -> list[str]:
    """The printable character the ByteLevel pre-tokenizer (GPT-2) uses for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(BYTE_VOCAB):
        if b in printable:
            chars[b] = chr(b)
        else:  # bytes without a printable Latin-1 character get 256, 257, ... in order
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(BYTE_VOCAB)]


def ids_to_bytes(tokenizer, ids) -> bytes:
    """The exact bytes of token ids (special ids dropped), valid UTF-8 or not."""
    char_to_byte = {c: b for b, c in enumerate(byte_level_alphabet())}
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return bytes(char_to_byte[t] for t in tokens if t in char_to_byte)


def save_byte_tokenizer(out_dir: str | Path, model_max_length: int) -> None:
    """tokenizer.json (a `tokenizers` BPE with no merges over the 256 byte characters) and its configs."""
    out_dir = Path(out_dir)
    vocab = {char: byte for byte, char in enumerate(byte_level_alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(BYTE_VOCAB, BYTE_VOCAB + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 256..263")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    specials = {"bos_token": EOD_TOKEN, "eos_token": EOD_TOKEN, "pad_token": PAD_TOKEN}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": model_max_length,
        "split_special_tokens": True,  # the text "<eod>" is 5 bytes; only id 256 ends a document
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        "padding_side": "left",  # batched generation
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


# ---- export ----------------------------------------------------------------------------------------
def remove_stale_exports(out_dir: Path) -> list[Path]:
    """Remove the hidden folders that killed exports left in `out_dir` (a whole model's weights each); an
    export still running in another process keeps its own. Returns what was removed."""
    removed = []
    for tmp in out_dir.glob(f"{TMP_PREFIX}*"):
        pid = tmp.name.removeprefix(TMP_PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def export_model(model: Transformer, out_dir: str | Path, *, max_position_embeddings: int,
                 dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write `model` as a Hugging Face Llama folder (weights, config, byte-level tokenizer); see the module
    docstring for where it may write and what an overwrite removes."""
    out_dir = check_export_target(out_dir, overwrite)
    tmp = out_dir / f"{TMP_PREFIX}{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_exports(out_dir)
        tmp.mkdir()
    except OSError as e:
        raise ExportError(f"{out_dir}: cannot write there ({(e.strerror or str(e)).lower()}); choose a folder you "
                          "can write") from None
    try:
        config = llama_config(model.args, max_position_embeddings, lighthouse_settings(model))
        config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=EOD_ID, eos_token_id=EOD_ID, pad_token_id=PAD_ID).save_pretrained(tmp)
        save_file(hf_state_dict(model, dtype), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_byte_tokenizer(tmp, max_position_embeddings)
        for pattern in WEIGHT_FILES:  # an overwrite: no old shard or index may outlive the new weights
            for stale in out_dir.glob(pattern):
                stale.unlink()
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path, *, dtype: torch.dtype | None = None,
               overwrite: bool = False, warn=None) -> tuple[Path, Path]:
    """Export the newest good checkpoint of a run (or a checkpoint folder); returns (checkpoint, out_dir)."""
    from ..trainer.build import load_trained

    check_export_target(out_dir, overwrite)  # before the checkpoint is read: a refusal costs nothing
    trained = load_trained(run_dir, "cpu", warn=warn)
    out = export_model(trained.model, out_dir, max_position_embeddings=trained.cfg.data.seq_len, dtype=dtype,
                       overwrite=overwrite)
    return trained.ckpt, out
