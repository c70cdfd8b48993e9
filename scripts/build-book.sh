#!/usr/bin/env bash
# Build the whole book into _build/html, executing every notebook (cached between builds).
#   bash scripts/build-book.sh            # profile: quick on a CPU, paper where CUDA is present
#   BDK_PROFILE=paper bash scripts/build-book.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export BDK_PROGRESS=0
start=$SECONDS
jupyter-book build . -W -n --keep-going
echo "[book] built _build/html/index.html in $((SECONDS - start)) s (profile: $(python -c 'import bdk; print(bdk.profile())'))"
