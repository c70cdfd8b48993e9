"""The book's structure: well-formed notebooks, a table of contents that lists every chapter,
and citations that resolve into the one bibliography."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

NOTEBOOKS = notebooks.notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_well_formed(path):
    assert notebooks.problems(path) == []


def _toc_files() -> set[str]:
    return set(re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text()))


def test_every_notebook_and_page_is_in_the_toc():
    listed = _toc_files() | {re.search(r"root:\s*(\S+)", (ROOT / "_toc.yml").read_text()).group(1)}
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").rglob("*") if p.suffix in {".md", ".ipynb"}
             and ".ipynb_checkpoints" not in p.parts}
    assert pages - listed == set(), "pages missing from _toc.yml"
    assert listed - pages == set(), "_toc.yml lists pages that do not exist"


def _cite_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    for group in re.findall(r":cite(?::[a-z]+)?:`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


def test_every_citation_is_in_the_bibliography():
    bib = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), flags=re.M))
    cited = set()
    for path in (ROOT / "book").rglob("*"):
        if path.suffix == ".md":
            cited |= _cite_keys(path.read_text())
        elif path.suffix == ".ipynb":
            nb = json.loads(path.read_text())
            cited |= _cite_keys("\n".join("".join(c["source"]) for c in nb["cells"]))
    for path in (ROOT / "bdk").rglob("*.py"):
        cited |= _cite_keys(path.read_text())
    assert cited - bib == set(), "cite keys missing from book/references.bib"


def test_bibliography_keys_are_unique():
    keys = re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), flags=re.M)
    assert len(keys) == len(set(keys))


def test_launch_buttons_setup_cells_and_readme_name_one_revision():
    """One setting, ``repository.branch`` of _config.yml, is the revision that the launch buttons open
    (Jupyter Book builds their URLs from it), that every setup cell clones and that the README installs."""
    revision, url = notebooks.pinned_revision(), notebooks.repository_url()
    config = (ROOT / "_config.yml").read_text()
    assert re.search(rf"^\s+branch:\s*{re.escape(revision)}\s*$", config, flags=re.M)
    for path in NOTEBOOKS:
        setup = "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])
        assert f"--branch {revision} " in setup and url in setup, path.name
        assert notebooks.install_line() in setup, path.name  # a downloaded notebook says how to install bdk
    readme = (ROOT / "README.md").read_text()
    assert f"git+{url}@{revision}" in readme


def test_the_publishing_workflow_builds_and_deploys_the_book():
    workflow = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    assert "bash scripts/build-book.sh" in workflow and "actions/deploy-pages@" in workflow
    assert "path: _build/html" in workflow


def test_executed_outputs_are_checked_for_captions_and_log_lines():
    import execute_notebooks

    png = {"output_type": "display_data", "data": {"image/png": "AAAA", "text/plain": "<Figure>"}, "metadata": {}}
    log = {"output_type": "stream", "name": "stdout", "text": "demo: ran in 0.8 s; result cached as\n  x.pt in $BDK_CACHE_DIR\n"}
    good_meta = {"mystnb": {"figure": {"caption": "Loss per step.", "name": "fig-loss"}, "image": {"alt": "A falling curve"}}}

    def cell(outputs, metadata=None):
        return {"cell_type": "code", "source": ["plot()"], "metadata": metadata or {}, "outputs": outputs}

    assert execute_notebooks.output_problems({"cells": [cell([png], good_meta)]}, "x") == []
    bare = execute_notebooks.output_problems({"cells": [cell([png])]}, "x")
    assert bare == ["x, code cell 1 ('plot()'): a figure without metadata.mystnb figure.caption, figure.name, image.alt"]
    two = execute_notebooks.output_problems({"cells": [cell([png, png], good_meta)]}, "x")
    assert two == ["x, code cell 1 ('plot()'): 2 figures from one cell (one figure, one caption per cell)"]
    noisy = execute_notebooks.output_problems({"cells": [cell([log])]}, "x")
    assert noisy == ["x, code cell 1 ('plot()'): a log line in the output: 'demo: ran in 0.8 s; result cached as'"]
    assert execute_notebooks.output_problems({"cells": [cell([log], {"tags": ["shows-log"]})]}, "x") == []
