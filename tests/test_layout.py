"""The layout's rules, read from the source with `ast` (nothing is imported):

- dependencies run one way, `models ← workers → service ← cli`: models/ imports nothing of ours,
  service/ nothing from workers/, models/ or cli/, workers/ nothing from cli/ — imports inside
  functions included, since a lazy import is still a dependency;
- no import circles between modules, nor between service/'s domain packages (imports at module
  level: the ones that run at import time);
- an import of our own code inside a function says why, on its line or in a comment above its block.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "service", "workers", "models")
ALLOWED = {
    "models": {"models"},
    "service": {"service"},
    "workers": {"workers", "service", "models"},
    "cli": set(PACKAGES),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the longest prefix that is one of ours)
    line: int
    lazy: bool  # inside a function body
    why: bool  # a comment on its line or on the line above


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> dict[str, Path]:
    return {
        module_name(root, p): p
        for pkg in PACKAGES if (root / pkg).is_dir()
        for p in sorted((root / pkg).rglob("*.py")) if "__pycache__" not in p.parts
    }


def comment_above(lines: list[str], lineno: int) -> bool:
    """A comment line directly above the import, or above the block of imports it belongs to."""
    k = lineno - 2
    while k >= 0 and (lines[k].strip().startswith(("from ", "import ", ")")) or lines[k].rstrip().endswith((",", "("))):
        k -= 1
    return k >= 0 and lines[k].strip().startswith("#")


def _module_imports(mod: str, path: Path, resolve) -> list[Import]:
    text = path.read_text()
    lines = text.splitlines()
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([child.module] if child.module else []))
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
                names = [f"{base}.{a.name}" for a in child.names]
            targets = {resolve(n) for n in names if n.split(".")[0] in PACKAGES} - {None, mod}
            for target in sorted(targets):
                why = "#" in lines[child.lineno - 1] or comment_above(lines, child.lineno)
                found.append(Import(mod, target, child.lineno, lazy, why))
            visit(child, lazy)

    visit(ast.parse(text, filename=str(path)), False)
    return found


def imports(root: Path) -> list[Import]:
    modules = source_files(root)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return [i for mod, path in modules.items() for i in _module_imports(mod, path, resolve)]


def direction_violations(found: list[Import]) -> list[str]:
    return sorted(
        f"{i.source} imports {i.target} (line {i.line})"
        for i in found if i.target.split(".")[0] not in ALLOWED[i.source.split(".")[0]]
    )


def circles(found: list[Import]) -> list[list[str]]:
    """Strongly connected components (Tarjan) of more than one module in the module-level graph."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.source, set())
        graph.setdefault(i.target, set())
        if not i.lazy:
            graph[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_dependencies_run_one_way():
    assert direction_violations(imports(ROOT)) == []


def test_no_module_imports_itself_back_through_others():
    assert circles(imports(ROOT)) == []


def test_service_domains_depend_on_each_other_one_way():
    """service/'s domain packages (datasets, reviews, releases, ...) form no circle either: reviews
    build on datasets, so datasets must not import reviews back. Routers (views.py) sit on top and
    may compose several domains."""
    def domain(module: str) -> str | None:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 and parts[0] == "service" and parts[-1] != "views" else None

    edges = [Import(domain(i.source), domain(i.target), i.line, i.lazy, i.why) for i in imports(ROOT)
             if domain(i.source) and domain(i.target) and domain(i.source) != domain(i.target)]
    assert circles(edges) == []


def test_the_cli_reaches_workers_and_models_only_inside_commands():
    """The API image ships cli/ and service/ without workers/ or models/: `xraysynth serve` there must
    not import them on the way in."""
    eager = [f"{i.source}:{i.line} ({i.target})" for i in imports(ROOT)
             if i.source.split(".")[0] == "cli" and i.target.split(".")[0] in ("workers", "models") and not i.lazy]
    assert eager == []


def test_an_import_of_our_own_code_inside_a_function_says_why():
    unexplained = [f"{i.source}:{i.line} ({i.target})" for i in imports(ROOT) if i.lazy and not i.why]
    assert unexplained == []


def test_the_checks_catch_a_planted_circle_and_a_wrong_way_import(tmp_path):
    (tmp_path / "service").mkdir()
    (tmp_path / "workers").mkdir()
    (tmp_path / "service" / "__init__.py").write_text("")
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "service" / "a.py").write_text("from service import b\n")
    (tmp_path / "service" / "b.py").write_text("from . import a\n\ndef f():\n    import workers.job\n")
    (tmp_path / "workers" / "job.py").write_text("from service.a import x\n")
    found = imports(tmp_path)
    assert circles(found) == [["service.a", "service.b"]]
    assert direction_violations(found) == ["service.b imports workers.job (line 4)"]
    assert [(i.source, i.why) for i in found if i.lazy] == [("service.b", False)]
