"""The shape of the package: every module imports on its own, and no two modules import each other.

Both read the source, so a new module is checked without being listed here. Imports inside functions count:
a cycle hidden in a function works until the day someone moves the import to the top.
"""

import ast
import subprocess
import sys
from pathlib import Path

import charter

ROOT = Path(charter.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (lm-evaluation-harness task files are not modules)."""
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if "tasks" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The charter modules ``name`` imports anywhere in its source (top level or inside functions)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            # `from . import x` imports the submodule x when there is one, else a name of the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_hidden_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_resolved_from_relative_forms():
    g = graph()
    assert "charter.eval.conditions" in g["charter.eval.coherence"]  # from .conditions import ...
    assert "charter.runs" in g["charter.stages.distill"]  # from ..runs import ...
    assert "charter.backends.hf" in g["charter.backends"]  # inside make_backend's registry entry


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_stage_imports_another_stage_or_an_evaluation():
    """Stages talk through the run layout (``charter.layout``), never through each other; only the
    orchestrator (``stages.train``) knows them all."""
    g = graph()
    for name, deps in g.items():
        if name.startswith("charter.stages.") and name != "charter.stages.train":
            bad = {d for d in deps if d.startswith(("charter.stages.", "charter.eval"))}
            assert not bad, f"{name} imports {sorted(bad)}"
        if name.startswith("charter.eval"):
            bad = {d for d in deps if d.startswith("charter.stages")}
            assert not bad, f"{name} imports {sorted(bad)}"
        if name.startswith("charter.judges"):  # judges sit below evaluations and stages (a reward imports them)
            bad = {d for d in deps if d.startswith(("charter.stages", "charter.eval"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_every_module_imports_on_its_own():
    """Each module imported first, with no charter module loaded before it (third-party ones stay cached, so
    this costs one pass over the package), catches an import that works only after another module's."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(modules())!r}\n"
        "failed = []\n"
        "for n in names:\n"
        "    for m in [m for m in sys.modules if m == 'charter' or m.startswith('charter.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{n}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


CLI_MODULES = {"charter.cli", "charter.cli_commands"}  # the only modules that print


def test_only_the_cli_prints():
    """Library functions take a ``report`` callable (default ``runs.silent``) or log; only the CLI prints. A call
    to ``print`` or ``print`` passed as a value (``report=print``) outside the CLI modules fails here."""
    found = []
    for name, path in modules().items():
        if name in CLI_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Name) and node.id == "print":
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not found, f"print outside the CLI: {found}"


# Small files, short functions: a module over these sizes is two modules, a function over them is several steps
# that each deserve a name.
MODULE_LINES, FUNCTION_LINES = 450, 80


def test_no_module_or_function_outgrows_its_limit():
    too_long = []
    for f in sorted(ROOT.rglob("*.py")):
        text = f.read_text()
        name = f.relative_to(ROOT.parent).as_posix()
        lines = len(text.splitlines())
        if lines > MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for n in ast.walk(ast.parse(text)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > FUNCTION_LINES:
                too_long.append(f"{name}:{n.lineno} {n.name}(): {n.end_lineno - n.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
