"""The package's layers, checked on the source: every import counts, also those inside functions.

model maths (config, sampling, likelihood, models/) ← storage (io/) ← training/ ← cli/, and evaluate/,
serve/ and viz/ beside them; a lower layer never reaches up, and no module imports itself back.
"""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fractalgm"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere in its body (relative or absolute)."""
    mods = _modules()
    graph = {}
    for mod, f in mods.items():
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("fractalgm"):
                    target = node.module
                else:
                    continue
                if node.module:  # `from .m import x` runs m, and x may be a submodule of m
                    deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def test_no_import_cycle_counting_imports_inside_functions():
    graph, done = import_graph(), set()

    def visit(mod, path):
        for dep in sorted(graph[mod]):
            assert dep not in path, "import cycle: " + " → ".join(path[path.index(dep):] + [dep])
            if dep not in done:
                visit(dep, path + [dep])
        done.add(mod)

    assert {"fractalgm.models.fractal_gen", "fractalgm.io.checkpoint", "fractalgm.cli.main"} <= set(graph)
    for mod in graph:
        visit(mod, [mod])


def _reaches(graph, start: str, prefix: str) -> list[str]:
    return sorted(d for d in graph[start] if d == prefix or d.startswith(prefix + "."))


def test_lower_layers_never_reach_up():
    graph = import_graph()
    rules = {  # importer prefix → prefixes it must not import
        "fractalgm.io.checkpoint": ["fractalgm.models", "fractalgm.io.convert", "fractalgm.training", "fractalgm.cli"],
        "fractalgm.evaluate": ["fractalgm.training", "fractalgm.cli", "fractalgm.serve"],
        "fractalgm.models": ["fractalgm.training", "fractalgm.cli", "fractalgm.serve", "fractalgm.evaluate"],
        "fractalgm.data": ["fractalgm.training", "fractalgm.cli", "fractalgm.serve", "fractalgm.models"],
        "fractalgm.serve": ["fractalgm.training", "fractalgm.cli"],
        "fractalgm.training": ["fractalgm.cli", "fractalgm.serve"],
        "fractalgm.sampling": ["fractalgm.models"], "fractalgm.likelihood": ["fractalgm.models"],
    }
    for mod in graph:
        for importer, banned in rules.items():
            if mod == importer or mod.startswith(importer + "."):
                for prefix in banned:
                    assert not _reaches(graph, mod, prefix), f"{mod} imports {_reaches(graph, mod, prefix)}"


def test_no_flat_cli_or_train_modules_and_small_files():
    assert not [f.name for f in SRC.glob("*.py") if f.name.startswith(("cli_", "train_", "train."))]
    for f in SRC.rglob("*.py"):
        lines = len(f.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{f.relative_to(SRC)} has {lines} lines"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 100, f"{f.relative_to(SRC)}:{node.lineno} {node.name} has {length} lines"
