"""The package modules a step runs: its own module and every `pipsteps` module it imports, transitively.

Found statically with `ast` (no import, no torch): every `import pipsteps.x`, `from pipsteps import x` and
`from pipsteps.x import y` anywhere in a module, function-level (lazy) imports included, since they run too. The
workflow makes these files inputs of the step's rule (common.smk `step_code`), so editing any of them reruns the
step. The package's `__init__.py` (the lazy public API, which computes nothing for a step) counts only for a module
that imports a name from it (`from pipsteps import load_pruned`), together with the modules it names as
"pipsteps.x" strings. Results are cached per process: a Snakemake invocation parses the package once.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "pipsteps"


@functools.lru_cache(maxsize=None)
def direct_imports(path: Path) -> frozenset[str]:
    """Names of the package modules the file at `path` imports (those that exist beside it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module == PACKAGE or node.level == 1 and not module:
                for a in node.names:  # from pipsteps import cli / from . import cli; else a name of __init__
                    names.add(a.name if (path.parent / f"{a.name}.py").is_file() else "__init__")
            elif node.level == 0 and module.startswith(PACKAGE + "."):
                names.add(module.split(".")[1])
            elif node.level == 1:
                names.add(module.split(".")[0])  # from .io import x
        elif path.name == "__init__.py" and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(PACKAGE + ".") and node.value.count(".") == 1:
                names.add(node.value.split(".")[1])  # the lazy exports' "pipsteps.surgery"
    return frozenset(n for n in names if (path.parent / f"{n}.py").is_file())


@functools.lru_cache(maxsize=None)
def step_modules(name: str, package_dir: str) -> tuple[str, ...]:
    """`name` and every package module it imports, transitively, sorted (module names, no suffix)."""
    root = Path(package_dir)
    if not (root / f"{name}.py").is_file():
        raise FileNotFoundError(f"no module {name!r} in {root}")
    seen, todo = {name}, [name]
    while todo:
        for dep in direct_imports(root / f"{todo.pop()}.py"):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


def step_files(name: str, package_dir: str | Path) -> list[str]:
    """The files of step_modules(name): what a rule lists as its code inputs."""
    return [f"{package_dir}/{m}.py" for m in step_modules(name, str(package_dir))]
