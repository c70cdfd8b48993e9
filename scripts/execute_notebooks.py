"""Execute every notebook of the book once through nbmake, and hand the outputs to the book build.

Each notebook under ``book/`` is copied to ``nbexec/`` and executed there by nbmake (pytest);
the committed notebooks stay without outputs. The executed copies are then stored in the execution
cache of the book build (``_build/.jupyter_cache``), keyed by their code, so that
``jupyter-book build .`` (``execute_notebooks: cache``) reuses them instead of executing them again.

    python scripts/execute_notebooks.py [NOTEBOOK ...]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "nbexec"  # (nbmake skips folders named _build)
CACHE = ROOT / "_build" / ".jupyter_cache"


def main(argv: list[str]) -> int:
    sources = [Path(a).resolve() for a in argv] or sorted(
        p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    if not sources:
        print("no notebooks found under book/", file=sys.stderr)
        return 1
    if WORK.exists():
        shutil.rmtree(WORK)
    copies = []
    for src in sources:
        dst = WORK / src.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copies.append(dst)
    cmd = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "--overwrite",
           "-p", "no:cacheprovider", "--durations=0", "-q", *map(str, copies)]
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        return result.returncode

    from jupyter_cache import get_cache

    cache = get_cache(str(CACHE))
    for copy in copies:
        nb = json.loads(copy.read_text())
        for cell in nb["cells"]:
            cell.get("metadata", {}).pop("execution", None)  # timing metadata is not part of the code
        copy.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        cache.cache_notebook_file(str(copy), uri=str(ROOT / copy.relative_to(WORK)), check_validity=False, overwrite=True)
    print(f"cached {len(copies)} executed notebook(s) in {CACHE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
