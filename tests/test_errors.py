"""Every bad input gets a clear error that names the argument."""

from __future__ import annotations

import pytest
import torch

from lighthouse import LighthouseConfig, lighthouse_attention, rope_tables


def qkv(B=1, H=2, G=1, N=1024, D=8, dtype=torch.float32):
    return torch.randn(B, H, N, D, dtype=dtype), torch.randn(B, G, N, D, dtype=dtype), torch.randn(B, G, N, D, dtype=dtype)


KW = dict(levels=2, pooling=2, topk=128)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, r"q must have 4 dims"),
        (lambda q, k, v: (q, k[0], v), ValueError, r"k must have 4 dims"),
        (lambda q, k, v: (q, k, v[:, :, :-1]), ValueError, r"k and v must have the same shape"),
        (lambda q, k, v: (q, k[:, :, :-1], v[:, :, :-1]), ValueError, r"does not match q shape"),
        (lambda q, k, v: (q, k[..., :4], v[..., :4]), ValueError, r"does not match q shape"),
        (lambda q, k, v: (q[:, :, :, :], torch.cat([k] * 3, 1), torch.cat([v] * 3, 1)), ValueError, r"multiple of key/value heads"),
        (lambda q, k, v: (q.long(), k.long(), v.long()), TypeError, r"floating-point"),
        (lambda q, k, v: (q, k.double(), v), TypeError, r"share one dtype"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, r"q must be a torch.Tensor"),
        (lambda q, k, v: (q.index_fill(2, torch.tensor([5]), float("nan")), k, v), ValueError, r"q contains NaN or Inf"),
        (lambda q, k, v: (q, k, v.index_fill(2, torch.tensor([5]), float("inf"))), ValueError, r"v contains NaN or Inf"),
        (lambda q, k, v: (q, k.to("meta"), v), ValueError, r"one device"),
        (lambda q, k, v: (q[:, :0], k, v), ValueError, r"empty input.*every dim must be >= 1"),
        (lambda q, k, v: (q, k[:, :0], v[:, :0]), ValueError, r"empty input"),
        (lambda q, k, v: (q[..., :0], k[..., :0], v[..., :0]), ValueError, r"empty input"),
    ],
)
def test_bad_tensors(make, exc, match):
    with pytest.raises(exc, match=match):
        lighthouse_attention(*make(*qkv()), **KW)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(topk=100), ValueError, r"topk must be a positive multiple of 128.*try 128"),
        (dict(topk=0), ValueError, r"topk must be a positive multiple of 128"),
        (dict(topk=-128), ValueError, r"topk must be a positive multiple of 128"),
        (dict(pooling=3), ValueError, r"pooling must be a power of two"),
        (dict(pooling=1), ValueError, r"pooling must be a power of two"),
        (dict(levels=0), ValueError, r"levels must be >= 1"),
        (dict(levels=2.0), TypeError, r"levels must be an int"),
        (dict(topk=True), TypeError, r"topk must be an int"),
        (dict(scorer="nope"), ValueError, r"unknown scorer 'nope'"),
        (dict(scorer="gla"), ValueError, r"scorer 'gla' needs its gates: pass scorer_context"),
        (dict(scorer=3), TypeError, r"scorer must be a name"),
        (dict(topk=1024), ValueError, r"N=1024 is too short.*need N >= .* 2048"),
        (dict(levels=4, pooling=4, topk=128), ValueError, r"too short.*8192"),
        (dict(backend="cuda"), ValueError, r"backend must be one of"),
    ],
)
def test_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        lighthouse_attention(*qkv(), **{**KW, **kw})


def test_bad_rope_tables():
    q, k, v = qkv()
    cos, sin = rope_tables(512, 8)
    with pytest.raises(ValueError, match=r"rope tables must both have shape"):
        lighthouse_attention(q, k, v, rope=(cos, sin), **KW)
    with pytest.raises(TypeError, match=r"rope must be None or a \(cos, sin\) pair"):
        lighthouse_attention(q, k, v, rope=cos, **KW)


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    try:
        import triton  # noqa: F401
    except ImportError:
        match = r"needs the `triton` package"
        exc = RuntimeError
    else:
        match, exc = r"runs on CUDA tensors", ValueError
    with pytest.raises(exc, match=match):
        lighthouse_attention(*qkv(), backend="triton", **KW)


def test_config_errors_and_description():
    with pytest.raises(ValueError, match="pooling"):
        LighthouseConfig(pooling=6)
    cfg = LighthouseConfig(levels=3, pooling=4, topk=2048)
    assert cfg.min_seq_len == 32768 and cfg.length_multiple == 16 * 16
    with pytest.raises(ValueError, match="too short"):
        cfg.sub_seq_len(1000)
    assert cfg.padded_len(40000) == 40192
    assert "padded to 40192" in cfg.describe(40000)


def test_finite_check_can_be_turned_off():
    q, k, v = qkv()
    q[0, 0, 7, 0] = float("nan")
    out = lighthouse_attention(q, k, v, check_finite=False, **KW)
    assert out.isnan().any()  # documented: garbage in, NaN out, no exception


@pytest.mark.parametrize("levels", [1, 2])
def test_large_finite_inputs_are_not_called_infinite(levels):
    """Values whose sum overflows float32 are still finite: the check must not reject them."""
    q, k, v = qkv()
    v = torch.full_like(v, 1e35)  # 8192 x 1e35 overflows a float32 sum
    out = lighthouse_attention(q, k, v, levels=levels, pooling=2, topk=128)
    assert torch.isfinite(out).all()


def test_autocast_casts_mixed_inputs_like_sdpa():
    """Inside autocast, float32 q, k and bf16 v are cast to the autocast dtype (SDPA does the same)."""
    q, k, v = qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lighthouse_attention(q, k, v.bfloat16(), **KW)
        sdpa_out = torch.nn.functional.scaled_dot_product_attention(q, k.expand_as(q), v.bfloat16().expand_as(q),
                                                                    is_causal=True)
    assert out.dtype == sdpa_out.dtype == torch.bfloat16
    assert torch.equal(out, lighthouse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), **KW))
    with pytest.raises(TypeError, match="share one dtype"):  # outside autocast: still an error
        lighthouse_attention(q, k, v.bfloat16(), **KW)

