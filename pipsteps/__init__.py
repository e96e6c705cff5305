"""pipsteps: Perturbation-based Iterative Pruning (PIP) for decoder-only LLMs, one module per workflow step.

The public API for using what the workflow wrote (docs/usage.md):

    from pipsteps import final_model, load_pruned, read_manifest, removed

- `load_pruned(path)`: a pruned (or dense) model directory as a transformers model, the manifest checked
  against the weights (safetensors only);
- `final_model(variant_dir)`: the model directory of a variant's last pruning round;
- `read_manifest(path)`: the full pruning record (`pruning_manifest.json`) as a dict;
- `removed(path_or_manifest)`: which layers, KV groups, query heads and MLP channels were removed.

Importing the package is cheap: the Snakefile imports torch-free modules (`pipsteps.config`, `pipsteps.methods`,
...) at parse time, so the names above are resolved lazily (PEP 562) and torch is imported only when one that
needs it is first used.
"""

# public name -> module that defines it
_EXPORTS = {
    "load_pruned": "pipsteps.surgery",
    "read_manifest": "pipsteps.surgery",
    "final_model": "pipsteps.pruned",
    "removed": "pipsteps.pruned",
    "Removal": "pipsteps.pruned",
    "PipError": "pipsteps.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def _version() -> str:
    """The installed distribution's version; from pyproject.toml when pipsteps runs from a checkout uninstalled."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pipsteps")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> object:
    import importlib

    module = _EXPORTS.get(name)
    if module is None:  # AttributeError also lets `from pipsteps import <submodule>` import the submodule
        raise AttributeError(f"module 'pipsteps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
