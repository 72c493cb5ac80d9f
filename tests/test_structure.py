"""The package's structure, checked from its source with `ast`: no import cycles among adapt's own modules, and
the training loop (adapt.train) sees the speed layer only through its interface."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "adapt"


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file for every module under `root` (a package is its __init__.py)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name an `from X import ...` statement names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dependencies(target: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """`target` and the packages above it that importing it runs, short of the importer's own packages (a
    package always finishes initialising before its submodules' imports of it matter) and of the root."""
    found = set()
    parts = target.split(".")
    for depth in range(2, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name in modules and not (importer == name or importer.startswith(name + ".")):
            found.add(name)
    return found


def _top_level_names(tree: ast.Module, imported: bool = True) -> set[str]:
    """Names a module defines at its top level: functions, classes, assignments, and (with `imported`) imports."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif imported and isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the adapt modules it imports, from every `import`/`from ... import` statement anywhere in its
    source: module level AND inside functions, methods and `if` blocks alike. A function-level import is still a
    dependency (it only delays the cycle to the first call), so both count; so does `importlib.import_module`
    with a literal "adapt...." name. The task registry's "module:Class" strings (adapt.tasks.TASKS, imported
    when a recipe names the task) are plugins and are not followed.

    `from X import Y` depends on X.Y when that is a module; on the submodule of X that defines Y when X is a
    package resolving its names lazily (a module-level `__getattr__`, as adapt.metrics), since that is what the
    import runs; otherwise on X. Importing a module also runs the packages above it (counted, except the
    importer's own packages and the root package `adapt`).
    """
    modules = module_files(root)
    top = root.name
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in modules.items()}
    defined = {name: _top_level_names(tree) for name, tree in trees.items()}
    homes = {name: _top_level_names(tree, imported=False) for name, tree in trees.items()}

    def lazy_home(package: str, attr: str) -> list[str]:
        if package not in defined or "__getattr__" not in defined[package] or attr in defined[package]:
            return []
        return [m for m in modules if m.rpartition(".")[0] == package and attr in homes[m]]

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(trees[name]):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node)
                for alias in node.names:
                    module = f"{source}.{alias.name}"
                    targets += [module] if module in modules else lazy_home(source, alias.name) or [source]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) ==
                  "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                targets = [node.args[0].value]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    graph[name] |= _dependencies(target, name, modules) - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each strongly connected component of more than one module
    (Tarjan's algorithm, R. Tarjan, "Depth-first search and linear graph algorithms", SIAM J. Comput. 1972),
    each cycle the shortest one from the component's first module (breadth-first search inside the component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in sorted(components):
        members, start = set(component), component[0]
        parents: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parents:
            following = []
            for node in frontier:
                for nxt in sorted(graph[node] & members):
                    if nxt not in parents:
                        parents[nxt] = node
                        following.append(nxt)
            frontier = following
        path = [start]
        while path[-1] != start or len(path) == 1:
            path.append(parents[path[-1]])
        cycles.append(path[::-1])
    return cycles


def test_find_cycles_names_each_cycle_and_accepts_a_tree():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_counts_function_level_relative_and_parent_package_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from pkg.sub import leaf\n")
    (root / "sub" / "leaf.py").write_text("from . import helper\n")
    (root / "sub" / "helper.py").write_text("def f():\n    from pkg import top\n")
    (root / "top.py").write_text("import json\nfrom pkg.sub.leaf import X\n\ndef g():\n    import pkg.other\n")
    (root / "other.py").write_text("import importlib\nM = importlib.import_module('pkg.top')\n")
    (root / "lazy").mkdir()  # names resolved on first use, as adapt.metrics does
    (root / "lazy" / "__init__.py").write_text("from importlib import import_module\n\ndef __getattr__(name):\n"
                                               "    return getattr(import_module('pkg.lazy.home'), name)\n")
    (root / "lazy" / "home.py").write_text("from json import dumps\n\ndef score():\n    from pkg import user\n")
    (root / "lazy" / "reexport.py").write_text("from pkg.lazy.home import score\n")
    (root / "user.py").write_text("from pkg.lazy import score, dumps\n")
    graph = import_graph(root)
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.leaf"}, "pkg.sub.leaf": {"pkg.sub.helper"},
                     "pkg.sub.helper": {"pkg.top"}, "pkg.top": {"pkg.sub", "pkg.sub.leaf", "pkg.other"},
                     "pkg.other": {"pkg.top"}, "pkg.lazy": {"pkg.lazy.home"}, "pkg.lazy.home": {"pkg.user"},
                     "pkg.lazy.reexport": {"pkg.lazy.home"}, "pkg.user": {"pkg.lazy", "pkg.lazy.home"}}
    # two strongly connected components (lazy -> lazy.home -> user -> lazy, user -> lazy.home; sub -> leaf ->
    # helper -> top -> sub with top <-> other): each one's shortest cycle through its first module
    assert find_cycles(graph) == [["pkg.lazy", "pkg.lazy.home", "pkg.user", "pkg.lazy"],
                                  ["pkg.other", "pkg.top", "pkg.other"]]


def test_adapt_has_no_import_cycles():
    graph = import_graph()
    assert {"adapt.train", "adapt.runner", "adapt.lora", "adapt.tasks.base", "adapt.speed"} <= set(graph)
    assert "adapt.tasks.base" in graph["adapt.train"]  # the graph sees real imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among adapt's modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


# ---- the loop's boundary with the speed layer ---------------------------------------------------------------
# The interface the loop may use (adapt.speed's docstring): the three functions and the Optimization type, one
# update, and the state of the weights it steps.
SPEED_INTERFACE = {"mixed_precision_mode", "autocast_mode", "prepare_model", "optimization", "Optimization", "setup_done"}
OPTIMIZATION_INTERFACE = {"weights", "optimizer", "update"}
WEIGHTS_INTERFACE = {"state", "checkpoint_state", "load", "sync", "finalize", "release_gradients", "named_parameters"}
# words naming the speed layer's internals: its precision scheme, kernels and patches
SPEED_INTERNALS = ("fused", "master", "native", "padding_free", "first_token_only", "TrainableWeights")


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def speed_internals_used(source: str) -> list[str]:
    """'line N: what' for each place in `source` (the loop's module) that reaches past the speed layer's
    interface: an import of an adapt.speed submodule or name other than the package itself; `speed.X` for X
    outside SPEED_INTERFACE; `optimization.X` outside OPTIMIZATION_INTERFACE; `weights.X` / `<...>.weights.X`
    outside WEIGHTS_INTERFACE; and any name, attribute, argument, keyword or compared string constant containing
    one of SPEED_INTERNALS. Docstrings and messages (other string constants) are not read."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        words: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adapt"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full.startswith("adapt.speed.") or node.module.startswith("adapt.speed"):
                    found.append(f"line {line}: import of {full}")
        elif isinstance(node, ast.Import):
            found += [f"line {line}: import of {a.name}" for a in node.names if a.name.startswith("adapt.speed")]
        elif isinstance(node, ast.Attribute):
            owner = _dotted(node.value)
            if owner == "speed" and node.attr not in SPEED_INTERFACE:
                found.append(f"line {line}: speed.{node.attr}")
            elif owner == "optimization" and node.attr not in OPTIMIZATION_INTERFACE:
                found.append(f"line {line}: optimization.{node.attr}")
            elif owner.rsplit(".", 1)[-1] == "weights" and node.attr not in WEIGHTS_INTERFACE:
                found.append(f"line {line}: {owner}.{node.attr}")
            else:
                words.append(node.attr)
        elif isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.append(node.name)
        elif isinstance(node, ast.arg):
            words.append(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            words.append(node.arg)
        elif isinstance(node, ast.Compare):
            words += [c.value for c in [node.left, *node.comparators]
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        found += [f"line {line}: {word}" for word in words
                  if any(internal.lower() in word.lower() for internal in SPEED_INTERNALS)]
    return sorted(set(found), key=lambda entry: (int(entry.split(":")[0].split()[1]), entry))


def test_speed_boundary_check_catches_each_kind_of_reach():
    source = (
        "from adapt import speed\n"
        "from adapt.speed.precision import TrainableWeights\n"
        "def step(model, task, optimization, weights):\n"
        "    speed.prepare_model(model, task, task.recipe.train)\n"
        "    speed.runtime.setup_done()\n"
        "    optimization.update(model, None); optimization.max_grad_norm\n"
        "    weights.state(); weights.grads_to_master(); optimization.weights.sync()\n"
        "    if precision == 'bf16-master' and task.first_token_only:\n"
        "        use_fused = True\n"
    )
    assert speed_internals_used(source) == [
        "line 2: import of adapt.speed.precision.TrainableWeights",
        "line 5: speed.runtime",
        "line 6: optimization.max_grad_norm",
        "line 7: weights.grads_to_master",
        "line 8: bf16-master",
        "line 8: first_token_only",
        "line 9: use_fused",
    ]
    assert speed_internals_used("optimization.weights.finalize(model)\nmodel = speed.prepare_model(m, t, c)\n") == []


def test_the_loop_sees_the_speed_layer_only_through_its_interface():
    found = speed_internals_used((PACKAGE / "train.py").read_text(encoding="utf-8"))
    assert not found, "adapt/train.py reaches past the speed layer's interface:\n" + "\n".join(found)


# ---- the speed layer switched off by one recipe key ---------------------------------------------------------
def model_patches(model) -> list[str]:
    """What was installed on `model` beyond transformers' own modules: '<module>: forward hook' / 'forward
    pre-hook' / 'instance forward' (a forward replaced on the instance) for each module carrying one."""
    found = []
    for name, module in model.named_modules():
        where = name or "model"
        if module._forward_hooks:
            found.append(f"{where}: forward hook")
        if module._forward_pre_hooks:
            found.append(f"{where}: forward pre-hook")
        if "forward" in vars(module):
            found.append(f"{where}: instance forward")
    return found


def test_speed_layer_off_trains_and_saves_with_plain_torch(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    import torch
    from conftest import run_tiny_finetune
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import adapt.train

    seen = {}
    build, prepare = adapt.train.build_training_model, adapt.train.prepare_optimization

    def build_and_look(task, model_path, recipe):
        model = build(task, model_path, recipe)
        seen["patches"] = model_patches(model)
        seen["attention"] = model.config._attn_implementation
        return model

    def prepare_and_look(model, *args):
        prepared, optimization, scheduler = prepare(model, *args)
        seen["optimizer"] = optimization.optimizer.optimizer  # inside accelerate's AcceleratedOptimizer
        seen["trainable"] = [p for p in model.parameters() if p.requires_grad]  # one CPU process: no DDP wrapper
        return prepared, optimization, scheduler

    monkeypatch.setattr(adapt.train, "build_training_model", build_and_look)
    monkeypatch.setattr(adapt.train, "prepare_optimization", prepare_and_look)
    run = tmp_path / "run"
    final = run_tiny_finetune(tiny_bert, sentiment_csv, run, tmp_path / "cache", [("train.speed_layer", False)])

    # mixed_precision auto: bf16 autocast where the CPU has native bf16 matmul, else full fp32
    assert final["mixed_precision"] == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no")
    # transformers' own model: no hook, no replaced forward, its default attention
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    assert seen["patches"] == [] and seen["attention"] == plain.config._attn_implementation
    # PyTorch's AdamW stepping the model's own (fp32) parameters: no master copies, no fused kernel
    optimizer = seen["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in stepped} == {id(p) for p in seen["trainable"]} and len(stepped) == len(seen["trainable"])
    assert {p.dtype for p in stepped} == {torch.float32}

    assert final["train_steps"] == 6 and final["train_samples"] == 44
    saved = load_file(run / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    start = plain.state_dict()
    moved = [k for k in start if k in saved and not torch.equal(start[k], saved[k])]
    assert "bert.embeddings.word_embeddings.weight" in moved and len(moved) > len(start) // 2  # it trained


def test_model_patches_sees_hooks_and_replaced_forwards(tiny_bert):
    import types

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    assert model_patches(model) == []
    model.bert.register_forward_pre_hook(lambda module, args: None)
    model.bert.encoder.layer[0].register_forward_hook(lambda module, args, output: None)
    model.dropout.forward = types.MethodType(lambda self, x: x, model.dropout)
    assert model_patches(model) == ["bert: forward pre-hook", "bert.encoder.layer.0: forward hook",
                                    "dropout: instance forward"]


def test_readme_names_only_paths_that_exist():
    import re

    root = PACKAGE.parents[1]
    named = set(re.findall(r"`((?:src|tests|benchmarks|examples|results)/[^`*\s]+)`", (root / "README.md").read_text()))
    assert "src/adapt/tasks/base.py" in named and "src/adapt/speed/padding_free.py" in named
    assert sorted(path for path in named if not (root / path).exists()) == []
