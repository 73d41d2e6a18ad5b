"""Checkpoints of a multi-process run: sharded by torch.distributed.checkpoint (DCP), plus the
full weights as `model.safetensors`, with the promises of the package (`trainer/checkpoint/`).

Layout of `runs/<name>/checkpoints/step-00000100/`:

    dcp/.metadata, dcp/__R_0.distcp   model and optimizer, sharded: rank R writes its own shards
    model.safetensors                  the full weights, gathered to rank 0 (`lighthouse eval` and
                                       single-GPU tools read it as a one-process checkpoint)
    state.pt                           step, schedule, data position (the same on every rank:
                                       saved once), RNG state of rank 0, progress, config
    meta.json                          step, "format": "dcp", the world size and mesh, and the
                                       size and SHA-256 of every file above, shards included

Saving (every rank calls `save_sharded_checkpoint`):
1. rank 0 makes an empty hidden folder `.tmp-step-00000100-dcp` (removing what a killed save
   left there); the others wait for it;
2. every rank writes its shards of `get_state_dict(model, optimizer)` into `<tmp>/dcp`;
3. the full weights are gathered to rank 0's CPU memory
   (`get_model_state_dict(..., full_state_dict=True, cpu_offload=True)`);
4. every rank hashes its share of the shard files; rank 0 writes model.safetensors, state.pt
   and meta.json, renames the folder into place (one atomic step), moves `latest` and prunes
   old checkpoints, as `local.save_checkpoint` does (the same helpers of files.py).
A kill of any rank at any moment before the rename leaves only the hidden folder, which the
next save removes: `latest` still names the last good checkpoint. Verification, fallback to
an older checkpoint and the run lock are those of one process (files.py, lock.py; run on rank 0).

Loading: DCP reads the shards of whatever layout the checkpoint was saved with into the
current one (saved on 2 ranks, resumed on 1 or 4: it reshards). A one-process checkpoint
(no `dcp/`) loads into a sharded model from its model.safetensors and state.pt, and a one-
process trainer loads a sharded checkpoint through `load_sharded` (`Checkpointer.load`).

The run folder must be on a filesystem every rank reads and writes (one node, or a shared
filesystem across nodes).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from ...distributed.mesh import ParallelState
from .files import (
    DATA_FILES,
    SHARDED_DIR,
    CheckpointError,
    checkpoint_folder,
    fresh_folder,
    install_checkpoint,
    is_good,
    point_latest,
    seal_checkpoint,
    sha256_file,
)

FORMAT = "dcp"  # meta.json "format" of a sharded checkpoint


# ---- tied weights in model.safetensors -----------------------------------------------------------
def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), sorted, one list per shared parameter."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [sorted(group) for group in names.values() if len(group) > 1]


def untie(full_sd: dict, groups: list[list[str]]) -> dict:
    """One name per shared tensor, the first in sorted order, as `safetensors.torch.save_model` keeps."""
    dropped = {name for group in groups for name in group[1:]}
    return {k: v.contiguous() for k, v in full_sd.items() if k not in dropped}


def retie(weights: dict, groups: list[list[str]]) -> dict:
    """Every name of a shared tensor, from whichever one the file holds (`untie` inverted)."""
    for group in groups:
        present = [name for name in group if name in weights]
        for name in group:
            if present and name not in weights:
                weights[name] = weights[present[0]]
    return weights


# ---- saving -----------------------------------------------------------------------------------------
def _shard_files(folder: Path) -> list[str]:
    """The files DCP wrote, as its metadata names them (a listing of a shared filesystem may lag behind)."""
    metadata = dcp.FileSystemReader(str(folder / SHARDED_DIR)).read_metadata()
    names = {info.relative_path for info in metadata.storage_data.values()}
    return [f"{SHARDED_DIR}/.metadata", *(f"{SHARDED_DIR}/{name}" for name in sorted(names))]


def save_sharded_checkpoint(run_dir, step: int, model, optimizer, state: dict, keep: int,
                            parallel: ParallelState) -> Path:
    """Write checkpoint `step` of a sharded model and optimizer (every rank calls this); returns its folder."""
    final = checkpoint_folder(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}-{FORMAT}")  # the same name on every rank

    def prepare() -> bool:
        final.parent.mkdir(parents=True, exist_ok=True)
        if is_good(final):  # a good checkpoint of this step (a re-save after resume) stays as it is
            return False
        fresh_folder(tmp)
        return True

    if not parallel.on_main(prepare):
        parallel.on_main(point_latest, final, keep)
        return final
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / SHARDED_DIR)
    full_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    parallel.barrier()  # every shard and the metadata are on disk before anyone lists them

    shards = _shard_files(tmp)
    mine = {f: sha256_file(tmp / f) for i, f in enumerate(shards) if i % parallel.world_size == parallel.rank}
    digests = {f: digest for part in parallel.all_gather_object(mine) for f, digest in part.items()}
    groups = tied_groups(model)

    def publish() -> Path:
        save_file(untie(full_sd, groups), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        seal_checkpoint(tmp, step, [*DATA_FILES, *shards], digests, format=FORMAT,
                        world_size=parallel.world_size, mesh={"dp": parallel.dp, "cp": parallel.cp})
        install_checkpoint(tmp, final)
        point_latest(final, keep)
        return final

    return parallel.on_main(publish)


# ---- loading ----------------------------------------------------------------------------------------
def load_sharded(path: Path, model, optimizer) -> None:
    """Weights and optimizer state of a sharded checkpoint into `model` and `optimizer`, whatever their sharding.

    Works on a sharded model (every rank calls it) and on a plain one in a single process.
    """
    folder = Path(path) / SHARDED_DIR
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint is what we mean
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=folder, no_dist=not dist.is_initialized())
    except (CheckpointException, RuntimeError, ValueError, OSError) as e:
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{folder}: cannot be read ({type(e).__name__}: {first_line})") from None
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def optimizer_state_by_name(model, optimizer, saved: dict) -> dict:
    """A one-process `optimizer.state_dict()` (parameters by index) keyed by parameter name instead.

    Both optimizers list the parameters in the same order (`build_optimizer` over
    `model.parameters()`, which sharding keeps), so index i of a group is its i-th parameter.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    by_index, groups = {}, []
    for live, group in zip(optimizer.param_groups, saved["param_groups"]):
        if len(live["params"]) != len(group["params"]):
            raise CheckpointError("the checkpoint's optimizer does not fit this model (parameter groups differ)")
        by_index.update({i: names[id(p)] for i, p in zip(group["params"], live["params"])})
        groups.append({**group, "params": [by_index[i] for i in group["params"]]})
    return {"state": {by_index[i]: s for i, s in saved["state"].items()}, "param_groups": groups}


def load_full_weights(path: Path, model) -> None:
    """model.safetensors of a checkpoint (either kind: a sharded one holds the consolidated weights) into a
    sharded model; every rank reads the whole and keeps its shards."""
    f = Path(path) / "model.safetensors"
    try:
        weights = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{f}: cannot be read ({e})") from None
    try:
        set_model_state_dict(model, retie(weights, tied_groups(model)), options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, ValueError) as e:
        first_line = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{f}: does not fit this model ({first_line[:200]}); use the checkpoint's [model]") from None


def load_single_process(path: Path, model, optimizer, optimizer_state: dict) -> None:
    """A one-process checkpoint (model.safetensors, optimizer in state.pt) into a sharded model and optimizer."""
    load_full_weights(path, model)
    full = StateDictOptions(full_state_dict=True)  # every rank holds the whole; each keeps its shards
    set_optimizer_state_dict(model, optimizer, optimizer_state_by_name(model, optimizer, optimizer_state), options=full)
