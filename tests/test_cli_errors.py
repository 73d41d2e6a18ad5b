"""Every command driven with bad values: exit status 2, exactly one line on stderr (`error: ...`), no
traceback, and no file that was there before deleted or changed. Then the cases that must work
rather than fail (a prompt that is not UTF-8) and the messages that must say why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lighthouse.cli import main
from lighthouse.sample import sample_text
from lighthouse.trainer.build import load_trained
from lighthouse.trainer.config import load_config
from lighthouse.trainer.loop import train
from test_checkpoint import flip_bytes
from test_run_folders import assert_kept, quiet, snapshot
from test_trainer import _env, tiny_config

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One folder with everything the bad invocations aim at (`{name}` in a case's arguments)."""
    tmp = tmp_path_factory.mktemp("cli")
    config = tiny_config(tmp, steps=(2, 1), ckpt_every=0)
    cfg = load_config(config)
    train(cfg, echo=quiet)
    damaged = cfg.run_dir.parent / "damaged"  # a run whose every checkpoint is damaged
    shutil.copytree(cfg.run_dir, damaged)
    for ckpt in damaged.glob("checkpoints/step-*"):
        flip_bytes(ckpt / "state.pt", 64)
    sandbox = tmp / "runs" / "sandbox"  # a folder that is not a run
    sandbox.mkdir()
    (sandbox / "precious.txt").write_text("precious\n")
    (tmp / "runs" / "tiny-baseline").mkdir()  # the baseline's folder, not a run either
    (tmp / "runs" / "tiny-baseline" / "notes.txt").write_text("mine\n")
    (tmp / "file.txt").write_text("not = [toml\n")
    garbage = tmp / "garbage"  # metrics of another program
    garbage.mkdir()
    (garbage / "metrics.jsonl").write_text('{"kind": "train"}\n[1, 2]\nnot json\n')
    hf = tmp / "hf"
    assert main(["export", str(cfg.run_dir), str(hf)]) == 0
    names = {"config": config, "run": cfg.run_dir, "damaged": damaged, "sandbox": sandbox, "tmp": tmp,
             "file": tmp / "file.txt", "garbage": garbage, "hf": hf, "corpus": tmp / "corpus"}
    return tmp, {k: str(v) for k, v in names.items()}


def case(name: str, command: str, needs_no_cuda: bool = False):
    """One invocation: `{name}` parts are filled from the world (and `{ro}`: a folder that cannot be written)."""
    marks = [pytest.mark.skipif(not NO_CUDA, reason="CUDA is there")] if needs_no_cuda else []
    return pytest.param(name, command, id=name, marks=marks)


TRAIN = "train --config {config} --no-progress"
CASES = [
    # train: the config, the run folder, the flags, the device
    case("train-missing-config", "train --config {tmp}/missing.toml"),
    case("train-not-toml", "train --config {file}"),
    case("train-unknown-key", f"{TRAIN} --set nosuch.key=1"),
    case("train-set-without-value", f"{TRAIN} --set training.batch_size"),
    case("train-batch-zero", f"{TRAIN} --set training.batch_size=0"),
    case("train-paths-not-a-list", f"{TRAIN} --set name=p --set data.paths=/x"),
    case("train-paths-missing", f"{TRAIN} --set name=p2 --set data.paths=[\"{{tmp}}/nothing\"]"),
    case("train-folder-documents-of-files",
     f"{TRAIN} --set name=docs --set data.paths=[\"{{corpus}}/doc000.txt\"] --set data.document=folder"),
    case("train-seq-len-too-short", f"{TRAIN} --set data.seq_len=100"),
    case("train-streams-negative", f"{TRAIN} --set name=st --set data.streams=-1"),
    case("train-streams-more-than-documents", f"{TRAIN} --set name=st2 --set data.streams=100000"),
    case("train-stage-kind", f"{TRAIN} --set stages.0.attention=sparse"),
    case("train-existing-run", TRAIN),
    case("train-overwrite-not-a-run", f"{TRAIN} --set name=sandbox --overwrite"),
    case("train-into-not-a-run", f"{TRAIN} --set name=sandbox"),
    case("train-resume-not-a-run", f"{TRAIN} --set name=sandbox --resume"),
    case("train-overwrite-baseline-not-a-run", f"{TRAIN} --overwrite --baseline"),
    case("train-resume-and-overwrite", f"{TRAIN} --resume --overwrite"),
    case("train-resume-nothing-verifies", f"{TRAIN} --set name=damaged --resume"),
    case("train-resume-another-model", f"{TRAIN} --resume --set model.dim=64"),
    case("train-out-dir-unwritable", f"{TRAIN} --set out_dir={{ro}}"),
    case("train-out-dir-a-file", f"{TRAIN} --set out_dir={{file}}"),
    case("train-device-bogus", f"{TRAIN} --device tpu"),
    case("train-device-cuda", f"{TRAIN} --set name=c --device cuda", needs_no_cuda=True),
    case("train-plot-format", f"{TRAIN} --set name=pf --plot {{tmp}}/p.xyz"),
    case("train-plot-folder", f"{TRAIN} --set name=pd --plot {{tmp}}"),
    # eval
    case("eval-windows-0", "eval --checkpoint {run} --windows 0"),
    case("eval-windows-negative", "eval --checkpoint {run} --windows -1"),
    case("eval-windows-not-a-number", "eval --checkpoint {run} --windows x"),
    case("eval-passkey-too-short", "eval --checkpoint {run} --task passkey --lengths 100"),
    case("eval-lengths-0", "eval --checkpoint {run} --task passkey --lengths 0"),
    case("eval-lengths-bad", "eval --checkpoint {run} --task passkey --lengths 1Q"),
    case("eval-depths-out", "eval --checkpoint {run} --task passkey --depths 1.5"),
    case("eval-depths-bad", "eval --checkpoint {run} --task passkey --depths x"),
    case("eval-trials-0", "eval --checkpoint {run} --task passkey --trials 0"),
    case("eval-positions-0", "eval --checkpoint {run} --task leak --positions 0"),
    case("eval-task-bad", "eval --checkpoint {run} --task nope"),
    case("eval-task-twice", "eval --checkpoint {run} --task position,position"),
    case("eval-task-bpb-with-others", "eval --checkpoint {run} --task bpb,position"),
    case("eval-attention-bad", "eval --checkpoint {run} --attention sparse"),
    case("eval-out-unwritable", "eval --checkpoint {run} --task position --out {ro}/evals"),
    case("eval-out-a-file", "eval --checkpoint {run} --task position --out {file}"),
    case("eval-out-with-bpb", "eval --checkpoint {run} --out {tmp}/evals"),
    case("eval-no-checkpoint", "eval --checkpoint {tmp}/nothing"),
    case("eval-every-checkpoint-damaged", "eval --checkpoint {damaged}"),
    case("eval-another-model", "eval --checkpoint {run} --set model.dim=64"),
    case("eval-paths-not-a-list", "eval --checkpoint {run} --set data.paths=/x"),
    case("eval-device-bogus", "eval --checkpoint {run} --device nope"),
    case("eval-device-cuda", "eval --checkpoint {run} --device cuda", needs_no_cuda=True),
    case("eval-checkpoint-missing-argument", "eval"),
    # plot
    case("plot-no-run", "plot {tmp}/nothing -o {tmp}/p.png"),
    case("plot-not-our-metrics", "plot {garbage} -o {tmp}/g.png"),
    case("plot-format", "plot {run} -o {tmp}/p.xyz"),
    case("plot-unwritable", "plot {run} -o {ro}/p.png"),
    case("plot-to-a-folder", "plot {run} -o {tmp}"),
    case("plot-no-runs", "plot"),
    # export
    case("export-unwritable", "export {run} {ro}/hf"),
    case("export-onto-a-file", "export {run} {file}"),
    case("export-into-not-an-export", "export {run} {sandbox}"),
    case("export-into-not-an-export-overwrite", "export {run} {sandbox} --overwrite"),
    case("export-existing-without-overwrite", "export {run} {hf}"),
    case("export-no-run", "export {tmp}/nothing {tmp}/hf2"),
    case("export-every-checkpoint-damaged", "export {damaged} {tmp}/hf3"),
    case("export-dtype", "export {run} {tmp}/hf4 --dtype int8"),
    # sample
    case("sample-tokens-huge", "sample --checkpoint {run} --max-new-tokens 1000000000"),
    case("sample-tokens-negative", "sample --checkpoint {run} --max-new-tokens -5"),
    case("sample-tokens-0", "sample --checkpoint {run} --max-new-tokens 0"),
    case("sample-tokens-not-a-number", "sample --checkpoint {run} --max-new-tokens x"),
    case("sample-temperature-nan", "sample --checkpoint {run} --temperature nan"),
    case("sample-temperature-negative", "sample --checkpoint {run} --temperature -1"),
    case("sample-temperature-inf", "sample --checkpoint {run} --temperature inf"),
    case("sample-top-k-negative", "sample --checkpoint {run} --top-k -3"),
    case("sample-seed-negative", "sample --checkpoint {run} --seed -1"),
    case("sample-seed-huge", f"sample --checkpoint {{run}} --seed {2**64}"),
    case("sample-device-bogus", "sample --checkpoint {run} --device nope"),
    case("sample-device-cuda", "sample --checkpoint {run} --device cuda", needs_no_cuda=True),
    case("sample-no-checkpoint", "sample --checkpoint {tmp}/nothing"),
    case("sample-every-checkpoint-damaged", "sample --checkpoint {damaged}"),
    case("sample-prompt-not-bytes", "sample --checkpoint {run} --prompt \ud800"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main(argv) in this process: its exit status and its stderr; an exception escaping main (what a user
    would see as a traceback) fails the test."""
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name,command", CASES)
def test_bad_values_are_one_line_errors(world, unwritable_dir, capsys, name, command):
    tmp, names = world
    argv = [part.format(ro=unwritable_dir, **names) for part in command.split(" ")]
    before = snapshot(tmp)
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (name, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
    assert_kept(before, tmp)  # nothing that was there is gone or changed


def test_the_cases_cover_every_command():
    commands = {c.values[1].split()[0] for c in CASES}
    assert commands == {"train", "eval", "plot", "export", "sample"}


# ---- what must work instead of failing, and what the messages must say ------------------------------------
def test_a_prompt_that_is_not_utf8_is_fed_as_its_bytes(world, capsys):
    tmp, names = world
    model = load_trained(names["run"], "cpu").model
    model.set_attention("dense")
    want = sample_text(model, b"ab\xff", max_new_tokens=4, temperature=0)
    prompt = os.fsdecode(b"ab\xff")  # how Python hands over a command-line argument that is not UTF-8
    assert main(["sample", "--checkpoint", names["run"], "--prompt", prompt, "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "ab\ufffd" + want + "\n"


def test_messages_say_why(world, capsys):
    tmp, names = world
    assert main(["eval", "--checkpoint", names["run"], "--task", "passkey", "--lengths", "100"]) == 2
    assert "100 is shorter than 245 bytes, the passkey prompt's fixed text (instructions, the key sentence and " \
           "the question) with no filler" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", names["run"], "--task", "passkey", "--lengths", "250",
                 "--attention", "lighthouse"]) == 2
    assert "shorter than 256 bytes, the Lighthouse minimum topk * pooling**(levels-1) = 128 * 2**1; or pass " \
           "--attention dense" in capsys.readouterr().err
    assert main(["train", "--config", names["config"], "--set", "data.paths=/x"]) == 2
    assert "write a TOML list: paths = [\"/x\"] in a file, --set 'data.paths=[\"/x\"]' on the command line" \
        in capsys.readouterr().err
    code, err = run_cli(["eval", "--checkpoint", names["run"], "--windows", "0"], capsys)
    assert code == 2 and "argument --windows: must be >= 1, got 0" in err
    assert main(["sample", "--checkpoint", names["run"], "--max-new-tokens", "1000000000"]) == 2
    assert "the KV cache would take" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", names["run"], "--temperature", "-1"]) == 2
    assert "--temperature must be a finite number >= 0 (0: greedy), got -1.0" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_sampling_quietly(world):
    """`lighthouse sample ... | head -c 1`: the closed pipe ends the command with SIGPIPE's status, no error line."""
    _, names = world
    cmd = [sys.executable, "-m", "lighthouse", "sample", "--checkpoint", names["run"], "--max-new-tokens", "400",
           "--prompt", "def "]
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(cmd, env=_env(), stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    os.close(read_end)  # the reader is gone before the first byte
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGPIPE, stderr
    assert "error" not in stderr.lower() and "Traceback" not in stderr, stderr


def test_a_failed_eval_leaves_no_folder_it_made(world, capsys):
    """`eval --out` makes its folder before the work (so an unwritable one fails first); when the work
    then fails, the folders it made go again, and a folder that was already there stays."""
    tmp, names = world
    new = Path(names["tmp"]) / "new" / "evals"
    code, err = run_cli(["eval", "--checkpoint", names["damaged"], "--task", "position", "--out", str(new)], capsys)
    assert code == 2 and err.startswith("error: ") and not new.parent.exists()
    kept = Path(names["tmp"]) / "kept"
    kept.mkdir()
    code, err = run_cli(["eval", "--checkpoint", names["tmp"] + "/nothing", "--task", "leak", "--out", str(kept)], capsys)
    assert code == 2 and kept.is_dir()
    kept.rmdir()
