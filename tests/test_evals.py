"""Long-context evaluations: bpb by position, passkey retrieval, and `lighthouse eval --task`."""

import json
import math
import re

import pytest
import torch

from lighthouse.cli import main
from lighthouse.evals.bpb import evaluate
from lighthouse.evals.passkey import (
    QUESTION,
    min_prompt_length,
    passkey_eval,
    passkey_prompt,
    passkey_prompts,
    plot_passkey_heatmap,
)
from lighthouse.evals.position import bucket_edges, format_position, plot_position_bpb, pooled_bpb, position_bpb
from lighthouse.model import ModelArgs, Transformer
from lighthouse.tokenizer import EOD_ID

VOCAB = ModelArgs().vocab_size
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64))
    model.set_attention("dense")
    return model


def oracle(idx_BN):
    """Puts all mass on the right next byte of a passkey prompt: the key's next digit."""
    logits_BNV = torch.zeros(*idx_BN.shape, VOCAB)
    for b, row in enumerate(idx_BN.tolist()):
        text = bytes(row).decode("ascii")
        key = re.search(r"The pass key is (\d+)\. Remember it", text).group(1)
        answered = text[text.rindex(QUESTION) + len(QUESTION) :]
        logits_BNV[b, -1, ord(key[len(answered)])] = 100.0
    return logits_BNV


def uniform(idx_BN):
    return torch.zeros(*idx_BN.shape, VOCAB)


# ---- bits per byte by position ---------------------------------------------------------------------
def test_bucket_edges_and_labels():
    assert bucket_edges(300_000) == [0, 1024, 4096, 16384, 65536, 262144, 300_000]
    assert bucket_edges(1024) == [0, 1024] and bucket_edges(500) == [0, 500]
    assert bucket_edges(256, first=16) == [0, 16, 64, 256]
    assert [format_position(p) for p in (0, 1024, 65536, 1 << 20, 1000)] == ["0", "1K", "64K", "1M", "1000"]


def test_position_buckets_pool_to_the_total_bpb():
    model = tiny_model()
    gen = torch.Generator().manual_seed(1)
    windows_WN1 = torch.randint(0, 256, (5, 257), generator=gen)
    windows_WN1[:, 100] = EOD_ID  # end-of-document targets are left out, as in evaluate()
    buckets = position_bpb(model, windows_WN1, "cpu", micro_batch=2, edges=bucket_edges(256, first=16))
    want = [("0-16", 0, 16), ("16-64", 16, 64), ("64-256", 64, 256)]
    assert [(b["bucket"], b["start"], b["end"]) for b in buckets] == want
    assert [b["n_bytes"] for b in buckets] == [5 * 16, 5 * 48, 5 * 192 - 5]
    reference = evaluate(model, windows_WN1, 3, "cpu")["val_bpb"]
    assert pooled_bpb(buckets) == pytest.approx(reference, rel=1e-9)
    assert all(math.isfinite(b["bpb"]) and 7 < b["bpb"] < 9 for b in buckets)  # untrained: ~log2(264)
    default = position_bpb(model, windows_WN1, "cpu", micro_batch=5)
    assert [b["bucket"] for b in default] == ["0-256"] and default[0]["bpb"] == pytest.approx(reference, rel=1e-9)
    with pytest.raises(ValueError, match="edges"):
        position_bpb(model, windows_WN1, "cpu", edges=[0, 64])


def test_position_bpb_sees_context_use():
    """A model that copies the previous window half scores 0 bpb where the copy is known."""
    half = 32
    windows_WN1 = torch.randint(0, 256, (2, 2 * half + 1), generator=torch.Generator().manual_seed(2))
    windows_WN1[:, half + 1 :] = windows_WN1[:, 1 : half + 1]  # second half repeats the first

    def copier(idx_BN):
        logits_BNV = torch.zeros(*idx_BN.shape, VOCAB)
        n = idx_BN.shape[1]
        for p in range(half, n):  # target p is byte p + 1 of the window, a copy of input p + 1 - half
            logits_BNV[torch.arange(len(idx_BN)), p, idx_BN[:, p + 1 - half]] = 50.0
        return logits_BNV

    first, second = position_bpb(copier, windows_WN1, "cpu", micro_batch=2, edges=[0, half, 2 * half])
    assert first["bpb"] == pytest.approx(math.log2(VOCAB)) and second["bpb"] < 1e-6


def test_position_plot(tmp_path):
    buckets = [{"bucket": "0-1K", "start": 0, "end": 1024, "bpb": 2.0, "n_bytes": 10},
               {"bucket": "1K-4K", "start": 1024, "end": 4096, "bpb": 1.5, "n_bytes": 30}]
    out = plot_position_bpb(buckets, tmp_path / "sub" / "position.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and pooled_bpb(buckets) == pytest.approx(1.625)


# ---- passkey ---------------------------------------------------------------------------------------
def test_passkey_prompts_are_exact_and_deterministic():
    prompts, keys = passkey_prompts(600, 0.5, trials=4, seed=3)
    again, keys_again = passkey_prompts(600, 0.5, trials=4, seed=3)
    assert prompts == again and keys == keys_again
    assert passkey_prompts(600, 0.5, trials=4, seed=4)[1] != keys
    assert len(set(keys)) > 1 and all(len(k) == 5 and k.isdigit() and k[0] != "0" for k in keys)
    # the keys of a cell do not depend on which other cells run
    assert passkey_prompts(600, 0.5, trials=2, seed=3)[1] == keys[:2]
    for prompt, key in zip(prompts, keys):
        text = prompt.decode("ascii")
        assert len(prompt) == 600 and text.endswith(QUESTION) and text.count(key) == 2
    # deeper keys sit later in the prompt
    places = [passkey_prompt(2000, d, "12345").index(b"The pass key is 12345") for d in (0, 0.25, 0.5, 0.75, 1)]
    assert places == sorted(places) and places[0] < 200 and places[-1] > 1800
    with pytest.raises(ValueError, match="at least"):
        passkey_prompt(min_prompt_length() - 1, 0.5, "12345")
    assert len(passkey_prompt(min_prompt_length(), 1.0, "12345")) == min_prompt_length()


def test_passkey_oracle_scores_all_and_uniform_none():
    lengths, depths = [300, 520], [0.0, 0.5, 1.0]
    right = passkey_eval(oracle, lengths, depths, trials=3, seed=0)
    assert [(r["length"], r["depth"]) for r in right] == [(n, d) for n in lengths for d in depths]
    assert all(r["accuracy"] == 1.0 and r["digit_accuracy"] == 1.0 and r["answers"] == r["keys"] for r in right)
    wrong = passkey_eval(uniform, lengths, depths, trials=3, seed=0)
    assert all(r["accuracy"] == 0.0 and r["digit_accuracy"] == 0.0 for r in wrong)
    assert [r["keys"] for r in wrong] == [r["keys"] for r in right]  # same seed, same prompts


def test_passkey_on_a_real_model_is_deterministic(tmp_path):
    model = tiny_model()
    a = passkey_eval(model, [300], [0.0, 1.0], trials=2, seed=1, micro_batch=1)  # batching changes nothing
    b = passkey_eval(model, [300], [0.0, 1.0], trials=2, seed=1)
    assert a == b and all(len(answer) == 5 for r in a for answer in r["answers"])
    out = plot_passkey_heatmap(a + passkey_eval(oracle, [400], [0.0, 1.0], trials=2, seed=1), tmp_path / "hm.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


# ---- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lighthouse.trainer.config import config_from_dict
    from lighthouse.trainer.loop import train

    root = tmp_path_factory.mktemp("evals")
    corpus = root / "corpus"
    corpus.mkdir()
    words = "the of and a to in is you that it he was for on are as with his they at be this from".split()
    for i in range(30):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(words[(i * j) % len(words)] for j in range(200)) + "\n")
    cfg = config_from_dict({
        "name": "tiny", "out_dir": str(root / "runs"),
        "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "dense_layers": [0]},
        "lighthouse": {"levels": 2, "pooling": 2, "topk": 128},
        "data": {"source": "files", "paths": [str(corpus)], "seq_len": 256, "val_fraction": 0.2, "val_windows": 3},
        "training": {"batch_size": 2, "progress": False, "threads": 1, "eval_every": 0, "checkpoint_every": 0},
        "stages": [{"attention": "lighthouse", "steps": 2}, {"attention": "dense", "steps": 1}],
    })
    return train(cfg, echo=lambda *a: None).run_dir


def test_cli_eval_position(tiny_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tiny_run)]) == 0  # the default task: bpb, as before
    bpb = float(capsys.readouterr().out.split("val bpb ")[1].split(",")[0])
    assert main(["eval", "--checkpoint", str(tiny_run), "--task", "position", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "val bpb by position" in out and "0-256" in out
    saved = json.loads((tmp_path / "position.json").read_text())
    assert [b["bucket"] for b in saved["buckets"]] == ["0-256"] and saved["windows"] == 3
    assert saved["val_bpb"] == pytest.approx(bpb, abs=1e-4)
    assert (tmp_path / "position.png").read_bytes()[:8] == PNG_MAGIC
    # several tasks on one loaded model: the same files as one task at a time
    both = tmp_path / "both"
    assert main(["eval", "--checkpoint", str(tiny_run), "--task", "position,passkey", "--lengths", "256",
                 "--depths", "0", "--trials", "1", "--out", str(both)]) == 0
    out = capsys.readouterr().out
    assert out.index("val bpb by position") < out.index("passkey retrieval accuracy")
    assert json.loads((both / "position.json").read_text())["buckets"] == saved["buckets"]
    assert json.loads((both / "passkey.json").read_text())["results"][0]["trials"] == 1


def test_cli_eval_passkey(tiny_run, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(tiny_run), "--task", "passkey", "--lengths", "256,320", "--depths", "0,1",
            "--trials", "2", "--seed", "3", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "passkey retrieval accuracy" in capsys.readouterr().out
    saved = json.loads((tmp_path / "passkey.json").read_text())
    cells = saved["results"]
    assert [(c["length"], c["depth"]) for c in cells] == [(256, 0.0), (256, 1.0), (320, 0.0), (320, 1.0)]
    assert all(c["trials"] == 2 and 0.0 <= c["accuracy"] <= 1.0 for c in cells)
    assert cells[0]["keys"] == passkey_prompts(256, 0.0, 2, seed=3)[1]
    assert (tmp_path / "passkey.png").read_bytes()[:8] == PNG_MAGIC
    # Lighthouse layers need at least topk * pooling**(levels-1) = 256 tokens
    assert main(args[:5] + ["--attention", "lighthouse", "--lengths", "250", "--trials", "1"]) == 2
    assert "Lighthouse minimum" in capsys.readouterr().err
    assert main(args[:5] + ["--attention", "lighthouse", "--lengths", "256", "--depths", "0.5", "--trials", "1"]) == 0
    assert main(args[:5] + ["--depths", "2"]) == 2


# ---- the leak meter --------------------------------------------------------------------------------
def test_leak_meter_reads_exactly_zero_for_dense_and_causal_selection():
    from lighthouse import LighthouseConfig
    from lighthouse.evals.leak import leak_meter, leak_spans

    windows = torch.randint(0, 256, (3, 1025))
    for selection, kind in (("topk", "dense"), ("causal", "lighthouse"), ("topk", "lighthouse")):
        lh = LighthouseConfig(levels=3, pooling=2, topk=128, selection=selection)
        torch.manual_seed(0)
        model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, dense_layers=[]), lh)
        model.set_attention(kind)
        result = leak_meter(model, windows, leak_spans(lh, 1024), "cpu", micro_batch=3, positions=6)
        assert [r["span"] for r in result["spans"]] == [1, 2, 4, 1024 // 1 - 1]  # the tile (1024) clipped to N - 1
        assert all(r["positions"] == 3 * 6 for r in result["spans"])
        reads = max(r["mean_abs_nats"] for r in result["spans"])
        if kind == "dense" or selection == "causal":
            assert reads == 0.0, f"{kind}/{selection} read its future: {result}"
        else:  # top-k selection: the bytes after t move the loss at t, even at initialization
            assert reads > 0.0


def test_leak_meter_sees_a_model_that_reads_the_answer():
    from lighthouse.evals.leak import leak_meter

    def cheat(idx_BN):  # predicts the byte at t + 1 by looking at it
        logits_BNV = torch.zeros(*idx_BN.shape, VOCAB)
        logits_BNV[:, :-1].scatter_(-1, idx_BN[:, 1:, None], 20.0)
        return logits_BNV

    windows = torch.randint(0, 256, (2, 65))
    result = leak_meter(cheat, windows, [1, 4], "cpu", micro_batch=2, positions=8)
    for r in result["spans"]:
        assert r["mean_nats"] > 10.0 and r["stderr"] < r["mean_nats"]


def test_cli_eval_leak(tiny_run, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(tiny_run), "--task", "leak", "--positions", "4", "--out", str(tmp_path)]
    assert main(args + ["--attention", "dense"]) == 0
    assert "leak meter" in capsys.readouterr().out
    saved = json.loads((tmp_path / "leak.json").read_text())
    assert saved["attention"] == "dense" and [r["span"] for r in saved["spans"]] == [1, 2, 255]  # a tile, clipped
    for r in saved["spans"]:
        assert set(r) >= {"span", "mean_nats", "stderr", "positions"} and r["mean_nats"] == 0.0 and r["positions"] == 12
    assert (tmp_path / "leak.png").read_bytes()[:8] == PNG_MAGIC
    assert main(args + ["--attention", "lighthouse", "--set", "lighthouse.selection=causal"]) == 0
    saved = json.loads((tmp_path / "leak.json").read_text())
    assert saved["selection"] == "causal" and all(r["mean_abs_nats"] == 0.0 for r in saved["spans"])
    assert main(args[:5] + ["--positions", "0"]) == 2


def test_trainer_records_dense_evals_and_the_leak_meter(tiny_run):
    from lighthouse.trainer.metrics import read_metrics

    records = read_metrics(tiny_run)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["attention"] for r in evals] == ["lighthouse", "dense"]
    assert all("val_bpb_dense" in r for r in evals) and evals[1]["val_bpb_dense"] == evals[1]["val_bpb"]
    leaks = [r for r in records if r["kind"] == "leak"]
    assert [r["step"] for r in leaks] == [2]  # the Lighthouse stage's end
    assert [s["span"] for s in leaks[0]["spans"]] == [1, 2, 255] and leaks[0]["spans"][0]["positions"] == 8
