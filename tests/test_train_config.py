"""Run configs: presets load, overrides apply, errors name the key."""

import dataclasses
from pathlib import Path

import pytest

from lighthouse.trainer.config import (
    Config,
    ConfigError,
    baseline_config,
    from_dict,
    load_config,
    parse_value,
    to_dict,
    to_toml,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_preset_is_the_default():
    assert load_config(CONFIGS / "demo.toml") == Config()
    cfg = Config()
    assert [s.attention for s in cfg.stages] == ["lighthouse", "dense"]
    lh = cfg.lighthouse
    assert cfg.data.seq_len >= lh.min_seq_len and lh.sub_seq_len(cfg.data.seq_len) < cfg.data.seq_len


def test_cpu_testbed_is_the_demo_model_at_its_former_144_steps():
    """docs/results.md's CPU experiments name configs/cpu-testbed.toml: the demo's model with layer 0
    dense (as the demo had it then), its data and optimizer, with the 90 + 54 steps and evaluations
    every 24 steps they were measured with."""
    testbed, demo = load_config(CONFIGS / "cpu-testbed.toml"), Config()
    assert testbed.model.dense_layers == [0] and demo.model.dense_layers == []
    assert dataclasses.replace(testbed.model, dense_layers=[]) == demo.model
    assert (testbed.lighthouse, testbed.data, testbed.optim) == (demo.lighthouse, demo.data, demo.optim)
    assert [(s.attention, s.steps) for s in testbed.stages] == [("lighthouse", 90), ("dense", 54)]
    assert testbed.training.eval_every == 24 and testbed.name == "cpu-testbed"
    assert dataclasses.replace(testbed.training, eval_every=demo.training.eval_every) == demo.training


def test_paper_preset():
    cfg = load_config(CONFIGS / "paper-530m.toml")
    m, lh, o = cfg.model, cfg.lighthouse, cfg.optim
    assert (m.dim, m.n_layers, m.ffn_hidden, m.n_heads, m.n_kv_heads, m.rope_theta) == (1024, 30, 1536, 8, 8, 10000.0)
    assert m.dense_layer_set() == {0, 1, 28, 29}
    assert (cfg.data.seq_len, cfg.training.batch_size) == (98304, 32)
    assert (o.lr, o.betas, o.weight_decay, o.eps, o.warmup_steps, o.grad_clip) == (2e-3, [0.9, 0.95], 0.1, 1e-8, 2000, 1.0)
    assert (lh.levels, lh.pooling, lh.topk, lh.scorer) == (3, 4, 1536, "norm")
    assert [(s.attention, s.steps) for s in cfg.stages] == [("lighthouse", 10000), ("dense", 6000)]
    assert cfg.total_steps == 16000


def test_ablation_grid():
    seen = {"topk": set(), "pooling": set(), "levels": set(), "scorer": set()}
    files = sorted((CONFIGS / "ablations").glob("*.toml"))
    assert len(files) == 14
    for path in files:
        cfg = load_config(path)
        assert cfg.name == f"ablation-{path.stem}"
        assert cfg.data.seq_len == 98304 and cfg.total_steps == 16000
        for key in seen:
            seen[key].add(getattr(cfg.lighthouse, key))
    assert seen["topk"] >= {1536, 2048, 3072, 4096, 6144}
    assert seen["pooling"] == {2, 4, 8} and seen["levels"] == {3, 4, 5}
    assert seen["scorer"] == {"norm", "dilated", "gla"}


def test_overrides():
    cfg = load_config(
        CONFIGS / "demo.toml",
        ["training.batch_size=16", "stages.1.steps=7", "model.dense_layers=[0,1]", "optim.lr=1e-4",
         "data.source=files", 'data.paths=["a.txt"]', "name=other", "training.compile=true"],
    )
    assert cfg.training.batch_size == 16 and cfg.stages[1].steps == 7 and cfg.model.dense_layers == [0, 1]
    assert cfg.optim.lr == 1e-4 and cfg.data.paths == ["a.txt"] and cfg.name == "other" and cfg.training.compile
    assert isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)  # ints are fine for floats
    assert parse_value("stdlib") == "stdlib" and parse_value("[1, 2]") == [1, 2] and parse_value("true") is True


def test_extends(tmp_path):
    write(tmp_path, 'name = "base"\n[model]\ndim = 64\n', "base.toml")
    cfg = load_config(write(tmp_path, 'extends = "base.toml"\n[model]\nn_layers = 2\n'))
    assert (cfg.name, cfg.model.dim, cfg.model.n_layers) == ("base", 64, 2)
    write(tmp_path, 'extends = "loop.toml"\n', "loop.toml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.toml")


def test_toml_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "paper-530m.toml")
    assert load_config(write(tmp_path, to_toml(cfg))) == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_baseline_config():
    cfg = load_config(CONFIGS / "demo.toml")
    base = baseline_config(cfg)
    assert base.name == "demo-baseline" and base.run_dir.name == "demo-baseline"
    assert [(s.attention, s.steps) for s in base.stages] == [("dense", cfg.total_steps)]
    assert base.tokens_per_step == cfg.tokens_per_step and base.model == cfg.model
    assert cfg.stages[0].attention == "lighthouse"  # the original is untouched


@pytest.mark.parametrize(
    "text, match",
    [
        ("[model]\ndimm = 64\n", r"unknown key 'model.dimm'.*did you mean 'dim'"),
        ("[modle]\ndim = 64\n", r"unknown key 'modle'.*did you mean 'model'"),
        ("[model]\ndim = \"big\"\n", r"'model.dim' must be an integer, got str"),
        ("[model]\ndim = 64.0\n", r"'model.dim' must be an integer"),
        ("[training]\ncompile = 1\n", r"'training.compile' must be true or false"),
        ("[model]\ndense_layers = 0\n", r"'model.dense_layers' must be a list of integers, got the single value 0; .* = \[0\]"),
        ("[[stages]]\nattention = \"sparse\"\nsteps = 5\n", r"'stages.0.attention' must be one of"),
        ("[[stages]]\nattention = \"dense\"\nsteps = 0\n", r"'stages.0.steps' must be >= 1"),
        ("[[stages]]\nattention = \"dense\"\nstep = 3\n", r"unknown key 'stages.0.step'"),
        ("stages = []\n", r"'stages' must list at least one stage"),
        ("[data]\nseq_len = 1024\n", r"'data.seq_len' = 1024 is shorter than the Lighthouse minimum .* = 2048"),
        ("[lighthouse]\ntopk = 100\n", r"'lighthouse.topk': topk must be a positive multiple of 128"),
        ("[lighthouse]\npooling = 3\n", r"'lighthouse.pooling': pooling must be a power of two"),
        ("[model]\nn_kv_heads = 3\n", r"model.n_heads \(4\) must be a multiple of model.n_kv_heads \(3\)"),
        ("[model]\nrope = \"late\"\n", r"model.rope must be one of"),
        ("[model]\ndense_layers = [9]\n", r"model.dense_layers: layer 9 is out of range"),
        ("[training]\nbatch_size = 8\nmicro_batch_size = 3\n", r"'training.micro_batch_size' \(3\) must divide"),
        ("[optim]\nschedule = \"step\"\n", r"'optim.schedule' must be one of"),
        ("[optim]\nbetas = [0.9]\n", r"'optim.betas' must be two numbers"),
        ("[data]\nsource = \"files\"\n", r"'data.paths' must list files"),
        ("[data]\nval_fraction = 1.5\n", r"'data.val_fraction' must be between 0 and 1"),
        ("[training]\ndevice = \"tpu\"\n", r"'training.device' must be"),
        ("name = \"a/b\"\n", r"'name' must be a plain directory name"),
        ("[model\n", r"not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_short_seq_len_is_fine_without_lighthouse(tmp_path):
    cfg = load_config(write(tmp_path, '[data]\nseq_len = 64\n[[stages]]\nattention = "dense"\nsteps = 3\n'))
    assert cfg.data.seq_len == 64
    # ... or when every layer is kept dense
    load_config(None, ["data.seq_len=64", "model.dense_layers=[0,1,2,3]"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.dimm=3", r"unknown key 'model.dimm'"),
        ("nosection.x=3", r"unknown key 'nosection'"),
        ("stages.5.steps=3", r"'stages.5': index 5 out of range"),
        ("training.batch_size", r"must look like section.key=value"),
        ("training.batch_size=many", r"'training.batch_size' must be an integer, got str 'many'"),
    ],
)
def test_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.toml")
