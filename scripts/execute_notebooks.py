"""Execute every notebook of the book once through nbmake, and hand the outputs to the book build.

Each notebook under ``book/`` is copied to ``nbexec/`` and executed there by nbmake (pytest);
the committed notebooks stay without outputs. The executed copies are then stored in the execution
cache of the book build (``_build/.jupyter_cache``), keyed by their code, so that
``jupyter-book build .`` (``execute_notebooks: cache``) reuses them instead of executing them again.

    python scripts/execute_notebooks.py [--times FILE] [--work DIR] [--no-book-cache] [NOTEBOOK ...]

``--times FILE`` also writes how long each notebook took to execute (JSON: date, machine, profile,
seconds per notebook); the landing page reads ``data/timings/quick-cpu.json`` and
``data/timings/paper-gpu.json`` written this way. ``--work DIR`` executes the copies in DIR instead
of ``nbexec/`` (several runs side by side), ``--no-book-cache`` leaves the book build's cache alone.

After the run, the executed copies are checked for what a reader should not meet (exit status 1,
each problem listed): a figure output of a cell without a caption, a name and alt text
(``metadata.mystnb.figure.caption``/``.name`` and ``metadata.mystnb.image.alt``, which myst-nb turns
into a numbered ``<figure>``), two figures from one cell, and log lines in outputs (cache and timing
messages, configuration dumps; a cell tagged ``shows-log`` may show them, to explain them).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
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


# Lines that are logs, not results: the cache's and the registry's messages, configuration dumps.
LOG_LINE = re.compile(r"loaded cached result|result cached as|computed by other code|: ran in \d|in \$BDK_CACHE_DIR|~/\.cache/bdk"
                      r"|^profile (quick|paper): \w+Config", re.M)
IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")


def output_problems(nb: dict, name: str) -> list[str]:
    """What a reader should not meet in an executed notebook's outputs (see the module docstring)."""
    problems = []
    for number, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        outputs = cell.get("outputs", [])
        images = [o for o in outputs if any(t in o.get("data", {}) for t in IMAGE_TYPES)]
        meta = cell.get("metadata", {}).get("mystnb", {})
        where = f"{name}, code cell {number + 1} ({''.join(cell['source']).strip().splitlines()[-1][:60]!r})"
        if images:
            figure, image = meta.get("figure", {}), meta.get("image", {})
            missing = [k for k, v in (("figure.caption", figure.get("caption")), ("figure.name", figure.get("name")),
                                      ("image.alt", image.get("alt"))) if not v]
            if missing:
                problems.append(f"{where}: a figure without metadata.mystnb {', '.join(missing)}")
            if len(images) > 1:
                problems.append(f"{where}: {len(images)} figures from one cell (one figure, one caption per cell)")
        if "shows-log" in cell.get("metadata", {}).get("tags", []):
            continue  # a cell that teaches what the messages mean (chapter "Data and tools")
        for output in outputs:
            text = "".join(output.get("text", "")) if output.get("output_type") == "stream" else \
                "".join(output.get("data", {}).get("text/plain", "")) if not any(
                    t in output.get("data", {}) for t in ("text/html", "text/markdown", *IMAGE_TYPES)) else ""
            match = LOG_LINE.search(text)
            if match:
                line = text[text.rfind("\n", 0, match.start()) + 1:].split("\n", 1)[0]
                problems.append(f"{where}: a log line in the output: {line[:100]!r}")
    return problems


def main(argv: list[str]) -> int:
    times, work, book_cache = None, WORK, True
    while argv[:1] and argv[0] in ("--times", "--work", "--no-book-cache"):
        if argv[0] == "--no-book-cache":
            book_cache, argv = False, argv[1:]
            continue
        if len(argv) < 2:
            print(f"{argv[0]} needs a value", file=sys.stderr)
            return 2
        if argv[0] == "--times":
            times = Path(argv[1]).resolve()
        else:
            work = Path(argv[1]).resolve()
        argv = argv[2:]
    sources = [Path(a).resolve() for a in argv] or sorted(
        p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    if not sources:
        print("no notebooks found under book/", file=sys.stderr)
        return 1
    if work.exists():
        shutil.rmtree(work)
    copies = []
    for src in sources:
        dst = work / src.relative_to(ROOT)
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
    problems = [p for copy in copies for p in output_problems(json.loads(copy.read_text()), copy.name)]
    for problem in problems:
        print(f"[outputs] {problem}", file=sys.stderr)
    if problems:
        print(f"[outputs] {len(problems)} problem(s) in the executed notebooks' outputs", file=sys.stderr)
        return 1
    if not book_cache:
        return 0

    from jupyter_cache import get_cache

    cache = get_cache(str(CACHE))
    for copy in copies:
        nb = json.loads(copy.read_text())
        for cell in nb["cells"]:
            cell.get("metadata", {}).pop("execution", None)  # timing metadata is not part of the code
        copy.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        cache.cache_notebook_file(str(copy), uri=str(ROOT / copy.relative_to(work)), check_validity=False, overwrite=True)
    print(f"cached {len(copies)} executed notebook(s) in {CACHE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
