"""The house rules that keep the package readable: imports flow one way (no circle, lazy imports
included), generators/ stands on the ground floor only, and functions stay short."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "latent_fit"
MAX_FUNCTION_LINES = 60


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere (top level or inside functions)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
                found |= {n for n in names if n in modules} or ({base} if base in modules else set())
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
        graph[name] = found - {name}
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_import_graph_has_no_circle():
    graph = _imports()
    circles = sorted(m for m in graph if m in _reach(graph, m))
    assert not circles, f"modules on an import circle: {circles}"


def test_generators_import_only_what_uses_no_generator():
    graph = _imports()
    inside = {m for m in graph if m.startswith("latent_fit.generators")}
    outside = {m for g in inside for m in graph[g]} - inside
    users = sorted(m for m in outside if _reach(graph, m) & inside)
    assert not users, f"generators/ imports modules that use generators: {users}"


def test_no_function_is_longer_than_the_house_allows():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({n} lines)")
    assert not long, long
