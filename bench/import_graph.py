"""Print the import graph of the project's own modules, folded to packages, and check its rules.

    python -m bench.import_graph            # edges such as "train_scene_rendering -> utils.data.hotel"
    python -m bench.import_graph --modules  # module to module

Rules checked (exit status 1 and one line per violation otherwise): ``models/`` imports nothing from
``utils/``, and no entry script imports another entry script.
"""
import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "utils", "bench")
SKIP = {"tests", "scratch", "docs", "results", "data_samples", "logs"}


def project_modules() -> dict:
    """{dotted module name: path} of every .py file outside tests and data folders."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in SKIP or parts[0].startswith("."):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports(path: Path, modules: dict) -> set:
    """The project modules a file imports (``from x import y`` counts x, or x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def fold(module: str) -> str:
    """``utils.data.hotel`` -> ``utils``; entry scripts stay themselves."""
    return module.split(".")[0] if module.split(".")[0] in PACKAGES else module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", action="store_true", help="module to module instead of folded to packages")
    args = p.parse_args(argv)
    modules = project_modules()
    edges = {(m, d) for m, path in modules.items() for d in imports(path, modules) if d != m}
    shown = edges if args.modules else {(fold(a), fold(b)) for a, b in edges if fold(a) != fold(b)}
    for a, b in sorted(shown):
        print(f"{a} -> {b}")
    scripts = {m for m in modules if m.split(".")[0] not in PACKAGES}
    violations = [f"{a} -> {b}: models/ must not import from utils/" for a, b in sorted(edges)
                  if a.startswith("models") and b.startswith("utils")]
    violations += [f"{a} -> {b}: an entry script imports another" for a, b in sorted(edges)
                   if a in scripts and b in scripts]
    for line in violations:
        print(f"violation: {line}", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
