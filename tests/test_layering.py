"""The package's import graph: no circles, and lower layers never import higher ones.

Every module of `lighthouse` is imported (so a module that fails to import fails here), and
its source is walked for `import` statements, including those inside functions (an import
deferred to call time is still a dependency). The graph's edges point from a module to the
modules it names; `from package import name` counts as an import of `package.name` when that
is a module, else of `package`.

Layers, lowest first (docs/design.md, "Layout"). A module may import its own layer and the
ones below, never one above:

    core        the attention function and the model: config, scorers, gla, rope, reference,
                kernels, attention, layers, model, tokenizer, checkpointing, loss (and the package root)
    parts       what is built on the model: distributed, evals, integrations.hf
    trainer     the trainer
    tools       integrations.export, sample, eval_tasks, bench, demo
    commands    cli, __main__, the lighthouse.hf alias
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import lighthouse

PACKAGE = "lighthouse"
LAYERS = [
    ("core", ["lighthouse", "config", "scorers", "gla", "rope", "reference", "kernels", "attention", "layers", "model",
              "tokenizer", "cpu_threads", "cuda_allocator", "checkpointing", "loss"]),
    ("parts", ["distributed", "evals", "integrations", "integrations.hf"]),
    ("trainer", ["trainer"]),
    ("tools", ["integrations.export", "sample", "eval_tasks", "bench", "demo"]),
    ("commands", ["cli", "__main__", "hf"]),
]


def all_modules() -> dict[str, Path]:
    """Every module of the package (packages as their __init__), by dotted name."""
    root = Path(lighthouse.__file__).parent
    found = {PACKAGE: root / "__init__.py"}
    for info in pkgutil.walk_packages([str(root)], prefix=f"{PACKAGE}."):
        rel = Path(*info.name.split(".")[1:])
        found[info.name] = root / rel / "__init__.py" if info.ispkg else (root / rel).with_suffix(".py")
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]  # what a relative import is relative to
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` where c is not a module: a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """Index of the layer of `module`: its longest listed prefix decides (integrations.hf before integrations)."""
    rel = module[len(PACKAGE) + 1 :] if module != PACKAGE else PACKAGE
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (rel == prefix or rel.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS (and to docs/design.md)"
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports():
    for name in all_modules():
        if not name.endswith("__main__"):  # those run a command when imported
            importlib.import_module(name)


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lower_layers_never_import_higher_ones():
    wrong = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The graph walk sees imports inside functions and relative ones, and a circle is found."""
    src = tmp_path / "m.py"
    src.write_text("from . import a\n\ndef f():\n    from .b import thing\n    import lighthouse.c\n", encoding="utf-8")
    modules = {"lighthouse.m": src, "lighthouse.a": src, "lighthouse.b": src, "lighthouse.c": src}
    assert imports_of("lighthouse.m", src, modules) == {"lighthouse.a", "lighthouse.b", "lighthouse.c"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layer_of("lighthouse.integrations.hf") < layer_of("lighthouse.integrations.export")
    assert layer_of("lighthouse.model") < layer_of("lighthouse.trainer.loop")
