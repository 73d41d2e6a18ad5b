"""The authors' public implementation beside ours: `python -m lighthouse.bench attention --authors DIR`.

DIR is a checkout of the paper authors' repository (github.com/ighoshsubho/lighthouse-attention).
Nothing of it is copied into this project: its two source files are imported from DIR at run
time, and this module is the one adapter between their entry points and our benchmark.

What their code is (read from the checkout; entry points this adapter uses):
  src/lighthouse_selection.py       `LighthouseLocal(attention, scorer, num_levels, pooling_factor,
                                    topk)`, an nn.Module: forward(xq, xk, xv) on [B, N, H, D]
                                    (torchtitan's layout) returns [B, H, N, D]. Scorer
                                    `DialatedLighthouseNormScorer(pooling_factor, levels)` (sic):
                                    norms and the mean-pooled pyramid; selection by an NVRTC kernel,
                                    `torch.gather`, `attention(q, k, v)` on [B, H, S, D] (we pass causal
                                    SDPA, what torchtitan passes), a Triton scatter with atomics.
  src/lighthouse_selection_cuda.py  the NVRTC selection kernel.
It is written to live inside torchtitan: its one import of that package is
`torchtitan.models.llama3.model.lighthouse_selection_cuda`, which `load_authors` serves by
registering DIR's file under that name while the module imports (and removing the names after).
It imports `einops` for its dilated scorer only; when einops is not installed a stub stands in
that raises if called.

Where their semantics differ from ours, and how the comparison avoids it:
  - Scores are norms in the input dtype: in bf16 many tie, and ties are broken by their bitonic
    sort, ours by the lower index. In float32 a tie among random inputs has probability ~0, so
    the check runs in float32, where both select the same entries.
  - Their sort keys are float32 (`c * i`, `c * (i + 1) - 2^(1-l)`): exact below N = 2^21 at L = 3,
    so the check runs at N <= 1M (our keys are integers at any N).
  - No padding and no GQA: N must be a multiple of p^(L-1) * K / 128 and H == G.
  - Pre-pool RoPE only (torchtitan rotates before the layer): compared with our `rope=None`.
  - Their scatter adds in the input dtype with atomics (order varies run to run): float32
    outputs agree to rounding, not bitwise.
So: float32 inputs, same (L, p, K), outputs within `AGREE_RTOL` of ours in relative norm. The
check also runs their scorer and selection kernel alone and compares the selected pyramid indices
with ours row by row (their pyramid is laid out as ours: levels concatenated, finest first), so a
difference is traced to the selection or to the arithmetic around it.

Legend: B batch, H heads, N sequence length, D head dim.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention import lighthouse_attention
from ..config import LighthouseConfig
from ..reference import compute_selection

FILES = ("src/lighthouse_selection.py", "src/lighthouse_selection_cuda.py")
PACKAGE = "torchtitan.models.llama3.model"  # where their files live in their tree
ENTRY_POINTS = ("LighthouseLocal", "DialatedLighthouseNormScorer")
AGREE_RTOL = 1e-4  # ||theirs - ours|| / ||ours|| in float32; a different selection gives O(1)


class AuthorsCodeError(RuntimeError):
    """DIR is not a checkout of the authors' repository, or its code does not import."""


def check_checkout(path) -> Path:
    """The checkout's root; raises AuthorsCodeError naming what is missing."""
    root = Path(path).expanduser()
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise AuthorsCodeError(
            f"{root} does not look like a checkout of the authors' repository "
            f"(github.com/ighoshsubho/lighthouse-attention): missing {', '.join(missing)}"
        )
    return root


@contextlib.contextmanager
def _their_import_context():
    """Their package path (and einops, if absent) in sys.modules for the duration; everything restored after."""
    added = []
    parts = PACKAGE.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []  # a package: submodules are set below
            sys.modules[name] = module
            added.append(name)
    if importlib.util.find_spec("einops") is None:
        stub = types.ModuleType("einops")

        def rearrange(*args, **kwargs):
            raise RuntimeError("einops is not installed: the authors' dilated scorer needs it (pip install einops)")

        stub.rearrange = rearrange
        sys.modules["einops"] = stub
        added.append("einops")
    env = os.environ.get("TRITON_PRINT_AUTOTUNING")  # their module sets it at import
    try:
        yield added
    finally:
        for name in added:
            sys.modules.pop(name, None)
        if env is None:
            os.environ.pop("TRITON_PRINT_AUTOTUNING", None)
        else:
            os.environ["TRITON_PRINT_AUTOTUNING"] = env


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise AuthorsCodeError(f"the authors' {path.name} does not import: {type(e).__name__}: {e}") from e
    return module


def load_authors(path) -> types.ModuleType:
    """Their `lighthouse_selection` module, imported from the checkout at `path` (see the module docstring)."""
    root = check_checkout(path)
    with _their_import_context() as added:
        cuda_name, main_name = f"{PACKAGE}.lighthouse_selection_cuda", f"{PACKAGE}.lighthouse_selection"
        added += [cuda_name, main_name]
        _load_file(cuda_name, root / FILES[1])
        module = _load_file(main_name, root / FILES[0])
    missing = [name for name in ENTRY_POINTS if not hasattr(module, name)]
    if missing:
        raise AuthorsCodeError(f"the authors' {FILES[0]} has no {', '.join(missing)}: not the version this adapter reads")
    module.checkout = str(root)
    return module


def causal_sdpa(q_BHSD, k_BHSD, v_BHSD):
    """The `attention` their layer calls on the gathered sub-sequence (torchtitan passes causal SDPA)."""
    return F.scaled_dot_product_attention(q_BHSD, k_BHSD, v_BHSD, is_causal=True)


def authors_layer(module: types.ModuleType, levels: int, pooling: int, topk: int):
    """Their layer as a function [B, N, H, D] x 3 -> [B, H, N, D] (their layout in, ours out)."""
    scorer = module.DialatedLighthouseNormScorer(pooling_factor=pooling, levels=levels)
    layer = module.LighthouseLocal(causal_sdpa, scorer, num_levels=levels, pooling_factor=pooling, topk=topk)
    return layer


def check_supported(cfg: LighthouseConfig, N: int, H: int, G: int) -> str | None:
    """Why their layer cannot run this case, or None."""
    if H != G:
        return "their layer has no GQA (H must equal G)"
    if cfg.padded_len(N) != N:
        return f"their layer does not pad: N must be a multiple of {cfg.length_multiple}"
    if N < cfg.min_seq_len:
        return f"N < min_seq_len = {cfg.min_seq_len}"
    return None


def compare_with_authors(module: types.ModuleType, cfg: LighthouseConfig, N: int, B: int = 1, H: int = 8, D: int = 128,
                         device="cuda", seed: int = 0) -> dict:
    """Their float32 output against ours (`lighthouse_attention`, the fast path where it runs) on the same inputs,
    pre-pool RoPE (none inside the layer), norm scorer, top-k selection.

    Returns {"N", "rel_err": ||theirs - ours|| / ||ours||, "max_abs", "agree": rel_err <= AGREE_RTOL,
    "selection_rows_differ" (of "selection_rows" (batch, head) rows) or "selection": why not compared}.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, device=device, dtype=torch.float32, generator=gen) for _ in range(3))
    layer = authors_layer(module, cfg.levels, cfg.pooling, cfg.topk)
    with torch.no_grad():
        ours = lighthouse_attention(q, k, v, cfg)
        theirs = layer(*(x.transpose(1, 2).contiguous() for x in (q, k, v)))
    if theirs.shape != ours.shape:
        return {"N": N, "error": f"their output has shape {tuple(theirs.shape)}, ours {tuple(ours.shape)}", "agree": False}
    rel = float((theirs.float() - ours).norm() / ours.norm())
    result = {"N": N, "dtype": "float32", "rel_err": rel, "max_abs": float((theirs.float() - ours).abs().max()),
              "agree": rel <= AGREE_RTOL}
    result.update(_compare_selection(module, layer, cfg, q, k, v))
    return result


def _compare_selection(module, layer, cfg: LighthouseConfig, q_BHND, k_BHND, v_BHND) -> dict:
    """Their scorer + selection kernel against our selection plan, as pyramid indices in causal order."""
    try:
        with torch.no_grad():
            scores_q, scores_k, *_ = layer.scorer(*(x.transpose(1, 2).contiguous() for x in (q_BHND, k_BHND, v_BHND)))
            theirs_BHS = module.LighthouseSelectionQkKqChunkedTopkNvrtc.forward(
                scores_q.float(), scores_k.float(), cfg.levels, cfg.pooling, cfg.topk, q_BHND.shape[2])
            ours_BHS = compute_selection(q_BHND, k_BHND, v_BHND, cfg).index_BHS
        if theirs_BHS.shape != ours_BHS.shape:
            return {"selection": f"not compared (their indices {tuple(theirs_BHS.shape)}, ours {tuple(ours_BHS.shape)})"}
        differ = (theirs_BHS.long() != ours_BHS.long()).any(-1)
        return {"selection_rows_differ": int(differ.sum()), "selection_rows": differ.numel()}
    except Exception as e:  # their internals moved: the output comparison above still stands
        return {"selection": f"not compared ({type(e).__name__}: {e})"}
