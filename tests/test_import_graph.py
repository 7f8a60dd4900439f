"""The package's import graph: no cycles, and no import that runs back up the layers.

Every import statement counts, also those inside functions (a lazy import is still a dependency).
The layers, bottom to top: files/errors -> attention -> encoder, lm -> led -> convert -> the
commands (finetune, pretrain, bench, demo, export, interop) -> the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import longformer

PACKAGE = Path(longformer.__file__).parent
# Rank of each top-level part of the package; an import may only go to a lower rank, or within its
# own part. Parts of equal rank may not import each other (encoder and lm stay independent, and so
# do the commands: what two of them share belongs in a lower layer).
LAYERS = {
    "errors": 0, "_files": 1, "_memory": 1, "training": 2,
    "attention": 3, "linear": 3,
    "encoder": 4, "lm": 4,
    "led": 5,
    "convert": 6,
    "finetune": 7, "pretrain": 7, "demo": 7, "export": 7, "interop": 7,
    "bench": 7.5,  # measures the other commands (export, accelerate) beside ours
    "cli": 8, "__main__": 9, "__init__": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of this package that ``path`` imports, resolved to the most specific module."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                prefix = ".".join(stem + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("longformer") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def part(module: str) -> str:
    """The top-level part a module belongs to; any `__main__` is an entry point, at the top."""
    pieces = module.split(".")
    if pieces[-1] == "__main__":
        return "__main__"
    return pieces[1] if len(pieces) > 1 else "__init__"


def test_every_part_has_a_layer():
    unknown = sorted({part(m) for m in modules()} - set(LAYERS))
    assert not unknown, f"add these parts of the package to LAYERS: {unknown}"


def test_no_import_runs_up_the_layers():
    bad = []
    for source, targets in graph().items():
        for target in targets:
            a, b = part(source), part(target)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append(f"{source} -> {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    # Package __init__ files only re-export their own modules (lazily); an edge into an __init__ from
    # one of its own modules would be the cycle, so those edges stay in.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The graph builder must catch an import inside a function, relative or absolute, or the two
    tests above could never fail."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from ..led.hub import x\n    import longformer.convert.core\n")
    known = {"longformer.led.hub", "longformer.led", "longformer.convert.core", "longformer.convert", "longformer.encoder.mod"}
    assert imports_of("longformer.encoder.mod", source, known) == {"longformer.led.hub", "longformer.convert.core"}


@pytest.mark.parametrize("module", ["longformer.led.hub", "longformer.encoder.hub"])
def test_loaders_do_not_import_their_models(module):
    """A loader receives the model class; it never imports the model module (which imports it)."""
    assert not any(t.endswith(".modeling") or t.endswith(".heads") for t in graph()[module])
