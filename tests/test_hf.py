"""Hugging Face transformers: the "lighthouse" attention backend, export, the byte tokenizer, sampling.

Every model is built from a tiny config (no download). The integration is checked against
code that does not go through it: a transformers attention function that calls our
`lighthouse_attention` directly (pre-pool), and our own `Transformer` (pre-pool and
window-end) exported to a Llama folder.

Legend: B batch, N sequence length, V vocabulary.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AttentionInterface,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.masking_utils import create_causal_mask  # noqa: E402

import lighthouse.hf as lh  # noqa: E402
import lighthouse.integrations.hf as lh_module  # noqa: E402
from lighthouse import LighthouseConfig, LighthouseConfigError, lighthouse_attention  # noqa: E402
from lighthouse.cli import main as cli_main  # noqa: E402
from lighthouse.integrations.export import (  # noqa: E402
    EXPORT_FILES,
    byte_level_alphabet,
    export_model,
    hf_name,
    ids_to_bytes,
)
from lighthouse.model import KVCache, ModelArgs, Transformer  # noqa: E402
from lighthouse.sample import generate  # noqa: E402
from lighthouse.tokenizer import EOD_ID  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(levels=2, pooling=2, topk=128)  # Lighthouse needs N >= 256
N = 384
ARCHS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def tiny_config(arch: str = "llama", n_layers: int = 3, arch_kwargs: dict | None = None, **lighthouse):
    extra = {"sliding_window": None} if arch == "mistral" else {}  # Mistral's default window is 4096
    config = ARCHS[arch](vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         **{**extra, **(arch_kwargs or {})})
    lh.configure(config, **{**SETTINGS, **lighthouse})
    return config


def build(config, impl: str = "lighthouse"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=impl)


def logits_and_grads(model, ids_BN: torch.Tensor, **kwargs):
    """Logits and the gradients of a fixed cross-entropy loss with respect to every parameter."""
    model.zero_grad(set_to_none=True)
    logits_BNV = model(input_ids=ids_BN, use_cache=False, **kwargs).logits
    targets_BN = torch.roll(ids_BN, -1, dims=1)
    F.cross_entropy(logits_BNV.flatten(0, 1), targets_BN.flatten()).backward()
    return logits_BNV.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def tokens(B: int = 2, n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (B, n), generator=torch.Generator().manual_seed(seed))


def reference_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """What the integration must compute, written without it: our `lighthouse_attention` on the
    (already rotated) q, k, v transformers passes, dense causal SDPA in the first and last layers."""
    assert attention_mask is None
    n_layers = module.config.num_hidden_layers
    if module.layer_idx in (0, n_layers - 1):
        o_BHND = F.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
    else:
        o_BHND = lighthouse_attention(query, key, value, **SETTINGS)
    return o_BHND.transpose(1, 2), None


AttentionInterface.register("lighthouse_test_reference", reference_attention)


# ---- the attention backend ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_levels_1_is_sdpa_exactly(arch):
    config = tiny_config(arch, levels=1, dense_layers=[])
    ids = tokens(n=64)
    ours = logits_and_grads(build(config, "lighthouse"), ids)
    sdpa = logits_and_grads(build(config, "sdpa"), ids)
    assert torch.equal(ours[0], sdpa[0])
    for name, grad in sdpa[1].items():  # the GQA head sum of dk, dv runs in another order: float32 rounding
        torch.testing.assert_close(ours[1][name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item(), msg=name)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_matches_lighthouse_attention_called_directly(arch):
    config = tiny_config(arch)
    ids = tokens()
    ours = logits_and_grads(build(config, "lighthouse"), ids)
    reference = logits_and_grads(build(config, "lighthouse_test_reference"), ids)
    assert torch.equal(ours[0], reference[0])
    for name, grad in reference[1].items():
        assert torch.equal(ours[1][name], grad), name
    dense = logits_and_grads(build(config, "sdpa"), ids)
    assert (ours[0] - dense[0]).abs().max() > 1e-3  # Lighthouse did run in the middle layer


@pytest.mark.parametrize("rope", ["pre-pool", "window-end"])
def test_exported_model_matches_our_model(tmp_path, rope):
    """Our Transformer, exported: dense logits equal in transformers' sdpa, and Lighthouse (with
    the exported config.lighthouse, incl. the RoPE placement) equals our Lighthouse layers."""
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=64, rope=rope, dense_layers=[0],
                     tie_embeddings=rope == "pre-pool", init_std=0.1)
    ours = Transformer(args, LighthouseConfig(**SETTINGS))
    export_model(ours, tmp_path, max_position_embeddings=512)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.config.lighthouse["rope"] == rope
    ids = tokens(B=2, n=300)

    ours.set_attention("dense")
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5 * ours(ids).abs().max().item())

    ours.set_attention("lighthouse")
    hf.set_attn_implementation("lighthouse")
    hf_logits, hf_grads = logits_and_grads(hf, ids)
    ours.zero_grad(set_to_none=True)
    our_logits = ours(ids)
    F.cross_entropy(our_logits.flatten(0, 1), torch.roll(ids, -1, dims=1).flatten()).backward()
    scale = our_logits.abs().max().item()
    torch.testing.assert_close(hf_logits, our_logits.detach(), rtol=1e-5, atol=1e-5 * scale)
    for name, p in ours.named_parameters():
        grad = hf_grads[hf_name(name)]
        torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max().item(), msg=name)


def test_switch_to_dense_and_save_keep_weights_and_settings(tmp_path):
    config = tiny_config(dense_layers=[0])
    model = build(config)
    ids = tokens()
    with torch.no_grad():
        lighthouse_logits = model(ids, use_cache=False).logits
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        model.set_attn_implementation("sdpa")
        dense_logits = model(ids, use_cache=False).logits
        assert torch.equal(dense_logits, build(config, "sdpa")(ids).logits)
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
        model.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "config.json").read_text())["lighthouse"]["dense_layers"] == [0]
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="lighthouse")
        assert torch.equal(reloaded(ids, use_cache=False).logits, lighthouse_logits)
        assert not torch.allclose(lighthouse_logits, dense_logits)


def test_defaults_and_settings_errors():
    config = LlamaConfig(num_hidden_layers=4)
    s = lh.settings_from_config(config)  # no config.lighthouse: the documented defaults
    assert (s.attention, s.dense_layers, s.rope, s.short_sequences) == (LighthouseConfig(), {0, 3}, "pre-pool", "dense")
    for bad, key in [({"topk": 100}, "topk"), ({"pooling": 3}, "pooling"), ({"levels": 0}, "levels"),
                     ({"dense_layers": [4]}, "dense_layers"), ({"rope": "post"}, "rope"),
                     ({"short_sequences": "pad"}, "short_sequences"), ({"top_k": 128}, "top_k")]:
        with pytest.raises(LighthouseConfigError, match=rf"config\.lighthouse\['{key}'\]") as info:
            lh.configure(config, **bad)
        assert info.value.key == key
    assert getattr(config, "lighthouse", None) is None  # a failed configure leaves the config alone


def test_training_reduces_the_loss():
    model = build(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    window = torch.tensor([list(b"the cat sat on the mat. " * 11)[:257]] * 2)
    losses = []
    for _ in range(8):
        logits = model(input_ids=window[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


# ---- inputs Lighthouse does not define --------------------------------------------------------------
def test_padding_with_holes_raises_and_all_ones_mask_is_fine():
    model = build(tiny_config())
    ids = tokens()
    mask = torch.ones_like(ids)
    assert torch.equal(model(ids, attention_mask=mask, use_cache=False).logits, model(ids, use_cache=False).logits)
    mask[1, :5] = 0
    with pytest.raises(lh.UnsupportedInputError, match="padding"):
        model(ids, attention_mask=mask, use_cache=False)


def test_non_causal_sliding_window_packed_and_dropout_raise():
    ids = tokens()
    bidirectional = tiny_config()
    bidirectional.is_causal = False
    with pytest.raises(lh.UnsupportedInputError, match="non-causal"):
        build(bidirectional)(ids, use_cache=False)
    model = build(tiny_config())
    q_BHND, k_BGND = torch.randn(1, 4, N, 8), torch.randn(1, 2, N, 8)
    with pytest.raises(lh.UnsupportedInputError, match="is_causal=False"):
        lh.lighthouse_attention_forward(model.model.layers[1].self_attn, q_BHND, k_BGND, k_BGND, None, is_causal=False)
    with pytest.raises(lh.UnsupportedInputError, match="sliding window or chunk of 128"):
        build(tiny_config("mistral", arch_kwargs={"sliding_window": 128}))(ids, use_cache=False)
    assert build(tiny_config("mistral", arch_kwargs={"sliding_window": N}))(ids, use_cache=False) is not None
    packed_positions = torch.cat([torch.arange(200), torch.arange(N - 200)])[None].expand(2, -1)
    with pytest.raises(lh.UnsupportedInputError, match="packed sequences"):
        model(ids, position_ids=packed_positions, use_cache=False)
    dropout = build(tiny_config(arch_kwargs={"attention_dropout": 0.1})).train()
    with pytest.raises(lh.UnsupportedInputError, match="dropout"):
        dropout(ids, use_cache=False)


def test_short_sequences_dense_by_default_or_an_error():
    ids = tokens(n=200)  # < topk * pooling = 256
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a short sequence runs exactly as sdpa, its padding mask included
    with torch.no_grad():
        sdpa = build(tiny_config(), "sdpa")(ids, attention_mask=mask, use_cache=False).logits
        ours = build(tiny_config())(ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(ours, sdpa)
    with pytest.raises(lh.UnsupportedInputError, match="shorter than the Lighthouse budget"):
        build(tiny_config(short_sequences="error"))(ids, use_cache=False)


def test_window_end_refuses_rope_it_cannot_undo():
    yarn = {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                "original_max_position_embeddings": 256}}
    model = build(tiny_config(arch_kwargs=yarn, rope="window-end"))
    with pytest.raises(ValueError, match="'yarn'.*rope='pre-pool'"):
        model(tokens(), use_cache=False)
    assert build(tiny_config(arch_kwargs=yarn, rope="pre-pool"))(tokens(), use_cache=False) is not None


# ---- generation: dense with a KV cache ------------------------------------------------------------
def test_generation_with_a_cache_runs_dense(monkeypatch):
    lighthouse_model = build(tiny_config())
    dense_model = build(tiny_config(), "sdpa")
    prompt = tokens(B=2, n=300)  # long enough that a Lighthouse prefill would be possible
    mask = torch.ones_like(prompt)
    mask[1, :7] = 0  # left padding: the dense path gets transformers' own mask
    calls = []
    monkeypatch.setattr(lh_module, "lighthouse_attention", lambda *a, **k: calls.append(1) or lighthouse_attention(*a, **k))
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=257)
    ours = lighthouse_model.generate(prompt, **kwargs)
    assert calls == []
    assert torch.equal(ours, dense_model.generate(prompt, **kwargs))
    with torch.no_grad():  # scoring without gradients: Lighthouse when no cache is filled
        scored = lighthouse_model(prompt, use_cache=False).logits
    assert len(calls) == 1 and not torch.allclose(scored, dense_model(prompt).logits)


# ---- no N x N mask ------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    import lighthouse.hf as lh
    from transformers import AutoModelForCausalLM, LlamaConfig
    N = int(sys.argv[1])
    config = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    lh.configure(config, levels=3, pooling=4, topk=128, dense_layers=[])
    model = AutoModelForCausalLM.from_config(config, attn_implementation="lighthouse")
    def step(n):
        ids = torch.randint(0, 256, (1, n))
        model(ids, attention_mask=torch.ones_like(ids), labels=ids, use_cache=False).loss.backward()
    step(4096)  # allocator and thread pools warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(N)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


def test_no_n_by_n_mask_at_64k():
    n = 65536
    config = build(tiny_config()).config  # _attn_implementation == "lighthouse"
    embeds = torch.zeros(1, n, 1)
    mask = torch.ones(1, n, dtype=torch.long)
    assert create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=mask, cache=None) is None
    mask[0, -1] = 0
    deferred = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=mask, cache=None)
    assert isinstance(deferred, lh.DeferredMask) and "padding" in deferred.reason
    # A forward + backward at 64K in a fresh process: its peak memory grows by far less than
    # one N x N boolean mask (4 GiB; an additive float mask would be 16 GiB).
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.split()[-1])
    assert growth < n * n / 4, f"peak memory grew by {growth / 2**20:.0f} MiB at N={n}"


# ---- export, tokenizer, sampling ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lighthouse.trainer.config import load_config
    from lighthouse.trainer.loop import train
    from test_trainer import tiny_config as tiny_train_config

    cfg = load_config(tiny_train_config(tmp_path_factory.mktemp("run"), steps=(2, 1), ckpt_every=0))
    train(cfg, echo=lambda *args, **kwargs: None)
    return cfg.run_dir


def test_export_cli_opens_in_transformers_and_generates(tiny_run, tmp_path, capsys):
    from lighthouse.trainer.build import load_trained

    out = tmp_path / "hf"
    assert cli_main(["export", str(tiny_run), str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    assert cli_main(["export", str(tiny_run), str(out)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    hf = AutoModelForCausalLM.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["vocab_size"], config["max_position_embeddings"]) == (EOD_ID, 264, 256)
    ours = load_trained(tiny_run, "cpu").model
    ids = tokens(B=2, n=256)
    with torch.no_grad():
        expected = ours(ids)
        torch.testing.assert_close(hf(ids).logits, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer(["the cat", "a"], return_tensors="pt", padding=True)
    generated = hf.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape == (2, prompt.input_ids.shape[1] + 5)


def test_byte_tokenizer_round_trips(tmp_path):
    torch.manual_seed(0)
    export_model(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32)), tmp_path,
                 max_position_embeddings=128)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert (len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (264, 256, 256, 257)
    text = "déf f(x):\r\n\treturn 'ü' + \"😀\" <eod> \x00 \u2028 .  ,"
    ids = tokenizer(text).input_ids
    assert ids == list(text.encode("utf-8"))  # the literal "<eod>" stays bytes
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([104, 105, EOD_ID]) == "hi<eod>"
    assert tokenizer.decode([104, 105, EOD_ID], skip_special_tokens=True) == "hi"
    data = bytes(torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(1)).tolist()) + b"\xff\xfe\xc3"
    assert ids_to_bytes(tokenizer, list(data) + [EOD_ID]) == data  # any bytes, valid UTF-8 or not
    assert tokenizer.convert_tokens_to_ids(byte_level_alphabet()) == list(range(256))


def test_cached_sampling_equals_uncached_greedy():
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=64, init_std=0.2),
                        LighthouseConfig(**SETTINGS))
    model.set_attention("dense")
    model.eval()
    prompt = tokens(B=2, n=9)
    cached = generate(model, prompt, 24, temperature=0, stop_id=None)
    uncached = prompt
    with torch.no_grad():
        for _ in range(24):  # the whole sequence again at every step
            uncached = torch.cat([uncached, model(uncached)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 9:].tolist())) > 1  # not a constant continuation
    # a prefix prefilled in two chunks gives the logits of one full forward
    cache = KVCache(model, 2, 40, "cpu", torch.float32)
    with torch.no_grad():
        model(uncached[:, :20], start=0, cache=cache)
        chunked = model(uncached[:, 20:33], start=20, cache=cache)
        torch.testing.assert_close(chunked, model(uncached[:, :33])[:, 20:], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"KV cache full: 33 \+ 8 positions > capacity 40"):
            model(uncached[:, :8], start=33, cache=cache)
        model.set_attention("lighthouse")
        with pytest.raises(ValueError, match=r"KV cache runs dense attention"):
            model(uncached[:, :1], start=0, cache=cache)


def test_sample_cli(tiny_run, capsys):
    args = ["sample", "--checkpoint", str(tiny_run), "--prompt", "the ", "--max-new-tokens", "30"]
    assert cli_main(args + ["--temperature", "0"]) == 0
    greedy = capsys.readouterr()
    assert greedy.out.startswith("the ") and "dense attention with a KV cache" in greedy.err
    samples = []
    for seed in ("1", "1", "2"):
        assert cli_main(args + ["--temperature", "1.0", "--top-k", "20", "--seed", seed]) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] != samples[2]  # the seed decides


def test_export_writes_only_into_an_export_and_leaves_no_stale_weights(tiny_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli_main(["export", str(tiny_run), str(out)]) == 0
    for stale in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        (out / stale).write_bytes(b"old")  # weights transformers saved over the export since
    (out / "README.md").write_text("mine\n")
    assert cli_main(["export", str(tiny_run), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPORT_FILES, "README.md"])
    AutoModelForCausalLM.from_pretrained(out)  # the new weights, no index pointing at old shards
    # What killed exports left (a dead process's hidden folder) goes; a running export's stays.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".export-{int(dead.stdout)}").mkdir()
    (out / f".export-{int(dead.stdout)}" / "model.safetensors").write_bytes(b"half")
    (out / f".export-{os.getppid()}").mkdir()  # the test runner's parent: alive
    assert cli_main(["export", str(tiny_run), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPORT_FILES, "README.md", f".export-{os.getppid()}"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("mine\n")
    for flags in ([], ["--overwrite"]):
        assert cli_main(["export", str(tiny_run), str(other), *flags]) == 2
        assert "holds files that are not a lighthouse export (a.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["a.txt"]


def test_readme_hf_snippet_sees_what_lighthouse_sample_sees(tiny_run, tmp_path, capsys, monkeypatch):
    """The README's two ways to sample start with the same context (the end-of-document id, then the
    prompt's bytes), so greedy they print the same text."""
    from transformers import LlamaForCausalLM

    from lighthouse.tokenizer import encode

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r'^python -c "(.*AutoModelForCausalLM.*)"$', readme, re.M).group(1)
    out = tmp_path / "hf"
    assert cli_main(["export", str(tiny_run), str(out)]) == 0
    capsys.readouterr()
    seen, generate_ = [], LlamaForCausalLM.generate

    def spy(self, input_ids, *args, **kwargs):
        seen.append(input_ids[0].tolist())
        return generate_(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    exec(snippet.replace("'hf/demo'", repr(str(out))), {})
    assert seen == [encode("def ", start=True).tolist()]  # what `lighthouse sample --prompt "def "` decodes from
    from_hf = capsys.readouterr().out
    assert cli_main(["sample", "--checkpoint", str(tiny_run), "--prompt", "def ", "--max-new-tokens", "40",
                     "--temperature", "0"]) == 0
    assert capsys.readouterr().out == from_hf


# ---- example and benchmark smoke tests -------------------------------------------------------------------
def test_example_continued_pretraining_runs(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "model"
    cmd = [sys.executable, str(REPO / "examples" / "hf_continued_pretraining.py"), "--data", str(corpus),
           "--seq-len", "256", "--hidden", "32", "--layers", "3", "--heads", "2", "--kv-heads", "1", "--ffn", "64",
           "--batch-size", "2", "--steps", "3", "--recovery-steps", "2", "--val-windows", "2", "--device", "cpu",
           "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lighthouse: val bpb" in result.stdout and "sdpa: val bpb" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.lighthouse["topk"] == 128
    assert AutoTokenizer.from_pretrained(out)("ab").input_ids == [97, 98]


def test_bench_hf_cpu_smoke(tmp_path):
    from lighthouse.bench import main as bench_main

    out = tmp_path / "hf.json"
    assert bench_main(["hf", "--device", "cpu", "--seq-len", "256", "--hidden", "32", "--layers", "2", "--heads", "2",
                       "--kv-heads", "1", "--ffn", "64", "--levels", "2", "--pooling", "2", "--topk", "128",
                       "--dense-layers", "0", "--dtype", "float32", "--budget", "0.2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["attn_implementation"] for r in rows] == ["lighthouse", "sdpa"]
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_export_of_a_gla_model_leaves_the_gates_out():
    """The gla scorer's frozen gates select entries only: the exported dense Llama has no use for them."""
    from lighthouse import LighthouseConfig
    from lighthouse.integrations.export import hf_state_dict, lighthouse_settings
    from lighthouse.model import ModelArgs, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=3, n_heads=2, n_kv_heads=1, ffn_hidden=64, dense_layers=[0]),
                        LighthouseConfig(levels=2, pooling=2, topk=128, scorer="gla"))
    assert any(".wg." in k for k in model.state_dict())
    names = hf_state_dict(model)
    assert not any("wg" in k for k in names) and "model.layers.2.self_attn.q_proj.weight" in names
    assert lighthouse_settings(model) is None



def test_causal_selection_model_reads_no_future():
    """With selection="causal" the logits at <= t do not change when later tokens do; with top-k they do."""
    n, t = 1024, 300  # two tiles of 256 coarse entries: top-k has choices to make
    ids = tokens(B=1, n=n)
    later = ids.clone()
    later[0, t + 1 :] = torch.randint(0, 256, (n - t - 1,), generator=torch.Generator().manual_seed(1))
    changed = {}
    for selection in ("causal", "topk"):
        model = build(tiny_config(selection=selection, dense_layers=[], topk=256))
        with torch.no_grad():
            a = model(input_ids=ids, use_cache=False).logits
            b = model(input_ids=later, use_cache=False).logits
        changed[selection] = not torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert changed == {"causal": False, "topk": True}
