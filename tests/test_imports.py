"""The package's modules import each other without a cycle, deferred (function-level) imports
included: a cycle hidden inside a function still ties two modules into one that can only be
read, tested and moved together."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Where each installed package's files are (pyproject's package-dir).
ROOTS = {
    "v2f_jax": REPO / "v2f_jax",
    "v2f_jax.input_pipeline": REPO / "input_pipeline",
    "v2f_jax.configs": REPO / "configs",
}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(path: pathlib.Path, name: str, modules) -> set[str]:
    """The project modules `path` imports anywhere in its body (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    out.add(f"{base}.{alias.name}")
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_deferred_imports_and_finds_a_cycle(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from v2f_jax import b\n")
    (tmp_path / "b.py").write_text("from v2f_jax import a\n")
    modules = {"v2f_jax.a": tmp_path / "a.py", "v2f_jax.b": tmp_path / "b.py"}
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    assert graph == {"v2f_jax.a": {"v2f_jax.b"}, "v2f_jax.b": {"v2f_jax.a"}}
    assert _cycles(graph) == [["v2f_jax.a", "v2f_jax.b"]]


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_every_root_is_walked(root):
    assert any(name.startswith(root) for name in _modules())


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    assert sum(len(edges) for edges in graph.values()) > 100  # the walk saw the real imports
    assert _cycles(graph) == []
