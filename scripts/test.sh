#!/usr/bin/env bash
# The full test suite: pytest over tests/, every notebook through nbmake in the quick profile, and
# the book built with warnings as errors (reusing the notebooks' outputs from the nbmake run).
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export BDK_PROFILE=quick BDK_EXPECT_PROFILE=quick BDK_PROGRESS=0 MPLBACKEND=Agg
# A fresh results cache, so every experiment really runs.
BDK_CACHE_DIR="$(mktemp -d)"
export BDK_CACHE_DIR
trap 'rm -rf "$BDK_CACHE_DIR"' EXIT
t0=$SECONDS
echo "[test] notebooks are well-formed"
python scripts/notebooks.py check
echo "[test] pytest tests/"
python -m pytest tests -q -p no:cacheprovider --timeout=900
t1=$SECONDS
echo "[test] notebooks through nbmake (profile quick)"
python scripts/execute_notebooks.py
t2=$SECONDS
echo "[test] jupyter-book build -W -n --keep-going"
jupyter-book build . -W -n --keep-going
t3=$SECONDS
echo "[test] pytest $((t1 - t0)) s | notebooks $((t2 - t1)) s | book $((t3 - t2)) s | total $((t3 - t0)) s"
