"""The PyTorch reference of Lighthouse attention: vectorized, readable, runs on CPU and GPU.

This is the implementation the GPU kernels are tested against. Data flow (spec sections):

  q_BHND, k_BGND, v_BGND
    -> scores          s_q_BHN, s_k_BXN            (scorer, §1/§7, no grad)
    -> score pyramid   max-pool per level          (§1; causal selection: windows that end at
                                                    each entry's first position)
    -> selection       index_BHS, causal order     (§2 tiles coarse-to-fine, §3 order; no grad;
                                                    "topk" or "causal", docs/design.md)
    -> gather          mean-pooled q/k/v at index  (§1 symmetric pooling, §4b window-end RoPE)
    -> causal SDPA     on the S-long sub-sequence  (§4)
    -> scatter back    summed, shifted by c-1      (§5)
  -> o_BHND

Legend: B batch, H query heads, G key/value heads, X either H or G, N (padded) sequence
length, D head dim, S sub-sequence length, T tiles, M candidates per tile, P concatenated
pyramid length (N + N/p + ... + N/p^(L-1)). An index into the pyramid ("pyramid index")
addresses level l at offset N*(1 + 1/p + ... + 1/p^(l-2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import HALF_TILE, LighthouseConfig
from .rope import apply_rotary
from .scorers import get_scorer

# Score given to right-padding positions: below every real score, above the -inf that
# marks "already taken" during selection, so padding is only picked when nothing real is left.
PAD_SCORE = torch.finfo(torch.float32).min


@dataclass
class Selection:
    """The selection plan for a padded length `seq_len`: what both paths gather and scatter by.

    index_BHS: pyramid indices of the S kept entries of every (batch, query head), in the
               causal order of spec §3 (int64 from the reference, int32 from the kernels).
    The fast path adds the maps its gather and scatter kernels read (None from the reference):
    slot_BHP:  for every pyramid entry, its position in the sub-sequence, or -1 if not kept.
    cand_BHLK, cpos_BHLK: for each level 1..L-1 (L-1 lists of p*K), the kept entries' index
               within the level and their position in the sub-sequence.
    """

    index_BHS: torch.Tensor
    seq_len: int
    slot_BHP: torch.Tensor | None = None
    cand_BHLK: torch.Tensor | None = None
    cpos_BHLK: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------
# Pyramid helpers
# ---------------------------------------------------------------------------------------
def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Pooling and scatter sums run in float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def level_factors(cfg: LighthouseConfig) -> list[int]:
    """c_l = p^(l-1) for l = 1..L."""
    return [cfg.pooling ** (lv - 1) for lv in range(1, cfg.levels + 1)]


def max_pool_pyramid(s_BXN: torch.Tensor, cfg: LighthouseConfig) -> list[torch.Tensor]:
    """Per-level scores: level l entry i is the max of base scores in [c*i, c*(i+1))."""
    B, X, N = s_BXN.shape
    return [s_BXN.view(B, X, N // c, c).amax(dim=-1) for c in level_factors(cfg)]


def causal_max_pool_pyramid(s_BXN: torch.Tensor, cfg: LighthouseConfig) -> list[torch.Tensor]:
    """Per-level scores for causal selection: level l entry i is the max of base scores in
    [c*i - c + 1, c*i] (clipped at 0).

    The window of `max_pool_pyramid` moved c - 1 positions earlier, so that it ends at the
    entry's first position: whether an entry is refined is then known before any output that
    its refinement changes (its first base token writes at c*i).
    """
    B, X, N = s_BXN.shape
    levels = []
    for c in level_factors(cfg):
        shifted_BXN = F.pad(s_BXN, (c - 1, 0), value=float("-inf"))[..., :N]
        levels.append(shifted_BXN.view(B, X, N // c, c).amax(dim=-1))
    return levels


def mean_pool_pyramid(x_BXND: torch.Tensor, cfg: LighthouseConfig) -> torch.Tensor:
    """The concatenated pyramid [B, X, P, D] of mean-pooled vectors (pooled in float32)."""
    B, X, N, D = x_BXND.shape
    levels = [x_BXND]
    for c in level_factors(cfg)[1:]:
        acc = accumulate_dtype(x_BXND.dtype)
        levels.append(x_BXND.to(acc).view(B, X, N // c, c, D).mean(dim=3).to(x_BXND.dtype))
    return torch.cat(levels, dim=2)


def decode_index(index: torch.Tensor, cfg: LighthouseConfig, seq_len: int):
    """Pyramid index -> (level 1..L, index within level i, span size c), elementwise."""
    starts = torch.tensor(
        [cfg.level_offset(seq_len, lv) for lv in range(2, cfg.levels + 1)], device=index.device, dtype=index.dtype
    )
    level0 = torch.bucketize(index, starts, right=True)  # 0-based level
    offsets = torch.tensor([cfg.level_offset(seq_len, lv) for lv in range(1, cfg.levels + 1)], device=index.device)
    factors = torch.tensor(level_factors(cfg), device=index.device)
    return level0 + 1, index - offsets[level0], factors[level0]


def window_end_positions(index: torch.Tensor, cfg: LighthouseConfig, seq_len: int) -> torch.Tensor:
    """Position of the last base token an entry covers: c*(i+1) - 1 (spec §4b)."""
    _, i, c = decode_index(index, cfg, seq_len)
    return c * (i + 1) - 1


# ---------------------------------------------------------------------------------------
# Selection (spec §2, §3)
# ---------------------------------------------------------------------------------------
def _pick_tile(sq_BHTM: torch.Tensor, sk_BHTM: torch.Tensor) -> torch.Tensor:
    """Within each tile: top W/2 by s_q, then top W/2 of the rest by s_k.

    Returns a bool mask [B, H, T, M] of the W selected candidates. Ties go to the lower
    candidate position (stable sort), which is also what the GPU kernel does.
    """
    by_q = torch.sort(sq_BHTM, dim=-1, descending=True, stable=True).indices[..., :HALF_TILE]
    sk_rest = sk_BHTM.scatter(-1, by_q, float("-inf"))
    by_k = torch.sort(sk_rest, dim=-1, descending=True, stable=True).indices[..., :HALF_TILE]
    selected = torch.zeros_like(sq_BHTM, dtype=torch.bool)
    return selected.scatter(-1, by_q, True).scatter(-1, by_k, True)


def _previous_tile_thresholds(sq_BHTM: torch.Tensor, sk_BHTM: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thresholds for causal selection: what top-k picked in the tile before, at this level.

    tau_q of tile t is the (W/2)-th largest s_q among tile t-1's candidates, tau_k the (W/2)-th
    largest s_k among the rest of them (the paper's two picks, read as thresholds). Tile 0 has
    no past: -inf, so it refines its first candidates. Returns two [B, H, T, 1] tensors.
    """
    by_q = torch.sort(sq_BHTM, dim=-1, descending=True, stable=True)
    tau_q = by_q.values[..., HALF_TILE - 1 : HALF_TILE]
    sk_rest = sk_BHTM.scatter(-1, by_q.indices[..., :HALF_TILE], float("-inf"))
    tau_k = torch.sort(sk_rest, dim=-1, descending=True).values[..., HALF_TILE - 1 : HALF_TILE]
    no_past = torch.full_like(tau_q[:, :, :1], float("-inf"))
    return torch.cat([no_past, tau_q[:, :, :-1]], dim=2), torch.cat([no_past, tau_k[:, :, :-1]], dim=2)


def _pick_tile_causal(sq_BHTM, sk_BHTM, tau_q_BHT1, tau_k_BHT1) -> torch.Tensor:
    """Causal selection within each tile: W entries, each decided from candidates before it.

    Walking the candidates in order (they are in sequence order): the first W/2 with
    s_q >= tau_q are selected, then, of the others, the first W/2 with s_k >= tau_k; once the
    candidates left are no more than the places left, every one is selected, so a tile always
    selects exactly W (S stays fixed). Running counts are prefix sums. Returns a bool mask.
    """
    M = sq_BHTM.shape[-1]
    q_pass = sq_BHTM >= tau_q_BHT1
    by_q = q_pass & (q_pass.cumsum(-1) <= HALF_TILE)
    k_pass = ~by_q & (sk_BHTM >= tau_k_BHT1)
    by_k = k_pass & (k_pass.cumsum(-1) <= HALF_TILE)
    picked = by_q | by_k
    picked_before = picked.cumsum(-1) - picked.long()
    left_including = M - torch.arange(M, device=sq_BHTM.device)
    forced = (2 * HALF_TILE - picked_before) >= left_including
    return picked | forced


def _sort_keys(level: int, i: torch.Tensor, selected: torch.Tensor, cfg: LighthouseConfig) -> torch.Tensor:
    """Integer sort keys of spec §3, scaled by 2^(L-1) so they are exact.

    leaf of level l:     c*i                  -> 2^(L-1) * c*i
    selected of level l: c*(i+1) - 2^(1-l)    -> 2^(L-1) * c*(i+1) - 2^(L-l)
    """
    c = cfg.pooling ** (level - 1)
    scale = 2 ** (cfg.levels - 1)
    leaf_key = scale * c * i
    selected_key = scale * c * (i + 1) - 2 ** (cfg.levels - level)
    return torch.where(selected, selected_key, leaf_key)


@torch.no_grad()
def select(sq_levels: list[torch.Tensor], sk_levels: list[torch.Tensor], cfg: LighthouseConfig, seq_len: int) -> Selection:
    """Tiled hierarchical selection ("topk": spec §2; "causal": docs/design.md).

    sq_levels[l-1]: [B, H, N_l] query scores; sk_levels[l-1]: [B, H, N_l] key scores
    (already broadcast to query heads; for causal selection, from `causal_max_pool_pyramid`).
    Returns pyramid indices in causal order. Both modes select W entries per tile and level,
    so S is the same.
    """
    L, p, T = cfg.levels, cfg.pooling, cfg.num_tiles
    B, H, n_coarse = sq_levels[-1].shape
    M = n_coarse // T

    keys, indices = [], []  # per level: [B, H, T, m_l]
    # Level L: candidates are the tile's entries.
    cand_BHTM = torch.arange(n_coarse, device=sq_levels[-1].device).view(1, 1, T, M).expand(B, H, T, M)
    for level in range(L, 0, -1):
        if level == 1:
            selected = torch.zeros_like(cand_BHTM, dtype=torch.bool)  # level 1: all leaves
        else:
            sq = sq_levels[level - 1].gather(-1, cand_BHTM.reshape(B, H, -1)).view(cand_BHTM.shape)
            sk = sk_levels[level - 1].gather(-1, cand_BHTM.reshape(B, H, -1)).view(cand_BHTM.shape)
            if cfg.selection == "causal":
                selected = _pick_tile_causal(sq, sk, *_previous_tile_thresholds(sq, sk))
            else:
                selected = _pick_tile(sq, sk)
        keys.append(_sort_keys(level, cand_BHTM, selected, cfg))
        indices.append(cand_BHTM + cfg.level_offset(seq_len, level))
        if level > 1:
            # Children of the selected entries (kept in ascending order) are the next candidates.
            parents = cand_BHTM.masked_select(selected).view(B, H, T, -1)
            children = parents.unsqueeze(-1) * p + torch.arange(p, device=parents.device)
            cand_BHTM = children.flatten(-2)
    key_BHTS = torch.cat(keys, dim=-1)
    index_BHTS = torch.cat(indices, dim=-1)
    order = torch.argsort(key_BHTS, dim=-1)  # keys are unique within a tile
    # Tiles are contiguous spans of the sequence, so sorting inside each tile sorts the whole row.
    index_BHS = index_BHTS.gather(-1, order).flatten(2)
    return Selection(index_BHS=index_BHS, seq_len=seq_len)


@torch.no_grad()
def compute_scores(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, padded_len: int, context=None):
    """Base scores of the real tokens, padded with PAD_SCORE to `padded_len`, as float32 [B, H, N]."""
    B, H, N, _ = q_BHND.shape
    G = k_BGND.shape[1]
    sq_BHN, sk_BXN = get_scorer(cfg.scorer).score(q_BHND, k_BGND, v_BGND, context=context)
    if sq_BHN.shape != (B, H, N) or sk_BXN.shape[-1] != N or sk_BXN.shape[1] not in (G, H):
        raise ValueError(
            f"scorer {cfg.scorer!r} returned shapes {tuple(sq_BHN.shape)} and {tuple(sk_BXN.shape)}; "
            f"expected ({B}, {H}, {N}) and ({B}, {G} or {H}, {N})"
        )
    if sk_BXN.shape[1] != H:
        sk_BXN = sk_BXN.repeat_interleave(H // G, dim=1)
    pad = padded_len - N
    sq_BHN = F.pad(sq_BHN.float(), (0, pad), value=PAD_SCORE)
    sk_BHN = F.pad(sk_BXN.float(), (0, pad), value=PAD_SCORE)
    return sq_BHN, sk_BHN


def compute_selection(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, context=None) -> Selection:
    """Scores -> pyramid of scores -> selection, for the padded length of q's N."""
    n_pad = cfg.padded_len(q_BHND.shape[2])
    sq_BHN, sk_BHN = compute_scores(q_BHND, k_BGND, v_BGND, cfg, n_pad, context)
    pyramid = causal_max_pool_pyramid if cfg.selection == "causal" else max_pool_pyramid
    return select(pyramid(sq_BHN, cfg), pyramid(sk_BHN, cfg), cfg, n_pad)


# ---------------------------------------------------------------------------------------
# Gather, attention, scatter (spec §1, §4, §4b, §5)
# ---------------------------------------------------------------------------------------
def gather_pyramid(x_BXND: torch.Tensor, index_BHS: torch.Tensor, cfg: LighthouseConfig) -> torch.Tensor:
    """Mean-pooled vectors at `index_BHS` for every query head: [B, H, S, D].

    Query head h reads kv head h // (H/X); the pyramid is indexed flat over (X, P) so it is
    never copied per query head.
    """
    B, X, N, D = x_BXND.shape
    H, S = index_BHS.shape[1:]
    pyr_BXPD = mean_pool_pyramid(x_BXND, cfg)
    P = pyr_BXPD.shape[2]
    head_H = torch.arange(H, device=index_BHS.device) // (H // X)
    flat_BHS = index_BHS + (head_H * P).view(1, H, 1)
    flat_index = flat_BHS.view(B, H * S, 1).expand(-1, -1, D)
    return pyr_BXPD.reshape(B, X * P, D).gather(1, flat_index).view(B, H, S, D)


def scatter_back(o_BHSD: torch.Tensor, index_BHS: torch.Tensor, cfg: LighthouseConfig, seq_len: int) -> torch.Tensor:
    """Sum every entry's output into base positions [c*(i+1)-1, c*(i+2)-1) (clipped to N).

    Output position t receives, from each level l, the entry i = floor((t+1)/c) - 1 if that
    entry is in the sub-sequence; positions no entry reaches stay zero.
    """
    B, H, S, D = o_BHSD.shape
    P = cfg.pyramid_len(seq_len)
    acc = accumulate_dtype(o_BHSD.dtype)
    pyr_BHPD = o_BHSD.new_zeros(B, H, P, D, dtype=acc)
    pyr_BHPD = pyr_BHPD.scatter(2, index_BHS.unsqueeze(-1).expand(-1, -1, -1, D), o_BHSD.to(acc))
    out_BHND = pyr_BHPD[:, :, :seq_len].clone()  # level 1: c = 1, no shift
    for level, c in enumerate(level_factors(cfg)[1:], start=2):
        off = cfg.level_offset(seq_len, level)
        level_BHnD = pyr_BHPD[:, :, off : off + seq_len // c]
        # Entry i covers [c*i, c*(i+1)); its output lands c - 1 positions later.
        spread_BHND = level_BHnD.unsqueeze(3).expand(B, H, seq_len // c, c, D).reshape(B, H, seq_len, D)
        out_BHND[:, :, c - 1 :] += spread_BHND[:, :, : seq_len - c + 1]
    return out_BHND.to(o_BHSD.dtype)


def attend(q_BHND, k_BGND, v_BGND, selection: Selection, cfg: LighthouseConfig, rope=None) -> torch.Tensor:
    """Gather the sub-sequence, run causal SDPA on it, scatter back. Inputs already padded."""
    index_BHS = selection.index_BHS
    q_BHSD = gather_pyramid(q_BHND, index_BHS, cfg)
    k_BHSD = gather_pyramid(k_BGND, index_BHS, cfg)
    v_BHSD = gather_pyramid(v_BGND, index_BHS, cfg)
    if rope is not None:
        pos_BHS = window_end_positions(index_BHS, cfg, selection.seq_len)
        q_BHSD = apply_rotary(q_BHSD, pos_BHS, *rope)
        k_BHSD = apply_rotary(k_BHSD, pos_BHS, *rope)
    o_BHSD = F.scaled_dot_product_attention(q_BHSD, k_BHSD, v_BHSD, is_causal=True)
    return scatter_back(o_BHSD, index_BHS, cfg, selection.seq_len)


def pad_to(x_BXND: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Right-pad the sequence dimension with zeros."""
    if x_BXND.shape[2] == seq_len:
        return x_BXND
    return F.pad(x_BXND, (0, 0, 0, seq_len - x_BXND.shape[2]))


def lighthouse_reference(q_BHND, k_BGND, v_BGND, cfg: LighthouseConfig, rope=None, scorer_context=None, selection=None):
    """The whole function on validated inputs (levels >= 2): pad, select, attend, crop."""
    N = q_BHND.shape[2]
    n_pad = cfg.padded_len(N)
    if selection is None:
        selection = compute_selection(q_BHND, k_BGND, v_BGND, cfg, context=scorer_context)
    o_BHND = attend(pad_to(q_BHND, n_pad), pad_to(k_BGND, n_pad), pad_to(v_BGND, n_pad), selection, cfg, rope)
    return o_BHND[:, :, :N]
