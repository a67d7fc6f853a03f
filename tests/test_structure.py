"""The package's structure (DESIGN.md "Layout"), checked on the source with ``ast``.

- no import cycle between modules, nor between rooms (the top-level packages and modules of
  ``flexavatar``); every import counts, the function-local ones too;
- evaluation is the top floor: only ``flexavatar.eval`` itself and the CLI import it (so
  ``refine``, ``train`` and ``model`` never do);
- nothing under ``flexavatar/`` imports gradio (the app does);
- no module over 500 lines;
- the project's own modules are imported at the top of the file, not inside functions, but
  for the commented :data:`LAZY_IMPORTS`;
- psnr / ssim / the photometric loss are defined once, in ``flexavatar/metrics.py``.

Each rule is also run on a small fake package that breaks it, so none of them passes vacuously.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flexavatar"
MAX_LINES = 500
#: Rooms allowed to import ``flexavatar.eval`` (besides eval itself): the CLI dispatches to it.
EVAL_IMPORTERS = {"flexavatar.__main__"}
#: Functions that exist once, in flexavatar/metrics.py.
METRIC_FUNCTIONS = {"psnr", "ssim", "ssim_map", "masked_l1", "photometric_loss"}
METRICS_MODULE = "flexavatar.metrics"
#: (importing module, imported module) pairs allowed inside a function, and why.
_CLI_START = "CLI start-up: importing pipeline, live and publish up front costs every command ~1 s CPU"
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("flexavatar.__main__", "flexavatar.pipeline"): _CLI_START,
    ("flexavatar.__main__", "flexavatar.live"): _CLI_START,
    ("flexavatar.__main__", "flexavatar.publish"): _CLI_START,
    ("flexavatar.render.numba_backend", "flexavatar.render.numba_kernels"): (
        "numba is optional (the torch compositor is the fallback) and costs ~0.5 s to import"
    ),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "flexavatar.train.losses"
    target: str  # imported module (or package), e.g. "flexavatar.metrics"
    line: int
    local: bool  # inside a function


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of a ``from ... import`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _local_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function (or a method)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))}
    return inside


def package_imports(root: Path) -> list[Import]:
    """Every import of a module of the package (``root`` = its folder), at any depth."""
    modules = package_modules(root)
    prefix = root.name
    found: list[Import] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        local = _local_nodes(tree)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                # ``from pkg import name``: the submodule pkg.name when there is one, else pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target == prefix or target.startswith(prefix + "."):
                    found.append(Import(module, target, node.lineno, id(node) in local))
    return found


def room(module: str) -> str:
    """``flexavatar.train.losses`` -> ``flexavatar.train``; ``flexavatar.refine`` stays."""
    return ".".join(module.split(".")[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def structure_problems(
    root: Path, lazy_imports: dict[tuple[str, str], str] | None = None
) -> dict[str, list[str]]:
    """The broken rules of the package at ``root`` by kind (``cycle``, ``eval``, ``lazy``,
    ``gradio``, ``metric``, ``size``), one line each; all lists empty: all good."""
    lazy_imports = LAZY_IMPORTS if lazy_imports is None else lazy_imports
    prefix = root.name
    modules = package_modules(root)
    imports = package_imports(root)
    problems: dict[str, list[str]] = {
        kind: [] for kind in ("cycle", "eval", "lazy", "gradio", "metric", "size")
    }

    # cycles between modules. Importing a.b.c runs the packages a.b's __init__ first: that is
    # an edge too (but not to the importer's own enclosing packages, which are already running)
    module_edges: dict[str, set[str]] = {}
    for imp in imports:
        parts = imp.target.split(".")
        for target in {imp.target} | {".".join(parts[:i]) for i in range(2, len(parts))}:
            if target != imp.source and not _is_ancestor(target, imp.source):
                module_edges.setdefault(imp.source, set()).add(target)
    for component in cycles(module_edges):
        problems["cycle"].append(f"import cycle between modules: {' <-> '.join(component)}")
    room_edges: dict[str, set[str]] = {}
    for imp in imports:
        if room(imp.source) != room(imp.target) and room(imp.target) != prefix:
            room_edges.setdefault(room(imp.source), set()).add(room(imp.target))
    for component in cycles(room_edges):
        problems["cycle"].append(f"import cycle between rooms: {' <-> '.join(component)}")

    for imp in imports:
        if (
            room(imp.target) == f"{prefix}.eval"
            and room(imp.source) != f"{prefix}.eval"
            and imp.source not in {m.replace("flexavatar", prefix, 1) for m in EVAL_IMPORTERS}
        ):
            problems["eval"].append(
                f"{imp.source}:{imp.line} imports {imp.target}: nothing below eval imports eval"
            )
        if imp.local and (imp.source, imp.target) not in lazy_imports:
            problems["lazy"].append(
                f"{imp.source}:{imp.line} imports {imp.target} inside a function: move it to the top "
                "of the file (or allow-list it in tests/test_structure.py LAZY_IMPORTS, with the reason)"
            )

    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name == "gradio" or name.startswith("gradio.") for name in names):
                problems["gradio"].append(f"{module}:{node.lineno} imports gradio (only app.py may)")
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name in METRIC_FUNCTIONS
                and module != METRICS_MODULE.replace("flexavatar", prefix, 1)
                and node.col_offset == 0
            ):
                problems["metric"].append(
                    f"{module}:{node.lineno} defines {node.name}: use {METRICS_MODULE}'s"
                )
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems["size"].append(
                f"{path.relative_to(root.parent)}: {lines} lines (at most {MAX_LINES}): split it by idea"
            )
    return problems


@pytest.fixture(scope="module")
def problems() -> dict[str, list[str]]:
    return structure_problems(PACKAGE)


@pytest.mark.parametrize("kind", ["cycle", "eval", "gradio", "metric", "size", "lazy"])
def test_package_structure(problems, kind):
    assert not problems[kind], "\n".join(problems[kind])


def test_lazy_import_allow_list_is_current():
    """Every allow-listed lazy import still exists (the list does not outlive its reason)."""
    local = {(imp.source, imp.target) for imp in package_imports(PACKAGE) if imp.local}
    assert set(LAZY_IMPORTS) <= local, set(LAZY_IMPORTS) - local
    assert all(reason.strip() for reason in LAZY_IMPORTS.values())


@pytest.fixture()
def broken_package(tmp_path):
    """A fake package ``pkg`` that breaks every rule once."""
    files = {
        "__init__.py": "",
        "metrics.py": "def psnr(a, b):\n    return 0.0\n",
        "a.py": "from pkg import b\n",
        "b.py": "from . import a\n",  # module cycle a <-> b (rooms pkg.a <-> pkg.b)
        "train/__init__.py": "from pkg.train.loop import step\n",
        "train/loop.py": "import torch\n\ndef step():\n    from pkg.eval import score\n    return score()\n",
        "eval/__init__.py": "from pkg.train import loop\n\ndef score():\n    return 1\n",
        "ui.py": "import gradio as gr\n",
        "own_metric.py": "def ssim_map(x, y):\n    return x\n",
        "big.py": "x = 1\n" * (MAX_LINES + 1),
        # fine: a package's __init__ re-exports its submodule, another room imports both
        "render/__init__.py": "from pkg.render.core import draw\n",
        "render/core.py": "import numpy\n\ndef draw():\n    return numpy.zeros(1)\n",
        "show.py": "from pkg.render import draw\nfrom pkg.render.core import draw as again\n",
    }
    root = tmp_path / "pkg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_structure_rules_catch_a_broken_package(broken_package):
    problems = [
        line for lines in structure_problems(broken_package, lazy_imports={}).values() for line in lines
    ]
    text = "\n".join(problems)
    assert "import cycle between modules: pkg.a <-> pkg.b" in text
    assert "import cycle between rooms: pkg.a <-> pkg.b" in text
    assert "import cycle between rooms: pkg.eval <-> pkg.train" in text
    assert "import cycle between modules: pkg.eval <-> pkg.train <-> pkg.train.loop" in text
    assert "pkg.train.loop:4 imports pkg.eval: nothing below eval imports eval" in text
    assert "pkg.train.loop:4 imports pkg.eval inside a function" in text
    assert "pkg.ui:1 imports gradio" in text
    assert "pkg.own_metric:1 defines ssim_map" in text
    assert f"pkg/big.py: {MAX_LINES + 1} lines" in text
    assert not any("pkg.metrics" in p for p in problems)  # the one place metrics are defined
    assert not any("pkg.render" in p or "pkg.show" in p for p in problems)
    # an allow-listed lazy import is accepted
    allowed = structure_problems(broken_package, lazy_imports={("pkg.train.loop", "pkg.eval"): "test"})
    assert not allowed["lazy"]
