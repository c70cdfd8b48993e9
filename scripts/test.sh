#!/usr/bin/env bash
# The full test suite: pytest over tests/, every notebook through nbmake in the quick profile, the
# book built with warnings as errors (reusing the notebooks' outputs from the nbmake run), and every
# page opened in headless Chromium (scripts/check_pages.py: tracebacks, broken images, math errors).
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages: Debian's Fashion-MNIST (a data set of the book) and Chromium (the page check).
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "[test] ${need[*]} not installed and apt-get is unavailable; tests that need them will fail" >&2
    fi
fi
source scripts/env.sh
export BDK_PROFILE=quick BDK_EXPECT_PROFILE=quick BDK_PROGRESS=0
# One intra-op thread per process: the quick experiments are small, and two worker threads on a
# 2-core machine slow them down many times over as soon as anything else runs; it also makes the
# printed numbers independent of the machine's core count.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# A fresh results cache, so every experiment really runs.
BDK_CACHE_DIR="$(mktemp -d)"
export BDK_CACHE_DIR
trap 'rm -rf "$BDK_CACHE_DIR"' EXIT
t0=$SECONDS
echo "[test] notebooks are well-formed; the publishing workflow passes actionlint"
python scripts/notebooks.py check
actionlint .github/workflows/*.yml
echo "[test] pytest tests/"
python -m pytest tests -q -p no:cacheprovider --timeout=900
t1=$SECONDS
echo "[test] notebooks through nbmake (profile quick)"
python scripts/execute_notebooks.py --times _build/notebook-times.json
t2=$SECONDS
echo "[test] jupyter-book build -W -n --keep-going"
jupyter-book build . -W -n --keep-going
t3=$SECONDS
echo "[test] every page of the book in headless Chromium"
python scripts/check_pages.py _build/html --out _build/screenshots
t4=$SECONDS
echo "[test] pytest $((t1 - t0)) s | notebooks $((t2 - t1)) s | book $((t3 - t2)) s | pages $((t4 - t3)) s | total $((t4 - t0)) s"
