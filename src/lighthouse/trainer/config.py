"""Run configuration: dataclasses loaded from TOML, overridable from the command line.

A config file has the sections `[model]`, `[lighthouse]`, `[data]`, `[optim]`,
`[training]`, `[parallel]` and a list of `[[stages]]`; every key is optional and defaults to the demo
setting. `extends = "other.toml"` at the top of a file starts from that file (a path
relative to the including file). Overrides use dotted keys and TOML values:

    --set training.batch_size=16  --set model.dense_layers=[0,1,-2,-1]
    --set stages.0.steps=200      --set data.source=files --set 'data.paths=["a.txt"]'

Every error names the key it is about (`ConfigError`).

This module is a little over 500 lines on purpose: the sections, their loading and overrides,
and the checks that name each key are one schema, read and changed together.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..checkpointing import checkpoint_policy
from ..config import LighthouseConfig, LighthouseConfigError
from ..model import ATTENTION_KINDS, ModelArgs, check_model_args
from .data.stream import AUTO_STREAMS

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16")
SOURCES = ("stdlib", "files", "site-packages")


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclass
class DataConfig:
    source: str = "stdlib"  # "stdlib": the Python standard library's .py files; "files": `paths`
    # "site-packages": the .py files of the installed packages (of `paths` folders, if given)
    paths: list[str] = field(default_factory=list)  # files, directories or glob patterns
    text_field: str = "text"  # the field (JSONL) or column (Parquet) holding a document
    max_bytes: int = 0  # read at most this many bytes of files (by size, in path order); 0: all
    seq_len: int = 4096  # tokens per training window
    val_fraction: float = 0.05  # share of documents held out for validation (by hash of name)
    val_windows: int = 8  # validation windows evaluated each time
    # One document is a "file", the files of a "folder", or those of a top-level "package" (a
    # folder under a root); "auto": "package" for source = "site-packages", else "file".
    document: str = "auto"
    # "documents" (whole documents by hash of name), "bytes" (every document's last val_fraction
    # of bytes), "auto": "documents" unless its held-out documents would not fill val_windows
    # windows (or the rest one window), then "bytes".
    val_split: str = "auto"
    # Training windows come in turn from this many streams, each over every k-th document: a long
    # document then fills every k-th step instead of consecutive ones (docs/results.md: every run of
    # the robustness matrix ended 0.2-1.0 bpb lower with 16). 0, "auto": 16, or as many as the
    # corpus's training documents can fill; 1: one stream, documents back to back.
    streams: int = 0


@dataclass
class OptimConfig:
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_steps: int = 16
    schedule: str = "cosine"  # after warm-up, over the total steps of all stages
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainingConfig:
    batch_size: int = 1  # global batch, in sequences
    micro_batch_size: int = 0  # sequences per forward/backward on each rank; 0: batch_size / parallel.dp
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 autocast on cuda, float32 elsewhere
    compile: bool = False  # torch.compile the model
    # Recompute in the backward pass (lighthouse.checkpointing): false; true or "block" (each block:
    # less memory, ~1/3 more compute); "selective" (as "block", keeping the attention kernels' outputs).
    activation_checkpointing: bool | str = False
    offload_layers: int = 0  # with "block": the first n blocks keep their saved input in host memory (one process)
    loss_chunk: int = 0  # take the loss this many positions at a time (never all [N, V] logits); 0: at once
    deterministic: bool = True  # torch.use_deterministic_algorithms (CPU runs are bitwise repeatable)
    threads: int = 0  # torch CPU threads; 0: torch's default
    log_every: int = 10  # steps between metrics lines (the only places the loss is read back from the GPU)
    eval_every: int = 16  # steps between validation evaluations (and at each stage end); 0: stage ends only
    # The leak meter (lighthouse.evals.leak) at every leak_every-th evaluation of a Lighthouse stage
    # and at its end, on 2 validation windows x leak_positions positions; 0: off. One process only.
    leak_every: int = 2
    leak_positions: int = 4
    checkpoint_every: int = 50  # steps between checkpoints (and at each stage end); 0: stage ends only
    keep_checkpoints: int = 2  # how many recent checkpoints to keep (a damaged newest one falls back to an older)
    progress: bool = True  # show a progress bar


@dataclass
class ParallelConfig:
    """How a run launched by torchrun spreads over its processes (ignored by a single process)."""

    dp: int = 0  # data-parallel degree (FSDP2 shards weights, gradients, optimizer state); 0: WORLD_SIZE / cp
    cp: int = 1  # context-parallel degree: the ranks that split every sequence between them


@dataclass
class StageConfig:
    attention: str = "lighthouse"  # "lighthouse" or "dense"
    steps: int = 100
    # A mitigation for Lighthouse stages: every n-th step of the stage runs dense attention, so the
    # weights keep training the dense function they must end with. 0: none (n >= 2 otherwise).
    dense_every: int = 0
    # A learning-rate re-warm-up at the start of this stage: the schedule's rate times (k+1)/n over
    # the stage's first n steps (a mitigation at the switch to dense). 0: the schedule as it is.
    warmup_steps: int = 0


@dataclass
class Config:
    name: str = "demo"
    out_dir: str = "runs"
    # The demo preset (configs/demo.toml): a 4,096-token window, Lighthouse in every layer.
    # ModelArgs's and LighthouseConfig's own defaults are the library's (the paper's L, p, K).
    model: ModelArgs = field(default_factory=lambda: ModelArgs(dense_layers=[]))
    lighthouse: LighthouseConfig = field(default_factory=lambda: LighthouseConfig(pooling=4, topk=128))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    stages: list[StageConfig] = field(
        default_factory=lambda: [StageConfig("lighthouse", 60), StageConfig("dense", 36)]
    )

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def micro_batch(self) -> int:
        return self.training.micro_batch_size or self.training.batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.training.batch_size * self.data.seq_len

    def stage_at(self, step: int) -> int:
        """Index of the stage that trains step `step` (0-based: the step about to be taken)."""
        end = 0
        for i, stage in enumerate(self.stages):
            end += stage.steps
            if step < end:
                return i
        return len(self.stages) - 1

    def stage_end(self, index: int) -> int:
        return sum(s.steps for s in self.stages[: index + 1])

    def step_in_stage(self, step: int) -> tuple[StageConfig, int]:
        """The stage that trains step `step`, and how many of its steps come before it."""
        index = self.stage_at(step)
        return self.stages[index], step - (self.stage_end(index) - self.stages[index].steps)

    def attention_at(self, step: int) -> str:
        """The attention step `step` trains with: its stage's, or dense on a stage's `dense_every` steps."""
        stage, into = self.step_in_stage(step)
        if stage.dense_every and into % stage.dense_every == stage.dense_every - 1:
            return "dense"
        return stage.attention


# ---- loading ------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file (and what it extends), then `--set` overrides; validated."""
    data = to_dict(Config())
    if path is not None:
        _merge(data, _read_toml(Path(path), seen=()))
    return config_from_dict(data, overrides)


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated Config from a (partial) dict over the defaults, then `--set` overrides."""
    merged = to_dict(Config())
    _merge(merged, data)
    _fill_stage_defaults(merged)
    for item in overrides:
        apply_override(merged, item)
        _fill_stage_defaults(merged)  # `stages=[...]` may list only some keys; `stages.0.key=` needs them all
    cfg = from_dict(merged)
    validate(cfg)
    return cfg


def _fill_stage_defaults(data: dict) -> None:
    """Give every stage table the keys it leaves out, at StageConfig's defaults."""
    stages = data.get("stages")
    if isinstance(stages, list):
        defaults = to_dict(StageConfig())
        data["stages"] = [{**defaults, **stage} if isinstance(stage, dict) else stage for stage in stages]


def _read_toml(path: Path, seen: tuple) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` forms a cycle")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be a path string, got {base!r}")
    merged = _read_toml(path.parent / base, seen + (path.resolve(),))
    _merge(merged, raw)
    return merged


def _merge(into: dict, new: dict) -> None:
    """Deep-merge tables; lists and scalars replace."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def parse_value(text: str):
    """A TOML value (`3`, `1e-3`, `true`, `[0, -1]`, `"x"`); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict, item: str) -> None:
    """Apply `a.b.c=value` to the nested dict `data` (list items by index: `stages.1.steps`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. training.batch_size=16)")
    key, _, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where)
        elif isinstance(node, dict):
            if part not in node:
                raise ConfigError(f"unknown key '{where}' in override {item!r}{_suggest(part, node)}")
            node = node[part]
        else:
            raise ConfigError(f"override {item!r}: '{where}' is a value, not a section")
    last = parts[-1]
    value = parse_value(text.strip())
    if isinstance(node, list):
        idx = _index(node, last, key)
        node[idx] = value
    elif isinstance(node, dict):
        if last not in node:
            raise ConfigError(f"unknown key '{key}' in override {item!r}{_suggest(last, node)}")
        node[last] = value
    else:
        raise ConfigError(f"override {item!r}: '{'.'.join(parts[:-1])}' is a value, not a section")


def _index(node: list, part: str, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"'{where}': expected a list index, got {part!r}") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"'{where}': index {idx} out of range (the list has {len(node)} items)")
    return idx


def _list_item(node: list, part: str, where: str):
    return node[_index(node, part, where)]


def _suggest(key: str, known) -> str:
    if key in ("steps", "max_steps", "total_steps") and "stages" not in known:
        return " (steps are set per stage: --set stages.0.steps=N, stages.1.steps=M)"
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(sorted(known))}"


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def from_dict(data: dict) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("a config must be a table")
    return _build(Config, data, "")


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            what = f"in [{prefix[:-1]}]" if prefix else "at the top level"
            raise ConfigError(f"unknown key '{where}' {what}{_suggest(key, names)}")
        kwargs[key] = _convert(hints[key], value, where)
    try:
        return cls(**kwargs)
    except LighthouseConfigError as e:  # the attention's own checks, reported under their key
        raise ConfigError(f"'{prefix}{e.key}': {e}") from None


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_plural_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _plural_name(tp) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(tp, "tables")


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # e.g. `str | Scorer`: a config file can give the str
        plain = [t for t in typing.get_args(tp) if t in (bool, int, float, str)]
        for t in plain:
            try:
                return _convert(t, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"'{where}' must be {' or '.join(_type_name(t) for t in plain)}, got {value!r}")
    bad = ConfigError(f"'{where}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, f"{where}.")
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):  # one item where a list belongs
                example = _toml_value([value])
                raise ConfigError(f"'{where}' must be {_type_name(tp)}, got the single value {value!r}; write a TOML list: "
                                  f"{where.rpartition('.')[2]} = {example} in a file, --set '{where}={example}' on the "
                                  "command line") from None
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{where}.{i}") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp} for {where}")  # pragma: no cover


# ---- validation ---------------------------------------------------------------------------
def validate(cfg: Config) -> None:
    """Check values (types were checked while loading); raise ConfigError naming the key."""
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"'name' must be a plain directory name, got {cfg.name!r}")
    try:
        check_model_args(cfg.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None

    if not cfg.stages:
        raise ConfigError("'stages' must list at least one stage, e.g. [[stages]] attention = \"dense\" steps = 100")
    for i, stage in enumerate(cfg.stages):
        if stage.attention not in ATTENTION_KINDS:
            raise ConfigError(f"'stages.{i}.attention' must be one of {ATTENTION_KINDS}, got {stage.attention!r}")
        if stage.steps < 1:
            raise ConfigError(f"'stages.{i}.steps' must be >= 1, got {stage.steps}")
        if stage.dense_every < 0 or stage.dense_every == 1:
            raise ConfigError(f"'stages.{i}.dense_every' must be 0 (off) or >= 2, got {stage.dense_every} "
                              "(every step dense: attention = \"dense\")")
        if stage.dense_every and stage.attention == "dense":
            raise ConfigError(f"'stages.{i}.dense_every' interleaves dense steps into a Lighthouse stage; "
                              f"stage {i} is already dense")
        if not 0 <= stage.warmup_steps <= stage.steps:
            raise ConfigError(f"'stages.{i}.warmup_steps' must be between 0 and the stage's steps ({stage.steps}), "
                              f"got {stage.warmup_steps}")

    lh = cfg.lighthouse  # validated when it was built (LighthouseConfig.__post_init__)
    d = cfg.data
    if d.seq_len < 2:
        raise ConfigError(f"'data.seq_len' must be >= 2, got {d.seq_len}")
    uses_lighthouse = any(s.attention == "lighthouse" for s in cfg.stages)
    sparse_layers = cfg.model.n_layers - len(cfg.model.dense_layer_set())
    if uses_lighthouse and sparse_layers > 0 and d.seq_len < lh.min_seq_len:
        raise ConfigError(
            f"'data.seq_len' = {d.seq_len} is shorter than the Lighthouse minimum "
            f"lighthouse.topk * lighthouse.pooling**(lighthouse.levels-1) = "
            f"{lh.topk} * {lh.pooling}**{lh.levels - 1} = {lh.min_seq_len}; "
            "raise data.seq_len or lower lighthouse.topk / pooling / levels"
        )
    if d.source not in SOURCES:
        raise ConfigError(f"'data.source' must be one of {SOURCES}, got {d.source!r}")
    if d.source == "files" and not d.paths:
        raise ConfigError("'data.paths' must list files, directories or globs when data.source = \"files\"")
    if d.source == "stdlib" and d.paths:
        raise ConfigError(
            "'data.paths' is not read when data.source = \"stdlib\"; set data.source = \"files\" "
            "(or \"site-packages\" to name site-packages folders)"
        )
    if d.document not in ("auto", "file", "folder", "package"):
        raise ConfigError(f"'data.document' must be auto, file, folder or package, got {d.document!r}")
    if d.val_split not in ("auto", "documents", "bytes"):
        raise ConfigError(f"'data.val_split' must be auto, documents or bytes, got {d.val_split!r}")
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"'data.val_fraction' must be between 0 and 1 (exclusive), got {d.val_fraction}")
    if d.val_windows < 1:
        raise ConfigError(f"'data.val_windows' must be >= 1, got {d.val_windows}")
    if d.streams < 0:
        raise ConfigError(f"'data.streams' must be >= 0 (0: auto, up to {AUTO_STREAMS}), got {d.streams}")
    if d.max_bytes < 0:
        raise ConfigError(f"'data.max_bytes' must be >= 0 (0: no cap), got {d.max_bytes}")
    if not d.text_field:
        raise ConfigError("'data.text_field' must not be empty")

    o = cfg.optim
    if not (o.lr > 0 and math.isfinite(o.lr)):
        raise ConfigError(f"'optim.lr' must be > 0, got {o.lr}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"'optim.betas' must be two numbers in [0, 1), got {o.betas}")
    for key in ("weight_decay", "grad_clip", "warmup_steps"):
        if getattr(o, key) < 0:
            raise ConfigError(f"'optim.{key}' must be >= 0, got {getattr(o, key)}")
    if o.eps <= 0:
        raise ConfigError(f"'optim.eps' must be > 0, got {o.eps}")
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"'optim.schedule' must be one of {SCHEDULES}, got {o.schedule!r}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"'optim.min_lr_ratio' must be in [0, 1], got {o.min_lr_ratio}")

    t = cfg.training
    if t.batch_size < 1:
        raise ConfigError(f"'training.batch_size' must be >= 1, got {t.batch_size}")
    if t.micro_batch_size < 0 or (t.micro_batch_size and t.batch_size % t.micro_batch_size):
        raise ConfigError(
            f"'training.micro_batch_size' ({t.micro_batch_size}) must divide training.batch_size ({t.batch_size})"
        )
    if t.dtype not in DTYPES:
        raise ConfigError(f"'training.dtype' must be one of {DTYPES}, got {t.dtype!r}")
    if not (t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:")):
        raise ConfigError(f"'training.device' must be auto, cpu, cuda, cuda:N or mps, got {t.device!r}")
    for key in ("log_every", "keep_checkpoints"):
        if getattr(t, key) < 1:
            raise ConfigError(f"'training.{key}' must be >= 1, got {getattr(t, key)}")
    for key in ("eval_every", "checkpoint_every", "threads", "offload_layers", "loss_chunk"):
        if getattr(t, key) < 0:
            raise ConfigError(f"'training.{key}' must be >= 0, got {getattr(t, key)}")
    try:
        policy = checkpoint_policy(t.activation_checkpointing)
    except ValueError as e:
        raise ConfigError(f"'training.activation_checkpointing': {e}") from None
    if t.offload_layers and policy != "block":
        raise ConfigError(
            f"'training.offload_layers' = {t.offload_layers} needs training.activation_checkpointing = true "
            f"(or \"block\"): the offloaded tensors are the inputs that block recomputation keeps; got {t.activation_checkpointing!r}"
        )

    p = cfg.parallel
    if p.dp < 0:
        raise ConfigError(f"'parallel.dp' must be >= 1, or 0 for WORLD_SIZE / parallel.cp; got {p.dp}")
    if p.cp < 1:
        raise ConfigError(f"'parallel.cp' must be >= 1, got {p.cp}")
    if p.cp > 1:
        _check_context_parallel(cfg, uses_lighthouse and sparse_layers > 0)


def _check_context_parallel(cfg: Config, has_lighthouse_layers: bool) -> None:
    """The sequence must split into 2*cp equal chunks that every Lighthouse layer can select in."""
    from ..distributed.context_parallel import check_context_parallel

    lh = cfg.lighthouse if has_lighthouse_layers else LighthouseConfig(levels=1)  # levels=1: dense layers only
    try:
        check_context_parallel(lh, cfg.data.seq_len, cfg.parallel.cp)
    except ValueError as e:
        raise ConfigError(f"'parallel.cp' = {cfg.parallel.cp} with data.seq_len = {cfg.data.seq_len}: {e}") from None


def resolve_parallel(cfg: Config, world_size: int) -> tuple[int, int]:
    """(dp, cp) for `world_size` processes: dp * cp must be the number of processes, and the
    global batch must split evenly into per-rank micro-batches."""
    p, t = cfg.parallel, cfg.training
    if world_size % p.cp:
        raise ConfigError(f"'parallel.cp' = {p.cp} does not divide the number of processes (WORLD_SIZE = {world_size})")
    dp = p.dp or world_size // p.cp
    if dp * p.cp != world_size:
        raise ConfigError(
            f"'parallel.dp' * 'parallel.cp' = {dp} * {p.cp} must equal the number of processes "
            f"(WORLD_SIZE = {world_size}); set parallel.dp = 0 to derive it"
        )
    if t.batch_size % dp:
        raise ConfigError(f"'training.batch_size' ({t.batch_size}) must be a multiple of parallel.dp ({dp})")
    if t.micro_batch_size and t.batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"'training.micro_batch_size' ({t.micro_batch_size}, per rank) times parallel.dp ({dp}) must divide "
            f"training.batch_size ({t.batch_size})"
        )
    return dp, p.cp


def micro_batch_per_rank(cfg: Config, dp: int) -> int:
    """Sequences a data-parallel rank runs per forward/backward: micro_batch_size, or its share of the batch."""
    return cfg.training.micro_batch_size or cfg.training.batch_size // dp


# ---- comparing -------------------------------------------------------------------------------
# What a config written before a key existed did, where that differs from today's default: such a
# config read its data as one stream (the default is now 0, auto).
BEFORE_THE_KEY = {"data": {"streams": 1}}


def config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every value of `new` that `old` holds otherwise.

    Tables are compared key by key, lists of tables (stages) item by item when they have the
    same length; a key `old` lacks (a config written before it existed) counts as its default.
    """
    if prefix == "":
        merged = to_dict(Config())
        _merge(merged, BEFORE_THE_KEY)
        _merge(merged, old)
        _fill_stage_defaults(merged)
        old = merged
    out = []
    for key, value in new.items():
        where = f"{prefix}{key}"
        before = old.get(key) if isinstance(old, dict) else None
        if isinstance(value, dict) and isinstance(before, dict):
            out += config_diff(before, value, f"{where}.")
        elif _is_table_list(value) and _is_table_list(before) and len(value) == len(before):
            for i, (b, v) in enumerate(zip(before, value)):
                out += config_diff(b, v, f"{where}.{i}.")
        elif before != value:
            out.append((where, before, value))
    return out


# ---- derived configs and saving ------------------------------------------------------------
def baseline_config(cfg: Config) -> Config:
    """Dense attention from scratch for the same total steps (so the same tokens and LR schedule)."""
    base = from_dict(to_dict(cfg))
    base.name = f"{cfg.name}-baseline"
    base.stages = [StageConfig("dense", cfg.total_steps)]
    return base


def to_toml(cfg: Config) -> str:
    """The config as TOML that `load_config` reads back to an equal config."""
    data = to_dict(cfg)
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict) and not _is_table_list(value):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()]
    for key, value in data.items():
        if _is_table_list(value):
            for item in value:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _is_table_list(v) -> bool:
    return isinstance(v, list) and bool(v) and isinstance(v[0], dict)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")  # pragma: no cover
