"""Imports run one way (leaves below, the trainer above them, the CLI on top), read from the source.

Every `import` of a soar_fast module counts, at module level or inside a function (a lazy import is
still an arrow); imports under `if TYPE_CHECKING:` do not run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "soar_fast"

# Modules that import nothing of soar_fast but other leaves: config, the objective, the kernels, and
# the small helpers shared across layers.
LEAVES = ("soar_fast.config", "soar_fast.config_io", "soar_fast.config_rules", "soar_fast.errors",
          "soar_fast.models.presets", "soar_fast.seeds", "soar_fast.atomic", "soar_fast.checkout",
          "soar_fast.train.phases", "soar_fast.soar", "soar_fast.kernels")
# Subcommand modules: only the CLI (or another command) may import them.
COMMANDS = ("soar_fast.train.run", "soar_fast.train.profile", "soar_fast.data.cache", "soar_fast.data.check",
            "soar_fast.eval.sample", "soar_fast.eval.run", "soar_fast.eval.diagnose_command", "soar_fast.benchmarks",
            "soar_fast.models.lora_export")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> set[str]:
    """The soar_fast modules `name` imports (the deepest module each import statement names)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    return found


def test_the_graph_is_read():
    assert len(MODULES) > 50
    assert "soar_fast.train.phases" in GRAPH["soar_fast.train.step"]
    assert "soar_fast.data.build" in GRAPH["soar_fast.train.trainer"]  # a lazy import counts


def test_no_import_cycles():
    assert _cycles() == []


def test_leaves_import_only_leaves():
    upward = {name: sorted(t for t in GRAPH[name] if not _under(t, LEAVES))
              for name in MODULES if _under(name, LEAVES)}
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_step_imports_only_leaves():
    assert sorted(t for t in GRAPH["soar_fast.train.step"] if not _under(t, LEAVES)) == []


def test_parallel_does_not_import_the_trainer_or_data():
    above = ("soar_fast.train", "soar_fast.data", "soar_fast.eval", "soar_fast.cli", "soar_fast.accel")
    bad = {name: sorted(t for t in GRAPH[name] if _under(t, above))
           for name in MODULES if _under(name, ("soar_fast.parallel",))}
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_cli_imports_commands():
    bad = {name: sorted(t for t in GRAPH[name] if _under(t, COMMANDS))
           for name in MODULES if name != "soar_fast.cli" and not _under(name, COMMANDS)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_cli_is_a_thin_top():
    # Subcommands are imported by name when called (`cli.COMMANDS`), so a config error needs no torch.
    assert GRAPH["soar_fast.cli"] <= {"soar_fast", "soar_fast.config", "soar_fast.config_io", "soar_fast.errors"}
    assert all(name not in GRAPH[m] for m in MODULES for name in ("soar_fast.cli",) if m != "soar_fast.__main__")
