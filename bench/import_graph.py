"""Print the import graph of the project's own modules, folded to packages, and check its rules.

    python -m bench.import_graph            # edges such as "train_scene_rendering -> utils.data.hotel"
    python -m bench.import_graph --modules  # module to module

Rules checked (exit status 1 and one line per violation otherwise): the arrows go one way, entry scripts ->
``utils.training`` / ``utils.evaluation`` -> ``utils.data``, ``models`` and the shared core (``utils/*.py``):
``models/`` imports nothing from ``utils/``, ``utils.data`` nothing from training or evaluation, training and
evaluation nothing from each other, the core from no layer; and no entry script imports another.
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


LAYERS = ("utils.data", "utils.training", "utils.evaluation")
# Arrows go one way: entry scripts -> training / evaluation -> data, models and the shared core (utils/*.py).
FORBIDDEN = {
    "models": ("utils",),
    "utils.data": ("utils.training", "utils.evaluation"),
    "utils.training": ("utils.evaluation",),
    "utils.evaluation": ("utils.training",),
    "utils": LAYERS,  # the core: checkpoint format, atomic writes, the error convention
}


def fold(module: str) -> str:
    """``utils.data.hotel`` -> ``utils.data``, ``utils.checkpoint`` -> ``utils``, ``models.gen`` -> ``models``;
    entry scripts stay themselves."""
    layer = next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)
    return layer or (module.split(".")[0] if module.split(".")[0] in PACKAGES else module)


def forbidden(a: str, b: str) -> bool:
    """Whether the folded edge a -> b breaks the layering."""
    return any(b == target or b.startswith(target + ".") for target in FORBIDDEN.get(a, ()))


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
    violations = [f"{a} -> {b}: {fold(a)} must not import from {fold(b)}" for a, b in sorted(edges)
                  if forbidden(fold(a), fold(b))]
    violations += [f"{a} -> {b}: an entry script imports another" for a, b in sorted(edges)
                   if a in scripts and b in scripts]
    for line in violations:
        print(f"violation: {line}", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
