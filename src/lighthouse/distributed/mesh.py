"""The process group and device mesh of a multi-process run, and what its ranks agree on.

`torchrun --nproc-per-node N -m lighthouse train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (on several nodes torchrun's rendezvous sets the
same). `join_parallel` turns that into a `ParallelState`:

- the process group: NCCL for CUDA tensors plus gloo for CPU ones on GPUs (object
  collectives, the stop flag), gloo alone on CPU;
- this rank's device, `cuda:LOCAL_RANK` on GPUs;
- one DeviceMesh with dims ("dp", "cp") of shape (dp, cp). Rank r sits at (r // cp, r % cp):
  the ranks of a context-parallel group are neighbours (one node when cp divides the GPUs per
  node) and train on the same rows.

A process started without torchrun (WORLD_SIZE unset or 1) gets the state of a world of one,
whose methods do the plain single-process thing, so the trainer calls them unconditionally.
`process_group_scope` tears the group down at the end of a command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIMS = ("dp", "cp")


def launched_world_size() -> int:
    """Processes in this launch: WORLD_SIZE as torchrun sets it (1 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a launch, or a process started on its own (read from the environment, valid after teardown)."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group() -> None:
    """Destroy the process group a run joined (nothing when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # gloo's worker threads free the tensors of the last collectives after the caller has
        # moved on, and need the GIL for it: a process that finalizes the interpreter first aborts
        # ("terminate called without an active exception"). A moment's pause lets them finish.
        time.sleep(0.2)


@contextlib.contextmanager
def process_group_scope():
    """Around a command whose trainers may join a process group: leave it at the end, however it ends."""
    try:
        yield
    finally:
        leave_process_group()


@dataclass
class ParallelState:
    """Where this process stands: its device, the degrees, its rank, the mesh (None: a single process)."""

    device: torch.device
    dp: int = 1
    cp: int = 1
    rank: int = 0
    mesh: DeviceMesh | None = None

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def world_size(self) -> int:
        return self.dp * self.cp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp

    @functools.cached_property
    def shard_mesh(self) -> DeviceMesh:
        """The ranks FSDP shards over: the dp dim, or with cp > 1 the flattened dp x cp ranks."""
        if self.cp == 1:
            return self.mesh["dp"]
        return self.mesh["dp", "cp"]._flatten("dp_cp")  # torchtitan does the same; no public spelling yet

    @property
    def cp_group(self):
        """The process group of this rank's context-parallel ranks (cp > 1 only)."""
        return self.mesh["cp"].get_group()

    def describe(self) -> str:
        if not self.distributed:
            return str(self.device)
        return f"{self.world_size} processes (dp={self.dp}, cp={self.cp}), rank 0 on {self.device}"

    # -- agreeing --
    def on_main(self, fn, *args, **kwargs):
        """`fn(*args)` on rank 0 only; every rank returns its result or raises its exception.

        For the run's files (lock, checkpoints to resume from, metrics, config.toml): rank 0
        decides, and the others follow instead of racing it on a shared filesystem.
        """
        if not self.distributed:
            return fn(*args, **kwargs)
        box = [None]
        if self.is_main:
            try:
                box[0] = (True, fn(*args, **kwargs))
            except Exception as e:  # raised on every rank below, so none waits for the others forever
                box[0] = (False, _portable(e))
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agree_max(self, value: int) -> int:
        """The largest `value` of all ranks (a CPU collective: no device sync)."""
        if not self.distributed:
            return value
        flag = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of `x` over all ranks (the logged loss: every rank's loss is a mean over equally many tokens)."""
        if not self.distributed:
            return x
        total = x.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def all_gather_object(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @contextlib.contextmanager
    def on_main_held(self, make_lock):
        """A lock (anything with acquire/release) that rank 0 holds for the block; every rank fails if it is taken."""
        lock = make_lock()
        self.on_main(lambda: lock.acquire() and None)
        try:
            yield
        finally:
            if self.is_main:
                lock.release()


def _portable(error: Exception) -> Exception:
    """`error` if it survives pickling (to travel to the other ranks), else a RuntimeError with its message."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def join_parallel(dp: int, cp: int, device: torch.device) -> ParallelState:
    """This process's place in the run: a world of one, or (under torchrun) a rank of the ("dp", "cp") mesh.

    `dp * cp` must be the launch's world size (the trainer checks its `[parallel]` section
    first). Joins the process group if the launcher did not.
    """
    world = launched_world_size()
    if dp * cp != world:
        raise ValueError(f"dp * cp = {dp} * {cp} must equal the number of processes, {world}")
    if world == 1:
        return ParallelState(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"multi-process training runs on cuda or cpu, not {device.type!r}")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo")
    mesh = init_device_mesh(device.type, (dp, cp), mesh_dim_names=MESH_DIMS)
    return ParallelState(device, dp, cp, dist.get_rank(), mesh)
