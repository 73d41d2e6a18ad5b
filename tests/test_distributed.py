"""Multi-process training on CPU with gloo: torchrun launches of `python -m lighthouse train`.

What is checked, against runs in this process (one process, same config):
- 2 data-parallel ranks give the losses of one process with the same global batch;
- a checkpoint saved on 2 ranks resumes on 1 process and on 4 ranks (DCP reshards), and one
  saved by one process resumes on 2 ranks, with the losses of the uninterrupted run;
- a rank killed mid-run (SIGKILL; torchrun stops the other) resumes from the last checkpoint
  and finishes with the same losses;
- the consolidated model.safetensors holds the sharded weights and loads in `lighthouse eval`;
- context parallelism over 2 ranks gives the losses of one process running the same
  decomposition (`lighthouse_attention_chunked_reference`);
- a save killed half-way leaves the last checkpoint in place; bad [parallel] keys are named.

Why a tolerance of 1e-6 (relative) and not equality: the ranks sum the gradients, the
gradient norm and the logged loss in another order than one process does (per shard, then
across ranks), so the clip coefficient and the sums differ in the last bits from step 1 and
drift apart with the steps (3.6e-4 relative by step 40 on CPU); these runs are a few steps
long. A kill-and-resume on the same number of ranks repeats the same sums: it must be exact.

Every launch has a timeout, and every process it starts (torchrun, and its workers, which run
in sessions of their own) carries a tag in its environment and is killed by pid when the
launch ends, however it ends. Shapes are tiny (test_trainer's) and every rank uses one thread.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lighthouse.cli import main
from lighthouse.distributed import lighthouse_attention_chunked_reference
from lighthouse.model import Transformer
from lighthouse.trainer.build import build_model
from lighthouse.trainer.checkpoint import (
    Checkpointer,
    latest_checkpoint,
    latest_good_checkpoint,
    load_checkpoint,
    verify_checkpoint,
)
from lighthouse.trainer.config import ConfigError, load_config, resolve_parallel, to_toml
from lighthouse.trainer.loop import train
from lighthouse.trainer.metrics import read_metrics
from lighthouse.trainer.stepper import build_optimizer
from test_trainer import _env, tiny_config

REPO = Path(__file__).resolve().parents[1]

LAUNCH_TIMEOUT_S = 150  # one torchrun launch, start-up of every rank included
TAG = "LIGHTHOUSE_TEST_LAUNCH"  # environment variable that marks the processes of one launch
RTOL = 1e-6
STEPS = (4, 4)  # lighthouse, then dense


def quiet(*args, **kwargs):
    pass


def write_config(tmp_path: Path, name: str, *overrides: str) -> Path:
    """test_trainer's tiny config with a global batch of 4 (1 row per forward), every checkpoint kept."""
    base = tiny_config(tmp_path, steps=STEPS, name=name, ckpt_every=2)
    cfg = load_config(base, ["training.batch_size=4", "training.keep_checkpoints=10", *overrides])
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    return path


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(run_dir)}


def assert_close(got: dict, want: dict, steps) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=RTOL), (step, got[step], want[step])


# ---- launching and ending processes ------------------------------------------------------------
def tagged_pids(tag: str, rank: int | None = None) -> list[int]:
    """Live processes whose environment carries `tag` (and RANK=`rank` when given)."""
    want = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if want in environ and (rank is None or f"RANK={rank}".encode() in environ):
            found.append(int(entry.name))
    return found


def _end(proc: subprocess.Popen, tag: str) -> None:
    for pid in [proc.pid, *tagged_pids(tag)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@contextmanager
def launched(nproc: int, config: Path, *args: str):
    """`torchrun --standalone --nproc-per-node nproc -m lighthouse train --config ...`; yields (Popen, tag).
    Without a plot at the end (2 s of a launch) unless `args` asks for one with --plot."""
    plot = [] if "--plot" in args else ["--no-plot"]
    with launched_module(nproc, "lighthouse", "train", "--config", str(config), "--no-progress", *plot, *args) as launch:
        yield launch


@contextmanager
def launched_module(nproc: int, module: str, *args: str):
    """`torchrun --standalone --nproc-per-node nproc -m module args...`; yields (Popen, tag)."""
    tag = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module, *args]
    env = {**_env(), TAG: tag, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, tag
    finally:
        _end(proc, tag)


def launch(nproc: int, config: Path, *args: str) -> str:
    """Run a launch to its end; its output, after checking that it succeeded."""
    with launched(nproc, config, *args) as (proc, _):
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    assert proc.returncode == 0, out
    return out


def keep_checkpoints_up_to(src: Path, dst: Path, step: int) -> None:
    """A copy of run `src` as it was when checkpoint `step` was the newest (the trainer cuts metrics back)."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    (dst / "checkpoints" / "latest").write_text(f"step-{step:08d}\n", encoding="utf-8")


# ---- the reference runs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config trained by one process (in this one) and by 2 data-parallel ranks."""
    tmp = tmp_path_factory.mktemp("dist")
    config = write_config(tmp, "one")
    train(load_config(config), echo=quiet)
    out = launch(2, config, "--set", 'name="two"', "--plot", str(tmp / "two.png"))  # rank 0 draws it
    return {"tmp": tmp, "config": config, "one": tmp / "runs" / "one", "two": tmp / "runs" / "two", "out": out}


def test_two_ranks_equal_one_process(runs):
    one, two = runs["one"], runs["two"]
    steps = range(1, sum(STEPS) + 1)
    assert [r["step"] for r in train_records(two)] == list(steps)  # written once, by rank 0
    assert_close(losses(two), losses(one), steps)
    norms = {r["step"]: r["grad_norm"] for r in train_records(one)}
    for r in train_records(two):
        assert r["grad_norm"] == pytest.approx(norms[r["step"]], rel=1e-5)
        assert r["tokens"] == r["step"] * 4 * 256
    # (the leak meter runs in one process only: its records are left out here)
    evals = [(r["kind"], r["step"], r["val_bpb"]) for r in read_metrics(one) if r["kind"] in ("eval", "stage_end")]
    got = [(r["kind"], r["step"], r["val_bpb"]) for r in read_metrics(two) if r["kind"] in ("eval", "stage_end")]
    assert [e[:2] for e in got] == [e[:2] for e in evals]
    assert [e[2] for e in got] == pytest.approx([e[2] for e in evals], rel=RTOL)
    assert "2 processes (dp=2, cp=1)" in runs["out"] and runs["out"].count("stage 2/2: dense") == 1
    assert (runs["tmp"] / "two.png").stat().st_size > 0 and runs["out"].count("plot: ") == 1

    ckpt = latest_checkpoint(two)
    meta = verify_checkpoint(ckpt)
    assert (meta["format"], meta["world_size"], meta["mesh"]) == ("dcp", 2, {"dp": 2, "cp": 1})
    shards = {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"}
    assert shards | {"model.safetensors", "state.pt"} <= set(meta["files"])
    state = load_checkpoint(ckpt)
    assert "optimizer" not in state and state["data"]["train"]["windows"] == sum(STEPS) * 4
    assert load_config(two / "config.toml").name == "two"


def test_resume_on_one_and_four_ranks_and_from_one_process(runs):
    tmp, config, two = runs["tmp"], runs["config"], runs["two"]
    want = losses(two)
    later = range(3, sum(STEPS) + 1)  # resumed mid-stage 1, through the switch to dense
    runs_dir = tmp / "runs"

    keep_checkpoints_up_to(two, runs_dir / "to1", 2)
    train(load_config(config, ['name="to1"']), resume=True, echo=quiet)  # one process, no torchrun
    keep_checkpoints_up_to(two, runs_dir / "to4", 2)
    out = launch(4, config, "--set", 'name="to4"', "--resume")
    assert "resumed from" in out and "4 processes (dp=4, cp=1)" in out
    keep_checkpoints_up_to(runs["one"], runs_dir / "from1", 2)  # a one-process checkpoint (no dcp/)
    launch(2, config, "--set", 'name="from1"', "--resume")

    for name in ("to1", "to4", "from1"):
        got = losses(runs_dir / name)
        assert sorted(got) == sorted(want), name
        assert_close(got, want, later)
    assert {s: losses(runs_dir / "to1")[s] for s in (1, 2)} == {s: want[s] for s in (1, 2)}  # kept, not re-run
    assert verify_checkpoint(latest_checkpoint(runs_dir / "to1")).get("format") is None  # one process writes its own


def kill_rank_1_after_a_checkpoint(config: Path, name: str, run_dir: Path) -> str:
    """Launch 2 ranks, SIGKILL rank 1 once a checkpoint of step >= 2 exists; the launch's output."""
    pointer = run_dir / "checkpoints" / "latest"
    with launched(2, config, "--set", f'name="{name}"') as (proc, tag):
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        killed = False
        while time.monotonic() < deadline and proc.poll() is None and not killed:
            ckpt = pointer.read_text().strip() if pointer.is_file() else ""
            rank_1 = tagged_pids(tag, rank=1) if ckpt and int(ckpt.split("-")[1]) >= 2 else []
            if rank_1:
                os.kill(rank_1[0], signal.SIGKILL)
                killed = True
            time.sleep(0.005)
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        assert killed, out
        assert proc.returncode != 0, out  # torchrun reports the failed rank
        for _ in range(100):  # and has stopped rank 0 too
            if not tagged_pids(tag):
                break
            time.sleep(0.1)
        assert not tagged_pids(tag)
    ckpt = latest_good_checkpoint(run_dir)
    assert ckpt is not None and 2 <= int(ckpt.name.split("-")[1]) < sum(STEPS), out
    return out


def test_killed_rank_is_resumed_exactly(runs):
    tmp, config = runs["tmp"], runs["config"]
    run_dir = tmp / "runs" / "killed"
    kill_rank_1_after_a_checkpoint(config, "killed", run_dir)
    out = launch(2, config, "--set", 'name="killed"', "--resume")
    assert "resumed from" in out
    assert losses(run_dir) == losses(runs["two"])  # same ranks, same sums: bitwise


def test_consolidated_weights_are_the_sharded_ones_and_load_in_eval(runs, capsys):
    two = runs["two"]
    ckpt = latest_checkpoint(two)
    cfg = load_config(two / "config.toml")
    from_safetensors = build_model(cfg, "cpu")
    load_checkpoint(ckpt, from_safetensors)
    from_shards = build_model(cfg, "cpu")
    Checkpointer(two).load(ckpt, from_shards, build_optimizer(cfg, from_shards, torch.device("cpu")), "cpu")
    for (name, a), b in zip(from_safetensors.state_dict().items(), from_shards.state_dict().values()):
        assert torch.equal(a, b), name
    assert from_shards.output.weight is from_shards.tok_embeddings.weight  # still tied

    assert main(["eval", "--checkpoint", str(two), "--attention", "dense"]) == 0
    out = capsys.readouterr().out
    bpb = float(out.split("val bpb ")[1].split(",")[0])
    last = [r for r in read_metrics(two) if r["kind"] == "stage_end"][-1]
    assert bpb == pytest.approx(last["val_bpb"], abs=1e-4)  # printed to 4 decimals


class ChunkedReference(nn.Module):
    """The CP decomposition of a Lighthouse layer computed in one process, behind the layer contract."""

    kind = "lighthouse"

    def __init__(self, cfg, cp_degree: int):
        super().__init__()
        self.cfg, self.cp_degree = cfg, cp_degree

    def forward(self, q, k, v, rope=None, context=None):
        return lighthouse_attention_chunked_reference(q, k, v, self.cfg, self.cp_degree, rope)


def test_context_parallel_matches_its_single_process_decomposition(tmp_path, monkeypatch):
    """cp=2 through the stage switch, the stage-end evaluations (with Lighthouse and dense), a rank
    killed and the run resumed; every rank's peak host memory is in the metrics."""
    cp_sizes = ["data.seq_len=1024", "lighthouse.topk=512", "training.batch_size=2", "training.eval_every=0"]
    config = write_config(tmp_path, "cp", *cp_sizes, "parallel.cp=2")
    plain_builder = Transformer.attention_builder
    monkeypatch.setattr(Transformer, "attention_builder", lambda self, kind, layer: (
        ChunkedReference(self.lighthouse, 2) if kind == "lighthouse" else plain_builder(self, kind, layer)))
    train(load_config(write_config(tmp_path, "reference", *cp_sizes)), echo=quiet)
    monkeypatch.undo()

    out = launch(2, config)
    assert "2 processes (dp=1, cp=2)" in out
    want, got = losses(tmp_path / "runs" / "reference"), losses(tmp_path / "runs" / "cp")
    assert sorted(got) == sorted(want) == list(range(1, sum(STEPS) + 1))
    assert_close(got, want, want)
    ends = [[r["val_bpb"], r["val_bpb_dense"]] for name in ("reference", "cp")
            for r in read_metrics(tmp_path / "runs" / name) if r["kind"] == "stage_end"]
    assert ends[2:] == [pytest.approx(e, rel=RTOL) for e in ends[:2]]
    for r in train_records(tmp_path / "runs" / "cp"):
        assert len(r["host_peak_gib"]) == 2 and all(0.05 < gib < 64 for gib in r["host_peak_gib"])

    killed = tmp_path / "runs" / "cp-killed"
    kill_rank_1_after_a_checkpoint(config, "cp-killed", killed)
    out = launch(2, config, "--set", 'name="cp-killed"', "--resume")
    assert "resumed from" in out
    assert losses(killed) == got  # same ranks, same sums: bitwise
    ends_killed = [[r["val_bpb"], r["val_bpb_dense"]] for r in read_metrics(killed) if r["kind"] == "stage_end"]
    assert ends_killed == ends[2:]


def test_killed_save_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    """A sharded save interrupted after the shards (before the rename) is invisible; the next save cleans up."""
    from torch.distributed.device_mesh import init_device_mesh

    from lighthouse.distributed.mesh import ParallelState
    from lighthouse.trainer.parallel import build_sharded_model

    cfg = load_config(tiny_config(tmp_path))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        par = ParallelState(torch.device("cpu"), mesh=init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp", "cp")))
        model = build_sharded_model(cfg, par, None)
        optimizer = build_optimizer(cfg, model, par.device)
        checkpointer = Checkpointer(tmp_path, keep=2, parallel=par)
        good = checkpointer.save(1, model, optimizer, {"step": 1})

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed while writing")

        monkeypatch.setattr("lighthouse.trainer.checkpoint.sharded.save_file", killed)  # after the shards
        with pytest.raises(KeyboardInterrupt):
            checkpointer.save(2, model, optimizer, {"step": 2})
        monkeypatch.undo()
        root = tmp_path / "checkpoints"
        assert (root / ".tmp-step-00000002-dcp" / "dcp" / ".metadata").is_file()  # the shards were written
        assert latest_good_checkpoint(tmp_path) == good and latest_checkpoint(tmp_path) == good
        checkpointer.save(3, model, optimizer, {"step": 3})
        assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001", "step-00000003"]
    finally:
        dist.destroy_process_group()


def test_parallel_config_errors_name_the_key(tmp_path):
    cfg = load_config(tiny_config(tmp_path), ["training.batch_size=4"])
    assert resolve_parallel(cfg, 4) == (4, 1)
    with pytest.raises(ConfigError, match=r"'parallel.dp' \* 'parallel.cp' = 3 \* 1 must equal .*WORLD_SIZE = 4"):
        resolve_parallel(load_config(tiny_config(tmp_path), ["parallel.dp=3"]), 4)
    with pytest.raises(ConfigError, match=r"'parallel.cp' = 2 does not divide .*WORLD_SIZE = 1"):
        resolve_parallel(load_config(tiny_config(tmp_path), ["parallel.cp=2", "data.seq_len=1024",
                                                             "lighthouse.topk=512"]), 1)
    with pytest.raises(ConfigError, match=r"'training.batch_size' \(2\) must be a multiple of parallel.dp \(4\)"):
        resolve_parallel(load_config(tiny_config(tmp_path)), 4)
    with pytest.raises(ConfigError, match=r"'parallel.cp' = 2 with data.seq_len = 256: topk=128 must be a multiple"):
        load_config(tiny_config(tmp_path), ["parallel.cp=2"])
    with pytest.raises(ConfigError, match=r"'parallel.cp' = 2 .* the 'norm' scorer"):
        load_config(tiny_config(tmp_path), ["parallel.cp=2", "data.seq_len=1024", "lighthouse.topk=512",
                                            'lighthouse.scorer="dilated"'])
    assert "[parallel]\ndp = 0\ncp = 1" in to_toml(cfg)


def test_context_parallel_bench_pairs_lighthouse_and_dense(tmp_path):
    """`python -m lighthouse.bench cp` under torchrun: one launch per attention kind, rows collected and paired."""
    from lighthouse.bench.cp import format_table

    out = tmp_path / "cp.json"
    for kind in ("lighthouse", "dense"):
        with launched_module(2, "lighthouse.bench", "cp", "--config", str(REPO / "configs" / "demo.toml"),
                             "--set", "lighthouse.topk=512", "--set", "lighthouse.pooling=2", "--seq-len", "4K",
                             "--attention", kind,
                             "--steps", "2", "--warmup", "1", "--out", str(out)) as (proc, _):
            text, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        assert proc.returncode == 0, text
    rows = json.loads(out.read_text())["rows"]
    assert [r["attention"] for r in rows] == ["lighthouse", "dense"]
    for r in rows:
        assert (r["N"], r["cp"], r["steps"]) == (4096, 2, 2)
        assert 0 < r["min_s"] <= r["step_s"] <= r["max_s"] and math.isfinite(r["loss"])
    assert f"{rows[0]['step_s']:.2f} | " in format_table(rows) and "x |" in format_table(rows)
