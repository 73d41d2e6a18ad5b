"""Training-memory options against the plain training step: checkpoint policies, host offload of
block inputs, the chunked loss, bf16 parameters with fp32 master weights.

Each option changes where activations live or in which order the loss is summed, never what is
computed: the loss and every gradient equal the plain step's (bitwise where the arithmetic is
the same, to float tolerance where a sum is reordered).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lighthouse import LighthouseConfig
from lighthouse import checkpointing as C
from lighthouse.loss import chunked_cross_entropy, cross_entropy
from lighthouse.model import ModelArgs, Transformer
from lighthouse.tokenizer import VOCAB_SIZE
from lighthouse.trainer.precision import MasterWeights
from memory_meter import LargestTensor

N = 256
SMALL = dict(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=64, dense_layers=[0])
# The Triton kernels run compiled on a GPU, else under the interpreter on CPU (tests/conftest.py).
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(backend="auto", device="cpu", **kw):
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**{**SMALL, **kw}), LighthouseConfig(levels=2, pooling=2, topk=128, backend=backend))
    model.set_attention("lighthouse")
    return model.to(device)


def tokens(B=2, n=N, seed=1, device="cpu"):
    return torch.randint(0, VOCAB_SIZE, (B, n + 1), generator=torch.Generator().manual_seed(seed)).to(device)


def loss_and_grads(model, ids_BN1, **options):
    for key, value in options.items():
        setattr(model, key, value)
    model.zero_grad(set_to_none=True)
    loss = model(ids_BN1[:, :-1], ids_BN1[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, exact=True):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys()
    check = torch.equal if exact else lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-7)
    assert check(loss_a, loss_b), (loss_a, loss_b)
    for name in grads_a:
        assert check(grads_a[name], grads_b[name]), name


# ---- checkpoint policies and offload -----------------------------------------------------------
@pytest.mark.parametrize("policy,backend", [("block", "reference"), ("selective", "reference"), (True, "reference"),
                                            ("selective", "triton")])  # the fast path's custom ops under the policy
def test_policies_change_no_loss_or_gradient(policy, backend):
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    model, ids = make(backend, device), tokens(B=1 if backend == "triton" else 2, device=device)
    plain = loss_and_grads(model, ids)
    # SDPA's backward on CUDA accumulates with atomics: repeats differ by rounding there.
    assert_same(plain, loss_and_grads(model, ids, activation_checkpointing=policy), exact=device == "cpu")


class SavedOps(TorchDispatchMode):
    """Counts the SDPA kernel calls (forward) that run."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in C.SAVED_OPS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("policy,recomputed", [("block", True), ("selective", False)])
def test_selective_policy_keeps_attention_outputs(policy, recomputed):
    """"block" runs every attention kernel again in the backward pass; "selective" does not."""
    model, ids = make("reference"), tokens()
    model.activation_checkpointing = policy
    loss = model(ids[:, :-1], ids[:, 1:])
    with SavedOps() as backward:
        loss.backward()
    assert (backward.calls == len(model.layers)) == recomputed and (backward.calls == 0) != recomputed


def test_offload_moves_each_block_input_to_host_and_changes_nothing(monkeypatch):
    model, ids = make(), tokens()
    plain = loss_and_grads(model, ids, activation_checkpointing="block")
    packed = []
    real = C.save_on_cpu

    class Recording(real):
        def __init__(self, pin_memory=False):
            super().__init__(pin_memory=pin_memory)
            pack, unpack = self.pack_hook, self.unpack_hook
            self.pack_hook = lambda t: (packed.append(tuple(t.shape)), pack(t))[1]
            self.unpack_hook = unpack

    monkeypatch.setattr(C, "save_on_cpu", Recording)
    offloaded = loss_and_grads(model, ids, offload_layers=2)
    assert packed == [(2, N, SMALL["dim"])] * 2  # the inputs of blocks 0 and 1, nothing else
    assert_same(plain, offloaded)


def test_offload_needs_the_block_policy():
    model, ids = make(), tokens()
    model.offload_layers = 1
    with pytest.raises(ValueError, match="'block' policy"):
        model(ids[:, :-1], ids[:, 1:])
    model.activation_checkpointing = "selective"
    with pytest.raises(ValueError, match="'block' policy"):
        model(ids[:, :-1], ids[:, 1:])
    with torch.no_grad():  # not training: nothing is kept, so nothing is offloaded
        model(ids[:, :-1], ids[:, 1:])


def test_policy_names():
    assert [C.checkpoint_policy(v) for v in (False, None, True, "none", "block", "selective")] == [
        "none", "none", "block", "none", "block", "selective"]
    with pytest.raises(ValueError, match="activation checkpointing"):
        C.checkpoint_policy("mlp")


# ---- the chunked loss ------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 64, 512, 10_000])
def test_chunked_loss_equals_plain_loss(chunk):
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 40, bias=False)).double()
    h = torch.randn(3, 100, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (3, 100))
    results = []
    for fn in (lambda: cross_entropy(h, head, y), lambda: chunked_cross_entropy(h, head, y, chunk)):
        loss = fn()
        grads = torch.autograd.grad(loss, (h, *head.parameters()))
        results.append((loss, grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)  # the loss is taken in float32
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="chunk"):
        chunked_cross_entropy(h, head, y, 0)


def test_chunked_loss_never_holds_all_logits():
    """With V much larger than E, the largest tensor of forward and backward is one chunk's logits."""
    T, E, V, chunk = 512, 8, 1000, 64
    head = torch.nn.Linear(E, V, bias=False)
    h = torch.randn(1, T, E, requires_grad=True)
    y = torch.randint(0, V, (1, T))
    for fn, bound in ((lambda: cross_entropy(h, head, y), T * V), (lambda: chunked_cross_entropy(h, head, y, chunk), chunk * V)):
        with LargestTensor() as meter:
            fn().backward()
        assert meter.numel == bound


@pytest.mark.parametrize("chunk", [100, N])
def test_model_loss_chunk_changes_loss_and_gradients_within_rounding(chunk):
    model, ids = make(), tokens()
    plain = loss_and_grads(model, ids)
    assert_same(plain, loss_and_grads(model, ids, loss_chunk=chunk), exact=False)
    # and together with the other options
    both = loss_and_grads(model, ids, loss_chunk=chunk, activation_checkpointing="block", offload_layers=3)
    assert_same(plain, both, exact=False)
    model.loss_chunk = chunk
    with torch.no_grad():  # logits (no targets) do not depend on it
        assert torch.equal(model(ids[:, :-1]), (setattr(model, "loss_chunk", 0), model(ids[:, :-1]))[1])


# ---- bf16 parameters with fp32 master weights ----------------------------------------------------
def test_master_weights_step_is_fp32_adamw_on_the_masters():
    model = make(tie_embeddings=True)
    fp32 = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = MasterWeights(model, lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.output.weight is model.tok_embeddings.weight  # ties survive the cast
    masters = dict(zip([n for n, p in model.named_parameters()], opt.master_parameters()))
    assert all(torch.equal(masters[n], fp32[n]) for n in masters)  # exact fp32 copies of the weights
    grads = []
    for seed in (1, 2):  # two micro-batches: the bf16 gradients are summed in fp32 on the masters
        loss = model(tokens(seed=seed)[:, :-1], tokens(seed=seed)[:, 1:])
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None for p in model.parameters())
        grads.append({n: m.grad.clone() for n, m in masters.items()})
    assert all(torch.equal(grads[1][n] - grads[0][n] + grads[0][n], grads[1][n]) for n in masters)
    # The step: fp32 AdamW on copies of the masters with the same gradients.
    reference = {n: m.detach().clone().requires_grad_() for n, m in masters.items()}
    for n, r in reference.items():
        r.grad = masters[n].grad.clone()
    ref_opt = torch.optim.AdamW(reference.values(), lr=1e-2, weight_decay=0.1)
    ref_opt.step()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(masters[n], reference[n].detach()), n
        assert torch.equal(p, masters[n].to(torch.bfloat16)), n
    opt.zero_grad()
    assert all(m.grad is None for m in masters.values())


def test_master_weights_loss_is_close_to_fp32():
    ids = tokens()
    loss32 = make()(ids[:, :-1], ids[:, 1:])
    model = make()
    MasterWeights(model, lambda params: torch.optim.AdamW(params))
    loss16 = model(ids[:, :-1], ids[:, 1:])
    assert abs(loss16.item() - loss32.item()) < 2e-2 * loss32.item()


# ---- the trainer's settings ------------------------------------------------------------------------
def test_trainer_config_keys():
    from lighthouse.trainer.build import build_model
    from lighthouse.trainer.config import ConfigError, load_config

    model = build_model(load_config(None), "meta")
    assert (model.activation_checkpointing, model.offload_layers, model.loss_chunk) == (False, 0, 0)  # today's step
    cfg = load_config(None, ["training.activation_checkpointing=selective", "training.loss_chunk=4096"])
    model = build_model(cfg, "meta")
    assert (model.activation_checkpointing, model.offload_layers, model.loss_chunk) == ("selective", 0, 4096)
    cfg = load_config(None, ["training.activation_checkpointing=true", "training.offload_layers=2"])
    assert build_model(cfg, "meta").offload_layers == 2
    for overrides, key in [(["training.activation_checkpointing=mlp"], "training.activation_checkpointing"),
                           (["training.activation_checkpointing=3"], "training.activation_checkpointing"),
                           (["training.offload_layers=2"], "training.offload_layers"),
                           (["training.loss_chunk=-1"], "training.loss_chunk")]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, overrides)


def test_trainer_with_the_options_trains_the_same(tmp_path):
    from lighthouse.trainer.config import load_config
    from lighthouse.trainer.loop import train
    from test_trainer import losses, tiny_config

    path = tiny_config(tmp_path, steps=(2, 1), ckpt_every=10)
    quiet = dict(echo=lambda *a: None)
    plain = losses(train(load_config(path), **quiet).run_dir)
    options = ["name=options", "training.activation_checkpointing=true", "training.offload_layers=2",
               "training.loss_chunk=100"]
    with_options = losses(train(load_config(path, options), **quiet).run_dir)
    assert plain.keys() == with_options.keys() == {1, 2, 3}
    for step in plain:
        assert abs(plain[step] - with_options[step]) <= 1e-5 * plain[step], step
