"""The decoder: shapes, causality, dense == Lighthouse at levels=1, stage switch keeps parameters."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lighthouse import LighthouseConfig
from lighthouse.model import ModelArgs, Transformer, check_model_args
from lighthouse.tokenizer import EOD_ID, VOCAB_SIZE

N = 256  # >= topk * pooling**(levels-1) = 128 * 2 for the Lighthouse settings below
SMALL = dict(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=64, dense_layers=[0])
LH = LighthouseConfig(levels=2, pooling=2, topk=128)


def make(rope="window-end", lighthouse=LH, **kw):
    torch.manual_seed(0)
    return Transformer(ModelArgs(**{**SMALL, "rope": rope, **kw}), lighthouse)


def tokens(B=2, n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_SIZE, (B, n), generator=g)


@pytest.mark.parametrize("kind", ["dense", "lighthouse"])
@pytest.mark.parametrize("rope", ["window-end", "pre-pool"])
def test_forward_shapes_and_loss(kind, rope):
    model = make(rope)
    model.set_attention(kind)
    x = tokens()
    logits = model(x)
    assert logits.shape == (2, N, VOCAB_SIZE) and logits.dtype == torch.float32
    loss = model(x, x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kind", ["dense", "lighthouse"])
@pytest.mark.parametrize("rope", ["window-end", "pre-pool"])
def test_causal(kind, rope):
    """Changing tokens from position t on leaves the logits before t unchanged."""
    model = make(rope)
    model.set_attention(kind)
    x = tokens(B=1)
    t = 150
    y = x.clone()
    y[:, t:] = tokens(B=1, n=N - t, seed=7)
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("rope", ["window-end", "pre-pool"])
def test_dense_equals_lighthouse_at_one_level(rope):
    one_level = LighthouseConfig(levels=1, pooling=2, topk=128)
    model = make(rope, lighthouse=one_level, dense_layers=[])
    x = tokens()
    with torch.no_grad():
        model.set_attention("dense")
        dense = model(x)
        model.set_attention("lighthouse")
        assert model.attention_kinds() == ["lighthouse"] * 3
        sparse = model(x)
    assert torch.equal(dense, sparse)


def test_lighthouse_differs_from_dense_when_compressing():
    model = make(dense_layers=[])
    x = tokens()
    with torch.no_grad():
        model.set_attention("dense")
        dense = model(x)
        model.set_attention("lighthouse")
        sparse = model(x)
    assert not torch.allclose(dense, sparse)


def test_stage_switch_keeps_parameters():
    model = make(dense_layers=[0, -1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [id(p) for p in model.parameters()]
    model.set_attention("lighthouse")
    assert model.attention_kinds() == ["dense", "lighthouse", "dense"]
    model.set_attention("dense")
    assert model.attention_kinds() == ["dense"] * 3
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert ids == [id(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="attention kind"):
        model.set_attention("sparse")


def test_tied_and_untied_embeddings():
    tied, untied = make(tie_embeddings=True), make(tie_embeddings=False)
    assert tied.output.weight is tied.tok_embeddings.weight
    assert untied.output.weight is not untied.tok_embeddings.weight
    assert untied.num_params() - tied.num_params() == VOCAB_SIZE * 32


def test_gqa_matches_repeated_heads():
    """The dense layer with G < H equals one with the k/v heads repeated (MHA)."""
    gqa = make(n_kv_heads=2)
    mha = make(n_kv_heads=4)
    with torch.no_grad():
        for a, b in zip(gqa.layers, mha.layers):
            for name in ("wq", "wo"):
                getattr(b.attention, name).weight.copy_(getattr(a.attention, name).weight)
            for name in ("wk", "wv"):
                w = getattr(a.attention, name).weight.view(2, 8, 32)
                getattr(b.attention, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(32, 32))
            b.feed_forward.load_state_dict(a.feed_forward.state_dict())
            b.attention_norm.load_state_dict(a.attention_norm.state_dict())
            b.ffn_norm.load_state_dict(a.ffn_norm.state_dict())
        mha.tok_embeddings.load_state_dict(gqa.tok_embeddings.state_dict())
        mha.norm.load_state_dict(gqa.norm.state_dict())
        x = tokens()
        torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


def test_vocabulary_and_args_checks():
    assert EOD_ID == 256 and VOCAB_SIZE >= 257
    with pytest.raises(ValueError, match="n_kv_heads"):
        check_model_args(ModelArgs(n_heads=4, n_kv_heads=3))
    with pytest.raises(ValueError, match="dense_layers"):
        check_model_args(ModelArgs(n_layers=4, dense_layers=[4]))
    with pytest.raises(ValueError, match="model.rope"):
        check_model_args(ModelArgs(rope="late"))
    assert ModelArgs(n_layers=30, dense_layers=[0, 1, -2, -1]).dense_layer_set() == {0, 1, 28, 29}


def test_one_source_of_lighthouse_settings():
    """The function, the module and the model default to LighthouseConfig(); the trainer's section is one."""
    import inspect

    from lighthouse import LighthouseAttention, lighthouse_attention
    from lighthouse.trainer.config import Config

    assert isinstance(Config().lighthouse, LighthouseConfig)  # the demo preset's values
    assert Transformer(ModelArgs(**SMALL)).lighthouse == LighthouseConfig()
    assert LighthouseAttention().config == LighthouseConfig()
    params = inspect.signature(lighthouse_attention).parameters
    assert all(params[k].default is None for k in ("config", "levels", "pooling", "topk", "scorer", "backend"))
    cfg = LighthouseConfig.resolve(LH, topk=256)
    assert (cfg.levels, cfg.pooling, cfg.topk) == (2, 2, 256) and LighthouseConfig.resolve(LH) is LH


@pytest.mark.parametrize("tie", [True, False])
def test_meta_build_then_materialize_equals_eager(tie):
    """A model built on the meta device and materialized has the eager build's exact weights and ties."""
    args = ModelArgs(**{**SMALL, "tie_embeddings": tie})
    torch.manual_seed(3)
    eager = Transformer(args, LH)
    torch.manual_seed(3)
    with torch.device("meta"):
        lazy = Transformer(args, LH)
    assert all(p.is_meta for p in lazy.parameters())
    lazy.materialize("cpu")
    assert (lazy.output.weight is lazy.tok_embeddings.weight) == tie
    for (name, a), (_, b) in zip(eager.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(a, b), name
    x = tokens()
    with torch.no_grad():
        assert torch.equal(eager(x), lazy(x))


def test_meta_build_does_not_load_the_compiler():
    """Building on meta and materializing loads no torch._dynamo (about 2 s of start-up in every
    `lighthouse eval`, `sample` or `export` process): checked in a fresh interpreter."""
    code = ("import sys, torch; from lighthouse.model import ModelArgs, Transformer\n"
            "with torch.device('meta'):\n    m = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=2))\n"
            "m.materialize('cpu'); assert m.tok_embeddings.weight.std() > 0\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


@pytest.mark.parametrize("kind", ["dense", "lighthouse"])
def test_activation_checkpointing_changes_no_loss_or_gradient(kind):
    model = make()
    model.set_attention(kind)
    x = tokens()
    results = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad(set_to_none=True)
        loss = model(x, x)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_gla_gates_live_in_lighthouse_layers_and_never_train(tmp_path):
    from lighthouse.trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    gla = LighthouseConfig(levels=2, pooling=2, topk=128, scorer="gla")
    model = make(lighthouse=gla)
    assert [b.attention.wg is not None for b in model.layers] == [False, True, True]  # layer 0 is dense
    assert all(b.attention.wg is None for b in make().layers)  # norm scorer: no gates
    wg = model.layers[1].attention.wg
    assert not wg.weight.requires_grad and torch.equal(wg.bias, torch.zeros_like(wg.bias))
    assert 0.005 < float(wg.weight.std()) < 0.04  # N(0, 0.02), truncated
    model.set_attention("lighthouse")
    x = tokens(n=4 * N)  # 512 coarse entries for 128 picks: the scores decide (at N every entry is picked)
    loss = model(x, x)
    loss.backward()
    assert wg.weight.grad is None
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The gates reach the scorer: other gate weights select differently, in Lighthouse layers only.
    with torch.no_grad():
        before = model(x)
        dense_before = (model.set_attention("dense"), model(x))[1]
        for block in model.layers[1:]:
            block.attention.wg.weight.mul_(-50.0)
        dense_after = model(x)
        model.set_attention("lighthouse")
        after = model(x)
    assert not torch.equal(before, after)
    assert torch.equal(dense_before, dense_after)
    # Saved with the weights; a model without gates refuses the checkpoint by name.
    path = save_checkpoint(tmp_path, 1, model, {"step": 1})
    again = make(lighthouse=gla)
    load_checkpoint(path, again)
    assert torch.equal(again.layers[1].attention.wg.weight, model.layers[1].attention.wg.weight)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path, make())


def test_gla_model_builds_on_meta_like_eager():
    gla = LighthouseConfig(levels=2, pooling=2, topk=128, scorer="gla")
    torch.manual_seed(5)
    eager = Transformer(ModelArgs(**SMALL), gla)
    torch.manual_seed(5)
    with torch.device("meta"):
        lazy = Transformer(ModelArgs(**SMALL), gla)
    lazy.materialize("cpu")
    for (name, a), (_, b) in zip(eager.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(a, b), name


def test_gla_ablation_config_loads():
    from pathlib import Path

    from lighthouse.trainer.build import build_model
    from lighthouse.trainer.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "ablations" / "scorer-gla.toml")
    assert cfg.lighthouse.scorer == "gla"
    model = build_model(cfg, "meta")
    dense = cfg.model.dense_layer_set()
    assert all((b.attention.wg is not None) == (i not in dense) for i, b in enumerate(model.layers))



def test_poisoned_empty_leaves_the_meta_device_context_working():
    """tests/poison.py replaces torch.empty; PyTorch's device context, first used under it, must still
    redirect the real one afterwards (a fresh process: the context's list is made once per process)."""
    code = ("import torch, poison\n"
            "with poison.poison_empty(), torch.device('meta'):\n    torch.zeros(1)\n"
            "with torch.device('meta'):\n    assert torch.empty(0).is_meta, 'torch.device(meta) no longer applies'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
