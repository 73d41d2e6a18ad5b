"""The robustness matrix: does Lighthouse + dense recovery hold on data it was not tuned on?

    python scripts/robustness.py --config configs/robustness-32k.toml --corpora python,code,text \\
        --seeds 0 --arms dense,topk,causal --parallel 3 --deadline 540 --results docs/results/robustness.json
    (run it again to continue: runs already in --results are skipped, unfinished ones resume from their checkpoint)

Corpora, found at run time in this interpreter's site-packages (nothing is downloaded):
  python   the `.py` files, one document per top-level package (the corpus the recipe was tuned on)
  code     C, C++ and CUDA sources and headers (.h .hpp .cuh .c .cc .cpp .cu), one document per file
  text     prose and markup: .md .rst .txt, licences, package METADATA (mostly READMEs)

Your own data: --corpus NAME=GLOB[;GLOB...] adds a corpus of files (one document per file), e.g.
    python scripts/robustness.py --corpora "" --corpus mine='/data/logs/**/*.txt' --arms dense,causal,causal-rec6
(--device cpu runs on the CPU; at the preset's 32K tokens that is slow: shrink it with --set).

With one sequence per step, a long document fills consecutive steps and moves every arm alike;
--set data.streams=16 takes the windows in turn from 16 streams of documents. The matrix on a CPU,
code on the CPU testbed preset (about 25 minutes on 2 cores):
    python scripts/robustness.py --config configs/cpu-testbed.toml --corpora code --seeds 0,1 --device cpu \
        --arms dense,causal,causal-rec6,topk,causal-k2 --parallel 2 --set data.streams=16 \
        --set training.threads=1 --out runs/robustness-cpu --results docs/results/robustness-cpu.json

Arms (the same model, data order, seed and token budget; only the attention differs):
  dense          dense from scratch
  topk           Lighthouse (the paper's top-k selection) for 10/16 of the steps, then dense
  causal         the same with causal selection (`lighthouse.selection = "causal"`)
  topk-k2 / causal-k2     as topk / causal with twice the budget K
  topk-rec6 / causal-rec6 Lighthouse for 6/16 of the steps only (a longer recovery)
  topk-only / causal-only Lighthouse for every step (its Lighthouse-evaluated bpb is a model score only when causal)
  topk-mix4 / causal-mix4 as topk / causal, with every 4th step of the Lighthouse stage dense (`dense_every`)
  topk-rw / causal-rw     as topk / causal, with the learning rate re-warmed up at the switch over the
                          config's warm-up steps (`stages.1.warmup_steps`)

Every finished run adds one object to --results (a JSON list; a run already there is not run again, on
any machine: to measure a configuration again, use --repeats):
corpus, seed, arm, repeat, settings, steps, tokens, train_s, final_bpb_dense (on --final-windows
validation windows, dense attention), the bpb at the switch with both attentions, the leak
meter at the switch, and the time at which the run first reached the paired dense run's final bpb.
A run at another length (another --config, or --set data.seq_len) is another configuration in the same
file, compared only with the dense run of its length; give it its own --out (folder names do not
carry the length, and a folder of another length is refused). Runs share one GPU when --parallel > 1,
so train_s includes contention: compare the bpb at equal tokens, and times only between runs made
with the same --parallel (the entry records it).

Learning rates: --lrs 1e-3,2e-3 runs every configuration at each; runs at another rate than the
config's are named `-lr<rate>` and are compared only with the dense run of the same rate. The same
holds for --set data.streams=K (`-stK`): windows from K interleaved document streams.

Repeats: --repeats 0,1 runs every configuration twice, the second under a new name (`-r1`): on a
GPU the attention backward is not bitwise repeatable, so a repeat measures how far two runs of one
configuration end apart. Differences between arms smaller than that spread say nothing. The last
table printed is the mean over seeds and repeats of each arm's difference from its paired dense run.
"""

from __future__ import annotations

import argparse
import json
import site
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe import Runner, arm_overrides, final_bpb, first_reaching, train_chain  # noqa: E402

from lighthouse.trainer.config import load_config  # noqa: E402
from lighthouse.trainer.metrics import read_metrics, stage_rows  # noqa: E402

BUILT_IN_CORPORA = ("python", "code", "text")
CODE_SUFFIXES = ("h", "hpp", "cuh", "c", "cc", "cpp", "cu")
TEXT_PATTERNS = ("*.md", "*.rst", "*.txt", "LICENSE*", "METADATA")


def site_packages() -> list[str]:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    return sorted(r for r in roots if Path(r).is_dir())


def files_overrides(globs: list[str]) -> list[str]:
    """A corpus of files (one document each, validation by whole documents)."""
    paths = ", ".join(json.dumps(g) for g in globs)
    return ['data.source="files"', f"data.paths=[{paths}]", 'data.document="file"', 'data.val_split="documents"']


def parse_corpus_flag(text: str) -> tuple[str, list[str]]:
    """`NAME=GLOB[;GLOB...]` (--corpus): your own corpus under a name of your choosing."""
    name, sep, globs = text.partition("=")
    paths = [g for g in globs.split(";") if g.strip()]
    if not sep or not name or not paths or not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"--corpus {text!r}: give NAME=GLOB[;GLOB...], e.g. mine='/data/**/*.txt'")
    if name in BUILT_IN_CORPORA:
        raise SystemExit(f"--corpus {name}: that name is a built-in corpus ({', '.join(BUILT_IN_CORPORA)}); choose another")
    return name, paths


def corpus_overrides(corpus: str, own: dict[str, list[str]] | None = None) -> list[str]:
    if own and corpus in own:
        return files_overrides(own[corpus])
    roots = site_packages()
    if corpus == "python":
        return ['data.source="site-packages"', 'data.document="package"']
    if corpus == "code":
        globs = [f"{r}/**/*.{s}" for r in roots for s in CODE_SUFFIXES]
    elif corpus == "text":
        globs = [f"{r}/**/{p}" for r in roots for p in TEXT_PATTERNS]
    else:
        raise SystemExit(f"unknown corpus {corpus!r}: python, code, text or one given with --corpus NAME=GLOB")
    return files_overrides(globs)


def arm_settings(arm: str, cfg) -> list[str]:
    total, topk = cfg.total_steps, cfg.lighthouse.topk
    base, _, variant = arm.partition("-")
    if base == "dense":
        return arm_overrides(total, 0)
    if base not in ("topk", "causal"):
        raise SystemExit(f"unknown arm {arm!r}")
    out = [f'lighthouse.selection="{base}"']
    share = {"": 10, "k2": 10, "rec6": 6, "only": 16, "mix4": 10, "rw": 10}.get(variant)
    if share is None:
        raise SystemExit(f"unknown arm variant {variant!r} in {arm!r}")
    out += arm_overrides(total, share)
    if variant == "k2":
        out.append(f"lighthouse.topk={2 * topk}")
    if variant == "mix4":
        out.append("stages.0.dense_every=4")
    if variant == "rw":
        out.append(f"stages.1.warmup_steps={cfg.optim.warmup_steps}")
    return out


def switch_record(run_dir: Path) -> dict:
    """The first stage's end (with both attentions) and the leak meter there, when stage 1 is Lighthouse."""
    records = read_metrics(run_dir)
    ends = [r for r in records if r.get("kind") == "stage_end"]
    if not ends or ends[0]["attention"] == "dense":
        return {}
    first = ends[0]
    leaks = [r for r in records if r.get("kind") == "leak" and r["step"] == first["step"]]
    return {"switch_step": first["step"], "switch_bpb_lighthouse": first["val_bpb"], "switch_bpb_dense": first["val_bpb_dense"],
            "switch_leak": leaks[-1]["spans"] if leaks else None}


def leak_curve(run_dir: Path) -> list[dict]:
    """The leak meter through the Lighthouse stage: step and the mean change for span 1."""
    return [{"step": r["step"], "mean_nats": r["spans"][0]["mean_nats"], "stderr": r["spans"][0]["stderr"]}
            for r in read_metrics(run_dir) if r.get("kind") == "leak"]


def entry(out: Path, name: str, corpus: str, seed: int, arm: str, settings: list[str], parallel: int,
          dense_name: str, repeat: int = 0) -> dict:
    rows = stage_rows(out / name)
    final = json.loads((out / "evals" / name / "position.json").read_text())
    cfg = load_config(out / name / "config.toml")
    target = final_bpb(out / dense_name) if (out / dense_name).is_dir() else None
    reached = first_reaching(out / name, target) if target is not None and name != dense_name else None
    return {
        "corpus": corpus, "seed": seed, "arm": arm, "repeat": repeat, "settings": settings,
        "lighthouse": {"levels": cfg.lighthouse.levels, "pooling": cfg.lighthouse.pooling, "topk": cfg.lighthouse.topk,
                       "selection": cfg.lighthouse.selection},
        "lr": cfg.optim.lr, "seq_len": cfg.data.seq_len, "streams": cfg.data.streams,
        "stages": [{"attention": r["attention"], "steps": r["steps"], "time_s": r["time_s"],
                    "tok_per_s_median": statistics.median(r["step_rates"][1:] or r["step_rates"])} for r in rows],
        "steps": sum(r["steps"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
        "train_s": sum(r["time_s"] for r in rows), "parallel_runs": parallel,
        "final_bpb_dense": final["val_bpb"], "final_windows": final["windows"],
        "final_bpb_dense_train_eval": rows[-1]["val_bpb_dense"] if rows else None,
        **switch_record(out / name),
        "leak_over_training": leak_curve(out / name),
        "reached_dense_final": reached,
    }


def plot_matrix(results: list[dict], out: Path) -> None:
    """Final dense-evaluated bpb minus the paired dense run's, per corpus and arm (one dot per seed; repeats hollow),
    and the leak meter at the switch (span 1, with its standard error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = paired_dense(results)
    corpora = sorted({r["corpus"] for r in results})
    one_lr = len({r["lr"] for r in results}) == 1
    one_len = len({r.get("seq_len", 0) for r in results}) == 1
    # one colour per arm, length, learning rate and stream count; dense repeats show the spread (the first dense
    # run is the zero line)
    def variant(r):
        return r["arm"], r.get("seq_len", 0), r["lr"], r.get("streams", 1)
    variants = sorted({variant(r) for r in results if r["arm"] != "dense" or r.get("repeat", 0)})
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
    width = 0.8 / max(1, len(variants))
    for j, (arm, seq_len, lr, streams) in enumerate(variants):
        colour, marker = f"C{j % 10}", "os^D"[j // 10 % 4]  # ten colours, then a new marker shape
        label = (arm + ("" if one_len else f" {seq_len // 1024}K") + ("" if one_lr else f" lr {lr:g}")
                 + ("" if streams == 1 else f" {streams} streams"))
        for i, corpus in enumerate(corpora):
            rows = [r for r in results if r["corpus"] == corpus and variant(r) == (arm, seq_len, lr, streams)
                    and dense.get(pair_key(r)) not in (None, r)]
            x = i + (j - (len(variants) - 1) / 2) * width
            for again in (False, True):  # repeats of a configuration as hollow dots
                diffs = [r["final_bpb_dense"] - dense[pair_key(r)]["final_bpb_dense"] for r in rows
                         if bool(r.get("repeat")) == again]
                axes[0].scatter([x] * len(diffs), diffs, color=colour, facecolors="none" if again else colour,
                                marker=marker, label=label if i == 0 and not again else None, zorder=3)
            leaks = [r["switch_leak"][0] for r in rows if r.get("switch_leak")]
            axes[1].errorbar([x] * len(leaks), [lk["mean_nats"] for lk in leaks], yerr=[lk["stderr"] for lk in leaks],
                             fmt=marker, color=colour, capsize=3)
    for ax, title in ((axes[0], "final bpb (dense evaluation) minus dense's, equal tokens"),
                      (axes[1], "leak meter at the switch: loss change at t when byte t+1 is replaced (nats)")):
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set_xticks(range(len(corpora)), corpora)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8)  # one legend for both panels
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def check_run_length(run_dir: Path, seq_len: int) -> None:
    """An existing run folder of another length would be resumed as if it were this run (the trainer only
    warns about a changed setting, and a finished run is not run again): refuse instead."""
    saved = run_dir / "config.toml"
    if saved.is_file() and (trained := load_config(saved).data.seq_len) != seq_len:
        raise SystemExit(f"{run_dir}: trained at data.seq_len = {trained}, this invocation runs {seq_len}; "
                         "give each length its own --out")


def run_name(corpus: str, seed: int, arm: str, repeat: int = 0, lr: float | None = None, streams: int = 1) -> str:
    """The run's folder name; `lr` only when it is not the config's and `streams` when not 1 (so the
    first rounds' runs keep their names; 0, the trainer's automatic count, is `-stauto`)."""
    tail = "" if streams == 1 else "-stauto" if streams == 0 else f"-st{streams}"
    return f"{corpus}-s{seed}-{arm}" + (f"-lr{lr:g}" if lr is not None else "") + tail + (f"-r{repeat}" if repeat else "")


def parse_repeats(text: str) -> list[int]:
    """`--repeats 0,1,2`: which runs of every configuration (0 the first), in order, each once."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise SystemExit(f"--repeats {text!r}: give distinct run numbers >= 0, e.g. 0 (the first run) or 0,1,2")
    return [int(p) for p in parts]


def parse_lrs(text: str, default: float) -> list[float | None]:
    """`--lrs 1e-3,2e-3`: the learning rates to run; None stands for the config's own (runs keep their names)."""
    if not text.strip():
        return [None]
    try:
        lrs = [float(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"--lrs {text!r}: give learning rates, e.g. 1e-3,2e-3") from None
    if not all(0 < lr < 1 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise SystemExit(f"--lrs {text!r}: give distinct learning rates between 0 and 1, e.g. 1e-3,2e-3")
    return [None if lr == default else lr for lr in lrs]


def run_key(r: dict) -> tuple:
    """What identifies a run in the results (entries from before repeats existed are repeat 0; entries
    without a length, hand-written ones, count as one length)."""
    return r["corpus"], r.get("seq_len", 0), r["lr"], r.get("streams", 1), r["seed"], r["arm"], r.get("repeat", 0)


def pair_key(r: dict) -> tuple:
    """The runs compared with each other: same corpus, sequence length, learning rate, data streams and seed."""
    return r["corpus"], r.get("seq_len", 0), r["lr"], r.get("streams", 1), r["seed"]


def paired_dense(results: list[dict]) -> dict[tuple, dict]:
    """The dense run of each corpus, learning rate and seed (the first of its repeats): every arm's baseline."""
    dense = {}
    for r in sorted((r for r in results if r["arm"] == "dense"), key=run_key):
        dense.setdefault(pair_key(r), r)
    return dense


def summary_rows(results: list[dict]) -> list[dict]:
    """Per corpus, sequence length, learning rate, data streams and arm: the final dense-evaluated bpb minus the
    paired dense run's, over seeds and repeats."""
    dense = paired_dense(results)
    groups: dict[tuple[str, int, float, int, str], list[float]] = {}
    for r in results:
        base = dense.get(pair_key(r))
        if base is not None and r is not base:
            key = r["corpus"], r.get("seq_len", 0), r["lr"], r.get("streams", 1), r["arm"]
            groups.setdefault(key, []).append(r["final_bpb_dense"] - base["final_bpb_dense"])
    return [{"corpus": c, "seq_len": n, "lr": lr, "streams": k, "arm": a, "runs": len(d), "mean": statistics.fmean(d),
             "min": min(d), "max": max(d)} for (c, n, lr, k, a), d in sorted(groups.items())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/robustness-32k.toml")
    ap.add_argument("--out", default="runs/robustness", help="folder of all runs and logs")
    ap.add_argument("--results", default="docs/results/robustness.json", help="the JSON list of finished runs")
    ap.add_argument("--corpora", default="python,code,text", help="built-in corpora ('' for none: only --corpus)")
    ap.add_argument("--corpus", dest="own", action="append", default=[], metavar="NAME=GLOB[;GLOB...]",
                    help="your own corpus (files, one document each), added to --corpora; repeatable")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--arms", default="dense,topk,causal")
    ap.add_argument("--repeats", default="0", help="which runs of every configuration: 0 the first, 1.. repeats (see above)")
    ap.add_argument("--lrs", default="", help="learning rates, each a run of every configuration (default: the config's)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time on the one device")
    ap.add_argument("--device", default="0", help="CUDA device id, or 'cpu'")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds this invocation may run")
    ap.add_argument("--final-windows", type=int, default=32, help="validation windows of the final dense evaluation")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applies to every run")
    ap.add_argument("--plot", metavar="PNG", help="plot --results into PNG and stop (no runs)")
    args = ap.parse_args()
    if args.plot:
        plot_matrix(json.loads(Path(args.results).read_text()), Path(args.plot))
        print(f"wrote {args.plot}")
        return 0

    out = Path(args.out).resolve()
    cfg = load_config(args.config, args.overrides)
    own = dict(parse_corpus_flag(c) for c in args.own)
    corpora = [c for c in args.corpora.split(",") if c] + [c for c in own if c not in args.corpora.split(",")]
    if not corpora:
        raise SystemExit("no corpus: give --corpora and/or --corpus NAME=GLOB")
    repeats = parse_repeats(args.repeats)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    lrs = parse_lrs(args.lrs, cfg.optim.lr)
    runner = Runner([args.device] * args.parallel, time.time() + args.deadline, out / "logs")

    results_path = Path(args.results)
    recorded = {run_key(r) for r in json.loads(results_path.read_text())} if results_path.is_file() else set()
    jobs, planned = [], []
    for lr, seed, repeat in ((lr, s, r) for r in repeats for lr in lrs for s in seeds):
        for arm in arms:  # arms outer, corpora inner: the parallel slots mix corpora
            for corpus in corpora:
                name = run_name(corpus, seed, arm, repeat, lr, cfg.data.streams)
                identity = {"corpus": corpus, "seq_len": cfg.data.seq_len, "lr": lr or cfg.optim.lr,
                            "streams": cfg.data.streams, "seed": seed, "arm": arm, "repeat": repeat}
                if run_key(identity) in recorded:
                    # another machine ran it (its folder is not here): its entry stands; --repeats runs it again
                    print(f"{name}: already in {results_path}, not run again", flush=True)
                    continue
                check_run_length(out / name, cfg.data.seq_len)
                settings = arm_settings(arm, cfg)
                overrides = [*args.overrides, *([f"optim.lr={lr}"] if lr is not None else []),
                             *corpus_overrides(corpus, own), f"training.seed={seed}", *settings]
                chain = train_chain(args.config, name, out, overrides, cfg.total_steps)
                if not (out / "evals" / name / "position.json").is_file():
                    chain.append([sys.executable, "-m", "lighthouse", "eval", "--checkpoint", str(out / name),
                                  "--task", "position", "--attention", "dense", "--windows", str(args.final_windows),
                                  "--out", str(out / "evals" / name)])
                jobs.append((name, chain))
                planned.append((name, corpus, seed, arm, repeat, settings, run_name(corpus, seed, "dense", 0, lr, cfg.data.streams)))
    finished = runner.run_all(jobs)

    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = 0
    for name, corpus, seed, arm, repeat, settings, dense_name in planned:
        if not (out / "evals" / name / "position.json").is_file():
            continue
        new = entry(out, name, corpus, seed, arm, settings, args.parallel, dense_name, repeat)
        results = [r for r in results if run_key(r) != run_key(new)] + [new]
        done += 1
    results.sort(key=run_key)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'corpus':<8} {'N':>7} {'lr':>7} {'seed':>4} {'arm':<12} {'final bpb (dense)':>17} {'vs dense':>9} {'switch LH/dense':>16} "
          f"{'leak@switch':>12} {'train s':>8}")
    dense = paired_dense(results)
    for r in results:
        base = dense.get(pair_key(r))
        diff = f"{r['final_bpb_dense'] - base['final_bpb_dense']:+.3f}" if base else "-"
        switch = (f"{r['switch_bpb_lighthouse']:.3f}/{r['switch_bpb_dense']:.3f}" if "switch_bpb_dense" in r else "-")
        leak = f"{r['switch_leak'][0]['mean_nats']:+.4f}" if r.get("switch_leak") else "-"
        arm = r["arm"] + (f" r{r['repeat']}" if r.get("repeat") else "")
        print(f"{r['corpus']:<8} {r.get('seq_len', 0):>7} {r['lr']:>7g} {r['seed']:>4} {arm:<12} "
              f"{r['final_bpb_dense']:>17.4f} {diff:>9} {switch:>16} {leak:>12} {r['train_s']:>8.1f}")
    print(f"\n{'corpus':<8} {'N':>7} {'lr':>7} {'streams':>7} {'arm':<12} {'runs':>4} {'vs dense: mean':>15} {'min':>8} {'max':>8}")
    for row in summary_rows(results):
        print(f"{row['corpus']:<8} {row['seq_len']:>7} {row['lr']:>7g} {row['streams']:>7} {row['arm']:<12} {row['runs']:>4} "
              f"{row['mean']:>+15.3f} {row['min']:>+8.3f} {row['max']:>+8.3f}")
    print(f"{done} of {len(planned)} planned runs finished; {results_path}" + ("" if finished else " (run again to continue)"))
    return 0 if finished else 3


if __name__ == "__main__":
    sys.exit(main())
