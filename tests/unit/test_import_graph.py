"""The package's import graph: no circles, a torch-free core, and step modules that do not import each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipsteps import deps

PKG = Path(__file__).resolve().parents[2] / "pipsteps"
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")
GRAPH = {m: set(deps.direct_imports(PKG / f"{m}.py")) - {"__init__"} for m in MODULES}
STEPS = {m for m in MODULES if "main_wrapper(main)" in (PKG / f"{m}.py").read_text()}
# torch-free: the workflow (Snakefile, common.smk) and the public lazy API import these without torch
CORE = {"errors", "methods", "layout", "deps", "config", "compute", "perturb", "pruned", "zeroshot_tasks", "runplan"}
# the light steps and their helpers start without torch (a job's start-up is then ~0.1 s instead of ~2 s, ~7 s with
# transformers); the plan step reads the model's shape from its file headers (pipsteps.shape)
LIGHT = {"files", "cli", "summarize", "tracking", "plots", "plots_width", "plan", "unit_plans", "shape", "selection"}
STEP_TO_STEP: set[tuple[str, str]] = set()  # what two steps share is a library module (e.g. calib_text)


def cycles() -> list[list[str]]:
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(GRAPH[m]):
            if state.get(d) == "open":
                found.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    return found


def test_the_graph_is_read():
    assert {"surgery", "io"} <= GRAPH["prune"] and "errors" in GRAPH["io"] and "tiny" in GRAPH["prepare_model"]
    assert {"prune", "gradients", "evaluate", "recover"} <= STEPS and not {"grads", "io", "layout"} & STEPS


def test_no_import_circle():
    assert cycles() == []


def test_steps_do_not_import_each_other():
    assert {(m, d) for m in STEPS for d in GRAPH[m] & STEPS} == STEP_TO_STEP


def test_libraries_and_core_do_not_import_higher_modules():
    assert {(m, d) for m in set(MODULES) - STEPS for d in GRAPH[m] & STEPS} == set()
    assert {(m, d) for m in CORE for d in GRAPH[m] - CORE} == set()
    assert GRAPH["io"] == {"errors"} and GRAPH["files"] == {"errors"} and GRAPH["errors"] == set()


def loaded_in_fresh_python(modules: set[str], heavy: tuple[str, ...]) -> list[str]:
    """Which of `heavy` a fresh interpreter has loaded after importing pipsteps.<m> for every m in `modules`."""
    code = ("import sys\n" + "".join(f"import pipsteps.{m}\n" for m in sorted(modules))
            + f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [m for m in proc.stdout.strip().split(",") if m]


def test_core_imports_without_torch():
    assert loaded_in_fresh_python(CORE, ("torch", "transformers", "safetensors")) == []


def test_light_steps_import_without_torch():
    heavy = ("torch", "transformers", "safetensors.torch")
    assert loaded_in_fresh_python(LIGHT, heavy) == [] and loaded_in_fresh_python({"io"}, heavy) == ["torch"]
