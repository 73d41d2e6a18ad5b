"""LighthouseConfig: the one source of truth for the settings of a Lighthouse attention layer.

The function (`lighthouse_attention`), the module (`layers.LighthouseAttention`), the model
and the trainer's `[lighthouse]` section all read this dataclass; its defaults are written
here and nowhere else. A bad value raises `LighthouseConfigError`, a ValueError/TypeError
that carries the offending key in `.key`, so the trainer can name `lighthouse.<key>`.

Symbols (as in the spec): N sequence length, L levels, p pooling factor, K top-k budget,
W = 128 tile width, T = K / W tiles, S sub-sequence length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .scorers import Scorer, get_scorer

BACKENDS = ("auto", "reference", "triton")
# "topk": the paper's selection (spec §2): each tile refines its top entries, so the norms of
# later tokens decide what earlier positions see. "causal": an entry is refined or not from
# what is known at its first position (docs/design.md, "Causal selection"), so the output at t
# never depends on inputs after t.
SELECTIONS = ("topk", "causal")
TILE_WIDTH = 128  # W: entries selected per tile and level (64 by query score, 64 by key score)
HALF_TILE = TILE_WIDTH // 2


def _is_power_of_two(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


class LighthouseConfigError(ValueError):
    """A bad Lighthouse setting; `key` names it (levels, pooling, topk, scorer, backend, selection)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class LighthouseConfigTypeError(LighthouseConfigError, TypeError):
    """A Lighthouse setting of the wrong type (an int given as float or bool, say)."""


@dataclass(frozen=True)
class LighthouseConfig:
    """Hyper-parameters of Lighthouse attention.

    levels:  L, number of pyramid levels (1 = dense attention).
    pooling: p, pooling factor between levels (power of two >= 2).
    topk:    K, selection budget (positive multiple of 128); the coarsest level is cut
             into K/128 tiles that each select 128 entries per level.
    scorer:  name of a registered scorer ("norm", "dilated") or a Scorer instance.
    backend: "auto" (CUDA -> Triton fast path, CPU -> PyTorch reference), "reference", "triton".
    selection: "topk" (the paper's, the default) or "causal" (nothing at t depends on later tokens).
    """

    levels: int = 3
    pooling: int = 4
    topk: int = 2048
    scorer: str | Scorer = "norm"
    backend: str = "auto"
    selection: str = "topk"

    def __post_init__(self) -> None:
        for name in ("levels", "pooling", "topk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise LighthouseConfigTypeError(name, f"{name} must be an int, got {type(value).__name__} ({value!r})")
        if self.levels < 1:
            raise LighthouseConfigError("levels", f"levels must be >= 1 (levels=1 is dense attention), got {self.levels}")
        if self.pooling < 2 or not _is_power_of_two(self.pooling):
            raise LighthouseConfigError(
                "pooling", f"pooling must be a power of two >= 2 (2, 4, 8, ...), got {self.pooling}"
            )
        if self.topk <= 0 or self.topk % TILE_WIDTH != 0:
            raise LighthouseConfigError(
                "topk",
                f"topk must be a positive multiple of {TILE_WIDTH} (the tile width), got {self.topk}; "
                f"try {max(TILE_WIDTH, round(self.topk / TILE_WIDTH) * TILE_WIDTH)}",
            )
        if self.backend not in BACKENDS:
            raise LighthouseConfigError("backend", f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.selection not in SELECTIONS:
            raise LighthouseConfigError("selection", f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        # Resolve the scorer name early so that a typo fails here, not mid-forward.
        try:
            get_scorer(self.scorer)
        except TypeError as e:
            raise LighthouseConfigTypeError("scorer", str(e)) from None
        except ValueError as e:
            raise LighthouseConfigError("scorer", str(e)) from None

    @classmethod
    def resolve(
        cls, config: LighthouseConfig | None = None, *, levels=None, pooling=None, topk=None, scorer=None, backend=None,
        selection=None,
    ) -> LighthouseConfig:
        """`config` (or the defaults) with the settings given here (not None) replaced."""
        if config is None:
            config = _DEFAULTS
        elif not isinstance(config, cls):
            raise TypeError(f"config must be a LighthouseConfig, got {type(config).__name__}")
        given = {"levels": levels, "pooling": pooling, "topk": topk, "scorer": scorer, "backend": backend, "selection": selection}
        given = {key: value for key, value in given.items() if value is not None}
        return dataclasses.replace(config, **given) if given else config

    # ---- derived sizes -------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        return self.levels == 1

    @property
    def num_tiles(self) -> int:
        """T = K / W."""
        return self.topk // TILE_WIDTH

    @property
    def coarsest_factor(self) -> int:
        """p^(L-1): base positions covered by one coarsest entry."""
        return self.pooling ** (self.levels - 1)

    @property
    def length_multiple(self) -> int:
        """N must be a multiple of this: p^(L-1) * T (T equal tiles of the coarsest level)."""
        return 1 if self.is_dense else self.coarsest_factor * self.num_tiles

    @property
    def min_seq_len(self) -> int:
        """Shortest (padded) N with at least W coarsest entries per tile: p^(L-1) * K."""
        return 1 if self.is_dense else self.coarsest_factor * self.topk

    def padded_len(self, seq_len: int) -> int:
        """The length the function runs at: N rounded up to a multiple of `length_multiple`."""
        m = self.length_multiple
        return -(-seq_len // m) * m

    def validate_seq_len(self, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"sequence length must be >= 1, got {seq_len}")
        if self.padded_len(seq_len) < self.min_seq_len:
            raise ValueError(
                f"sequence length N={seq_len} is too short for levels={self.levels}, pooling={self.pooling}, "
                f"topk={self.topk}: need N >= topk * pooling**(levels-1) = {self.min_seq_len} "
                f"(after padding to a multiple of {self.length_multiple}). "
                f"Lower topk or levels, or use levels=1 (dense attention)."
            )

    def level_len(self, seq_len: int, level: int) -> int:
        """Entries at level `level` (1-based) for a (padded) length."""
        return seq_len // self.pooling ** (level - 1)

    def level_offset(self, seq_len: int, level: int) -> int:
        """Start of level `level` in the concatenated pyramid layout."""
        return sum(self.level_len(seq_len, lv) for lv in range(1, level))

    def pyramid_len(self, seq_len: int) -> int:
        return self.level_offset(seq_len, self.levels + 1)

    def sub_seq_len(self, seq_len: int) -> int:
        """S = N/p^(L-1) + (L-1)*p*K for the padded length of `seq_len` (N when L = 1)."""
        self.validate_seq_len(seq_len)
        n = self.padded_len(seq_len)
        if self.is_dense:
            return n
        return n // self.coarsest_factor + (self.levels - 1) * self.pooling * self.topk

    @property
    def is_causal(self) -> bool:
        """Whether the output at t is independent of every input after t (always, for dense)."""
        return self.is_dense or self.selection == "causal"

    def describe(self, seq_len: int | None = None) -> str:
        text = f"Lighthouse(L={self.levels}, p={self.pooling}, K={self.topk}, scorer={self.scorer_name}"
        text += ", selection=causal)" if self.selection == "causal" else ")"
        if self.is_dense:
            return text + ": dense causal attention"
        text += f": {self.num_tiles} tiles, N must be >= {self.min_seq_len}, padded to a multiple of {self.length_multiple}"
        if seq_len is not None:
            n = self.padded_len(seq_len)
            s = self.sub_seq_len(seq_len)
            text += f"; N={seq_len}" + (f" (padded to {n})" if n != seq_len else "")
            text += f" -> S={s} ({s / n:.1%} of N)"
        return text

    @property
    def scorer_name(self) -> str:
        return self.scorer if isinstance(self.scorer, str) else type(self.scorer).__name__


_DEFAULTS = LighthouseConfig()
