"""Execute every notebook of the book once through nbmake, and hand the outputs to the book build.

Each notebook under ``book/`` is copied to ``nbexec/`` and executed there by nbmake (pytest);
the committed notebooks stay without outputs. The executed copies are then stored in the execution
cache of the book build (``_build/.jupyter_cache``), keyed by their code, so that
``jupyter-book build .`` (``execute_notebooks: cache``) reuses them instead of executing them again.

    python scripts/execute_notebooks.py [--times FILE] [NOTEBOOK ...]

``--times FILE`` also writes how long each notebook took to execute (JSON: date, machine, profile,
seconds per notebook); the landing page reads ``data/timings/quick-cpu.json`` and
``data/timings/paper-gpu.json`` written this way.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "nbexec"  # (nbmake skips folders named _build)
CACHE = ROOT / "_build" / ".jupyter_cache"
LAST = {"intro"}  # notebooks that summarise the others' cached results


def machine() -> str:
    """One line that says what the notebooks ran on."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "all")
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"{threads} intra-op thread(s), torch {torch.__version__}")


def write_times(junit: Path, out: Path) -> None:
    """Seconds per notebook from pytest's JUnit XML, with the date, machine and profile."""
    import bdk

    seconds = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = Path(case.get("name", "")).stem or Path(case.get("classname", "")).stem
        seconds[name] = round(float(case.get("time", "nan")), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "profile": bdk.profile(),
        "note": "each notebook executed once, top to bottom, with an empty results cache",
        "notebooks": dict(sorted(seconds.items())),
    }, indent=1) + "\n")
    print(f"wrote the execution time of {len(seconds)} notebook(s) to {out}")


def main(argv: list[str]) -> int:
    times = None
    if argv[:1] == ["--times"]:
        if len(argv) < 2:
            print("--times needs a file name", file=sys.stderr)
            return 2
        times, argv = Path(argv[1]).resolve(), argv[2:]
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
    # Summary pages (the landing page) show the other chapters' results: they run last, on the cache.
    copies.sort(key=lambda c: c.stem in LAST)
    junit = Path(tempfile.mkdtemp()) / "notebooks.xml"
    cmd = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "--overwrite",
           "-p", "no:cacheprovider", "--durations=0", "-q", f"--junitxml={junit}",
           *map(str, copies)]
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        return result.returncode
    if times is not None:
        write_times(junit, times)

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
