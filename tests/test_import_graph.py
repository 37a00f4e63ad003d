"""The package's import graph, read from the code: no circle, no module that
imports the package's `__init__`, and arrows that run back up only where a
`# upward:` comment on the import says why (docs/design.md draws the graph).
Pure source analysis: the backend does not matter, so it runs once (JAX)."""

import ast
import os

import keras
import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "keras_conmim")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="source analysis: the backend does not matter")


def package_modules():
    """{'keras_conmim.models.vit': path, ...} for every module of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                modules[".".join(rel)] = os.path.join(folder, name)
    return modules


def imports(path, modules):
    """[(imported module, deferred, upward_comment, line)] for each import of
    a package module in the file at `path`."""
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    tree = ast.parse(text)
    found = []

    def visit(node, deferred):
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from keras_conmim import data` names a submodule; anything
                # else is taken from the module named after `from`
                subs = [f"{child.module}.{a.name}" for a in child.names
                        if f"{child.module}.{a.name}" in modules]
                names = subs + ([child.module] if len(subs) < len(child.names) else [])
            for name in names:
                if name == "keras_conmim" or name.startswith("keras_conmim."):
                    line = lines[child.lineno - 1]
                    found.append((name, deferred, "# upward:" in line, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def graph():
    modules = package_modules()
    edges, upward = {}, []
    for module, path in modules.items():
        for target, deferred, commented, line in imports(path, modules):
            if target == module or (module.startswith(target + ".") and target != "keras_conmim"):
                continue  # a package's own submodule importing its parent's other parts
            if commented:
                upward.append((module, target, deferred, line))
                continue
            edges.setdefault(module, set()).add(target)
    return modules, edges, upward


def find_cycle(edges):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_the_package_imports_have_no_circle():
    _, edges, _ = graph()
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_imports_the_package_init():
    # `import keras_conmim` from inside the package would make every module
    # depend on all of them (the old circle's hiding place).
    _, edges, _ = graph()
    offenders = sorted(m for m, targets in edges.items()
                       if "keras_conmim" in targets and m != "keras_conmim")
    assert not offenders, f"these import the package's __init__: {offenders}"


def test_upward_arrows_are_deferred_commented_and_few():
    _, _, upward = graph()
    for module, target, deferred, line in upward:
        assert deferred, f"{module}:{line} imports {target} upward at module level"
    # None left: the loader finds a file's classes by registered name and
    # imports no model class, so the encoder's from_preset imports it as any
    # other module below it.
    assert sorted((m, t) for m, t, _, _ in upward) == []


def test_the_cycle_finder_finds_a_cycle():
    # The check above can fail: a circle is found and named.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_the_core_imports_only_keras_numpy_and_the_standard_library():
    # docs/design.md: the core (`models/`: model, layers, losses, masking,
    # views), the downstream heads and the leaves need no TensorFlow, torch or
    # JAX at import time.
    import sys

    modules = package_modules()
    core = [m for m in modules if m.split(".")[1:2] in (["models"], ["downstream"])]
    core += ["keras_conmim.atomic", "keras_conmim.presets", "keras_conmim.errors",
             "keras_conmim.version", "keras_conmim.moved", "keras_conmim.integrations.adapters"]
    assert "keras_conmim.models.vit" in core and "keras_conmim.downstream.instance" in core
    allowed = {"keras", "numpy", "keras_conmim"}
    for name in core:
        with open(modules[name]) as f:
            tree = ast.parse(f.read())
        for node in tree.body:  # module level only: deferred imports are per backend
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed or root in sys.stdlib_module_names, \
                    f"{name} imports {root} at module level"


def test_each_folder_holds_one_role():
    # #42: the package by role; a module at the top is a leaf every folder uses.
    top = sorted(m for m in package_modules() if m.count(".") == 1)
    assert top == ["keras_conmim.atomic", "keras_conmim.data", "keras_conmim.downstream",
                   "keras_conmim.errors", "keras_conmim.integrations", "keras_conmim.models",
                   "keras_conmim.moved", "keras_conmim.presets", "keras_conmim.runs",
                   "keras_conmim.version"], top
    modules, edges, _ = graph()
    for module, targets in edges.items():
        if module.startswith("keras_conmim.models."):  # the core stands on leaves only
            leaves = ("keras_conmim.atomic", "keras_conmim.presets", "keras_conmim.errors",
                      "keras_conmim.version", "keras_conmim.data.images", "keras_conmim.data.geometry",
                      "keras_conmim.integrations.adapters")  # adapters: names, no adapter
            assert all(t.startswith("keras_conmim.models.") or t in leaves for t in targets), \
                (module, targets)


def levels():
    """{module: level}: 0 for a module that imports none of the package, else
    one more than the highest module it imports (upward arrows left out)."""
    modules, edges, _ = graph()
    memo = {}

    def level(m):
        if m not in memo:
            deps = [d for d in edges.get(m, ()) if d in modules and d != "keras_conmim"]
            memo[m] = 1 + max(map(level, deps)) if deps else 0
        return memo[m]

    return {m: level(m) for m in modules if m != "keras_conmim"}


def module_map():
    """The module map of docs/design.md, drawn from the code: one line per
    level, bottom first, the modules each level holds."""
    by_level = {}
    for module, level in levels().items():
        by_level.setdefault(level, []).append(module.split(".", 1)[1])
    return "\n".join(f"{level}: {', '.join(sorted(names))}"
                     for level, names in sorted(by_level.items()))


def test_design_doc_draws_the_map_from_the_code():
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        doc = f.read()
    assert "```text\n" + module_map() + "\n```" in doc, (
        "docs/design.md's import levels differ from the code; paste the output of "
        "`python tests/test_import_graph.py`:\n" + module_map())


if __name__ == "__main__":
    print(module_map())


def test_nothing_in_the_repository_uses_the_flat_paths_of_before():
    # keras_conmim.moved keeps them importable for users' code; ours uses the folders.
    import re

    from keras_conmim.moved import MOVED

    old = re.compile(r"\bkeras_conmim[./](" + "|".join(MOVED) + r")\b(?![./]py\b)")
    flat_from = re.compile(r"from keras_conmim import [^\n]*\b(" + "|".join(MOVED) + r")\b")
    found = []
    for folder in ("keras_conmim", "recipes", "tests", "bench", "docs", "examples"):
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                path = os.path.join(base, name)
                if not name.endswith((".py", ".md")) or name == "moved.py":
                    continue
                with open(path) as f:
                    for number, line in enumerate(f, 1):
                        if "of before" in line or "flat path, on purpose" in line:
                            continue  # a sentence or a test about the aliases themselves
                        if old.search(line) or flat_from.search(line):
                            found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    for name in ("README.md",):
        with open(os.path.join(ROOT, name)) as f:
            found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(f, 1)
                      if old.search(line)]
    assert found == [], "\n".join(found)


def test_recipes_are_pages_of_intent():
    # #42: library behaviour lives in the package; a recipe is its docstring, the
    # task's own parts and the call into the engine.
    folder = os.path.join(ROOT, "recipes")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            text = f.read()
        assert text.count("\n") <= 150, f"recipes/{name}: {text.count(chr(10))} lines (at most 150)"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"recipes/{name}: {node.name} is {length} lines (at most 60)"


def test_the_backend_lists_agree():
    # recipes/recipe_main.py stays standard-library only (it runs before Keras
    # loads), so it keeps its own copy of the backend names: they must agree.
    import recipe_main

    from keras_conmim.runs import cli, config, pretrain_config

    assert recipe_main.BACKENDS == config.BACKENDS
    assert cli.BACKENDS is pretrain_config.BACKENDS is config.BACKENDS  # one list in the package
